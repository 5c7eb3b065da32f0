//! metrics: the Prometheus names the sidecar exports (DESIGN.md, "Observability") and one
//! function per event, so that the names live in one place ([`help`] holds their HELP
//! text). Rendered on the admin port, with the process metrics ([`process`]).

mod help;
mod process;

use std::sync::OnceLock;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const REQUESTS: &str = "medsentry_requests_total";
pub const REQUEST_DURATION: &str = "medsentry_request_duration_seconds";
pub const STAGE_DURATION: &str = "medsentry_stage_duration_seconds";
pub const BATCH_SIZE: &str = "medsentry_batch_size";
pub const BATCH_DURATION: &str = "medsentry_batch_duration_seconds";
pub const QUEUE_DEPTH: &str = "medsentry_queue_depth";
pub const QUEUE_SKIPPED: &str = "medsentry_queue_skipped_total";
pub const ERRORS: &str = "medsentry_errors_total";
pub const PREDICTED_CLASS: &str = "medsentry_predicted_class_total";
pub const MODEL_INFO: &str = "medsentry_model_info";
pub const MODEL_READY: &str = "medsentry_model_ready";
pub const EXECUTION_PROVIDER: &str = "medsentry_execution_provider";
pub const DETECTOR_SCORE: &str = "medsentry_detector_score";
pub const DETECTOR_FIRED: &str = "medsentry_detector_fired_total";
pub const DETECTOR_FAILED: &str = "medsentry_detector_failures_total";
pub const FLAGGED: &str = "medsentry_flagged_total";
pub const OUT_OF_DISTRIBUTION: &str = "medsentry_out_of_distribution_total";
pub const POLICY_ACTIONS: &str = "medsentry_policy_actions_total";
pub const QUARANTINE_WRITES: &str = "medsentry_quarantine_writes_total";
pub const QUARANTINE_FAILURES: &str = "medsentry_quarantine_write_failures_total";
pub const QUARANTINE_EVICTIONS: &str = "medsentry_quarantine_evictions_total";
pub const QUARANTINE_BYTES: &str = "medsentry_quarantine_bytes";
pub const QUARANTINE_ITEMS: &str = "medsentry_quarantine_items";
pub const QUARANTINE_CAPACITY: &str = "medsentry_quarantine_capacity_bytes";
pub const CAMPAIGN_SCORE: &str = "medsentry_campaign_score";
pub const CAMPAIGN_ALARM: &str = "medsentry_campaign_alarm";
pub const CAMPAIGN_ALARMS: &str = "medsentry_campaign_alarms_total";
pub const DETECTOR_THRESHOLD: &str = "medsentry_detector_threshold";
pub const CAMPAIGN_THRESHOLD: &str = "medsentry_campaign_threshold";
/// Proxy mode (src/upstream/): forwarded ModelInfer calls and the upstream's readiness.
pub const UPSTREAM_DURATION: &str = "medsentry_upstream_duration_seconds";
pub const UPSTREAM_REQUESTS: &str = "medsentry_upstream_requests_total";
pub const UPSTREAM_ERRORS: &str = "medsentry_upstream_errors_total";
pub const UPSTREAM_RETRIES: &str = "medsentry_upstream_retries_total";
pub const UPSTREAM_READY: &str = "medsentry_upstream_ready";
pub const BLOCKED_BEFORE_FORWARD: &str = "medsentry_blocked_before_forward_total";
/// Callers ([access] in the policy): calls by caller name and RPC, and refusals.
pub const CALLER_REQUESTS: &str = "medsentry_caller_requests_total";
pub const ACCESS_REFUSED: &str = "medsentry_access_refusals_total";
/// TLS on the gRPC port (src/tls.rs): handshakes refused or timed out, certificate reloads.
pub const TLS_HANDSHAKE_FAILURES: &str = "medsentry_tls_handshake_failures_total";
pub const TLS_RELOADS: &str = "medsentry_tls_reloads_total";
/// Reloads of bundles and policy (SIGHUP, POST /reload): attempts by result, and whether the
/// last one took effect (0 = what is on disk is not what is served).
pub const RELOADS: &str = "medsentry_reloads_total";
pub const LAST_RELOAD_OK: &str = "medsentry_last_reload_successful";
/// The cascade (policy `cascade = true`): inputs answered from the cheap first look
/// (skipped) or given feature squeezing and the full verdict (full).
pub const CASCADE: &str = "medsentry_cascade_total";
/// OTLP trace export (src/trace/): spans the collector accepted, and spans lost (queue full,
/// export failed, rejected by the collector).
pub const TRACE_SPANS_EXPORTED: &str = "medsentry_trace_spans_exported_total";
pub const TRACE_SPANS_DROPPED: &str = "medsentry_trace_spans_dropped_total";
/// Decode memory budget (src/decode/budget.rs): bytes reserved by decodes in flight, and the limit.
pub const DECODE_MEMORY: &str = "medsentry_decode_memory_bytes";

const SECONDS_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];
/// Covers both probability-like scores (learned detector) and distances (Mahalanobis).
const SCORE_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 20.0, 50.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once and returns its handle (tests start several
/// servers in one process; they share it).
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), BATCH_BUCKETS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(DETECTOR_SCORE.into()), SCORE_BUCKETS))
                .expect("static buckets are valid")
                .install_recorder()
                .inspect(|_| help::describe())
                .expect("the metrics recorder is installed once")
        })
        .clone()
}

/// Prometheus text exposition of everything recorded so far.
pub fn render() -> String {
    let handle = install();
    handle.run_upkeep();
    handle.render() + &process::render()
}

pub fn record_request(model: &str, api: &'static str, outcome: &'static str, verdict: &'static str, seconds: f64) {
    counter!(REQUESTS, "model" => model.to_string(), "api" => api, "outcome" => outcome, "verdict" => verdict).increment(1);
    histogram!(REQUEST_DURATION, "model" => model.to_string(), "api" => api).record(seconds);
}

pub fn record_stage(model: &str, stage: &'static str, seconds: f64) {
    histogram!(STAGE_DURATION, "model" => model.to_string(), "stage" => stage).record(seconds);
}

pub fn record_error(model: &str, api: &'static str, reason: &'static str) {
    counter!(ERRORS, "model" => model.to_string(), "api" => api, "reason" => reason).increment(1);
}

pub fn record_prediction(model: &str, label: &str) {
    counter!(PREDICTED_CLASS, "model" => model.to_string(), "class" => label.to_string()).increment(1);
}

pub fn record_batch(model: &str, size: usize, seconds: f64) {
    histogram!(BATCH_SIZE, "model" => model.to_string()).record(size as f64);
    histogram!(BATCH_DURATION, "model" => model.to_string()).record(seconds);
}

pub fn record_skipped(model: &str, reason: &'static str) {
    counter!(QUEUE_SKIPPED, "model" => model.to_string(), "reason" => reason).increment(1);
}

pub fn set_queue_depth(model: &str, depth: usize) {
    gauge!(QUEUE_DEPTH, "model" => model.to_string()).set(depth as f64);
}

pub fn set_model_ready(model: &str, ready: bool) {
    gauge!(MODEL_READY, "model" => model.to_string()).set(if ready { 1.0 } else { 0.0 });
}

pub fn set_model_info(model: &str, version: &str, sha256: &str, hardened: bool) {
    gauge!(MODEL_INFO, "model" => model.to_string(), "version" => version.to_string(),
        "sha256" => sha256.to_string(), "hardened" => if hardened { "true" } else { "false" })
    .set(1.0);
}

/// `requested` is what --device asked for, `active` what the sessions run on
/// (`cpu_fallback` when CUDA was asked for and was not there).
pub fn set_execution_provider(model: &str, requested: &'static str, active: &'static str) {
    gauge!(EXECUTION_PROVIDER, "model" => model.to_string(), "requested" => requested, "active" => active).set(1.0);
}

/// One detector's score for one input, and whether it fired.
pub fn record_detector(model: &str, detector: &str, score: f64, fired: bool) {
    histogram!(DETECTOR_SCORE, "model" => model.to_string(), "detector" => detector.to_string()).record(score);
    if fired {
        counter!(DETECTOR_FIRED, "model" => model.to_string(), "detector" => detector.to_string()).increment(1);
    }
}

/// A detector that could not score an input (non-finite score).
pub fn record_detector_failure(model: &str, detector: &str) {
    counter!(DETECTOR_FAILED, "model" => model.to_string(), "detector" => detector.to_string()).increment(1);
}

/// An input the policy counts as flagged, by verdict.
pub fn record_flagged(model: &str, verdict: &'static str) {
    counter!(FLAGGED, "model" => model.to_string(), "verdict" => verdict).increment(1);
}

/// An input answered OUT_OF_DISTRIBUTION; evidence: dicom_header | colour | image_statistics. Not an
/// attack signal: no alert rule reads it.
pub fn record_out_of_distribution(model: &str, evidence: &'static str) {
    counter!(OUT_OF_DISTRIBUTION, "model" => model.to_string(), "evidence" => evidence).increment(1);
}

/// What the policy did (annotate, reject, quarantine, fail_open, fail_closed); `shadow`
/// marks actions recorded but not applied.
pub fn record_policy_action(model: &str, action: &'static str, shadow: bool) {
    counter!(POLICY_ACTIONS, "model" => model.to_string(), "action" => action, "shadow" => if shadow { "true" } else { "false" }).increment(1);
}

/// result: written | duplicate.
pub fn record_quarantine_write(model: &str, result: &'static str) {
    counter!(QUARANTINE_WRITES, "model" => model.to_string(), "result" => result).increment(1);
}

pub fn record_quarantine_failure(model: &str, reason: &'static str) {
    counter!(QUARANTINE_FAILURES, "model" => model.to_string(), "reason" => reason).increment(1);
}

pub fn record_quarantine_evictions(n: usize) {
    counter!(QUARANTINE_EVICTIONS).increment(n as u64);
}

pub fn set_quarantine_usage(bytes: u64, items: usize, capacity: u64) {
    gauge!(QUARANTINE_BYTES).set(bytes as f64);
    gauge!(QUARANTINE_ITEMS).set(items as f64);
    gauge!(QUARANTINE_CAPACITY).set(capacity as f64);
}

/// The campaign monitor's current score and alarm state of each signal (gauges).
pub fn set_campaign(model: &str, shared_perturbation: (f32, bool), class_mix_drift: (f32, bool)) {
    for (signal, (score, alarm)) in [("shared_perturbation", shared_perturbation), ("class_mix_drift", class_mix_drift)] {
        gauge!(CAMPAIGN_SCORE, "model" => model.to_string(), "signal" => signal).set(score as f64);
        gauge!(CAMPAIGN_ALARM, "model" => model.to_string(), "signal" => signal).set(if alarm { 1.0 } else { 0.0 });
    }
}

/// A signal went into alarm (counted once per episode).
pub fn record_campaign_alarm(model: &str, signal: &'static str) {
    counter!(CAMPAIGN_ALARMS, "model" => model.to_string(), "signal" => signal).increment(1);
}

/// One forwarded ModelInfer call (retry included) and its final gRPC code.
pub fn record_upstream(code: &'static str, seconds: f64) {
    counter!(UPSTREAM_REQUESTS, "code" => code).increment(1);
    if code != "ok" {
        counter!(UPSTREAM_ERRORS, "code" => code).increment(1);
    }
    histogram!(UPSTREAM_DURATION).record(seconds);
}

/// An admitted call; `caller` is a name from the policy or "anonymous" (a bounded set).
pub fn record_caller(caller: &str, rpc: &'static str) {
    counter!(CALLER_REQUESTS, "caller" => caller.to_string(), "rpc" => rpc).increment(1);
}

/// A call refused before any model ran; reason: unauthenticated | not_allowed.
pub fn record_access_refused(reason: &'static str) {
    counter!(ACCESS_REFUSED, "reason" => reason).increment(1);
}

/// A TLS handshake on the gRPC port that did not complete; reason: refused | timeout.
pub fn record_tls_handshake_failure(reason: &'static str) {
    counter!(TLS_HANDSHAKE_FAILURES, "reason" => reason).increment(1);
}

/// The certificate files changed and were re-read; result: ok | failed (old one kept).
pub fn record_tls_reload(result: &'static str) {
    counter!(TLS_RELOADS, "result" => result).increment(1);
}

/// One input under the cascade; decision: skipped | full.
pub fn record_cascade(model: &str, decision: &'static str) {
    counter!(CASCADE, "model" => model.to_string(), "decision" => decision).increment(1);
}

/// Zeroes a cascading model's series at start-up.
pub fn init_cascade(model: &str) {
    for decision in ["skipped", "full"] {
        counter!(CASCADE, "model" => model.to_string(), "decision" => decision).increment(0);
    }
}

/// Spans the OTLP collector accepted.
pub fn record_spans_exported(spans: usize) {
    counter!(TRACE_SPANS_EXPORTED).increment(spans as u64);
}

/// Spans lost; reason: queue_full | export_failed | rejected.
pub fn record_spans_dropped(reason: &'static str, spans: usize) {
    counter!(TRACE_SPANS_DROPPED, "reason" => reason).increment(spans as u64);
}

/// Zeroes the trace export series when export starts, so that a dashboard sees them at once.
pub fn init_trace_export() {
    counter!(TRACE_SPANS_EXPORTED).increment(0);
    for reason in ["queue_full", "export_failed", "rejected"] {
        counter!(TRACE_SPANS_DROPPED, "reason" => reason).increment(0);
    }
}

/// A reload of bundles and policy; result: ok | failed (the served set is unchanged).
pub fn record_reload(result: &'static str) {
    counter!(RELOADS, "result" => result).increment(1);
    gauge!(LAST_RELOAD_OK).set(if result == "ok" { 1.0 } else { 0.0 });
}

/// Zeroes the reload series at start-up, so that alerts see them before the first reload.
pub fn init_reloads() {
    for result in ["ok", "failed"] {
        counter!(RELOADS, "result" => result).increment(0);
    }
    gauge!(LAST_RELOAD_OK).set(1.0);
}

/// A model version no longer served (a reload replaced or removed it).
pub fn clear_model_info(model: &str, version: &str, sha256: &str, hardened: bool) {
    gauge!(MODEL_INFO, "model" => model.to_string(), "version" => version.to_string(),
        "sha256" => sha256.to_string(), "hardened" => if hardened { "true" } else { "false" })
    .set(0.0);
}

/// A forwarded call tried again after its connection was refused.
pub fn record_upstream_retry() {
    counter!(UPSTREAM_RETRIES).increment(1);
}

pub fn set_upstream_ready(ready: bool) {
    gauge!(UPSTREAM_READY).set(if ready { 1.0 } else { 0.0 });
}

/// A request the local policy refused (reject, or fail_closed) and that was therefore not
/// forwarded upstream.
pub fn set_decode_memory(in_use: u64, limit: u64) {
    gauge!(DECODE_MEMORY, "state" => "in_use").set(in_use as f64);
    gauge!(DECODE_MEMORY, "state" => "limit").set(limit as f64);
}

pub fn record_blocked_before_forward(model: &str) {
    counter!(BLOCKED_BEFORE_FORWARD, "model" => model.to_string()).increment(1);
}

/// At start-up, per model: the thresholds as gauges (for dashboards to draw), and the
/// failure and alarm counters at 0, so that `increase()` sees their first event.
pub fn init_model(model: &str, detectors: &[crate::bundle::DetectorSpec], campaign: Option<&crate::bundle::CampaignSpec>) {
    for d in detectors {
        let name = d.name.clone();
        gauge!(DETECTOR_THRESHOLD, "model" => model.to_string(), "detector" => name.clone(), "level" => "adversarial").set(d.threshold as f64);
        if let Some(t) = d.suspicious_threshold {
            gauge!(DETECTOR_THRESHOLD, "model" => model.to_string(), "detector" => name.clone(), "level" => "suspicious").set(t as f64);
        }
        counter!(DETECTOR_FIRED, "model" => model.to_string(), "detector" => name.clone()).increment(0);
        counter!(DETECTOR_FAILED, "model" => model.to_string(), "detector" => name).increment(0);
    }
    for verdict in ["suspicious", "adversarial"] {
        counter!(FLAGGED, "model" => model.to_string(), "verdict" => verdict).increment(0);
    }
    for reason in ["io", "too_large", "deidentify"] {
        counter!(QUARANTINE_FAILURES, "model" => model.to_string(), "reason" => reason).increment(0);
    }
    if let Some(c) = campaign {
        for (signal, t) in [("shared_perturbation", c.residual_threshold), ("class_mix_drift", c.class_mix_threshold)] {
            gauge!(CAMPAIGN_THRESHOLD, "model" => model.to_string(), "signal" => signal).set(t as f64);
            counter!(CAMPAIGN_ALARMS, "model" => model.to_string(), "signal" => signal).increment(0);
        }
    }
}
