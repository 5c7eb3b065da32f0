//! enforce: applies a model's policy to one screened input, after the detectors and the
//! campaign monitor: detector failures follow fail_open / fail_closed; a flagged input is
//! quarantined (de-identified, fsynced before the answer), annotated or rejected; shadow
//! mode records every action in metrics and in the answer's `action` but changes no
//! answer.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::{Action, FailureMode, ModelPolicy, Refusal, Rejection};
use crate::bundle::Bundle;
use crate::decode::Input;
use crate::defense::{CampaignStatus, Screening};
use crate::metrics;
use crate::quarantine::{self, QuarantineError, QuarantineStore, Record, RecordedScore, Stored};

/// Who sent an input, for the quarantine record of a flagged one.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The caller's request id (records keep only its sha256).
    pub request_id: &'a str,
    /// The caller's name from the policy's `[access]` (`anonymous` when no rule names it;
    /// the command line's own name for `screen` and `eval`).
    pub caller: &'a str,
}

/// The served model whose policy is applied: what a quarantine record names, the policy,
/// and where flagged inputs are kept.
#[derive(Clone, Copy)]
pub struct Subject<'a> {
    pub bundle: &'a Bundle,
    pub policy: &'a ModelPolicy,
    /// None when no policy quarantines.
    pub quarantine: Option<&'a Arc<QuarantineStore>>,
}

/// What the policy did, for the answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Enforced {
    /// "" when the input was not flagged; else e.g. "annotate", "quarantine,annotate",
    /// "shadow:quarantine,reject".
    pub action: String,
    pub quarantine_id: Option<String>,
}

pub async fn enforce(
    model: Subject<'_>,
    input: Input,
    screening: &mut Screening,
    campaign: Option<CampaignStatus>,
    origin: Origin<'_>,
) -> Result<Enforced, Refusal> {
    let policy = model.policy;
    let name = model.bundle.name();
    let fail_closed = policy.on_failure == FailureMode::FailClosed;
    if !screening.failed.is_empty() {
        screening.failed.iter().for_each(|d| metrics::record_detector_failure(name, d));
        metrics::record_policy_action(name, if fail_closed { "fail_closed" } else { "fail_open" }, policy.shadow);
        if fail_closed && !policy.shadow {
            return Err(Refusal::DetectorFailed { model: name.to_string(), detectors: screening.failed.clone() });
        }
    }
    if let Some(evidence) = screening.ood.as_ref().and_then(|o| o.evidence) {
        metrics::record_out_of_distribution(name, evidence);
    }
    let Some(verdict_action) = policy.action_for(screening.verdict) else {
        return Ok(Enforced::default());
    };
    metrics::record_flagged(name, screening.verdict.as_str());
    let mut actions = Vec::new();
    let mut quarantine_id = None;
    let reject = policy.rejects(verdict_action);
    if verdict_action == Action::Quarantine {
        let decided = if reject { "reject" } else { "annotate" };
        match keep(model, input, screening, campaign, origin, decided).await {
            Ok(stored) => {
                metrics::record_quarantine_write(name, if stored.duplicate { "duplicate" } else { "written" });
                metrics::record_policy_action(name, "quarantine", policy.shadow);
                actions.push("quarantine");
                quarantine_id = Some(stored.id);
            }
            Err(e) => {
                metrics::record_quarantine_failure(name, e.reason());
                metrics::record_policy_action(name, if fail_closed { "fail_closed" } else { "fail_open" }, policy.shadow);
                tracing::error!(model = name, error = %crate::logging::escaped(&e), "quarantine write failed");
                if fail_closed && !policy.shadow {
                    return Err(Refusal::QuarantineFailed { model: name.to_string(), message: e.to_string() });
                }
                push_note(screening, &format!("quarantine failed ({e}); answered under fail_open"));
            }
        }
    }
    metrics::record_policy_action(name, if reject { "reject" } else { "annotate" }, policy.shadow);
    actions.push(if reject { "reject" } else { "annotate" });
    let action = format!("{}{}", if policy.shadow { "shadow:" } else { "" }, actions.join(","));
    if reject && !policy.shadow {
        return Err(Refusal::Rejected(Box::new(Rejection {
            model: name.to_string(),
            verdict: screening.verdict,
            fused_score: screening.fused_score,
            detectors: screening.detectors.clone(),
            quarantine_id,
            scores_withheld: false,
            out_of_distribution: screening
                .ood
                .as_ref()
                .and_then(|o| o.reason.clone())
                .filter(|_| screening.verdict == crate::defense::Verdict::OutOfDistribution),
        })));
    }
    if reject {
        push_note(screening, "shadow mode: the policy would have rejected this input");
    }
    Ok(Enforced { action, quarantine_id })
}

fn push_note(screening: &mut Screening, note: &str) {
    if !screening.note.is_empty() {
        screening.note.push_str("; ");
    }
    screening.note.push_str(note);
}

/// De-identifies (DICOM) and writes the input with its record, off the async workers.
async fn keep(
    model: Subject<'_>,
    input: Input,
    screening: &Screening,
    campaign: Option<CampaignStatus>,
    origin: Origin<'_>,
    decided: &str,
) -> Result<Stored, QuarantineError> {
    let Some(store) = model.quarantine.cloned() else {
        return Err(QuarantineError::Io { path: "<none>".into(), source: std::io::Error::other("no quarantine store configured") });
    };
    let m = &model.bundle.manifest;
    let record = Record {
        id: String::new(),
        object: String::new(),
        bytes: 0,
        received_unix_ms: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
        input_kind: String::new(),
        deidentified: false,
        burned_in_annotation: false,
        model: m.name.clone(),
        model_version: m.version.clone(),
        classifier_sha256: model.bundle.classifier_sha256().to_string(),
        verdict: screening.verdict.as_str().to_string(),
        fused_score: screening.fused_score,
        detectors: screening.detectors.iter().map(|d| RecordedScore { name: d.name.clone(), score: d.score, threshold: d.threshold, fired: d.fired }).collect(),
        campaign_alarm: campaign.is_some_and(|c| c.alarm()),
        policy: format!("{}{decided}", if model.policy.shadow { "shadow:" } else { "" }),
        request_id_sha256: hex::encode(Sha256::digest(origin.request_id.as_bytes())),
        caller: origin.caller.to_string(),
    };
    tokio::task::spawn_blocking(move || {
        let form = quarantine::stored_form(&input, store.uid_salt())?;
        let record = Record { input_kind: form.kind.to_string(), deidentified: form.deidentified, burned_in_annotation: form.burned_in_annotation, ..record };
        store.put(&form.bytes, form.ext, record)
    })
    .await
    .map_err(|e| QuarantineError::Io { path: "<task>".into(), source: std::io::Error::other(e.to_string()) })?
}
