//! squeeze: feature squeezing (Xu et al. 2018), the training-free detector. An adversarial
//! input's prediction tends to move when the input is "squeezed" (fewer grey levels, a
//! median filter), a clean one's much less. The pipeline appends the two squeezed copies
//! of each input to its entry, so they run in the same batch as the input; the score is the
//! largest L1 distance between the input's softmax and a squeezed copy's.
//!
//! Bit for bit the formulas of models/training/medsentry_training/squeeze.py: bit depth
//! `round_half_even(x * (2^b - 1)) / (2^b - 1)`, median over a size x size window with
//! edges replicated (scipy's mode "nearest"), both on the [0, 1] input before mean/std.

use serde::Deserialize;

use super::numeric::softmax;

#[derive(Debug, Clone, PartialEq)]
pub struct Squeeze {
    pub bit_depth: u32,
    pub median_size: usize,
}

#[derive(Deserialize)]
struct SqueezeFile {
    kind: String,
    bit_depth: u32,
    median_size: usize,
}

/// Squeezed copies per input.
pub const COPIES: usize = 2;

impl Squeeze {
    pub fn load(bytes: &[u8]) -> Result<Squeeze, String> {
        let f: SqueezeFile = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if f.kind != "feature_squeezing" {
            return Err(format!("file says kind {:?}", f.kind));
        }
        if !(1..=16).contains(&f.bit_depth) || f.median_size % 2 == 0 || !(3..=9).contains(&f.median_size) {
            return Err(format!("bit_depth {} must be 1..=16 and median_size {} odd in 3..=9", f.bit_depth, f.median_size));
        }
        Ok(Squeeze { bit_depth: f.bit_depth, median_size: f.median_size })
    }

    /// The squeezed copies of a [C, H, W] input of [0, 1] intensities, in score order.
    pub fn copies(&self, pixels: &[f32], height: usize, width: usize) -> [Vec<f32>; COPIES] {
        let levels = ((1u32 << self.bit_depth) - 1) as f64;
        let bits = pixels.iter().map(|&v| (round_half_even(v as f64 * levels) / levels) as f32).collect();
        [bits, median(pixels, height, width, self.median_size)]
    }

    /// max over copies of L1(softmax(logits), softmax(copy's logits)); NaN when the copies'
    /// logits are missing, so that the screener reports the detector as failed.
    pub fn score(&self, logits: &[f32], copies: &[Vec<f32>]) -> f64 {
        if copies.len() != COPIES {
            return f64::NAN;
        }
        let p = softmax(logits);
        copies.iter().map(|l| softmax(l).iter().zip(&p).map(|(a, b)| (*a as f64 - *b as f64).abs()).sum::<f64>()).fold(0.0, f64::max)
    }
}

/// How far each squeezed copy moves the penultimate features: the L2 distance between the
/// input's features and each copy's, in score order (squeeze.py `feature_shift`, a raw
/// signal of the fused detector: an adversarial perturbation is fragile to squeezing deep
/// in the network, not only in the softmax). None unless there are COPIES copies of the
/// input's width.
pub fn feature_shift(features: &[f32], copies: &[Vec<f32>]) -> Option<[f64; COPIES]> {
    if copies.len() != COPIES || copies.iter().any(|c| c.len() != features.len()) {
        return None;
    }
    let mut shift = [0.0; COPIES];
    for (s, copy) in shift.iter_mut().zip(copies) {
        *s = copy.iter().zip(features).map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2)).sum::<f64>().sqrt();
    }
    Some(shift)
}

/// `x.round_ties_even()` for 0 <= x < 2^52, by adding and taking away 2^52: the addition
/// rounds to an integer in the current (nearest, ties-to-even) mode. The same value as
/// `round_ties_even`, which without SSE4.1 in the target is a library call per pixel (the
/// largest share of the sidecar's own CPU in a profile of the served chest model).
#[inline(always)]
fn round_half_even(x: f64) -> f64 {
    const TWO_52: f64 = 4_503_599_627_370_496.0;
    (x + TWO_52) - TWO_52
}

/// Median filter per plane, window `size`, edges replicated. The served bundles use 3x3:
/// it takes the sorting-network path (same values as sorting the window).
fn median(pixels: &[f32], height: usize, width: usize, size: usize) -> Vec<f32> {
    if size == 3 {
        return median3(pixels, height, width);
    }
    median_sorted(pixels, height, width, size)
}

/// 3x3 median: interior pixels read their window directly, border pixels through clamped
/// indices; the median of the nine values comes from a 19-exchange selection network
/// (min/max, no branches) instead of a general sort.
fn median3(pixels: &[f32], height: usize, width: usize) -> Vec<f32> {
    let mut out = vec![0f32; pixels.len()];
    let at = |plane: &[f32], y: isize, x: isize| plane[y.clamp(0, height as isize - 1) as usize * width + x.clamp(0, width as isize - 1) as usize];
    for (plane, dst) in pixels.chunks(height * width).zip(out.chunks_mut(height * width)) {
        let border = |y: usize, x: usize| {
            let (y, x) = (y as isize, x as isize);
            let mut w = [0f32; 9];
            for (k, v) in w.iter_mut().enumerate() {
                *v = at(plane, y + k as isize / 3 - 1, x + k as isize % 3 - 1);
            }
            median9(w)
        };
        for y in 0..height {
            if y == 0 || y + 1 == height || width < 3 {
                (0..width).for_each(|x| dst[y * width + x] = border(y, x));
                continue;
            }
            dst[y * width] = border(y, 0);
            dst[y * width + width - 1] = border(y, width - 1);
            let (up, mid, down) = (&plane[(y - 1) * width..y * width], &plane[y * width..(y + 1) * width], &plane[(y + 1) * width..(y + 2) * width]);
            for x in 1..width - 1 {
                dst[y * width + x] = median9([up[x - 1], up[x], up[x + 1], mid[x - 1], mid[x], mid[x + 1], down[x - 1], down[x], down[x + 1]]);
            }
        }
    }
    out
}

/// Median of nine values by the classic 19 compare-exchange selection network.
#[inline]
fn median9(mut p: [f32; 9]) -> f32 {
    #[inline(always)]
    fn sort2(p: &mut [f32; 9], a: usize, b: usize) {
        // Plain comparisons (one minss / maxss each) rather than f32::min / max, whose NaN
        // handling costs more: the inputs are finite (tensors are checked, decodes are).
        let (x, y) = (p[a], p[b]);
        let (lo, hi) = (if x < y { x } else { y }, if x < y { y } else { x });
        p[a] = lo;
        p[b] = hi;
    }
    for (a, b) in
        [(1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3), (5, 8), (4, 7), (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2)]
    {
        sort2(&mut p, a, b);
    }
    p[4]
}

/// Any odd window: sort each window (the reference the network is tested against).
fn median_sorted(pixels: &[f32], height: usize, width: usize, size: usize) -> Vec<f32> {
    let r = (size / 2) as isize;
    let clamp = |v: isize, n: usize| v.clamp(0, n as isize - 1) as usize;
    let mut out = Vec::with_capacity(pixels.len());
    let mut window = Vec::with_capacity(size * size);
    for plane in pixels.chunks(height * width) {
        for y in 0..height as isize {
            for x in 0..width as isize {
                window.clear();
                for dy in -r..=r {
                    for dx in -r..=r {
                        window.push(plane[clamp(y + dy, height) * width + clamp(x + dx, width)]);
                    }
                }
                window.sort_by(f32::total_cmp);
                out.push(window[window.len() / 2]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_shift_is_the_distance_to_each_copy() {
        let shift = feature_shift(&[1.0, 2.0], &[vec![4.0, 6.0], vec![1.0, 2.0]]).unwrap();
        assert_eq!(shift, [5.0, 0.0]);
        assert!(feature_shift(&[1.0, 2.0], &[vec![4.0, 6.0]]).is_none(), "one copy missing");
        assert!(feature_shift(&[1.0, 2.0], &[vec![4.0], vec![1.0, 2.0]]).is_none(), "a copy of another width");
    }

    #[test]
    fn bit_depth_keeps_the_grey_levels_and_median_removes_an_isolated_pixel() {
        let s = Squeeze { bit_depth: 1, median_size: 3 };
        let mut img = vec![0.2f32; 16];
        img[5] = 0.9;
        let [bits, med] = s.copies(&img, 4, 4);
        assert!(bits.iter().enumerate().all(|(i, &v)| v == if i == 5 { 1.0 } else { 0.0 }));
        assert!(med.iter().all(|&v| v == 0.2), "{med:?}");
        // Replicated edges: a corner's window holds the corner four times.
        let ramp: Vec<f32> = (0..9).map(|i| i as f32 / 8.0).collect();
        assert_eq!(median(&ramp, 3, 3, 3)[0], 1.0 / 8.0);
    }

    #[test]
    fn the_rounding_is_round_ties_even() {
        let levels = 255.0f64;
        let mut x = 0.0f64;
        while x <= levels {
            assert_eq!(round_half_even(x), x.round_ties_even(), "{x}");
            x += 0.125;
        }
        for v in [0.5, 1.5, 2.5, 254.5, 0.49999999999999994, 1e-300] {
            assert_eq!(round_half_even(v), v.round_ties_even(), "{v}");
        }
        for i in 0..=65_536u32 {
            let v = (i as f32 / 65_536.0) as f64 * levels;
            assert_eq!(round_half_even(v), v.round_ties_even(), "{v}");
        }
    }

    #[test]
    fn the_3x3_network_gives_the_sorted_median_everywhere() {
        let mut seed = 7u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            // few distinct values, so ties are common
            ((seed >> 33) % 17) as f32 / 16.0
        };
        for (c, h, w) in [(1, 1, 1), (1, 1, 5), (1, 2, 2), (1, 3, 3), (3, 7, 5), (1, 64, 64), (2, 5, 1)] {
            let img: Vec<f32> = (0..c * h * w).map(|_| next()).collect();
            assert_eq!(median(&img, h, w, 3), median_sorted(&img, h, w, 3), "{c}x{h}x{w}");
        }
    }

    #[test]
    fn the_score_is_the_largest_softmax_l1_distance() {
        let s = Squeeze { bit_depth: 5, median_size: 3 };
        let same = s.score(&[1.0, 2.0], &[vec![1.0, 2.0], vec![1.0, 2.0]]);
        assert!(same.abs() < 1e-12);
        let moved = s.score(&[0.0, 0.0], &[vec![0.0, 0.0], vec![10.0, -10.0]]);
        assert!((moved - 1.0).abs() < 1e-6, "{moved}");
        assert!(s.score(&[0.0, 0.0], &[]).is_nan());
        assert!(Squeeze::load(br#"{"kind":"feature_squeezing","bit_depth":5,"median_size":4}"#).is_err());
    }
}
