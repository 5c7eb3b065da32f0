//! preprocess: [`DecodedImage`] -> the model's input tensor, exactly as the training
//! pipeline does it (models/training/medsentry_training/preprocess.py):
//! colour (BT.601 luma or RGB) -> area resize -> rounding to the bundle's grid
//! (`quantize_bits`, when it declares one) -> (x - mean) / std.
//!
//! The resize is a box filter written out here (not a library's resampler) so that the
//! sidecar and the pipeline agree to 1e-5 on the same file.

use crate::bundle::{ColorMode, InputSpec};
use crate::decode::DecodedImage;

const LUMA: [f64; 3] = [0.299, 0.587, 0.114];

/// Pixels in [0, 1] at the model's size (C x H x W), before mean/std: what tensor requests
/// carry and what adversarial examples perturb.
pub fn to_model_space(img: &DecodedImage, spec: &InputSpec) -> Vec<f32> {
    // Planes are read through closures, never materialised at the decoded size: an f64
    // copy of a 25 M pixel RGB image would be 600 MB.
    let (h, w) = (spec.height as usize, spec.width as usize);
    let wy = AreaWeights::new(img.height, h);
    let wx = AreaWeights::new(img.width, w);
    let resize = |get: &dyn Fn(usize) -> f64| area_resize(get, img.width, img.height, &wy, &wx).into_iter().map(|v| v as f32);
    let mut out = Vec::with_capacity(spec.channels as usize * h * w);
    match (spec.color, img.channels) {
        (ColorMode::Gray, 1) => {
            let p = img.plane(0);
            out.extend(resize(&|i| p[i] as f64));
        }
        (ColorMode::Gray, _) => {
            let (r, g, b) = (img.plane(0), img.plane(1), img.plane(2));
            out.extend(resize(&|i| LUMA[0] * r[i] as f64 + LUMA[1] * g[i] as f64 + LUMA[2] * b[i] as f64));
        }
        (ColorMode::Rgb, 1) => {
            let p = img.plane(0);
            let grey: Vec<f32> = resize(&|i| p[i] as f64).collect();
            for _ in 0..3 {
                out.extend_from_slice(&grey);
            }
        }
        (ColorMode::Rgb, _) => {
            for c in 0..3 {
                let p = img.plane(c);
                out.extend(resize(&|i| p[i] as f64));
            }
        }
    }
    out
}

/// Rounds [0, 1] model-space pixels in place to the bundle's grid (`quantize_bits`; none
/// when absent): v -> floor(v * L + 0.5) / L with L = 2^bits - 1, in f32, as
/// preprocess.quantize does in the pipeline, so the same f32 input gives the same bits on
/// both sides. Tensor requests outside [0, 1] were refused before this.
pub fn quantize(pixels: &mut [f32], spec: &InputSpec) {
    if let Some(bits) = spec.quantize_bits {
        let levels = ((1u32 << bits) - 1) as f32;
        pixels.iter_mut().for_each(|v| *v = (*v * levels + 0.5).floor() / levels);
    }
}

/// Applies the bundle's per-channel mean/std in place.
pub fn normalize(pixels: &mut [f32], spec: &InputSpec) {
    let n = (spec.height * spec.width) as usize;
    for (c, chunk) in pixels.chunks_mut(n).enumerate() {
        let (m, s) = (spec.mean[c], spec.std[c]);
        chunk.iter_mut().for_each(|v| *v = (*v - m) / s);
    }
}

/// The full path for decoded images: model-space pixels, normalised.
pub fn preprocess(img: &DecodedImage, spec: &InputSpec) -> Vec<f32> {
    let mut t = to_model_space(img, spec);
    quantize(&mut t, spec);
    normalize(&mut t, spec);
    t
}

/// Sparse rows of the (n_out x n_in) area-averaging matrix.
struct AreaWeights {
    /// For each output index: (first source index, weights of consecutive source pixels).
    rows: Vec<(usize, Vec<f64>)>,
}

impl AreaWeights {
    fn new(n_in: usize, n_out: usize) -> Self {
        let scale = n_in as f64 / n_out as f64;
        let rows = (0..n_out)
            .map(|i| {
                let (start, end) = (i as f64 * scale, (i + 1) as f64 * scale);
                let first = start.floor() as usize;
                let mut weights = Vec::new();
                let mut j = first;
                while j < n_in && (j as f64) < end {
                    let overlap = end.min(j as f64 + 1.0) - start.max(j as f64);
                    weights.push(if overlap > 0.0 { overlap / scale } else { 0.0 });
                    j += 1;
                }
                (first, weights)
            })
            .collect();
        AreaWeights { rows }
    }
}

/// Separable box resize of a `width` x `in_h` plane whose pixel `i` is `get(i)`: rows
/// first (to the output width), then columns.
fn area_resize(get: &dyn Fn(usize) -> f64, width: usize, in_h: usize, wy: &AreaWeights, wx: &AreaWeights) -> Vec<f64> {
    let out_w = wx.rows.len();
    let mut horizontal = vec![0f64; in_h * out_w];
    for y in 0..in_h {
        let row = y * width;
        for (x, (first, weights)) in wx.rows.iter().enumerate() {
            horizontal[y * out_w + x] = weights.iter().enumerate().map(|(k, w)| w * get(row + first + k)).sum();
        }
    }
    let mut out = vec![0f64; wy.rows.len() * out_w];
    for (y, (first, weights)) in wy.rows.iter().enumerate() {
        let dst = &mut out[y * out_w..(y + 1) * out_w];
        for (k, w) in weights.iter().enumerate() {
            let src = &horizontal[(first + k) * out_w..(first + k + 1) * out_w];
            dst.iter_mut().zip(src).for_each(|(d, s)| *d += w * s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn area_weights_rows_sum_to_one() {
        for (n_in, n_out) in [(224, 64), (7, 3), (64, 64), (10, 20), (1955, 64)] {
            let w = AreaWeights::new(n_in, n_out);
            for (_, row) in &w.rows {
                let s: f64 = row.iter().sum();
                assert!((s - 1.0).abs() < 1e-9, "{n_in}->{n_out}: row sums to {s}");
            }
        }
    }

    #[test]
    fn quantize_rounds_half_up_to_the_grid() {
        let mut spec = InputSpec {
            channels: 1,
            height: 1,
            width: 4,
            color: ColorMode::Gray,
            resize: "area".into(),
            mean: vec![0.0],
            std: vec![1.0],
            layout: Default::default(),
            dicom: None,
            quantize_bits: None,
        };
        let mut v = vec![0.0, 1.0, 127.5 / 255.0, 0.3];
        quantize(&mut v, &spec);
        assert_eq!(v, vec![0.0, 1.0, 127.5 / 255.0, 0.3], "no quantize_bits: unchanged");
        spec.quantize_bits = Some(8);
        quantize(&mut v, &spec);
        assert_eq!(v, vec![0.0, 1.0, 128.0 / 255.0, 77.0 / 255.0]);
        // An input already on the grid (an 8-bit image at the model's size) is kept.
        let grid: Vec<f32> = (0..256).map(|k| k as f32 / 255.0).collect();
        let mut again = grid.clone();
        spec.width = 256;
        quantize(&mut again, &spec);
        assert_eq!(again, grid);
    }

    #[test]
    fn integer_factor_is_block_mean() {
        let plane: Vec<f64> = (0..16).map(|v| v as f64).collect();
        let w = AreaWeights::new(4, 2);
        let out = area_resize(&|i| plane[i], 4, 4, &w, &w);
        assert_eq!(out, vec![2.5, 4.5, 10.5, 12.5]);
    }
}
