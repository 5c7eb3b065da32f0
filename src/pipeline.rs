//! pipeline: one input through decode -> preprocess -> batcher/engine -> defense (detectors,
//! campaign monitor, policy), with the wall time of every stage. Shared by the gRPC API
//! and the `screen` command.

use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::bundle::InputSpec;
use crate::decode::{self, CancelFlag, DecodeConfig, DecodeError, DecodeLimits, Input, Reservation};
use crate::defense::numeric::{argmax, softmax};
use crate::defense::ood::OodModel;
use crate::defense::residual::{self, ResidualStatistics};
use crate::defense::squeeze::Squeeze;
use crate::defense::{campaign, CampaignStatus, Evidence, Screening};
use crate::engine::stats::StageSeconds;
use crate::engine::BatchError;
use crate::metrics;
use crate::policy::{self, Enforced, Origin, Refusal, Subject};
use crate::preprocess;
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
    let squeeze = model.screener.squeeze().cloned();
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
            Extras { residual: want_residual, squeeze: squeeze.as_ref(), ood: ood.as_ref(), residual_stats: residual_stats.as_ref(), chroma },
        );
        drop(slot);
        (input, prepared, reservation, decode_started)
    })
    .await
    .map_err(|e| PipelineError::Internal(format!("decode task: {e}")))?;
    cancel_guard.disarm();
    let prepared = prepared.inspect_err(|e| trace.stage("decode", decode_started, Instant::now(), Vec::new(), Some(e.to_string())))?;
    let Prepared { tensor, rows, residual, statistics, residual_features, dicom, chroma, decode_s, preprocess_s } = prepared;
    let name = model.name();
    metrics::record_stage(name, "decode", decode_s);
    metrics::record_stage(name, "preprocess", preprocess_s);
    let decoded = decode_started + Duration::from_secs_f64(decode_s);
    trace.stage("decode", decode_started, decoded, Vec::new(), None);
    trace.stage("preprocess", decoded, decoded + Duration::from_secs_f64(preprocess_s), vec![("medsentry.rows", Value::Int(rows as i64))], None);

    let queued = Instant::now();
    let result = model
        .batcher
        .infer_rows(tensor, rows, deadline)
        .await
        .inspect_err(|e| trace.stage("queue", queued, Instant::now(), Vec::new(), Some(e.to_string())))?;
    metrics::record_stage(name, "queue", result.queue_seconds);
    metrics::record_stage(name, "infer", result.infer_seconds);
    let ran = queued + Duration::from_secs_f64(result.queue_seconds);
    trace.stage("queue", queued, ran, Vec::new(), None);
    trace.stage("infer", ran, ran + Duration::from_secs_f64(result.infer_seconds), vec![("medsentry.batch_size", Value::Int(result.batch_size as i64))], None);

    let detect_start = Instant::now();
    let evidence = Evidence { residual_features: residual_features.as_deref(), statistics: statistics.as_deref(), dicom: dicom.as_ref(), chroma };
    let mut screening = model.screener.screen(&result, &evidence);
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

/// Decode + preprocess output.
pub struct Prepared {
    /// The normalised model input, followed by its squeezed copies when asked for.
    pub tensor: Vec<f32>,
    /// Inputs in `tensor` (1, or 1 + the squeezed copies).
    pub rows: usize,
    /// The campaign monitor's high-pass residual of the [0, 1] input, when asked for.
    pub residual: Option<Vec<f32>>,
    /// The out-of-distribution model's image statistics of the [0, 1] input, when asked for.
    pub statistics: Option<Vec<f64>>,
    /// The residual-statistics detector's features of the [0, 1] input, when asked for.
    pub residual_features: Option<Vec<f64>>,
    /// What the DICOM header says the image is (None for other inputs).
    pub dicom: Option<crate::decode::DicomAttributes>,
    /// Mean chroma of a decoded colour image (None for single-channel inputs and tensors).
    pub chroma: Option<f32>,
    pub decode_s: f64,
    pub preprocess_s: f64,
}

/// What screening needs from decode + preprocess besides the model input; both are made
/// from the [0, 1] pixels before mean/std.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extras<'a> {
    /// The campaign monitor's residual.
    pub residual: bool,
    /// Feature squeezing: its copies are appended to the input's rows (same batch entry).
    pub squeeze: Option<&'a Squeeze>,
    /// The out-of-distribution model, whose image statistics are wanted.
    pub ood: Option<&'a OodModel>,
    /// The residual-statistics detector, whose features are wanted.
    pub residual_stats: Option<&'a ResidualStatistics>,
    /// The mean chroma of a colour input (the bundle's [accepts] max_chroma), a pass over
    /// the full-resolution image only bundles that check it pay for.
    pub chroma: bool,
}

/// Decode + preprocess, with the seconds each step took, with no memory budget.
pub fn prepare(input: &Input, spec: &InputSpec, limits: &DecodeLimits, extras: Extras) -> Result<Prepared, PipelineError> {
    let mut unlimited = decode::DecodeBudget::unlimited().reserve(CancelFlag::default(), None);
    prepare_within(input, spec, limits, &mut unlimited, extras)
}

/// Decode + preprocess, taking the request's bytes and every large allocation of the
/// decode from `res` first.
pub fn prepare_within(input: &Input, spec: &InputSpec, limits: &DecodeLimits, res: &mut Reservation, extras: Extras) -> Result<Prepared, PipelineError> {
    let t0 = Instant::now();
    res.checkpoint()?;
    let mut image = match input {
        Input::Tensor { shape, data } => {
            let pixels = check_tensor(shape, data, spec)?;
            let decode_s = t0.elapsed().as_secs_f64();
            return Ok(finish(pixels, spec, extras, decode_s, None));
        }
        Input::Dicom(bytes) if bytes.is_empty() => return Err(DecodeError::Empty.into()),
        Input::Dicom(bytes) | Input::Image(bytes) => {
            // The request's own bytes are memory in flight too.
            res.grow(bytes.len() as u64, "request")?;
            if matches!(input, Input::Dicom(_)) || decode::looks_like_dicom(bytes) {
                decode::decode_dicom_within(bytes, limits, res)?
            } else {
                decode::decode_raster_within(bytes, limits, res)?
            }
        }
    };
    let decode_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let chroma = (extras.chroma && image.channels == 3).then(|| mean_chroma(&image));
    let pixels = preprocess::to_model_space(&image, spec);
    let mut p = finish(pixels, spec, extras, decode_s, image.dicom.take());
    p.chroma = chroma;
    p.preprocess_s = t1.elapsed().as_secs_f64();
    Ok(p)
}

fn finish(mut pixels: Vec<f32>, spec: &InputSpec, extras: Extras, decode_s: f64, dicom: Option<crate::decode::DicomAttributes>) -> Prepared {
    let t = Instant::now();
    let (h, w) = (spec.height as usize, spec.width as usize);
    // One Laplacian for the campaign monitor and the residual-statistics detector.
    let laplacian = (extras.residual || extras.residual_stats.is_some()).then(|| residual::laplacian(&pixels, h, w));
    let residual_features = extras.residual_stats.zip(laplacian.as_deref()).map(|(r, l)| r.features(l));
    let residual = laplacian.filter(|_| extras.residual).map(campaign::normalized);
    let statistics = extras.ood.map(|m| m.image_statistics(&pixels, h, w));
    let copies = extras.squeeze.map(|s| s.copies(&pixels, h, w));
    // Each row is normalised on its own (normalize walks one row's channel planes).
    preprocess::normalize(&mut pixels, spec);
    let mut rows = 1;
    for mut copy in copies.into_iter().flatten() {
        preprocess::normalize(&mut copy, spec);
        pixels.extend_from_slice(&copy);
        rows += 1;
    }
    Prepared { tensor: pixels, rows, residual, statistics, residual_features, dicom, chroma: None, decode_s, preprocess_s: t.elapsed().as_secs_f64() }
}

/// Mean over pixels of max - min over the three planes: 0 for a grayscale image stored as RGB.
fn mean_chroma(image: &decode::DecodedImage) -> f32 {
    let (r, g, b) = (image.plane(0), image.plane(1), image.plane(2));
    let sum: f64 = r.iter().zip(g).zip(b).map(|((r, g), b)| (r.max(*g).max(*b) - r.min(*g).min(*b)) as f64).sum();
    (sum / r.len().max(1) as f64) as f32
}

fn check_tensor(shape: &[i64], data: &[f32], spec: &InputSpec) -> Result<Vec<f32>, DecodeError> {
    let want = [spec.channels as i64, spec.height as i64, spec.width as i64];
    let ok = shape == want || (shape.len() == 4 && shape[0] == 1 && shape[1..] == want);
    if !ok {
        return Err(DecodeError::BadTensor(format!("shape {shape:?} does not match the model input [1, {}, {}, {}]", want[0], want[1], want[2])));
    }
    if data.len() != spec.len() {
        return Err(DecodeError::BadTensor(format!("shape {shape:?} needs {} values, got {}", spec.len(), data.len())));
    }
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        return Err(DecodeError::BadTensor(format!("value {} at index {i} is not finite", data[i])));
    }
    if let Some(i) = data.iter().position(|v| !(0.0..=1.0).contains(v)) {
        return Err(DecodeError::BadTensor(format!("value {} at index {i} is outside [0, 1] (tensors carry intensities before mean/std)", data[i])));
    }
    Ok(data.to_vec())
}
