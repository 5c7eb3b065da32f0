//! pipeline::prepare: decode + preprocess of one input, with what screening needs besides
//! the model input (residuals, image statistics, squeezed copies, chroma), each made from
//! the [0, 1] pixels before mean/std.

use std::time::Instant;

use super::PipelineError;
use crate::bundle::InputSpec;
use crate::decode::{self, CancelFlag, DecodeError, DecodeLimits, Input, Reservation};
use crate::defense::campaign;
use crate::defense::ood::OodModel;
use crate::defense::residual::{self, ResidualStatistics};
use crate::defense::squeeze::Squeeze;
use crate::preprocess;

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
    /// Mean chroma of a decoded image (0 for a single-channel one; None for tensors and
    /// when the bundle does not check it).
    pub chroma: Option<f32>,
    pub decode_s: f64,
    pub preprocess_s: f64,
    /// The [0, 1] model-size pixels before mean/std, when asked for ([`Extras::keep_pixels`]).
    pub pixels: Option<Vec<f32>>,
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
    /// The mean chroma of a decoded input (the bundle's [accepts] max_chroma or
    /// min_chroma), a pass over
    /// the full-resolution image only bundles that check it pay for.
    pub chroma: bool,
    /// Keep the [0, 1] pixels: the cascade makes the squeezed copies only when its cheap
    /// score cannot call the input clean.
    pub keep_pixels: bool,
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
    // A single-channel image has no colour: chroma 0 (a colour model's min_chroma).
    let chroma = extras.chroma.then(|| if image.channels == 3 { mean_chroma(&image) } else { 0.0 });
    let pixels = preprocess::to_model_space(&image, spec);
    let mut p = finish(pixels, spec, extras, decode_s, image.dicom.take());
    p.chroma = chroma;
    p.preprocess_s = t1.elapsed().as_secs_f64();
    Ok(p)
}

fn finish(mut pixels: Vec<f32>, spec: &InputSpec, extras: Extras, decode_s: f64, dicom: Option<crate::decode::DicomAttributes>) -> Prepared {
    let t = Instant::now();
    // Everything below reads the bundle's grid: tensors and decoded images alike.
    preprocess::quantize(&mut pixels, spec);
    let (h, w) = (spec.height as usize, spec.width as usize);
    // One Laplacian for the campaign monitor and the residual-statistics detector.
    let laplacian = (extras.residual || extras.residual_stats.is_some()).then(|| residual::laplacian(&pixels, h, w));
    let residual_features = extras.residual_stats.zip(laplacian.as_deref()).map(|(r, l)| r.features(&pixels, h, w, l));
    let residual = laplacian.filter(|_| extras.residual).map(campaign::normalized);
    let statistics = extras.ood.map(|m| m.image_statistics(&pixels, h, w));
    let copies = extras.squeeze.map(|s| squeezed_rows(s, &pixels, spec));
    let kept = extras.keep_pixels.then(|| pixels.clone());
    preprocess::normalize(&mut pixels, spec);
    let mut rows = 1;
    if let Some((copies, n)) = copies {
        pixels.extend_from_slice(&copies);
        rows += n;
    }
    Prepared {
        tensor: pixels,
        rows,
        residual,
        statistics,
        residual_features,
        dicom,
        chroma: None,
        decode_s,
        preprocess_s: t.elapsed().as_secs_f64(),
        pixels: kept,
    }
}

/// Feature squeezing's copies of the [0, 1] `pixels`, each normalised on its own (normalize
/// walks one row's channel planes), laid out as rows; and how many rows.
pub(super) fn squeezed_rows(squeeze: &Squeeze, pixels: &[f32], spec: &InputSpec) -> (Vec<f32>, usize) {
    let copies = squeeze.copies(pixels, spec.height as usize, spec.width as usize);
    let rows = copies.len();
    let mut out = Vec::with_capacity(rows * pixels.len());
    for mut copy in copies {
        preprocess::normalize(&mut copy, spec);
        out.extend_from_slice(&copy);
    }
    (out, rows)
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
