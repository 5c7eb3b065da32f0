//! The one conversion from the pipeline's errors to a gRPC status, plus the stable
//! `reason` label each error carries into `medsentry_errors_total`.

use std::collections::HashMap;

use tonic::metadata::MetadataMap;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::decode::DecodeError;
use crate::engine::BatchError;
use crate::engine::EngineError;
use crate::pipeline::PipelineError;
use crate::policy::Refusal;

impl PipelineError {
    /// For a caller who may not see scores: a rejection's message and details name the
    /// detectors that fired, without their scores and thresholds.
    pub fn withhold_scores(mut self, withhold: bool) -> Self {
        if let PipelineError::Refused(Refusal::Rejected(r)) = &mut self {
            r.scores_withheld = withhold;
        }
        self
    }

    pub fn code(&self) -> Code {
        match self {
            PipelineError::UnknownModel { .. } => Code::NotFound,
            PipelineError::NotReady(_) => Code::Unavailable,
            PipelineError::NoInput => Code::InvalidArgument,
            PipelineError::Decode(DecodeError::BudgetExhausted { .. }) => Code::ResourceExhausted,
            PipelineError::Decode(DecodeError::Cancelled) => Code::Cancelled,
            PipelineError::Decode(DecodeError::DeadlineExceeded) => Code::DeadlineExceeded,
            PipelineError::Decode(_) => Code::InvalidArgument,
            PipelineError::Batch(BatchError::QueueFull { .. }) => Code::ResourceExhausted,
            PipelineError::Batch(BatchError::DeadlineExceeded { .. }) => Code::DeadlineExceeded,
            PipelineError::Batch(BatchError::Closed(_)) => Code::Unavailable,
            PipelineError::Batch(BatchError::Engine(EngineError::WorkerGone)) => Code::Unavailable,
            PipelineError::Batch(BatchError::Engine(_)) => Code::Internal,
            PipelineError::Refused(Refusal::Rejected(_)) => Code::PermissionDenied,
            PipelineError::Refused(Refusal::DetectorFailed { .. }) => Code::Internal,
            PipelineError::Refused(Refusal::QuarantineFailed { .. }) => Code::Unavailable,
            PipelineError::Internal(_) => Code::Internal,
            PipelineError::InvalidRequest { .. } => Code::InvalidArgument,
            PipelineError::Upstream(e) => e.code(),
            PipelineError::Access(crate::access::AccessError::Unauthenticated(_)) => Code::Unauthenticated,
            PipelineError::Access(_) => Code::PermissionDenied,
        }
    }

    /// The verdict label of a refused request: a rejection keeps the verdict that caused it
    /// (so that dashboards counting verdicts see rejected attacks), other refusals "none".
    pub fn verdict_label(&self) -> &'static str {
        match self {
            PipelineError::Refused(Refusal::Rejected(r)) => r.verdict.as_str(),
            _ => "none",
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            PipelineError::UnknownModel { .. } => "unknown_model",
            PipelineError::NotReady(_) => "model_not_ready",
            PipelineError::NoInput => "no_input",
            PipelineError::Decode(e) => e.reason(),
            PipelineError::Batch(BatchError::QueueFull { .. }) => "queue_full",
            PipelineError::Batch(BatchError::DeadlineExceeded { .. }) => "deadline_exceeded",
            PipelineError::Batch(BatchError::Closed(_)) => "shutting_down",
            PipelineError::Batch(BatchError::Engine(_)) => "inference_failed",
            PipelineError::Refused(Refusal::Rejected(r)) if r.out_of_distribution.is_some() => "out_of_distribution_rejected",
            PipelineError::Refused(Refusal::Rejected(_)) => "rejected_by_policy",
            PipelineError::Refused(Refusal::DetectorFailed { .. }) => "detector_failed",
            PipelineError::Refused(Refusal::QuarantineFailed { .. }) => "quarantine_failed",
            PipelineError::Internal(_) => "internal",
            PipelineError::InvalidRequest { reason, .. } => reason,
            PipelineError::Upstream(e) => e.reason(),
            PipelineError::Access(e) => e.reason(),
        }
    }
}

impl From<PipelineError> for Status {
    fn from(e: PipelineError) -> Status {
        let mut metadata = MetadataMap::new();
        if let Ok(v) = e.reason().parse() {
            // Machine-readable reason for clients that branch on it.
            metadata.insert("medsentry-reason", v);
        }
        // google.rpc.ErrorInfo (richer error model): the reason and, for a rejection, what
        // fired and by how much, as key/value pairs a client can read without parsing text.
        let mut info = HashMap::new();
        if let PipelineError::Refused(Refusal::Rejected(r)) = &e {
            info.insert("model".to_string(), r.model.clone());
            info.insert("verdict".to_string(), r.verdict.as_str().to_string());
            if !r.scores_withheld {
                info.insert("fused_score".to_string(), format!("{:.6}", r.fused_score));
            }
            for d in &r.detectors {
                if !r.scores_withheld {
                    info.insert(format!("detector.{}.score", d.name), format!("{:.6}", d.score));
                    info.insert(format!("detector.{}.threshold", d.name), format!("{:.6}", d.threshold));
                }
                info.insert(format!("detector.{}.fired", d.name), d.fired.to_string());
            }
            if let Some(id) = &r.quarantine_id {
                info.insert("quarantine_id".to_string(), id.clone());
            }
        }
        if let PipelineError::Upstream(u) = &e {
            info.insert("upstream".to_string(), u.addr().to_string());
        }
        let details = ErrorDetails::with_error_info(e.reason().to_uppercase(), "medsentry", info);
        Status::with_error_details_and_metadata(e.code(), e.to_string(), details, metadata)
    }
}

/// Metric label of a status code.
pub fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::InvalidArgument => "invalid_argument",
        Code::NotFound => "not_found",
        Code::ResourceExhausted => "resource_exhausted",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::Unavailable => "unavailable",
        Code::Cancelled => "cancelled",
        Code::PermissionDenied => "permission_denied",
        // Codes only an upstream server answers with (proxy mode passes them through).
        Code::Unimplemented => "unimplemented",
        Code::FailedPrecondition => "failed_precondition",
        Code::Unauthenticated => "unauthenticated",
        Code::OutOfRange => "out_of_range",
        Code::Unknown => "unknown",
        _ => "internal",
    }
}
