//! batcher: a bounded queue between the API and the engine that forms dynamic batches.
//!
//! [`BatcherHandle`] is cheap to clone. Admission takes a semaphore permit, so a full queue
//! answers at once with [`BatchError::QueueFull`] (RESOURCE_EXHAUSTED) instead of growing;
//! the permit travels with the entry and is released when the entry is answered. One owner
//! task ([`queue::run`]) batches whatever is waiting, up to the bundle's max batch (optionally waiting a bounded delay for a fuller batch), skips
//! callers that went away and answers expired deadlines without running them.

mod queue;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::engine::{Batch, BatchError, Entry, InferResult};

#[derive(Clone)]
pub struct BatcherHandle {
    model: Arc<str>,
    /// Groups of entries: a multi-item request's entries arrive together, so they join the
    /// same batch when it has room.
    tx: mpsc::UnboundedSender<Vec<Entry>>,
    permits: Arc<Semaphore>,
    capacity: usize,
    /// Entries submitted and not yet taken into a batch (the queue-depth gauge).
    waiting: Arc<AtomicUsize>,
}

impl BatcherHandle {
    /// Creates the queue and spawns its owner task; batches go to `batches` (capacity 1:
    /// one batch is prepared while the workers run the previous one).
    /// `max_delay` > 0 lets a batch smaller than `max_batch` wait that long for company.
    pub fn start(model: &str, capacity: usize, max_batch: usize, max_delay: std::time::Duration) -> (BatcherHandle, mpsc::Receiver<Batch>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (batch_tx, batch_rx) = mpsc::channel(1);
        let waiting = Arc::new(AtomicUsize::new(0));
        let handle = BatcherHandle { model: Arc::from(model), tx, permits: Arc::new(Semaphore::new(capacity)), capacity, waiting: waiting.clone() };
        tokio::spawn(queue::run(model.to_string(), rx, batch_tx, max_batch, max_delay, waiting));
        (handle, batch_rx)
    }

    /// Queues one input and waits for its result (or the deadline).
    pub async fn infer(&self, input: Vec<f32>, deadline: Option<Instant>) -> Result<InferResult, BatchError> {
        self.infer_rows(input, 1, deadline).await
    }

    /// Queues `rows` inputs laid out contiguously that must run in one batch (one admission
    /// permit); row 0's logits and features come back with the others' logits.
    pub async fn infer_rows(&self, input: Vec<f32>, rows: usize, deadline: Option<Instant>) -> Result<InferResult, BatchError> {
        let permit = self.permits.clone().try_acquire_owned().map_err(|_| self.full())?;
        let enqueued = Instant::now();
        let (reply, rx) = oneshot::channel();
        self.send(vec![Entry { input, rows: rows.max(1), enqueued, deadline, reply, _permit: permit }])?;
        self.answer(rx, enqueued, deadline).await
    }

    /// Queues several entries (each `(input, rows)` as for [`Self::infer_rows`], one permit
    /// each) in one message, so the batcher sees them at once and puts them in one batch
    /// when it has room; answers each entry's result in order. Admission is all or nothing.
    pub async fn infer_group(&self, items: Vec<(Vec<f32>, usize)>, deadline: Option<Instant>) -> Result<Vec<Result<InferResult, BatchError>>, BatchError> {
        let n = u32::try_from(items.len()).map_err(|_| self.full())?;
        let mut permits = self.permits.clone().try_acquire_many_owned(n).map_err(|_| self.full())?;
        let enqueued = Instant::now();
        let (entries, replies): (Vec<Entry>, Vec<_>) = items
            .into_iter()
            .map(|(input, rows)| {
                let (reply, rx) = oneshot::channel();
                let permit = permits.split(1).expect("one permit per entry");
                (Entry { input, rows: rows.max(1), enqueued, deadline, reply, _permit: permit }, rx)
            })
            .unzip();
        self.send(entries)?;
        let mut results = Vec::with_capacity(replies.len());
        for rx in replies {
            results.push(self.answer(rx, enqueued, deadline).await);
        }
        Ok(results)
    }

    fn full(&self) -> BatchError {
        BatchError::QueueFull { model: self.model.to_string(), capacity: self.capacity }
    }

    /// Hands entries to the owner task, counted as waiting until it takes them.
    fn send(&self, entries: Vec<Entry>) -> Result<(), BatchError> {
        let count = entries.len();
        self.waiting.fetch_add(count, Ordering::Relaxed);
        self.tx.send(entries).map_err(|_| {
            self.waiting.fetch_sub(count, Ordering::Relaxed);
            BatchError::Closed(self.model.to_string())
        })
    }

    /// An entry's result, or DEADLINE_EXCEEDED once the caller's deadline passes.
    async fn answer(
        &self,
        rx: oneshot::Receiver<Result<InferResult, BatchError>>,
        enqueued: Instant,
        deadline: Option<Instant>,
    ) -> Result<InferResult, BatchError> {
        let closed = || BatchError::Closed(self.model.to_string());
        match deadline {
            None => rx.await.unwrap_or_else(|_| Err(closed())),
            Some(d) => match tokio::time::timeout_at(d.into(), rx).await {
                Ok(r) => r.unwrap_or_else(|_| Err(closed())),
                Err(_) => Err(BatchError::DeadlineExceeded { waited_ms: enqueued.elapsed().as_millis() as u64 }),
            },
        }
    }

    /// Requests admitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.capacity - self.permits.available_permits()
    }
}
