//! engine::batch: what the engine runs and what it answers. The batcher queues [`Entry`]s
//! and hands them over as a [`Batch`]; each entry is answered with its [`InferResult`] or a
//! [`BatchError`] through the reply channel it carries.

use std::time::Instant;

use thiserror::Error;
use tokio::sync::{oneshot, OwnedSemaphorePermit};

use super::EngineError;

#[derive(Debug, Error, Clone)]
pub enum BatchError {
    #[error("model {model}: queue is full ({capacity} requests waiting or running); retry with backoff")]
    QueueFull { model: String, capacity: usize },
    #[error("deadline expired after {waited_ms} ms in the queue, before inference")]
    DeadlineExceeded { waited_ms: u64 },
    #[error("model {0} is shutting down")]
    Closed(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// What the engine answers for one input.
#[derive(Debug, Clone)]
pub struct InferResult {
    pub logits: Vec<f32>,
    pub features: Vec<f32>,
    /// Logits of the entry's extra rows (feature squeezing's squeezed copies), in order.
    pub extra_logits: Vec<Vec<f32>>,
    /// Penultimate features of the same rows (the fused detector reads how far they move).
    pub extra_features: Vec<Vec<f32>>,
    pub queue_seconds: f64,
    pub infer_seconds: f64,
    pub batch_size: usize,
}

/// One queued input with its reply channel.
pub struct Entry {
    /// Normalised input: `rows` items of C * H * W values. Row 0 is the request's input;
    /// further rows (squeezed copies for feature squeezing) run in the same batch.
    pub input: Vec<f32>,
    pub rows: usize,
    pub enqueued: Instant,
    /// The caller's deadline (grpc-timeout); past it the entry is answered, not run.
    pub deadline: Option<Instant>,
    pub(crate) reply: oneshot::Sender<Result<InferResult, BatchError>>,
    /// Held until the entry is answered: bounds queued + running requests.
    pub(crate) _permit: OwnedSemaphorePermit,
}

impl Entry {
    pub fn answer(self, result: Result<InferResult, BatchError>) {
        // The caller may have gone away meanwhile; nothing to do then.
        let _ = self.reply.send(result);
    }

    pub(crate) fn caller_gone(&self) -> bool {
        self.reply.is_closed()
    }
}

/// A batch handed to a worker: entries plus their inputs laid out contiguously.
pub struct Batch {
    pub entries: Vec<Entry>,
    pub input: Vec<f32>,
    /// Rows in `input` (the sum of the entries' rows).
    pub rows: usize,
}
