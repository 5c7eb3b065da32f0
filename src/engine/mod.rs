//! engine: ONNX Runtime sessions of the bundles' classifiers on worker threads.
//!
//! Each worker thread owns one session and takes assembled batches from the batcher; the
//! forward pass yields logits and penultimate features together, so the detectors need no
//! second pass.

mod batch;
mod provider;
pub mod runtime;
mod session;
pub mod stats;
mod workers;

use thiserror::Error;

pub use batch::{Batch, BatchError, Entry, InferResult};
pub use provider::{Device, ExecutionProvider};
pub use session::{BatchOutput, ModelSession};
pub use stats::InferenceStats;
pub use workers::{spawn_workers, WorkerConfig};

#[derive(Debug, Error, Clone)]
pub enum EngineError {
    #[error("{0}")]
    Runtime(String),
    #[error("{0}")]
    Device(String),
    #[error("model {model}: could not open classifier.onnx: {message}")]
    Session { model: String, message: String },
    #[error("model {model}: classifier.onnx does not match bundle.toml: {message}")]
    GraphMismatch { model: String, message: String },
    #[error("inference failed: {0}")]
    Run(String),
    #[error("the inference worker stopped")]
    WorkerGone,
}
