//! refusal: why the policy refused an input: rejected as flagged, or failed closed because a
//! detector could not score it or the flagged input could not be quarantined.

use thiserror::Error;

use crate::defense::{DetectorScore, Verdict};

#[derive(Debug, Error)]
pub enum Refusal {
    #[error("{}", .0.message())]
    Rejected(Box<Rejection>),
    #[error("model {model}: detector(s) {} could not score this input and the policy is fail_closed", .detectors.join(", "))]
    DetectorFailed { model: String, detectors: Vec<String> },
    #[error("model {model}: the flagged input could not be quarantined ({message}) and the policy is fail_closed")]
    QuarantineFailed { model: String, message: String },
}

/// A flagged input refused by a `reject` policy: what fired and by how much.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub model: String,
    pub verdict: Verdict,
    pub fused_score: f32,
    pub detectors: Vec<DetectorScore>,
    /// Set when the input was also quarantined.
    pub quarantine_id: Option<String>,
    /// Set by the API layer for a caller who may not see scores (the policy's
    /// [disclosure]): the message and error details then name the detectors that fired only.
    pub scores_withheld: bool,
    /// Why the input is OUT_OF_DISTRIBUTION, when that is the verdict refused.
    pub out_of_distribution: Option<String>,
}

impl Rejection {
    pub fn message(&self) -> String {
        let kept = self.quarantine_id.as_ref().map(|id| format!("; quarantined as {id}")).unwrap_or_default();
        if let Some(reason) = &self.out_of_distribution {
            return format!("input rejected by policy of model {}: verdict OUT_OF_DISTRIBUTION: {reason}{kept}", self.model);
        }
        let over = self.detectors.iter().filter(|d| d.fired || d.score > d.threshold);
        let fired: Vec<String> = if self.scores_withheld {
            over.map(|d| format!("{} fired", d.name)).collect()
        } else {
            over.map(|d| format!("{} scored {:.4} > threshold {:.4} ({:.2}x)", d.name, d.score, d.threshold, d.score / d.threshold)).collect()
        };
        let fired = if fired.is_empty() { "no detector over its ADVERSARIAL threshold (flagged at SUSPICIOUS)".to_string() } else { fired.join("; ") };
        let verdict = self.verdict.as_str().to_uppercase();
        if self.scores_withheld {
            return format!("input rejected by policy of model {}: verdict {verdict}: {fired}{kept}", self.model);
        }
        format!("input rejected by policy of model {}: verdict {verdict}, fused score {:.3}: {fired}{kept}", self.model, self.fused_score)
    }
}
