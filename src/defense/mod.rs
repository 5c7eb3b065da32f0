//! defense: turns the classifier's features and logits into a screening verdict.
//!
//! The bundle's detectors (learned deep-feature detector, Mahalanobis) score the features
//! and logits of the classifier's own forward pass; feature squeezing scores the logits of
//! two squeezed copies of the input that ran in the same batch. Verdict: ADVERSARIAL when any detector
//! exceeds its threshold, SUSPICIOUS when any exceeds its looser suspicious threshold,
//! otherwise CLEAN; the fused score is the largest score / threshold ratio (>= 1 means a
//! detector fired). An input the bundle's out-of-distribution check places outside what it
//! was trained on (its DICOM header, its image statistics: [`ood`]) is OUT_OF_DISTRIBUTION
//! instead, whatever the detectors say: they were calibrated on in-distribution images
//! only, and an unfamiliar image is not an attack. A bundle listing a detector this build cannot run is refused at
//! start-up: an input must never be reported CLEAN by a detector that did not run. A bundle
//! with no detectors is served with every answer saying plainly that nothing screened it.

pub mod campaign;
mod cascade;
pub mod cooccurrence;
mod detectors;
pub mod numeric;
pub mod ood;
pub mod residual;
pub mod squeeze;

use thiserror::Error;

pub use campaign::{CampaignMonitor, CampaignStatus};
pub use detectors::Detector;

use crate::bundle::{is_known_kind, Accepts, Bundle, DetectorSpec};
use crate::engine::InferResult;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    NotScreened,
    Clean,
    Suspicious,
    Adversarial,
    /// Not the kind of image the model was trained on; not an attack verdict.
    OutOfDistribution,
}

impl Verdict {
    /// Label value used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::NotScreened => "not_screened",
            Verdict::Clean => "clean",
            Verdict::Suspicious => "suspicious",
            Verdict::Adversarial => "adversarial",
            Verdict::OutOfDistribution => "out_of_distribution",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DetectorScore {
    pub name: String,
    pub score: f32,
    pub threshold: f32,
    pub calibrated_fpr: f32,
    pub fired: bool,
}

impl DetectorScore {
    fn of(spec: &DetectorSpec, score: f64, fired: bool) -> DetectorScore {
        DetectorScore { name: spec.name.clone(), score: score as f32, threshold: spec.threshold, calibrated_fpr: spec.calibrated_fpr, fired }
    }
}

/// What a combiner (fused detector, cascade) reads of one forward pass and the input.
fn combiner_inputs<'a>(result: &'a InferResult, evidence: &Evidence<'a>) -> detectors::CombinerInputs<'a> {
    detectors::CombinerInputs {
        logits: &result.logits,
        features: &result.features,
        residual_features: evidence.residual_features,
        squeeze_shift: squeeze::feature_shift(&result.features, &result.extra_features),
    }
}

/// A detector's score from one forward pass and the input's evidence (the fused detector
/// reads the others' scores instead; feature squeezing reads the squeezed copies' logits).
fn one_pass_score(detector: &Detector, result: &InferResult, evidence: &Evidence) -> f64 {
    match detector {
        Detector::ResidualStatistics(r) => evidence.residual_features.map_or(f64::NAN, |f| r.score(f)),
        d => d.score_result(result),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Screening {
    pub verdict: Verdict,
    pub fused_score: f32,
    pub detectors: Vec<DetectorScore>,
    pub note: String,
    /// Detectors that could not score this input (a non-finite score): the policy's
    /// fail_open / fail_closed decides what happens.
    pub failed: Vec<String>,
    /// The out-of-distribution check, when the bundle has one.
    pub ood: Option<OodCheck>,
}

/// What the out-of-distribution check found.
#[derive(Debug, Clone, PartialEq)]
pub struct OodCheck {
    /// The image-statistics score (None: no [ood] model, or a header mismatch decided).
    pub score: Option<f32>,
    pub threshold: Option<f32>,
    /// Why the input is out of distribution (None: it is not).
    pub reason: Option<String>,
    /// Which evidence decided (metric label): dicom_header | colour | image_statistics.
    pub evidence: Option<&'static str>,
}

/// What screening needs besides the forward pass, computed from the input by decode and
/// preprocess.
#[derive(Debug, Clone, Copy, Default)]
pub struct Evidence<'a> {
    /// [`residual::ResidualStatistics::features`] of the [0, 1] input, for that detector.
    pub residual_features: Option<&'a [f64]>,
    /// [`ood::OodModel::image_statistics`] of the [0, 1] model input.
    pub statistics: Option<&'a [f64]>,
    /// The DICOM header's attributes (None for PNG/JPEG and tensors).
    pub dicom: Option<&'a crate::decode::DicomAttributes>,
    /// Mean chroma (max - min over R, G, B, in [0, 1]) of a decoded image, before any
    /// conversion to the model's colour mode (0 for a single-channel image; None for
    /// tensors and when the bundle does not check it).
    pub chroma: Option<f32>,
}

impl Verdict {
    /// Severity order, for "flag at SUSPICIOUS or above" and for merging the verdicts of
    /// several inputs of one request (OUT_OF_DISTRIBUTION ranks below the attack verdicts;
    /// the policy handles it with its own action).
    pub fn rank(self) -> u8 {
        match self {
            Verdict::NotScreened | Verdict::Clean => 0,
            Verdict::OutOfDistribution => 1,
            Verdict::Suspicious => 2,
            Verdict::Adversarial => 3,
        }
    }
}

#[derive(Debug, Error)]
pub enum DefenseError {
    #[error("bundle {bundle}: detector {detector} has kind {kind:?}, which this build of medsentry cannot run; refusing to serve it unscreened")]
    UnsupportedDetector { bundle: String, detector: String, kind: String },
    #[error("bundle {bundle}: detector {detector} ({file}) cannot be loaded: {message}")]
    BadDetector { bundle: String, detector: String, file: String, message: String },
    #[error("bundle {bundle}: fused detector {detector} reads detector {input:?}, which is not listed before it")]
    FusedInput { bundle: String, detector: String, input: String },
    #[error("bundle {bundle}: out-of-distribution model {file} cannot be loaded: {message}")]
    BadOod { bundle: String, file: String, message: String },
    #[error("policy disables detector {detector:?} of model {bundle}, which has only {available:?}")]
    UnknownDisabled { bundle: String, detector: String, available: Vec<String> },
    #[error("policy sets cascade = true for model {bundle}, but {reason}")]
    NoCascade { bundle: String, reason: String },
}

/// The screening configuration of one served model.
#[derive(Debug, Clone)]
pub struct Screener {
    model: String,
    detectors: Vec<(DetectorSpec, Detector)>,
    /// The [ood] model with its threshold (None: the bundle has none).
    ood: Option<(ood::OodModel, f32)>,
    /// The bundle's [accepts] (None: DICOM headers are not checked).
    accepts: Option<Accepts>,
    /// The policy's `cascade`, checked against the bundle: feature squeezing runs only for
    /// inputs the fused detector's cheap combiner cannot call clean ([`Screener::screen_cheap`]).
    cascade: bool,
}

impl Screener {
    /// The bundle's detectors, less those the policy disables (by name); with `cascade`, the
    /// bundle's cascade (an error when it has none that can run).
    pub fn for_bundle(bundle: &Bundle, disabled: &[String], cascade: bool) -> Result<Screener, DefenseError> {
        let m = &bundle.manifest;
        if let Some(d) = disabled.iter().find(|d| !m.detectors.iter().any(|s| &s.name == *d)) {
            return Err(DefenseError::UnknownDisabled {
                bundle: m.name.clone(),
                detector: d.clone(),
                available: m.detectors.iter().map(|s| s.name.clone()).collect(),
            });
        }
        let mut detectors = Vec::new();
        for spec in m.detectors.iter().filter(|s| !disabled.contains(&s.name)) {
            if !is_known_kind(&spec.kind) {
                return Err(DefenseError::UnsupportedDetector { bundle: m.name.clone(), detector: spec.name.clone(), kind: spec.kind.clone() });
            }
            let bytes = bundle.files.get(&spec.file).map(Vec::as_slice).unwrap_or_default();
            let detector = Detector::load(&spec.kind, bytes, m.outputs.feature_dim, m.labels.len()).map_err(|message| DefenseError::BadDetector {
                bundle: m.name.clone(),
                detector: spec.name.clone(),
                file: spec.file.clone(),
                message,
            })?;
            if let Some(message) = detectors::mismatch(&detector, detectors.iter().map(|(_, d)| d), (m.input.height as usize, m.input.width as usize)) {
                return Err(DefenseError::BadDetector { bundle: m.name.clone(), detector: spec.name.clone(), file: spec.file.clone(), message });
            }
            if let Detector::Fused(f) = &detector {
                // Its inputs must be scored before it: detectors listed above it, or margin.
                // One the policy disables takes the fused detector with it (the verdict is
                // then the union of the others, as without one); one the bundle lacks is an error.
                let serves = |kind: &str| detectors.iter().any(|(s, _): &(DetectorSpec, Detector)| s.kind == kind);
                let scored = |i: &String| detectors::forward_pass_input(i, serves).unwrap_or_else(|| detectors.iter().any(|(s, _)| &s.name == i));
                if let Some(missing) = f.combiner.inputs.iter().find(|i| !scored(i)) {
                    // (A vector input comes with its detector: input_provider.)
                    let provider_disabled =
                        || detectors::input_provider(missing).is_some_and(|kind| m.detectors.iter().any(|d| d.kind == kind && disabled.contains(&d.name)));
                    if disabled.contains(missing) || provider_disabled() {
                        tracing::warn!(model = %m.name, detector = %spec.name, input = %missing, "the policy disables an input of the fused detector: it does not run, and the other detectors' union sets the verdict");
                        continue;
                    }
                    return Err(DefenseError::FusedInput { bundle: m.name.clone(), detector: spec.name.clone(), input: missing.clone() });
                }
            }
            detectors.push((spec.clone(), detector));
        }
        let ood = match &m.ood {
            None => None,
            Some(spec) => {
                let bytes = bundle.files.get(&spec.file).map(Vec::as_slice).unwrap_or_default();
                let size = (m.input.height as usize, m.input.width as usize);
                let model = ood::OodModel::load(bytes, m.input.channels as usize, size, m.outputs.feature_dim).map_err(|message| DefenseError::BadOod {
                    bundle: m.name.clone(),
                    file: spec.file.clone(),
                    message,
                })?;
                Some((model, spec.threshold))
            }
        };
        let screener = Screener { model: m.name.clone(), detectors, ood, accepts: m.accepts.clone(), cascade };
        if cascade {
            screener.check_cascade().map_err(|reason| DefenseError::NoCascade { bundle: m.name.clone(), reason })?;
        }
        Ok(screener)
    }

    /// Whether the out-of-distribution check reads a decoded image's chroma ([accepts]
    /// max_chroma or min_chroma).
    pub fn checks_chroma(&self) -> bool {
        self.accepts.as_ref().is_some_and(|a| a.max_chroma.is_some() || a.min_chroma.is_some())
    }

    /// The residual-statistics detector, whose features the pipeline computes from the
    /// [0, 1] input.
    pub fn residual_statistics(&self) -> Option<&residual::ResidualStatistics> {
        self.detectors.iter().find_map(|(_, d)| match d {
            Detector::ResidualStatistics(r) => Some(r),
            _ => None,
        })
    }

    /// The out-of-distribution model, whose image statistics the pipeline computes from
    /// the [0, 1] input.
    pub fn ood_model(&self) -> Option<&ood::OodModel> {
        self.ood.as_ref().map(|(m, _)| m)
    }

    /// The out-of-distribution check alone (None: the bundle has neither [ood] nor [accepts]).
    fn check_ood(&self, result: &InferResult, evidence: &Evidence) -> Option<OodCheck> {
        if self.ood.is_none() && self.accepts.is_none() {
            return None;
        }
        let header = match (&self.accepts, evidence.dicom) {
            (Some(a), Some(d)) => ood::header_mismatch(a, d).map(|r| (r, "dicom_header")),
            _ => None,
        };
        let colour = self.accepts.as_ref().zip(evidence.chroma).and_then(|(a, c)| ood::colour_mismatch(a, c)).map(|r| (r, "colour"));
        let (score, threshold) = match (&self.ood, evidence.statistics) {
            (Some((m, t)), Some(stats)) => (Some(m.score(stats, &result.features) as f32), Some(*t)),
            _ => (None, None),
        };
        let by_pixels = match (score, threshold) {
            // (No numbers here: the reason is shown to callers who may not see scores.)
            (Some(s), Some(t)) if s > t => Some(("the image is unlike the images the model was trained on".to_string(), "image_statistics")),
            (Some(s), _) if s.is_nan() => Some(("the image statistics could not be scored".to_string(), "image_statistics")),
            _ => None,
        };
        let decided = header.or(colour).or(by_pixels);
        Some(OodCheck { score, threshold, evidence: decided.as_ref().map(|d| d.1), reason: decided.map(|d| d.0) })
    }

    /// The feature-squeezing detector, whose squeezed copies the pipeline must add to the
    /// input's batch entry.
    pub fn squeeze(&self) -> Option<&squeeze::Squeeze> {
        self.detectors.iter().find_map(|(_, d)| match d {
            Detector::FeatureSqueezing(s) => Some(s),
            _ => None,
        })
    }

    /// The verdict for one forward pass: the detectors' unless the out-of-distribution check
    /// finds the input unlike the training images.
    pub fn screen(&self, result: &InferResult, evidence: &Evidence) -> Screening {
        let s = self.screen_detectors(result, evidence);
        self.with_ood(s, result, evidence)
    }

    /// `s` with the out-of-distribution check applied: its verdict replaced when the input
    /// is unlike the training images.
    fn with_ood(&self, mut s: Screening, result: &InferResult, evidence: &Evidence) -> Screening {
        let ood = self.check_ood(result, evidence);
        if let Some(reason) = ood.as_ref().and_then(|o| o.reason.as_ref()) {
            s.verdict = Verdict::OutOfDistribution;
            let note = format!("out of distribution: {reason}; the adversarial detectors do not judge such inputs");
            s.note = if s.note.is_empty() { note } else { format!("{note}; {}", s.note) };
        }
        s.ood = ood;
        s
    }

    fn screen_detectors(&self, result: &InferResult, evidence: &Evidence) -> Screening {
        if self.detectors.is_empty() {
            return Screening {
                verdict: Verdict::NotScreened,
                fused_score: 0.0,
                detectors: Vec::new(),
                note: format!("no detector ran: bundle {} declares none or the policy disables all; this answer is unscreened", self.model),
                failed: Vec::new(),
                ood: None,
            };
        }
        let mut named: Vec<(String, f64)> = Vec::with_capacity(self.detectors.len());
        for (spec, detector) in &self.detectors {
            let score = match detector {
                Detector::Fused(f) => f.combiner.score(&named, combiner_inputs(result, evidence)),
                d => one_pass_score(d, result, evidence),
            };
            named.push((spec.name.clone(), score));
        }
        // With a fused detector that scored, only its thresholds set the verdict (the union
        // of the others flagged clean images at several times the calibrated rate); if it
        // could not score, the others decide as before.
        let fused_scored = self.detectors.iter().zip(&named).any(|((_, d), (_, s))| matches!(d, Detector::Fused(_)) && s.is_finite());
        let mut verdict = Verdict::Clean;
        let mut fused = 0f64;
        let mut failed = Vec::new();
        let scores: Vec<DetectorScore> = self
            .detectors
            .iter()
            .zip(named)
            .map(|((spec, detector), (_, score))| {
                if !score.is_finite() {
                    // NaN features or an overflowing formula: this detector has no opinion.
                    failed.push(spec.name.clone());
                    return DetectorScore::of(spec, score, false);
                }
                let fired = score > spec.threshold as f64;
                if !fused_scored || matches!(detector, Detector::Fused(_)) {
                    if fired {
                        verdict = Verdict::Adversarial;
                    } else if verdict == Verdict::Clean && spec.suspicious_threshold.is_some_and(|t| score > t as f64) {
                        verdict = Verdict::Suspicious;
                    }
                    fused = fused.max(score / spec.threshold as f64);
                }
                DetectorScore::of(spec, score, fired)
            })
            .collect();
        if failed.len() == scores.len() {
            verdict = Verdict::NotScreened;
        }
        let note = if failed.is_empty() { String::new() } else { format!("detector(s) {} could not score this input", failed.join(", ")) };
        Screening { verdict, fused_score: fused as f32, detectors: scores, note, failed, ood: None }
    }
}

#[cfg(test)]
mod tests;
