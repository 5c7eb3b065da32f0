//! The batcher's owner task: drains the queue into batches of at most `max_batch`.
//!
//! It reserves a slot in the worker channel (capacity 1) before it forms a batch, so a
//! batch is assembled only when it can be handed over: while the workers run one batch and
//! the next waits in the channel, new requests stay queued, where callers that went away
//! and expired deadlines are still caught and where the following batch grows.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::engine::{Batch, BatchError, Entry};
use crate::metrics;

pub(super) async fn run(
    model: String,
    mut rx: mpsc::UnboundedReceiver<Vec<Entry>>,
    batches: mpsc::Sender<Batch>,
    max_batch: usize,
    max_delay: Duration,
    waiting_count: Arc<AtomicUsize>,
) {
    let mut waiting: VecDeque<Entry> = VecDeque::new();
    loop {
        let Ok(slot) = batches.reserve().await else { break };
        if waiting.is_empty() {
            match rx.recv().await {
                Some(group) => waiting.extend(group),
                None => break,
            }
        }
        // Take everything that arrived meanwhile.
        while let Ok(group) = rx.try_recv() {
            waiting.extend(group);
        }
        // With a delay configured, let a short batch fill for at most `max_delay` counted
        // from its oldest entry's arrival (Triton's max_queue_delay); otherwise run it now.
        if !max_delay.is_zero() && waiting.len() < max_batch {
            let until = waiting.front().map(|e| e.enqueued + max_delay).unwrap_or_else(Instant::now);
            while waiting.len() < max_batch {
                match tokio::time::timeout_at(until.into(), rx.recv()).await {
                    Ok(Some(group)) => waiting.extend(group),
                    Ok(None) | Err(_) => break,
                }
            }
        }
        let now = Instant::now();
        let mut entries = Vec::with_capacity(max_batch.min(waiting.len()));
        let mut rows = 0;
        while rows < max_batch {
            // An entry's rows stay together; one larger than max_batch runs alone.
            if rows > 0 && waiting.front().is_some_and(|e| rows + e.rows > max_batch) {
                break;
            }
            let Some(entry) = waiting.pop_front() else { break };
            waiting_count.fetch_sub(1, Ordering::Relaxed);
            if entry.caller_gone() {
                metrics::record_skipped(&model, "caller_gone");
                continue;
            }
            if entry.deadline.is_some_and(|d| d <= now) {
                metrics::record_skipped(&model, "deadline_exceeded");
                let waited_ms = (now - entry.enqueued).as_millis() as u64;
                entry.answer(Err(BatchError::DeadlineExceeded { waited_ms }));
                continue;
            }
            rows += entry.rows;
            entries.push(entry);
        }
        metrics::set_queue_depth(&model, waiting_count.load(Ordering::Relaxed));
        if entries.is_empty() {
            continue;
        }
        let mut input = Vec::with_capacity(entries.iter().map(|e| e.input.len()).sum());
        for e in &mut entries {
            input.append(&mut e.input);
        }
        slot.send(Batch { entries, input, rows });
    }
    // Queue closed or workers gone: answer whatever is left rather than dropping it.
    for e in waiting.drain(..) {
        e.answer(Err(BatchError::Closed(model.clone())));
    }
}
