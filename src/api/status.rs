//! The one conversion from the pipeline's errors to a gRPC status, plus the stable
//! `reason` label each error carries into `medsentry_errors_total`.

use tonic::{Code, Status};

use crate::batcher::BatchError;
use crate::decode::DecodeError;
use crate::engine::EngineError;
use crate::pipeline::PipelineError;

impl PipelineError {
    pub fn code(&self) -> Code {
        match self {
            PipelineError::UnknownModel { .. } => Code::NotFound,
            PipelineError::NotReady(_) => Code::Unavailable,
            PipelineError::NoInput => Code::InvalidArgument,
            PipelineError::Decode(DecodeError::TooLarge { .. }) => Code::InvalidArgument,
            PipelineError::Decode(_) => Code::InvalidArgument,
            PipelineError::Batch(BatchError::QueueFull { .. }) => Code::ResourceExhausted,
            PipelineError::Batch(BatchError::DeadlineExceeded { .. }) => Code::DeadlineExceeded,
            PipelineError::Batch(BatchError::Closed(_)) => Code::Unavailable,
            PipelineError::Batch(BatchError::Engine(EngineError::WorkerGone)) => Code::Unavailable,
            PipelineError::Batch(BatchError::Engine(_)) => Code::Internal,
            PipelineError::Internal(_) => Code::Internal,
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
            PipelineError::Internal(_) => "internal",
        }
    }
}

impl From<PipelineError> for Status {
    fn from(e: PipelineError) -> Status {
        let code = e.code();
        let mut status = Status::new(code, e.to_string());
        if let Ok(v) = e.reason().parse() {
            // Machine-readable reason for clients that branch on it.
            status.metadata_mut().insert("medsentry-reason", v);
        }
        status
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
        _ => "internal",
    }
}
