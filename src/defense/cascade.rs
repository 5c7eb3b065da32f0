//! cascade: the cheap first look of a bundle whose fused detector has a cascade. Feature
//! squeezing costs two extra forward passes per input; the cascade's combiner reads only
//! the scores of one pass (the other detectors and the margin), and an input it scores
//! under `skip_below` is answered CLEAN without the squeezed copies. The pipeline runs the
//! copies, and the full verdict, only for the others. The fused stage chooses `skip_below`
//! on AdvTrain so that about 1 % of what the full verdict flags would be skipped, and
//! measures the effect on AdvTest (README "Cascade").

use super::detectors::{Cascade, Detector};
use super::{one_pass_score, DetectorScore, Evidence, Screener, Screening, Verdict};
use crate::bundle::DetectorSpec;
use crate::engine::InferResult;

impl Screener {
    /// Whether this model screens with the cascade (the policy's `cascade`).
    pub fn cascades(&self) -> bool {
        self.cascade
    }

    fn fused_cascade(&self) -> Option<(&DetectorSpec, &Cascade)> {
        self.detectors.iter().find_map(|(spec, d)| match d {
            Detector::Fused(f) => f.cascade.as_ref().map(|c| (spec, c)),
            _ => None,
        })
    }

    /// Why the cascade cannot run on this bundle as served (start-up refuses it then).
    pub(super) fn check_cascade(&self) -> Result<(), String> {
        let Some((_, cascade)) = self.fused_cascade() else {
            return Err("its fused detector has no cascade (re-run the fused stage) or the policy disables it".into());
        };
        if self.squeeze().is_none() {
            return Err("it serves no feature-squeezing detector, so there is nothing for the cascade to skip".into());
        }
        let cheap = |name: &String| {
            // No squeezed copies: the cascade decides before they are made.
            let serves = |kind: &str| kind == "residual_statistics" && self.residual_statistics().is_some();
            super::detectors::forward_pass_input(name, serves)
                .unwrap_or_else(|| self.detectors.iter().any(|(s, d)| &s.name == name && !matches!(d, Detector::FeatureSqueezing(_) | Detector::Fused(_))))
        };
        match cascade.combiner.inputs.iter().find(|i| !cheap(i)) {
            Some(i) => Err(format!("the cascade reads {i:?}, which is not a served detector scored from one forward pass")),
            None => Ok(()),
        }
    }

    /// The cascade's answer from one forward pass (`result` without squeezed copies): a
    /// CLEAN screening (the out-of-distribution check applied) when the cheap score is under
    /// `skip_below`; None when the input needs the full verdict (the score is at or over it,
    /// or an input of the cheap score could not be scored).
    pub fn screen_cheap(&self, result: &InferResult, evidence: &Evidence) -> Option<Screening> {
        if !self.cascade {
            return None;
        }
        let (fused_spec, cascade) = self.fused_cascade()?;
        let mut named: Vec<(String, f64)> = Vec::new();
        let mut detectors = Vec::new();
        for (spec, detector) in &self.detectors {
            if matches!(detector, Detector::FeatureSqueezing(_) | Detector::Fused(_)) {
                continue;
            }
            let score = one_pass_score(detector, result, evidence);
            if !score.is_finite() {
                return None;
            }
            named.push((spec.name.clone(), score));
            detectors.push(DetectorScore::of(spec, score, score > spec.threshold as f64));
        }
        let cheap = cascade.combiner.score(&named, super::combiner_inputs(result, evidence));
        if cheap.is_nan() || cheap >= cascade.skip_below {
            return None;
        }
        let screening = Screening {
            verdict: Verdict::Clean,
            // On the scale of a full answer (the fused score over its ADVERSARIAL threshold).
            fused_score: (cheap / fused_spec.threshold as f64) as f32,
            detectors,
            note: format!("cascade: cheap score {cheap:.3} under {:.3}; feature squeezing and the fused detector did not run", cascade.skip_below),
            failed: Vec::new(),
            ood: None,
        };
        Some(self.with_ood(screening, result, evidence))
    }
}
