//! defense: turns the classifier's features and logits into a screening verdict.
//!
//! This layer is where the bundle's detectors (deep-feature detector, Mahalanobis, feature
//! squeezing) plug in. A bundle that lists a detector this build cannot run is refused at
//! start-up: an input must never be reported CLEAN by a detector that did not run. A bundle
//! with no detectors is served with every answer saying plainly that nothing screened it.

use thiserror::Error;

use crate::batcher::InferResult;
use crate::bundle::Bundle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    NotScreened,
    Clean,
    Suspicious,
    Adversarial,
}

impl Verdict {
    /// Label value used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::NotScreened => "not_screened",
            Verdict::Clean => "clean",
            Verdict::Suspicious => "suspicious",
            Verdict::Adversarial => "adversarial",
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

#[derive(Debug, Clone, PartialEq)]
pub struct Screening {
    pub verdict: Verdict,
    pub fused_score: f32,
    pub detectors: Vec<DetectorScore>,
    pub note: String,
}

#[derive(Debug, Error)]
pub enum DefenseError {
    #[error("bundle {bundle}: detector {detector} has kind {kind:?}, which this build of medsentry cannot run; refusing to serve it unscreened")]
    UnsupportedDetector { bundle: String, detector: String, kind: String },
}

/// The screening configuration of one served model.
#[derive(Debug, Clone)]
pub struct Screener {
    model: String,
}

impl Screener {
    pub fn for_bundle(bundle: &Bundle) -> Result<Screener, DefenseError> {
        if let Some(d) = bundle.manifest.detectors.first() {
            return Err(DefenseError::UnsupportedDetector {
                bundle: bundle.name().to_string(),
                detector: d.name.clone(),
                kind: d.kind.clone(),
            });
        }
        Ok(Screener { model: bundle.name().to_string() })
    }

    pub fn screen(&self, _result: &InferResult) -> Screening {
        Screening {
            verdict: Verdict::NotScreened,
            fused_score: 0.0,
            detectors: Vec::new(),
            note: format!("no detector ran: bundle {} declares no detectors; this answer is unscreened", self.model),
        }
    }
}
