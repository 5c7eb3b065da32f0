//! pipeline: one input through decode -> preprocess -> batcher/engine -> defense (detectors,
//! campaign monitor, policy), with the wall time of every stage. Shared by the gRPC API
//! and the `screen` command.

mod prepare;

pub use prepare::{prepare, prepare_within, Extras, Prepared};

use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::decode::{CancelFlag, DecodeConfig, DecodeError, Input};
use crate::defense::numeric::{argmax, softmax};
use crate::defense::squeeze::Squeeze;
use crate::defense::{CampaignStatus, Evidence, Screening};
use crate::engine::stats::StageSeconds;
use crate::engine::{BatchError, InferResult};
use crate::metrics;
use crate::policy::{self, Enforced, Origin, Refusal, Subject};
use crate::registry::ServedModel;
use crate::trace::{CallTrace, Value};

#[derive(Debug, Error)]
pub enum PipelineError {
    #[error("unknown model {}; this sidecar serves {available:?}", shown_name(.name))]
    UnknownModel { name: String, available: Vec<String> },
    #[error("model {0} is still warming up; retry shortly")]
    NotReady(String),
    #[error("the request carries no input (set one of dicom, image, tensor)")]
    NoInput,
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Batch(#[from] BatchError),
    /// The model's policy refused the input (rejected it, or fail_closed on a failure).
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("internal error: {0}")]
    Internal(String),
    /// A request the API layer refuses before any input reaches the pipeline (an Open
    /// Inference Protocol tensor of the wrong datatype, shape or size): INVALID_ARGUMENT.
    #[error("{message}")]
    InvalidRequest { reason: &'static str, message: String },
    /// Proxy mode: the upstream inference server could not be reached, was too slow, or
    /// refused the forwarded call.
    #[error(transparent)]
    Upstream(#[from] crate::upstream::UpstreamError),
    /// The caller is unknown, or its [access] rule does not allow this call.
    #[error(transparent)]
    Access(#[from] crate::access::AccessError),
}

/// A caller-supplied name as a refusal quotes it: at most 64 characters (a 100 kB name
/// made the status message too large for its header), control characters escaped.
fn shown_name(name: &str) -> String {
    match name.char_indices().nth(64) {
        Some((cut, _)) => format!("{:?}... ({} bytes)", &name[..cut], name.len()),
        None => format!("{name:?}"),
    }
}

#[derive(Debug, Clone, Default)]
pub struct Timings {
    pub decode: f64,
    pub preprocess: f64,
    pub queue: f64,
    pub infer: f64,
    pub detect: f64,
    pub total: f64,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub probabilities: Vec<f32>,
    pub top_index: usize,
    pub screening: Screening,
    pub timings: Timings,
    pub batch_size: usize,
    /// The campaign monitor after this input (None: the bundle has no [campaign]).
    pub campaign: Option<CampaignStatus>,
    pub enforced: Enforced,
}

/// Runs one input through the whole pipeline of `model`, and counts it in the model's
/// statistics; `trace` gets a span per stage (an empty one when the call is not traced).
pub async fn run(
    model: &Arc<ServedModel>,
    input: Input,
    decoding: &DecodeConfig,
    deadline: Option<Instant>,
    origin: Origin<'_>,
    trace: &CallTrace,
) -> Result<Outcome, PipelineError> {
    let started = Instant::now();
    let result = screen(model, input, decoding, deadline, origin, trace).await;
    match &result {
        Ok(o) => {
            let t = &o.timings;
            let input = t.decode + t.preprocess;
            let stages = StageSeconds { input, queue: t.queue, infer: t.infer, output: (t.total - input - t.queue - t.infer).max(0.0) };
            model.stats.record_success(t.total, stages);
        }
        Err(_) => model.stats.record_failure(started.elapsed().as_secs_f64()),
    }
    result
}

async fn screen(
    model: &Arc<ServedModel>,
    input: Input,
    decoding: &DecodeConfig,
    deadline: Option<Instant>,
    origin: Origin<'_>,
    trace: &CallTrace,
) -> Result<Outcome, PipelineError> {
    let started = Instant::now();
    if !model.is_ready() {
        return Err(PipelineError::NotReady(model.name().to_string()));
    }
    let spec = model.bundle.manifest.input.clone();
    let want_residual = model.campaign.is_some();
    // With the cascade the squeezed copies are made after the first pass, if at all.
    let cascades = model.screener.cascades();
    let squeeze = model.screener.squeeze().cloned();
    let squeeze_now = squeeze.clone().filter(|_| !cascades);
    let ood = model.screener.ood_model().cloned();
    let residual_stats = model.screener.residual_statistics().cloned();
    let chroma = model.screener.checks_chroma();
    // Decoding a 7 MB DICOM takes tens of ms: keep it off the async workers. The input
    // comes back: a flagged one may be quarantined. If this call is dropped (the caller
    // cancelled or went away), the guard stops the decode at its next checkpoint; its
    // reservation holds the decode's memory until the blocking task ends either way.
    // Tensors need no decode slot: they are only checked.
    let slot = match (&input, deadline) {
        (Input::Tensor { .. }, _) => None,
        (_, None) => Some(decoding.slots.clone().acquire_owned().await),
        (_, Some(d)) => Some(tokio::time::timeout_at(d.into(), decoding.slots.clone().acquire_owned()).await.map_err(|_| DecodeError::DeadlineExceeded)?),
    }
    .transpose()
    .map_err(|_| PipelineError::Internal("decode slots closed".into()))?;
    let cancel = CancelFlag::default();
    let cancel_guard = cancel.guard();
    let mut reservation = decoding.budget.reserve(cancel, deadline);
    let limits = decoding.limits;
    let (input, prepared, reservation, decode_started) = tokio::task::spawn_blocking(move || {
        let decode_started = Instant::now();
        let prepared = prepare_within(
            &input,
            &spec,
            &limits,
            &mut reservation,
            Extras {
                residual: want_residual,
                squeeze: squeeze_now.as_ref(),
                ood: ood.as_ref(),
                residual_stats: residual_stats.as_ref(),
                chroma,
                keep_pixels: cascades,
            },
        );
        drop(slot);
        (input, prepared, reservation, decode_started)
    })
    .await
    .map_err(|e| PipelineError::Internal(format!("decode task: {e}")))?;
    cancel_guard.disarm();
    let prepared = prepared.inspect_err(|e| trace.stage("decode", decode_started, Instant::now(), Vec::new(), Some(e.to_string())))?;
    let Prepared { tensor, rows, residual, statistics, residual_features, dicom, chroma, decode_s, preprocess_s, pixels } = prepared;
    let name = model.name();
    metrics::record_stage(name, "decode", decode_s);
    metrics::record_stage(name, "preprocess", preprocess_s);
    let decoded = decode_started + Duration::from_secs_f64(decode_s);
    trace.stage("decode", decode_started, decoded, Vec::new(), None);
    trace.stage("preprocess", decoded, decoded + Duration::from_secs_f64(preprocess_s), vec![("medsentry.rows", Value::Int(rows as i64))], None);

    let mut result = run_entry(model, tensor, rows, deadline, trace, None).await?;
    metrics::record_stage(name, "queue", result.queue_seconds);
    metrics::record_stage(name, "infer", result.infer_seconds);

    let mut detect_start = Instant::now();
    let evidence = Evidence { residual_features: residual_features.as_deref(), statistics: statistics.as_deref(), dicom: dicom.as_ref(), chroma };
    let mut cheap = None;
    if let (true, Some(pixels), Some(squeeze)) = (cascades, pixels, squeeze.as_ref()) {
        cheap = model.screener.screen_cheap(&result, &evidence);
        metrics::record_cascade(name, if cheap.is_some() { "skipped" } else { "full" });
        if cheap.is_none() {
            let second = squeezed(model, squeeze, &pixels, deadline, trace).await?;
            result.queue_seconds += second.queue_seconds;
            result.infer_seconds += second.infer_seconds;
            result.extra_logits = std::iter::once(second.logits).chain(second.extra_logits).collect();
            detect_start = Instant::now();
        }
    }
    let mut screening = match cheap {
        Some(s) => s,
        None => model.screener.screen(&result, &evidence),
    };
    let detect_s = detect_start.elapsed().as_secs_f64();
    metrics::record_stage(name, "detect", detect_s);
    let verdict = vec![
        ("medsentry.verdict", Value::Str(screening.verdict.as_str().to_uppercase())),
        ("medsentry.fused_score", Value::Float(screening.fused_score as f64)),
    ];
    trace.stage("detect", detect_start, detect_start + Duration::from_secs_f64(detect_s), verdict, None);
    for d in &screening.detectors {
        metrics::record_detector(name, &d.name, d.score as f64, d.fired);
    }

    let probabilities = softmax(&result.logits);
    let top_index = argmax(&probabilities);
    metrics::record_prediction(name, &model.bundle.manifest.labels[top_index]);
    let campaign = match (&model.campaign, residual) {
        (Some(monitor), Some(r)) => Some(monitor.observe(r, top_index)),
        _ => None,
    };
    // The decode's reservation stays held until the policy is applied: quarantining decodes
    // (PNG/JPEG re-encoding) or parses (DICOM de-identification) the input once more.
    let policy_start = Instant::now();
    let subject = Subject { bundle: &model.bundle, policy: &model.policy, quarantine: model.quarantine.as_ref() };
    let enforced = policy::enforce(subject, input, &mut screening, campaign, origin).await;
    drop(reservation);
    trace.stage("policy", policy_start, Instant::now(), Vec::new(), enforced.as_ref().err().map(|e| e.to_string()));
    let enforced = enforced?;
    let timings = Timings {
        decode: decode_s,
        preprocess: preprocess_s,
        queue: result.queue_seconds,
        infer: result.infer_seconds,
        detect: detect_s,
        total: started.elapsed().as_secs_f64(),
    };
    Ok(Outcome { probabilities, top_index, screening, timings, batch_size: result.batch_size, campaign, enforced })
}

/// The cascade's second pass for an input its cheap score could not call clean: feature
/// squeezing's copies of the [0, 1] pixels, normalised, as one batcher entry.
async fn squeezed(model: &ServedModel, squeeze: &Squeeze, pixels: &[f32], deadline: Option<Instant>, trace: &CallTrace) -> Result<InferResult, PipelineError> {
    let (tensor, rows) = prepare::squeezed_rows(squeeze, pixels, &model.bundle.manifest.input);
    run_entry(model, tensor, rows, deadline, trace, Some("feature-squeezing")).await
}

/// One batcher entry of `rows` inputs, with its queue and infer spans (`pass` names a
/// second pass of the same input).
async fn run_entry(
    model: &ServedModel,
    tensor: Vec<f32>,
    rows: usize,
    deadline: Option<Instant>,
    trace: &CallTrace,
    pass: Option<&'static str>,
) -> Result<InferResult, PipelineError> {
    let attrs = || pass.map(|p| ("medsentry.pass", Value::Str(p.into()))).into_iter().collect::<Vec<_>>();
    let queued = Instant::now();
    let result =
        model.batcher.infer_rows(tensor, rows, deadline).await.inspect_err(|e| trace.stage("queue", queued, Instant::now(), attrs(), Some(e.to_string())))?;
    let ran = queued + Duration::from_secs_f64(result.queue_seconds);
    trace.stage("queue", queued, ran, attrs(), None);
    let mut infer = attrs();
    infer.push(("medsentry.batch_size", Value::Int(result.batch_size as i64)));
    trace.stage("infer", ran, ran + Duration::from_secs_f64(result.infer_seconds), infer, None);
    Ok(result)
}
