//! pipeline: one input through decode -> preprocess -> batcher/engine -> defense (detectors,
//! campaign monitor, policy), with the wall time of every stage. Shared by the gRPC API
//! and the `screen` command.

mod cascade;
mod prepare;

pub use prepare::{prepare, prepare_within, Extras, Prepared};

use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::decode::{CancelFlag, DecodeConfig, DecodeError, Input};
use crate::defense::numeric::{argmax, softmax};
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
    let result = async {
        let mut staged = stage(model, input, decoding, deadline, trace).await?;
        let first = run_entry(model, std::mem::take(&mut staged.prepared.tensor), staged.prepared.rows, deadline, trace, None).await?;
        let looked = cascade::look(model, vec![(&staged, first)], deadline, trace).await.pop().expect("one input looked at")?;
        finish(model, staged, looked, origin, trace).await
    }
    .await;
    count(model, started, &result);
    result
}

/// Runs the items of one multi-item request (an Open Inference Protocol batch), in chunks
/// of at most `chunk`: each item of a chunk is decoded and prepared (concurrently), then the
/// chunk enters the batcher as one group, so it runs in one ONNX Runtime call when the batch
/// has room, then each item is screened and its policy applied, in order. A chunk holds at
/// most `chunk` queue permits, so one call cannot fill the queue. The first failure, by
/// index, ends the call.
pub async fn run_items(
    model: &Arc<ServedModel>,
    items: Vec<(Input, String)>,
    decoding: &DecodeConfig,
    deadline: Option<Instant>,
    caller: &str,
    chunk: usize,
    trace: &CallTrace,
) -> Result<Vec<Outcome>, (usize, PipelineError)> {
    use futures::StreamExt;
    let mut outcomes = Vec::with_capacity(items.len());
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        let started = Instant::now();
        let (inputs, ids): (Vec<Input>, Vec<String>) = items.by_ref().take(chunk.max(1)).unzip();
        let mut stages = futures::stream::iter(inputs.into_iter().map(|input| stage(model, input, decoding, deadline, trace))).buffered(chunk.max(1));
        let mut staged = Vec::with_capacity(ids.len());
        while let Some(r) = stages.next().await {
            match r {
                Ok(s) => staged.push(s),
                Err(e) => return Err(fail(model, started, outcomes.len() + staged.len(), e)),
            }
        }
        drop(stages);
        let queued = Instant::now();
        let rows = staged.iter_mut().map(|s| (std::mem::take(&mut s.prepared.tensor), s.prepared.rows)).collect();
        let results = model.batcher.infer_group(rows, deadline).await.map_err(|e| fail(model, started, outcomes.len(), e.into()))?;
        // The items before the first failed forward pass are finished; that one ends the call.
        let mut firsts = Vec::with_capacity(results.len());
        let mut failure = None;
        for result in results {
            record_entry_spans(trace, queued, &result, None);
            match result {
                Ok(first) if failure.is_none() => firsts.push(first),
                Ok(_) => {}
                Err(e) => _ = failure.get_or_insert(e),
            }
        }
        let looked = cascade::look(model, staged.iter().zip(firsts).collect(), deadline, trace).await;
        for ((s, looked), id) in staged.into_iter().zip(looked).zip(&ids) {
            let outcome = match looked {
                Ok(looked) => finish(model, s, looked, Origin { request_id: id, caller }, trace).await,
                Err(e) => Err(e),
            };
            count(model, started, &outcome);
            let index = outcomes.len();
            outcomes.push(outcome.map_err(|e| (index, e))?);
        }
        if let Some(e) = failure {
            let e = PipelineError::from(e);
            return Err(fail(model, started, outcomes.len(), e));
        }
    }
    Ok(outcomes)
}

/// Counts a failed item in the model's statistics and tags it with its index.
fn fail(model: &ServedModel, started: Instant, index: usize, e: PipelineError) -> (usize, PipelineError) {
    model.stats.record_failure(started.elapsed().as_secs_f64());
    (index, e)
}

/// The model's statistics (Triton's ModelStatistics) for one screened input.
fn count(model: &ServedModel, started: Instant, result: &Result<Outcome, PipelineError>) {
    match result {
        Ok(o) => {
            let t = &o.timings;
            let input = t.decode + t.preprocess;
            let stages = StageSeconds { input, queue: t.queue, infer: t.infer, output: (t.total - input - t.queue - t.infer).max(0.0) };
            model.stats.record_success(t.total, stages);
        }
        Err(_) => model.stats.record_failure(started.elapsed().as_secs_f64()),
    }
}

/// An input decoded and prepared, waiting for its forward pass.
struct Staged {
    started: Instant,
    input: Input,
    /// Its `tensor` (the input, and feature squeezing's copies unless cascading) is taken
    /// when it is queued.
    prepared: Prepared,
    /// Holds the decode's memory until the policy has been applied (quarantine re-reads it).
    reservation: crate::decode::Reservation,
}

/// Decode and preprocess, off the async workers for anything but a tensor.
async fn stage(model: &Arc<ServedModel>, input: Input, decoding: &DecodeConfig, deadline: Option<Instant>, trace: &CallTrace) -> Result<Staged, PipelineError> {
    let started = Instant::now();
    if !model.is_ready() {
        return Err(PipelineError::NotReady(model.name().to_string()));
    }
    // The job borrows the screener's models through this handle: a copy of the
    // out-of-distribution model (a 736 x 736 matrix at 224 px) cost milliseconds per input.
    let served = Arc::clone(model);
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
    // A model-sized tensor is prepared where it arrived: a hop to the blocking pool costs
    // more than its squeezing and statistics.
    let inline = matches!(&input, Input::Tensor { data, .. } if data.len() <= INLINE_TENSOR_VALUES);
    let job = move || {
        let decode_started = Instant::now();
        let screener = &served.screener;
        // With the cascade the squeezed copies are made after the first pass, if at all.
        let cascades = screener.cascades();
        let extras = Extras {
            residual: served.campaign.is_some(),
            squeeze: screener.squeeze().filter(|_| !cascades),
            ood: screener.ood_model(),
            residual_stats: screener.residual_statistics(),
            chroma: screener.checks_chroma(),
            keep_pixels: cascades,
        };
        let prepared = prepare_within(&input, &served.bundle.manifest.input, &limits, &mut reservation, extras);
        drop(slot);
        (input, prepared, reservation, decode_started)
    };
    let (input, prepared, reservation, decode_started) =
        if inline { job() } else { tokio::task::spawn_blocking(job).await.map_err(|e| PipelineError::Internal(format!("decode task: {e}")))? };
    cancel_guard.disarm();
    let prepared = prepared.inspect_err(|e| trace.stage("decode", decode_started, Instant::now(), Vec::new(), Some(e.to_string())))?;
    let name = model.name();
    metrics::record_stage(name, "decode", prepared.decode_s);
    metrics::record_stage(name, "preprocess", prepared.preprocess_s);
    let decoded = decode_started + Duration::from_secs_f64(prepared.decode_s);
    trace.stage("decode", decode_started, decoded, Vec::new(), None);
    let rows = vec![("medsentry.rows", Value::Int(prepared.rows as i64))];
    trace.stage("preprocess", decoded, decoded + Duration::from_secs_f64(prepared.preprocess_s), rows, None);
    Ok(Staged { started, input, prepared, reservation })
}

/// Tensors up to this many values (a 3 x 64 x 64 input) are prepared inline.
const INLINE_TENSOR_VALUES: usize = 3 * 64 * 64;

/// Evidence besides the forward pass that the detectors read, from an input's preparation.
fn evidence(prepared: &Prepared) -> Evidence<'_> {
    let p = prepared;
    Evidence { residual_features: p.residual_features.as_deref(), statistics: p.statistics.as_deref(), dicom: p.dicom.as_ref(), chroma: p.chroma }
}

/// The detectors, the campaign monitor and the policy, for an input whose forward pass
/// (both passes under the cascade) came back as `looked`.
async fn finish(model: &ServedModel, staged: Staged, looked: cascade::Looked, origin: Origin<'_>, trace: &CallTrace) -> Result<Outcome, PipelineError> {
    let Staged { started, input, prepared, reservation } = staged;
    let cascade::Looked { result, cheap, look_s } = looked;
    let name = model.name();
    metrics::record_stage(name, "queue", result.queue_seconds);
    metrics::record_stage(name, "infer", result.infer_seconds);
    let detect_start = Instant::now();
    let (mut screening, detect_s) = match cheap {
        Some(s) => (s, look_s),
        None => (model.screener.screen(&result, &evidence(&prepared)), detect_start.elapsed().as_secs_f64()),
    };
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
    let campaign = match (&model.campaign, prepared.residual) {
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
        decode: prepared.decode_s,
        preprocess: prepared.preprocess_s,
        queue: result.queue_seconds,
        infer: result.infer_seconds,
        detect: detect_s,
        total: started.elapsed().as_secs_f64(),
    };
    Ok(Outcome { probabilities, top_index, screening, timings, batch_size: result.batch_size, campaign, enforced })
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
    let queued = Instant::now();
    let result = model.batcher.infer_rows(tensor, rows, deadline).await;
    record_entry_spans(trace, queued, &result, pass);
    Ok(result?)
}

fn pass_attrs(pass: Option<&'static str>) -> Vec<(&'static str, Value)> {
    pass.map(|p| ("medsentry.pass", Value::Str(p.into()))).into_iter().collect()
}

/// The queue and infer spans of an entry queued at `queued` and answered with `result` (a
/// failed queue span when it was not run).
fn record_entry_spans(trace: &CallTrace, queued: Instant, result: &Result<InferResult, BatchError>, pass: Option<&'static str>) {
    let result = match result {
        Ok(r) => r,
        Err(e) => return trace.stage("queue", queued, Instant::now(), pass_attrs(pass), Some(e.to_string())),
    };
    let ran = queued + Duration::from_secs_f64(result.queue_seconds);
    trace.stage("queue", queued, ran, pass_attrs(pass), None);
    let mut infer = pass_attrs(pass);
    infer.push(("medsentry.batch_size", Value::Int(result.batch_size as i64)));
    trace.stage("infer", ran, ran + Duration::from_secs_f64(result.infer_seconds), infer, None);
}
