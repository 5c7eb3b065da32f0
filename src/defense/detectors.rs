//! Detectors fitted by the pipeline (models/training/medsentry_training/detectors.py) and
//! evaluated here on the features and logits of the classifier's forward pass, in f64, with
//! the formulas their JSON files document:
//!
//! * `mahalanobis` (Lee et al. 2018): score = min over classes c of
//!   sqrt((f - means[c])^T precision (f - means[c])), f = penultimate features;
//! * `logistic` (Ma et al.-style learned detector): x = [features, logits],
//!   z = bias + sum_i weights[i] (x[i] - mean[i]) / scale[i], score = 1 / (1 + e^-z).
//!
//! * `feature_squeezing` (Xu et al. 2018): see [`super::squeeze`]; scored from the logits
//!   of the squeezed copies that ran in the same batch.
//!
//! * `residual_statistics`: see [`super::residual`]; scored from the input's residual.
//!
//! * `fused`: a logistic regression over the scores of other detectors of the bundle (by
//!   name, each listed before it) and `margin` (top-1 minus top-2 softmax probability):
//!   score = 1 / (1 + e^-z), z = bias + sum_i weights[i] (x[i] - mean[i]) / scale[i]
//!   (models/training/medsentry_training/fused.py). When a bundle has one, its thresholds
//!   alone set the verdict.
//!
//! Higher scores are more adversarial in all.

use serde::Deserialize;

use super::numeric::quadratic_form;
use super::residual::ResidualStatistics;
use super::squeeze::Squeeze;
use crate::engine::InferResult;

/// A loaded detector, ready to score one input.
#[derive(Debug, Clone)]
pub enum Detector {
    Mahalanobis {
        means: Vec<Vec<f64>>,
        precision: Vec<Vec<f64>>,
    },
    Logistic {
        mean: Vec<f64>,
        scale: Vec<f64>,
        weights: Vec<f64>,
        bias: f64,
    },
    FeatureSqueezing(Squeeze),
    /// Scored by the screener from the input's residual features (see [`super::residual`]).
    ResidualStatistics(ResidualStatistics),
    Fused(Fused),
}

/// The fused detector: a combiner scored by the screener from the other detectors' scores,
/// and optionally its cascade.
#[derive(Debug, Clone)]
pub struct Fused {
    pub combiner: Combiner,
    /// A cheaper combiner over inputs that need no extra forward pass, and the score under
    /// which an input is answered CLEAN without the others (served when the policy sets
    /// `cascade = true`).
    pub cascade: Option<Cascade>,
}

#[derive(Debug, Clone)]
pub struct Cascade {
    pub combiner: Combiner,
    pub skip_below: f64,
}

/// A logistic regression over named inputs: other detectors' scores, "margin", "log-margin", and whole
/// vectors (BLOCK_INPUTS: the penultimate features, the logits, the residual-statistics
/// features of the input, the squeezed copies' feature shift), each `widths[i]` values wide.
#[derive(Debug, Clone, Deserialize)]
pub struct Combiner {
    /// Detector names, "margin", "log-margin" and block names, in the order of the weights.
    pub inputs: Vec<String>,
    /// Values per input (absent: one each, the detector scores and margin).
    #[serde(default)]
    widths: Vec<usize>,
    mean: Vec<f64>,
    scale: Vec<f64>,
    weights: Vec<f64>,
    bias: f64,
}

/// Inputs of a combiner that are vectors rather than one score.
pub const BLOCK_INPUTS: [&str; 4] = ["penultimate-features", "logits", "residual-features", "squeeze-feature-shift"];

/// Which served detector a combiner input that is not a score comes with (None: the
/// forward pass itself, or the input is a detector's score).
pub fn input_provider(name: &str) -> Option<&'static str> {
    match name {
        "residual-features" => Some("residual_statistics"),
        "squeeze-feature-shift" => Some("feature_squeezing"),
        _ => None,
    }
}

/// Whether a combiner input that is not a detector's score is available: margin and the
/// vectors of the forward pass always, a vector that comes with a detector (input_provider)
/// where `serves` says a detector of that kind runs; None for a detector's name (the caller
/// checks it).
pub fn forward_pass_input(name: &str, serves: impl Fn(&str) -> bool) -> Option<bool> {
    match name {
        "margin" | "log-margin" | "penultimate-features" | "logits" => Some(true),
        _ => input_provider(name).map(serves),
    }
}

enum Values<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
}

/// What a combiner reads of one input besides the other detectors' scores.
#[derive(Debug, Clone, Copy)]
pub struct CombinerInputs<'a> {
    pub logits: &'a [f32],
    pub features: &'a [f32],
    /// The residual-statistics features (None when the bundle serves no such detector).
    pub residual_features: Option<&'a [f64]>,
    /// [`super::squeeze::feature_shift`] (None without the squeezed copies).
    pub squeeze_shift: Option<[f64; super::squeeze::COPIES]>,
}

impl Combiner {
    fn check(&self) -> Result<(), String> {
        let n = self.inputs.len();
        if !self.widths.is_empty() && self.widths.len() != n {
            return Err(format!("widths must have one value per input ({n})"));
        }
        let total: usize = if self.widths.is_empty() { n } else { self.widths.iter().sum() };
        if n == 0 || self.mean.len() != total || self.scale.len() != total || self.weights.len() != total {
            return Err(format!("mean, scale and weights must have one value per input value ({total})"));
        }
        if let Some(i) = self.inputs.iter().zip(self.widths()).find_map(|(name, w)| (w != 1 && !BLOCK_INPUTS.contains(&name.as_str())).then_some(name)) {
            return Err(format!("input {i:?} is one score, not a vector"));
        }
        let finite = |v: &[f64]| v.iter().all(|x| x.is_finite());
        if !(finite(&self.mean) && finite(&self.weights) && self.bias.is_finite() && self.scale.iter().all(|s| s.is_finite() && *s > 0.0)) {
            return Err("values must be finite and scales positive".into());
        }
        Ok(())
    }

    /// How many values the input `name` is, when the combiner reads it.
    pub fn width_of(&self, name: &str) -> Option<usize> {
        self.inputs.iter().zip(self.widths()).find_map(|(n, w)| (n == name).then_some(w))
    }

    fn widths(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.inputs.len()).map(|i| self.widths.get(i).copied().unwrap_or(1))
    }

    /// `scores`: the other detectors' scores of this input, by name. NaN when an input is
    /// missing, not finite, or a vector of another width.
    pub fn score(&self, scores: &[(String, f64)], x: CombinerInputs) -> f64 {
        let margin = [margin(x.logits)];
        let log_margin = [log_margin(margin[0])];
        let mut z = self.bias;
        let mut at = 0;
        for (name, width) in self.inputs.iter().zip(self.widths()) {
            let score;
            let values: Values = match name.as_str() {
                "margin" => Values::F64(&margin),
                "log-margin" => Values::F64(&log_margin),
                "penultimate-features" => Values::F32(x.features),
                "logits" => Values::F32(x.logits),
                "residual-features" => Values::F64(x.residual_features.unwrap_or_default()),
                "squeeze-feature-shift" => Values::F64(x.squeeze_shift.as_ref().map_or(&[], |s| s.as_slice())),
                _ => {
                    score = [scores.iter().find(|(n, _)| n == name).map_or(f64::NAN, |s| s.1)];
                    Values::F64(&score)
                }
            };
            let terms = self.weights[at..at + width].iter().zip(&self.mean[at..at + width]).zip(&self.scale[at..at + width]);
            z += match values {
                Values::F32(v) if v.len() == width => terms.zip(v).map(|(((w, m), s), v)| w * (f64::from(*v) - m) / s).sum::<f64>(),
                Values::F64(v) if v.len() == width => terms.zip(v).map(|(((w, m), s), v)| w * (v - m) / s).sum::<f64>(),
                _ => return f64::NAN,
            };
            at += width;
        }
        1.0 / (1.0 + (-z).exp())
    }
}

/// A margin under this counts as this one (ln 0 is not a number); the pipeline's
/// `detectors.LOG_MARGIN_FLOOR`.
const LOG_MARGIN_FLOOR: f64 = 1e-6;

/// ln of the margin, floored: a DeepFool or C&W example stops just past the decision
/// boundary (margin near 0.01), an image the model is unsure of sits at 0.1-0.3; on a log
/// scale a linear combiner tells them apart.
fn log_margin(margin: f64) -> f64 {
    margin.max(LOG_MARGIN_FLOOR).ln()
}

/// Top-1 minus top-2 softmax probability (1 for a single logit).
fn margin(logits: &[f32]) -> f64 {
    let max = logits.iter().fold(f64::NEG_INFINITY, |m, &l| m.max(l as f64));
    let exp: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    let (mut first, mut second) = (0f64, 0f64);
    for p in exp.iter().map(|e| e / sum) {
        if p > first {
            second = first;
            first = p;
        } else if p > second {
            second = p;
        }
    }
    first - second
}

#[derive(Deserialize)]
struct FusedFile {
    kind: String,
    #[serde(flatten)]
    combiner: Combiner,
    #[serde(default)]
    cascade: Option<CascadeFile>,
}

#[derive(Deserialize)]
struct CascadeFile {
    #[serde(flatten)]
    combiner: Combiner,
    skip_below: f64,
}

#[derive(Deserialize)]
struct MahalanobisFile {
    kind: String,
    means: Vec<Vec<f64>>,
    precision: Vec<Vec<f64>>,
}

#[derive(Deserialize)]
struct LogisticFile {
    kind: String,
    mean: Vec<f64>,
    scale: Vec<f64>,
    weights: Vec<f64>,
    bias: f64,
}

/// What makes `detector` unable to run on this bundle although its file is well formed:
/// residual features at a block size larger than the input, or a combiner that reads
/// another number of residual features than the residual-statistics detector above it
/// makes (a file from another fit).
pub fn mismatch<'a>(detector: &Detector, mut above: impl Iterator<Item = &'a Detector>, (height, width): (usize, usize)) -> Option<String> {
    match detector {
        Detector::ResidualStatistics(r) if r.largest_scale() > height.min(width) => {
            Some(format!("block size {} is larger than the {height} x {width} input", r.largest_scale()))
        }
        Detector::Fused(f) => {
            let made = above.find_map(|d| match d {
                Detector::ResidualStatistics(r) => Some(r.feature_len()),
                _ => None,
            })?;
            let combiners = std::iter::once(&f.combiner).chain(f.cascade.as_ref().map(|c| &c.combiner));
            combiners
                .filter_map(|c| c.width_of("residual-features"))
                .find(|w| *w != made)
                .map(|w| format!("its combiner reads {w} residual features; the residual-statistics detector makes {made}"))
        }
        _ => None,
    }
}

impl Detector {
    /// Parses a detector file of `kind` and checks its shapes against the classifier's
    /// feature and logit widths. Errors are plain text: the caller names the bundle.
    pub fn load(kind: &str, bytes: &[u8], feature_dim: usize, num_labels: usize) -> Result<Detector, String> {
        let finite = |v: &[f64]| v.iter().all(|x| x.is_finite());
        match kind {
            "mahalanobis" => {
                let f: MahalanobisFile = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
                if f.kind != kind {
                    return Err(format!("file says kind {:?}", f.kind));
                }
                if f.means.len() != num_labels || f.means.iter().any(|m| m.len() != feature_dim || !finite(m)) {
                    return Err(format!("means must be {num_labels} x {feature_dim} finite values"));
                }
                if f.precision.len() != feature_dim || f.precision.iter().any(|r| r.len() != feature_dim || !finite(r)) {
                    return Err(format!("precision must be {feature_dim} x {feature_dim} finite values"));
                }
                Ok(Detector::Mahalanobis { means: f.means, precision: f.precision })
            }
            "logistic" => {
                let f: LogisticFile = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
                if f.kind != kind {
                    return Err(format!("file says kind {:?}", f.kind));
                }
                let n = feature_dim + num_labels;
                if f.mean.len() != n || f.scale.len() != n || f.weights.len() != n {
                    return Err(format!("mean, scale and weights must have {n} values (features + logits)"));
                }
                if !(finite(&f.mean) && finite(&f.weights) && f.bias.is_finite() && f.scale.iter().all(|s| s.is_finite() && *s > 0.0)) {
                    return Err("values must be finite and scales positive".into());
                }
                Ok(Detector::Logistic { mean: f.mean, scale: f.scale, weights: f.weights, bias: f.bias })
            }
            "feature_squeezing" => Squeeze::load(bytes).map(Detector::FeatureSqueezing),
            "residual_statistics" => ResidualStatistics::load(bytes).map(Detector::ResidualStatistics),
            "fused" => {
                let f: FusedFile = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
                if f.kind != kind {
                    return Err(format!("file says kind {:?}", f.kind));
                }
                f.combiner.check()?;
                let cascade = match f.cascade {
                    None => None,
                    Some(c) => {
                        c.combiner.check().map_err(|e| format!("cascade: {e}"))?;
                        if !(0.0..=1.0).contains(&c.skip_below) {
                            return Err(format!("cascade: skip_below {} is not a probability", c.skip_below));
                        }
                        Some(Cascade { combiner: c.combiner, skip_below: c.skip_below })
                    }
                };
                Ok(Detector::Fused(Fused { combiner: f.combiner, cascade }))
            }
            other => Err(format!("unknown detector kind {other:?}")),
        }
    }

    /// The score of one engine result (NaN when the detector cannot score it).
    pub fn score_result(&self, r: &InferResult) -> f64 {
        match self {
            Detector::FeatureSqueezing(s) => s.score(&r.logits, &r.extra_logits),
            _ => self.score(&r.features, &r.logits),
        }
    }

    pub fn score(&self, features: &[f32], logits: &[f32]) -> f64 {
        match self {
            Detector::Mahalanobis { means, precision } => means
                .iter()
                .map(|mu| {
                    let d: Vec<f64> = features.iter().zip(mu).map(|(&f, m)| f as f64 - m).collect();
                    let q = quadratic_form(precision.iter().map(Vec::as_slice), &d);
                    // Rounding can make q slightly negative; NaN (overflow, NaN features)
                    // must stay NaN so the screener reports a failure, not a score of 0.
                    if q.is_nan() {
                        q
                    } else {
                        q.max(0.0).sqrt()
                    }
                })
                // f64::min would drop a NaN: any class's NaN makes the score NaN.
                .fold(f64::INFINITY, |a, b| if a.is_nan() || b.is_nan() { f64::NAN } else { a.min(b) }),
            Detector::Logistic { mean, scale, weights, bias } => {
                let x = features.iter().chain(logits).map(|&v| v as f64);
                let z = bias + x.zip(mean).zip(scale).zip(weights).map(|(((x, m), s), w)| w * (x - m) / s).sum::<f64>();
                1.0 / (1.0 + (-z).exp())
            }
            // Needs the squeezed copies' logits (score_result), or the other detectors'
            // scores (the screener).
            Detector::FeatureSqueezing(_) | Detector::Fused(_) | Detector::ResidualStatistics(_) => f64::NAN,
        }
    }
}

#[cfg(test)]
mod tests;
