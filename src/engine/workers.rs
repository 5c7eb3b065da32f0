//! Worker threads: open a session each, run the warm-up batch, then serve batches until the
//! batcher's channel closes.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::{Batch, InferResult};
use crate::bundle::Bundle;
use crate::metrics;

use super::{Device, EngineError, ExecutionProvider, InferenceStats, ModelSession};

#[derive(Debug, Clone, Copy)]
pub struct WorkerConfig {
    /// Session threads per worker (ONNX Runtime intra-op threads; 0 = its default).
    pub intra_threads: usize,
    /// Worker threads (sessions) per model.
    pub workers: usize,
    pub device: Device,
    /// Times the warm-up batch (max_batch zeros) runs before the model reports ready.
    pub warmup_runs: usize,
}

/// Starts `cfg.workers` threads for `bundle`. The returned receiver yields once every
/// worker has opened its session and run its warm-up, or with the first error.
pub fn spawn_workers(
    bundle: Arc<Bundle>,
    cfg: WorkerConfig,
    batches: mpsc::Receiver<Batch>,
    stats: Arc<InferenceStats>,
) -> oneshot::Receiver<Result<ExecutionProvider, EngineError>> {
    let batches = Arc::new(Mutex::new(batches));
    let (ready_tx, ready_rx) = oneshot::channel();
    let (each_tx, mut each_rx) = mpsc::channel(cfg.workers.max(1));
    for i in 0..cfg.workers.max(1) {
        let (bundle, batches, each_tx, stats) = (bundle.clone(), batches.clone(), each_tx.clone(), stats.clone());
        std::thread::Builder::new()
            .name(format!("infer-{}-{i}", bundle.name()))
            .spawn(move || worker_main(bundle, cfg, batches, each_tx, stats))
            .expect("spawning an inference thread");
    }
    drop(each_tx);
    let workers = cfg.workers.max(1);
    tokio::spawn(async move {
        let mut provider = ExecutionProvider::Cpu;
        for _ in 0..workers {
            match each_rx.recv().await {
                Some(Ok(p)) => provider = p,
                Some(Err(e)) => return ready_tx.send(Err(e)),
                None => return ready_tx.send(Err(EngineError::WorkerGone)),
            }
        }
        ready_tx.send(Ok(provider))
    });
    ready_rx
}

fn worker_main(
    bundle: Arc<Bundle>,
    cfg: WorkerConfig,
    batches: Arc<Mutex<mpsc::Receiver<Batch>>>,
    ready: mpsc::Sender<Result<ExecutionProvider, EngineError>>,
    stats: Arc<InferenceStats>,
) {
    let model = bundle.name().to_string();
    let mut session = match open_and_warm(&bundle, cfg) {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.blocking_send(Err(e));
            return;
        }
    };
    let _ = ready.blocking_send(Ok(session.provider));
    drop(ready);
    loop {
        // One worker at a time waits on the channel; the others wait on the lock. A
        // multi-consumer channel (crossbeam, flume, async-channel) would drop the lock but
        // has no `reserve`: the batcher reserves this channel's one slot before it forms a
        // batch (batcher/queue.rs), so requests keep joining the next batch while every
        // worker is busy. The lock is only ever contended by idle workers.
        let next = batches.lock().map(|mut rx| rx.blocking_recv());
        let Ok(Some(batch)) = next else { break };
        run_batch(&mut session, &model, batch, &stats);
    }
    tracing::debug!(model, "inference worker stopped");
}

fn open_and_warm(bundle: &Bundle, cfg: WorkerConfig) -> Result<ModelSession, EngineError> {
    let mut session = ModelSession::open(bundle, cfg.intra_threads, cfg.device)?;
    let n = bundle.manifest.max_batch;
    let len = bundle.manifest.input.len();
    for _ in 0..cfg.warmup_runs.max(1) {
        session.run(vec![0.0; n * len], n)?;
    }
    Ok(session)
}

fn run_batch(session: &mut ModelSession, model: &str, batch: Batch, stats: &InferenceStats) {
    let n = batch.rows;
    let started = Instant::now();
    let result = session.run(batch.input, n);
    let infer_seconds = started.elapsed().as_secs_f64();
    metrics::record_batch(model, n, infer_seconds);
    stats.record_execution(n, infer_seconds);
    match result {
        Ok(out) => {
            let labels = out.logits.len() / n;
            let dim = out.features.len() / n;
            let logits_of = |row: usize| out.logits[row * labels..(row + 1) * labels].to_vec();
            let features_of = |row: usize| out.features[row * dim..(row + 1) * dim].to_vec();
            let mut row = 0;
            for entry in batch.entries {
                let result = InferResult {
                    logits: logits_of(row),
                    features: features_of(row),
                    extra_logits: (row + 1..row + entry.rows).map(logits_of).collect(),
                    extra_features: (row + 1..row + entry.rows).map(features_of).collect(),
                    queue_seconds: (started - entry.enqueued).as_secs_f64(),
                    infer_seconds,
                    batch_size: n,
                };
                row += entry.rows;
                entry.answer(Ok(result));
            }
        }
        Err(e) => {
            tracing::error!(model, error = %e, "batch failed");
            for entry in batch.entries {
                entry.answer(Err(e.clone().into()));
            }
        }
    }
}
