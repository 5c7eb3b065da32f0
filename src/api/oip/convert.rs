//! Open Inference Protocol tensors to pipeline inputs, and pipeline outcomes to output
//! tensors and response parameters.
//!
//! Inputs: one tensor named like the bundle's input (`[outputs] input` of bundle.toml):
//! FP32 `[N, C, H, W]` intensities in [0, 1], UINT8 `[N, C, H, W]` (0..255, divided by 255),
//! or BYTES `[N]` / `[N, 1]`, one encoded PNG/JPEG or DICOM Part 10 file per element; in
//! `raw_input_contents` (little endian; BYTES elements length-prefixed) or typed `contents`
//! (fp32_contents, uint_contents, bytes_contents).
//!
//! Outputs: `probabilities` FP32 [N, K], `verdict` BYTES [N] (CLEAN, SUSPICIOUS,
//! ADVERSARIAL, NOT_SCREENED), `fused_score` FP32 [N], `detector_scores` FP32 [N, D] (the
//! detector names in its `detectors` parameter), raw when the request was raw, typed
//! otherwise. Response parameters (strings, one comma-separated value per batch item):
//! `medsentry.verdict`, `medsentry.fused_score`, `medsentry.detector.<name>`,
//! `medsentry.action`; plus `medsentry.screen_model` and the bool `medsentry.campaign_alarm`.

use std::collections::HashMap;

use crate::bundle::Bundle;
use crate::decode;
use crate::decode::Input;
use crate::inference::infer_parameter::ParameterChoice;
use crate::inference::model_infer_request::InferInputTensor;
use crate::inference::model_infer_response::InferOutputTensor;
use crate::inference::model_metadata_response::TensorMetadata;
use crate::inference::{InferParameter, InferTensorContents, ModelInferRequest, ModelInferResponse, ModelMetadataResponse};
use crate::pipeline::{Outcome, PipelineError};

pub const PROBABILITIES: &str = "probabilities";
pub const VERDICT: &str = "verdict";
pub const FUSED_SCORE: &str = "fused_score";
pub const DETECTOR_SCORES: &str = "detector_scores";
/// Outputs a bundle answers with, in this order.
pub const OUTPUTS: [&str; 4] = [PROBABILITIES, VERDICT, FUSED_SCORE, DETECTOR_SCORES];
/// Outputs added to an upstream's answer in proxy mode.
pub const SCREENING_OUTPUTS: [&str; 3] = [VERDICT, FUSED_SCORE, DETECTOR_SCORES];

/// The batch items of a request, and whether it carried raw contents (then the answer does).
#[derive(Debug)]
pub struct Parsed {
    pub items: Vec<Input>,
    pub raw: bool,
    /// Proxy mode: each input's name and item count, in the order of `items`, so that the
    /// screening outputs (one entry per item of every input) can be read back per input.
    pub layout: String,
}

fn invalid(reason: &'static str, message: String) -> PipelineError {
    PipelineError::InvalidRequest { reason, message }
}

/// The input tensor(s) of `req` as pipeline inputs for `bundle`.
///
/// Served locally, the request carries one input named like the bundle's. In proxy mode (`proxy`), where names follow the upstream model,
/// every input is screened, whatever its name: an input the bundle cannot screen refuses
/// the request (reason `unscreenable_input`), so nothing reaches the upstream unscreened.
pub fn parse_request(req: &ModelInferRequest, bundle: &Bundle, proxy: bool) -> Result<Parsed, PipelineError> {
    let want = bundle.manifest.outputs.input.as_str();
    let names: Vec<&str> = req.inputs.iter().map(|i| i.name.as_str()).collect();
    if names.is_empty() {
        return Err(invalid("no_input", "the ModelInfer request carries no input tensor".into()));
    }
    let raw = !req.raw_input_contents.is_empty();
    if raw && req.raw_input_contents.len() != req.inputs.len() {
        return Err(invalid(
            "bad_contents",
            format!("raw_input_contents has {} entries for {} inputs (one per input, in order)", req.raw_input_contents.len(), req.inputs.len()),
        ));
    }
    if proxy {
        let mut items = Vec::new();
        let mut layout = Vec::new();
        for (index, name) in names.iter().enumerate() {
            let parsed = input_items(req, index, bundle).map_err(|e| match e {
                PipelineError::InvalidRequest { message, .. } => invalid(
                    "unscreenable_input",
                    format!("proxy mode screens every input before forwarding, and input {name:?} cannot be screened with bundle {}: {message}", bundle.name()),
                ),
                other => other,
            })?;
            layout.push(format!("{name}:{}", parsed.len()));
            items.extend(parsed);
        }
        return Ok(Parsed { items, raw, layout: layout.join(",") });
    }
    if names != [want] {
        return Err(invalid("bad_input_name", format!("model {} takes one input named {want:?}; the request has {names:?}", bundle.name())));
    }
    let items = input_items(req, 0, bundle)?;
    Ok(Parsed { layout: format!("{want}:{}", items.len()), items, raw })
}

/// The batch items of input `index` of `req`.
fn input_items(req: &ModelInferRequest, index: usize, bundle: &Bundle) -> Result<Vec<Input>, PipelineError> {
    let input = &req.inputs[index];
    let data = if !req.raw_input_contents.is_empty() {
        if input.contents.as_ref().is_some_and(|c| *c != InferTensorContents::default()) {
            return Err(invalid("bad_contents", format!("input {:?} has both typed contents and raw_input_contents; send one", input.name)));
        }
        Contents::Raw(&req.raw_input_contents[index])
    } else {
        Contents::Typed(input.contents.as_ref())
    };
    match input.datatype.as_str() {
        "FP32" | "UINT8" => pixel_items(input, data, bundle),
        "BYTES" => file_items(input, data),
        other => Err(invalid(
            "bad_datatype",
            format!("input {:?} has datatype {other}; send FP32 ([0, 1] intensities), UINT8 (0..255) or BYTES (one PNG/JPEG/DICOM file per item)", input.name),
        )),
    }
}

enum Contents<'a> {
    Raw(&'a [u8]),
    Typed(Option<&'a InferTensorContents>),
}

fn expected_shape(bundle: &Bundle) -> [i64; 3] {
    let s = &bundle.manifest.input;
    [s.channels as i64, s.height as i64, s.width as i64]
}

/// FP32 / UINT8 `[N, C, H, W]`: one [1, C, H, W] tensor per batch item.
fn pixel_items(input: &InferInputTensor, data: Contents, bundle: &Bundle) -> Result<Vec<Input>, PipelineError> {
    let chw = expected_shape(bundle);
    let shape = &input.shape;
    if shape.len() != 4 || shape[0] < 1 || shape[1..] != chw {
        return Err(invalid(
            "bad_shape",
            format!(
                "input {:?} has shape {shape:?}; model {} takes {} [N, {}, {}, {}] with N >= 1",
                input.name,
                bundle.name(),
                input.datatype,
                chw[0],
                chw[1],
                chw[2]
            ),
        ));
    }
    let n = shape[0] as usize;
    let per_item = (chw[0] * chw[1] * chw[2]) as usize;
    let count = n.checked_mul(per_item).ok_or_else(|| invalid("bad_shape", format!("shape {shape:?} is too large")))?;
    let fp32 = input.datatype == "FP32";
    let values: Vec<f32> = match data {
        Contents::Raw(bytes) => {
            let want = count * if fp32 { 4 } else { 1 };
            if bytes.len() != want {
                return Err(invalid(
                    "bad_contents",
                    format!("input {:?}: {} shape {shape:?} needs {want} raw bytes, got {}", input.name, input.datatype, bytes.len()),
                ));
            }
            if fp32 {
                bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
            } else {
                bytes.iter().map(|&b| b as f32 / 255.0).collect()
            }
        }
        Contents::Typed(c) => {
            let c = c.cloned().unwrap_or_default();
            let got = if fp32 { c.fp32_contents.len() } else { c.uint_contents.len() };
            if got != count {
                let field = if fp32 { "fp32_contents" } else { "uint_contents" };
                return Err(invalid("bad_contents", format!("input {:?}: shape {shape:?} needs {count} values in {field}, got {got}", input.name)));
            }
            if fp32 {
                c.fp32_contents
            } else {
                if let Some(i) = c.uint_contents.iter().position(|&v| v > 255) {
                    return Err(invalid("bad_contents", format!("input {:?}: UINT8 value {} at index {i} is over 255", input.name, c.uint_contents[i])));
                }
                c.uint_contents.iter().map(|&v| v as f32 / 255.0).collect()
            }
        }
    };
    let item_shape = vec![1, chw[0], chw[1], chw[2]];
    Ok(values.chunks_exact(per_item).map(|chunk| Input::Tensor { shape: item_shape.clone(), data: chunk.to_vec() }).collect())
}

/// BYTES `[N]` or `[N, 1]`: one encoded file per batch item.
fn file_items(input: &InferInputTensor, data: Contents) -> Result<Vec<Input>, PipelineError> {
    let shape = &input.shape;
    let ok = match shape.as_slice() {
        [n] | [n, 1] => *n >= 1,
        _ => false,
    };
    if !ok {
        return Err(invalid("bad_shape", format!("BYTES input {:?} has shape {shape:?}; send [N] or [N, 1], one PNG/JPEG/DICOM file per element", input.name)));
    }
    let n = shape[0] as usize;
    let files: Vec<Vec<u8>> = match data {
        Contents::Raw(bytes) => {
            split_bytes_tensor(bytes).map_err(|e| invalid("bad_contents", format!("input {:?}: {e}", input.name)))?.into_iter().map(<[u8]>::to_vec).collect()
        }
        Contents::Typed(c) => c.map(|c| c.bytes_contents.clone()).unwrap_or_default(),
    };
    if files.len() != n {
        return Err(invalid("bad_contents", format!("BYTES input {:?} of shape {shape:?} needs {n} elements, got {}", input.name, files.len())));
    }
    Ok(files.into_iter().map(|b| if decode::looks_like_dicom(&b) { Input::Dicom(b) } else { Input::Image(b) }).collect())
}

/// Splits a raw BYTES tensor: each element is a 4-byte little-endian length, then its bytes.
pub fn split_bytes_tensor(raw: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut out = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(format!("BYTES element {} is cut inside its 4-byte length prefix", out.len()));
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        rest = &rest[4..];
        if rest.len() < len {
            return Err(format!("BYTES element {} claims {len} bytes but {} remain", out.len(), rest.len()));
        }
        out.push(&rest[..len]);
        rest = &rest[len..];
    }
    Ok(out)
}

/// The inverse of [`split_bytes_tensor`].
pub fn join_bytes_tensor<'a>(items: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for it in items {
        out.extend_from_slice(&(it.len() as u32).to_le_bytes());
        out.extend_from_slice(it);
    }
    out
}

/// One output tensor before it is encoded raw or typed.
pub struct OutTensor {
    pub name: &'static str,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
    pub parameters: HashMap<String, InferParameter>,
    pub data: Data,
}

pub enum Data {
    F32(Vec<f32>),
    Bytes(Vec<Vec<u8>>),
}

pub fn string_param(s: impl Into<String>) -> InferParameter {
    InferParameter { parameter_choice: Some(ParameterChoice::StringParam(s.into())) }
}

/// `verdict`, and for a caller who sees scores `fused_score` and `detector_scores`, for
/// the batch.
pub fn screening_outputs(bundle: &Bundle, outcomes: &[Outcome], shows_scores: bool) -> Vec<OutTensor> {
    let n = outcomes.len() as i64;
    let verdicts = OutTensor {
        name: VERDICT,
        datatype: "BYTES",
        shape: vec![n],
        parameters: HashMap::new(),
        data: Data::Bytes(outcomes.iter().map(|o| verdict(o).into_bytes()).collect()),
    };
    if !shows_scores {
        return vec![verdicts];
    }
    let names: Vec<&str> = bundle.manifest.detectors.iter().map(|d| d.name.as_str()).collect();
    let thresholds: Vec<String> = bundle.manifest.detectors.iter().map(|d| d.threshold.to_string()).collect();
    let scores = outcomes.iter().flat_map(|o| names.iter().map(move |name| detector_score(o, name))).collect();
    let mut detector_params = HashMap::new();
    detector_params.insert("detectors".to_string(), string_param(names.join(",")));
    detector_params.insert("thresholds".to_string(), string_param(thresholds.join(",")));
    vec![
        verdicts,
        OutTensor {
            name: FUSED_SCORE,
            datatype: "FP32",
            shape: vec![n],
            parameters: HashMap::new(),
            data: Data::F32(outcomes.iter().map(|o| o.screening.fused_score).collect()),
        },
        OutTensor { name: DETECTOR_SCORES, datatype: "FP32", shape: vec![n, names.len() as i64], parameters: detector_params, data: Data::F32(scores) },
    ]
}

/// `probabilities` followed by the screening outputs.
pub fn model_outputs(bundle: &Bundle, outcomes: &[Outcome], shows_scores: bool) -> Vec<OutTensor> {
    let k = bundle.manifest.labels.len() as i64;
    let mut params = HashMap::new();
    params.insert("labels".to_string(), string_param(bundle.manifest.labels.join(",")));
    let probabilities = outcomes.iter().flat_map(|o| o.probabilities.iter().copied()).collect();
    let mut out =
        vec![OutTensor { name: PROBABILITIES, datatype: "FP32", shape: vec![outcomes.len() as i64, k], parameters: params, data: Data::F32(probabilities) }];
    out.extend(screening_outputs(bundle, outcomes, shows_scores));
    out
}

fn detector_score(o: &Outcome, name: &str) -> f32 {
    o.screening.detectors.iter().find(|d| d.name == name).map_or(f32::NAN, |d| d.score)
}

fn verdict(o: &Outcome) -> String {
    o.screening.verdict.as_str().to_uppercase()
}

/// The `medsentry.*` response parameters (see the module docs); scores only for a caller
/// who sees them, `medsentry.fired` (the detectors that fired, `+`-joined, per item) always.
pub fn screening_parameters(bundle: &Bundle, outcomes: &[Outcome], shows_scores: bool) -> HashMap<String, InferParameter> {
    let join = |f: &dyn Fn(&Outcome) -> String| outcomes.iter().map(f).collect::<Vec<_>>().join(",");
    let mut p = HashMap::new();
    p.insert("medsentry.verdict".to_string(), string_param(join(&verdict)));
    let fired = |o: &Outcome| o.screening.detectors.iter().filter(|d| d.fired).map(|d| d.name.as_str()).collect::<Vec<_>>().join("+");
    p.insert("medsentry.fired".to_string(), string_param(join(&fired)));
    if shows_scores {
        p.insert("medsentry.fused_score".to_string(), string_param(join(&|o| o.screening.fused_score.to_string())));
        for d in &bundle.manifest.detectors {
            p.insert(format!("medsentry.detector.{}", d.name), string_param(join(&|o| detector_score(o, &d.name).to_string())));
        }
    }
    p.insert(
        "medsentry.action".to_string(),
        string_param(join(&|o| if o.enforced.action.is_empty() { "none".to_string() } else { o.enforced.action.replace(',', "+") })),
    );
    p.insert("medsentry.screen_model".to_string(), string_param(bundle.name()));
    let alarm = outcomes.iter().any(|o| o.campaign.as_ref().is_some_and(|c| c.alarm()));
    p.insert("medsentry.campaign_alarm".to_string(), InferParameter { parameter_choice: Some(ParameterChoice::BoolParam(alarm)) });
    p
}

/// Appends `tensors` to `resp`: as raw_output_contents when `raw`, else as typed contents.
pub fn append_outputs(resp: &mut ModelInferResponse, tensors: Vec<OutTensor>, raw: bool) {
    for t in tensors {
        let mut contents = None;
        if raw {
            resp.raw_output_contents.push(match &t.data {
                Data::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                Data::Bytes(v) => join_bytes_tensor(v.iter().map(Vec::as_slice)),
            });
        } else {
            contents = Some(match t.data {
                Data::F32(v) => InferTensorContents { fp32_contents: v, ..Default::default() },
                Data::Bytes(v) => InferTensorContents { bytes_contents: v, ..Default::default() },
            });
        }
        resp.outputs.push(InferOutputTensor { name: t.name.to_string(), datatype: t.datatype.to_string(), shape: t.shape, parameters: t.parameters, contents });
    }
}

/// Refuses a request for an output this service does not produce (before screening it).
pub fn check_requested_outputs(req: &ModelInferRequest) -> Result<(), PipelineError> {
    match req.outputs.iter().find(|o| !OUTPUTS.contains(&o.name.as_str())) {
        Some(o) => Err(invalid("unknown_output", format!("requested output {:?} does not exist; outputs are {OUTPUTS:?}", o.name))),
        None => Ok(()),
    }
}

/// Proxy mode: drops the upstream outputs named like a screening output (and their raw
/// contents), so that the screening outputs appended next are the only ones of their names.
pub fn remove_screening_outputs(resp: &mut ModelInferResponse) {
    let raw_aligned = resp.raw_output_contents.len() == resp.outputs.len();
    let mut i = 0;
    while i < resp.outputs.len() {
        if SCREENING_OUTPUTS.contains(&resp.outputs[i].name.as_str()) {
            resp.outputs.remove(i);
            if raw_aligned {
                resp.raw_output_contents.remove(i);
            }
        } else {
            i += 1;
        }
    }
}

/// The outputs a request asked for (all when it names none), in the order asked.
pub fn select_outputs(req: &ModelInferRequest, mut tensors: Vec<OutTensor>) -> Result<Vec<OutTensor>, PipelineError> {
    if req.outputs.is_empty() {
        return Ok(tensors);
    }
    let mut picked = Vec::new();
    for o in &req.outputs {
        match tensors.iter().position(|t| t.name == o.name) {
            Some(i) => picked.push(tensors.swap_remove(i)),
            None if picked.iter().any(|t: &OutTensor| t.name == o.name) => {}
            None if [FUSED_SCORE, DETECTOR_SCORES].contains(&o.name.as_str()) => {
                return Err(invalid(
                    "scores_withheld",
                    format!("output {:?} carries detector scores, which the policy ([disclosure]) withholds from this caller", o.name),
                ))
            }
            None => return Err(invalid("unknown_output", format!("requested output {:?} does not exist; outputs are {OUTPUTS:?}", o.name))),
        }
    }
    Ok(picked)
}

/// The screening outputs' metadata (also appended to an upstream model's in proxy mode).
pub fn screening_metadata(bundle: &Bundle) -> Vec<TensorMetadata> {
    let d = bundle.manifest.detectors.len() as i64;
    vec![
        TensorMetadata { name: VERDICT.into(), datatype: "BYTES".into(), shape: vec![-1] },
        TensorMetadata { name: FUSED_SCORE.into(), datatype: "FP32".into(), shape: vec![-1] },
        TensorMetadata { name: DETECTOR_SCORES.into(), datatype: "FP32".into(), shape: vec![-1, d] },
    ]
}

pub fn model_metadata(bundle: &Bundle) -> ModelMetadataResponse {
    let m = &bundle.manifest;
    let [c, h, w] = expected_shape(bundle);
    let mut outputs = vec![TensorMetadata { name: PROBABILITIES.into(), datatype: "FP32".into(), shape: vec![-1, m.labels.len() as i64] }];
    outputs.extend(screening_metadata(bundle));
    ModelMetadataResponse {
        name: m.name.clone(),
        versions: vec![m.version.clone()],
        platform: "onnxruntime_onnx".into(),
        inputs: vec![TensorMetadata { name: m.outputs.input.clone(), datatype: "FP32".into(), shape: vec![-1, c, h, w] }],
        outputs,
    }
}

#[cfg(test)]
mod tests;
