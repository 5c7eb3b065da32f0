//! help: the `# HELP` text of every metric the sidecar exports, registered once with the
//! recorder, so that a scrape explains itself (labels are in the README's table).

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

use super::*;

pub(super) fn describe() {
    describe_counter!(REQUESTS, "Calls answered or refused, by model, API, outcome (ok or the gRPC status) and verdict.");
    describe_histogram!(REQUEST_DURATION, Unit::Seconds, "Wall time of a call, from arrival to answer.");
    describe_histogram!(STAGE_DURATION, Unit::Seconds, "Wall time of one pipeline stage (decode, preprocess, queue, infer, detect) of one input.");
    describe_histogram!(BATCH_SIZE, "Rows in each batch the engine ran.");
    describe_histogram!(BATCH_DURATION, Unit::Seconds, "Engine time of each batch.");
    describe_gauge!(QUEUE_DEPTH, "Inputs waiting for a batch.");
    describe_counter!(QUEUE_SKIPPED, "Queued inputs dropped before running: the caller went away or its deadline passed.");
    describe_counter!(ERRORS, "Refused calls by model, API and reason (the medsentry-reason of the answer).");
    describe_counter!(PREDICTED_CLASS, "Answers by predicted class.");
    describe_gauge!(MODEL_INFO, "1 for each served model version (0 for a version a reload replaced or removed).");
    describe_gauge!(MODEL_READY, "1 once the model's workers have warmed up; 0 before, while draining, or after a reload removed it.");
    describe_gauge!(EXECUTION_PROVIDER, "1 for the execution provider each model runs on, with the one --device asked for.");
    describe_histogram!(DETECTOR_SCORE, "Each detector's score of each screened input.");
    describe_counter!(DETECTOR_FIRED, "Inputs whose score was over the detector's ADVERSARIAL threshold.");
    describe_counter!(DETECTOR_FAILED, "Inputs a detector could not score (the policy's on_failure decides).");
    describe_counter!(FLAGGED, "Inputs flagged under the model's policy, by verdict.");
    describe_counter!(OUT_OF_DISTRIBUTION, "Inputs answered OUT_OF_DISTRIBUTION, by the evidence (dicom_header, colour, image_statistics).");
    describe_counter!(POLICY_ACTIONS, "What the policy did with flagged inputs (annotate, reject, quarantine, fail_open, fail_closed), shadow mode included.");
    describe_counter!(QUARANTINE_WRITES, "Quarantine writes (written, or duplicate of a kept input).");
    describe_counter!(QUARANTINE_FAILURES, "Quarantine writes that failed, by reason.");
    describe_counter!(QUARANTINE_EVICTIONS, "Quarantined inputs evicted to stay under max_bytes.");
    describe_gauge!(QUARANTINE_BYTES, Unit::Bytes, "Bytes held by the quarantine store.");
    describe_gauge!(QUARANTINE_ITEMS, "Inputs held by the quarantine store.");
    describe_gauge!(QUARANTINE_CAPACITY, Unit::Bytes, "The quarantine store's max_bytes.");
    describe_gauge!(CAMPAIGN_SCORE, "The campaign monitor's signals after the last input (shared_perturbation, class_mix_drift).");
    describe_gauge!(CAMPAIGN_ALARM, "1 while a campaign signal is over its threshold.");
    describe_counter!(CAMPAIGN_ALARMS, "Campaign alarm episodes (counted once each time a signal goes over its threshold).");
    describe_gauge!(DETECTOR_THRESHOLD, "The served detector thresholds (adversarial and suspicious levels).");
    describe_gauge!(CAMPAIGN_THRESHOLD, "The campaign monitor's thresholds.");
    describe_histogram!(UPSTREAM_DURATION, Unit::Seconds, "Proxy mode: wall time of forwarded ModelInfer calls.");
    describe_counter!(UPSTREAM_REQUESTS, "Proxy mode: forwarded ModelInfer calls by final gRPC code.");
    describe_counter!(UPSTREAM_ERRORS, "Proxy mode: forwarded calls that failed, by gRPC code.");
    describe_counter!(UPSTREAM_RETRIES, "Proxy mode: forwarded calls tried again after a refused connection.");
    describe_gauge!(UPSTREAM_READY, "Proxy mode: 1 while the upstream answers ServerReady true.");
    describe_counter!(BLOCKED_BEFORE_FORWARD, "Proxy mode: calls the local policy refused, never forwarded.");
    describe_counter!(CALLER_REQUESTS, "Calls by caller name (the policy's [access]) and RPC.");
    describe_counter!(ACCESS_REFUSED, "Calls refused before any model ran: unauthenticated or not_allowed.");
    describe_counter!(TLS_HANDSHAKE_FAILURES, "TLS handshakes on the gRPC port that did not complete: refused or timeout.");
    describe_counter!(TLS_RELOADS, "Re-reads of the certificate files: ok, or failed (the previous certificate kept).");
    describe_counter!(RELOADS, "Reloads of bundles and policy (SIGHUP, POST /reload): ok, or failed (nothing changed).");
    describe_gauge!(LAST_RELOAD_OK, "0 while the last reload was refused: the models folder or policy on disk is not what is served.");
    describe_gauge!(DECODE_MEMORY, Unit::Bytes, "Decode memory: in_use by decodes in flight, and the --decode-memory-mib limit.");
    describe_counter!(TRACE_SPANS_EXPORTED, "Trace spans the OTLP collector accepted (--otlp-endpoint).");
    describe_counter!(TRACE_SPANS_DROPPED, "Trace spans lost, by reason (queue_full, export_failed, rejected by the collector).");
    describe_counter!(
        CASCADE,
        "Inputs of a model with cascade = true: answered from the cheap first look (skipped) or given feature squeezing and the full verdict (full)."
    );
}
