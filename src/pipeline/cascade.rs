//! The cascade's second pass (`cascade = true`): after the first forward pass a cheap
//! combiner answers most inputs CLEAN; the others get feature squeezing's copies, run as
//! one batcher group for every input of the call that needs them, and the copies' rows
//! are merged into the input's result for the full verdict. (A multi-item request's
//! second passes used to run one after another, each its own ONNX Runtime call.)

use std::time::Instant;

use super::{evidence, prepare, record_entry_spans, PipelineError, Staged};
use crate::defense::Screening;
use crate::engine::{BatchError, InferResult};
use crate::metrics;
use crate::registry::ServedModel;
use crate::trace::CallTrace;

/// An input after the cascade's look.
pub(super) struct Looked {
    /// The first pass, with the second pass's rows merged in when it ran.
    pub result: InferResult,
    /// The cheap CLEAN answer; None: the full verdict screens the input.
    pub cheap: Option<Screening>,
    /// Seconds the cheap look took: the detect stage of an input it answered.
    pub look_s: f64,
}

/// Looks at each input's first pass and runs the second passes the cheap score asks for,
/// all in one group; a second pass that failed fails its own input. Without the cascade
/// (or feature squeezing) every input goes on to the full verdict unchanged.
pub(super) async fn look(
    model: &ServedModel,
    items: Vec<(&Staged, InferResult)>,
    deadline: Option<Instant>,
    trace: &CallTrace,
) -> Vec<Result<Looked, PipelineError>> {
    let name = model.name();
    let spec = &model.bundle.manifest.input;
    let squeeze = model.screener.squeeze().filter(|_| model.screener.cascades());
    let mut looked = Vec::with_capacity(items.len());
    let mut second_rows = Vec::new();
    let mut needing = Vec::new();
    for (index, (staged, result)) in items.into_iter().enumerate() {
        let started = Instant::now();
        let mut cheap = None;
        if let (Some(squeeze), Some(pixels)) = (squeeze, staged.prepared.pixels.as_deref()) {
            cheap = model.screener.screen_cheap(&result, &evidence(&staged.prepared));
            metrics::record_cascade(name, if cheap.is_some() { "skipped" } else { "full" });
            if cheap.is_none() {
                second_rows.push(prepare::squeezed_rows(squeeze, pixels, spec));
                needing.push(index);
            }
        }
        looked.push(Looked { result, cheap, look_s: started.elapsed().as_secs_f64() });
    }
    let mut failed: Vec<Option<BatchError>> = vec![None; looked.len()];
    if !needing.is_empty() {
        let queued = Instant::now();
        let seconds = match model.batcher.infer_group(second_rows, deadline).await {
            Ok(seconds) => seconds,
            Err(e) => vec![Err(e); needing.len()],
        };
        for (index, second) in needing.into_iter().zip(seconds) {
            record_entry_spans(trace, queued, &second, Some("feature-squeezing"));
            match second {
                Ok(second) => merge(&mut looked[index].result, second),
                Err(e) => failed[index] = Some(e),
            }
        }
    }
    looked.into_iter().zip(failed).map(|(l, e)| e.map_or(Ok(l), |e| Err(e.into()))).collect()
}

/// The squeezed copies' logits and features become the input's extra rows.
fn merge(result: &mut InferResult, second: InferResult) {
    result.queue_seconds += second.queue_seconds;
    result.infer_seconds += second.infer_seconds;
    result.extra_logits = std::iter::once(second.logits).chain(second.extra_logits).collect();
    result.extra_features = std::iter::once(second.features).chain(second.extra_features).collect();
}
