//! stats: one model's cumulative counts and durations, the figures Triton's ModelStatistics
//! reports (perf_analyzer reads them to split server time into queue, compute input,
//! compute infer and compute output). Kept in atomics beside the Prometheus histograms,
//! which cannot be read back; they start at zero when a model's bundle is (re)loaded.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A count and a total duration.
#[derive(Debug, Default)]
pub struct Tally {
    count: AtomicU64,
    ns: AtomicU64,
}

impl Tally {
    fn add(&self, seconds: f64) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.ns.fetch_add(Duration::from_secs_f64(seconds.max(0.0)).as_nanos() as u64, Ordering::Relaxed);
    }

    /// (count, nanoseconds).
    pub fn read(&self) -> (u64, u64) {
        (self.count.load(Ordering::Relaxed), self.ns.load(Ordering::Relaxed))
    }
}

#[derive(Debug, Default)]
pub struct InferenceStats {
    /// Inputs answered, and their whole time in the pipeline.
    pub success: Tally,
    /// Inputs refused after they reached the model, and their time.
    pub fail: Tally,
    /// Per input: time waiting for a batch.
    pub queue: Tally,
    /// Per input: decode and preprocessing.
    pub compute_input: Tally,
    /// Per input: the forward pass of the batch it ran in.
    pub compute_infer: Tally,
    /// Per input: detectors, campaign monitor and policy.
    pub compute_output: Tally,
    /// Batches the engine ran.
    executions: AtomicU64,
    /// Milliseconds since the epoch of the last answered input (0: none yet).
    last_inference_ms: AtomicU64,
    /// Forward passes by batch size (rows): count and time.
    batches: Mutex<BTreeMap<u64, (u64, u64)>>,
}

/// Per-input stage times, in seconds.
#[derive(Debug, Clone, Copy)]
pub struct StageSeconds {
    pub input: f64,
    pub queue: f64,
    pub infer: f64,
    pub output: f64,
}

impl InferenceStats {
    /// One input answered.
    pub fn record_success(&self, total: f64, stages: StageSeconds) {
        self.success.add(total);
        self.queue.add(stages.queue);
        self.compute_input.add(stages.input);
        self.compute_infer.add(stages.infer);
        self.compute_output.add(stages.output);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        self.last_inference_ms.store(now, Ordering::Relaxed);
    }

    /// One input refused after it reached the model.
    pub fn record_failure(&self, total: f64) {
        self.fail.add(total);
    }

    /// One batch the engine ran.
    pub fn record_execution(&self, rows: usize, seconds: f64) {
        self.executions.fetch_add(1, Ordering::Relaxed);
        let ns = Duration::from_secs_f64(seconds.max(0.0)).as_nanos() as u64;
        let mut b = self.batches.lock().unwrap_or_else(|e| e.into_inner());
        let e = b.entry(rows as u64).or_default();
        e.0 += 1;
        e.1 += ns;
    }

    pub fn executions(&self) -> u64 {
        self.executions.load(Ordering::Relaxed)
    }

    pub fn last_inference_ms(&self) -> u64 {
        self.last_inference_ms.load(Ordering::Relaxed)
    }

    /// (batch size, executions, nanoseconds), by batch size.
    pub fn batches(&self) -> Vec<(u64, u64, u64)> {
        self.batches.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(&s, &(c, ns))| (s, c, ns)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_add_up() {
        let s = InferenceStats::default();
        s.record_success(0.010, StageSeconds { input: 0.001, queue: 0.002, infer: 0.003, output: 0.004 });
        s.record_success(0.020, StageSeconds { input: 0.001, queue: 0.002, infer: 0.003, output: 0.004 });
        s.record_failure(0.5);
        s.record_execution(8, 0.003);
        s.record_execution(8, 0.001);
        s.record_execution(1, 0.002);
        assert_eq!(s.success.read(), (2, 30_000_000));
        assert_eq!(s.compute_infer.read(), (2, 6_000_000));
        assert_eq!(s.fail.read(), (1, 500_000_000));
        assert_eq!(s.executions(), 3);
        assert_eq!(s.batches(), vec![(1, 1, 2_000_000), (8, 2, 4_000_000)]);
        assert!(s.last_inference_ms() > 1_700_000_000_000);
    }
}
