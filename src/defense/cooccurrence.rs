//! cooccurrence: the SPAM-style co-occurrences (Pevný et al. 2010) the residual-statistics
//! detector appends to its features when its file sets `cooccurrence_t`. On a bundle's
//! 8-bit grid the difference of two neighbouring pixels is a whole number of 1/255 steps,
//! and a 1-4/255 perturbation that survives the rounding is ±1 step noise that
//! decorrelates consecutive differences; the joint frequencies of consecutive differences
//! show it. Twin of `residual.cooccurrences` in models/training/medsentry_training.

/// How many values [`features`] makes for clip `t` (0: none).
pub fn len(t: usize) -> usize {
    if t == 0 {
        0
    } else {
        2 * (2 * t + 1) * (2 * t + 1)
    }
}

/// Of a [C, H, W] tensor of [0, 1] intensities: for the first-order differences, then the
/// second-order ones, of the steps floor(255 v + 0.5) along every row and every column of
/// every plane, clipped to [-t, t], the square root of the joint frequency of each
/// consecutive pair (a, b) at (a + t) (2t + 1) + (b + t), the rows' and the columns'
/// frequencies averaged.
pub fn features(pixels: &[f32], height: usize, width: usize, t: usize) -> Vec<f64> {
    let k = 2 * t + 1;
    let mut out = Vec::with_capacity(len(t));
    if t == 0 {
        return out;
    }
    // `as` saturates (and maps NaN to 0): the pixels were checked finite and in range before.
    let steps: Vec<i64> = pixels.iter().map(|&v| (f64::from(v) * 255.0 + 0.5).floor() as i64).collect();
    let plane = height * width;
    let planes = steps.len().checked_div(plane).unwrap_or(0);
    let mut line = Vec::with_capacity(height.max(width));
    for order in [1, 2] {
        let mut freq = vec![0f64; k * k];
        // Along rows (stride 1, `width` long), then along columns (stride `width`).
        for (lines, len, stride, next) in [(height, width, 1, width), (width, height, width, 1)] {
            let mut counts = vec![0u64; k * k];
            let mut total = 0u64;
            for p in 0..planes {
                for l in 0..lines {
                    let start = p * plane + l * next;
                    line.clear();
                    line.extend((0..len).map(|i| steps[start + i * stride]));
                    let diffs = differences(&line, order, t);
                    for pair in diffs.windows(2) {
                        counts[pair[0] * k + pair[1]] += 1;
                        total += 1;
                    }
                }
            }
            for (f, c) in freq.iter_mut().zip(&counts) {
                *f += *c as f64 / total.max(1) as f64;
            }
        }
        out.extend(freq.iter().map(|f| (f / 2.0).sqrt()));
    }
    out
}

/// The `order`-th differences of a line, clipped to [-t, t] and shifted to [0, 2t].
fn differences(line: &[i64], order: usize, t: usize) -> Vec<usize> {
    let t = t as i64;
    let shift = |d: i64| (d.clamp(-t, t) + t) as usize;
    match order {
        1 => line.windows(2).map(|w| shift(w[1] - w[0])).collect(),
        _ => line.windows(3).map(|w| shift(w[2] - 2 * w[1] + w[0])).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flat_image_puts_every_pair_on_zero_zero() {
        let f = features(&[0.5; 25], 5, 5, 2);
        assert_eq!(f.len(), len(2));
        // (0 + 2) * 5 + (0 + 2) = 12 in each order; everything else 0.
        assert_eq!((f[12], f[25 + 12]), (1.0, 1.0));
        assert_eq!(f.iter().sum::<f64>(), 2.0);
    }

    #[test]
    fn matches_the_pipelines_values() {
        // The values of models/training/tests/test_formulas.py's naive_cooccurrences for
        // a 1 x 3 x 4 ramp: rows rise one step at a time, columns four.
        let px: Vec<f32> = (0..12).map(|i| (100 + i) as f32 / 255.0).collect();
        let f = features(&px, 3, 4, 2);
        let k = 5;
        // Rows: first differences all +1, 2 pairs per row, 3 rows: (1, 1) has frequency 1.
        // Columns: +4 clipped to +2: (2, 2) has frequency 1. Averaged: 0.5 each.
        let first = &f[..k * k];
        assert!((first[3 * k + 3] - 0.5f64.sqrt()).abs() < 1e-15 && (first[4 * k + 4] - 0.5f64.sqrt()).abs() < 1e-15);
        // Second differences are 0 along rows (one pair per row); a 3-long column has no
        // pair, so the columns add nothing: (0, 0) has sqrt(1 / 2).
        assert_eq!(f[k * k + 2 * k + 2], 0.5f64.sqrt());
        assert!(features(&px, 3, 4, 0).is_empty());
    }

    #[test]
    fn reads_the_nearest_step() {
        // 0.6 / 255 is step 1 (a row 0, 1, 0, 0: first differences +1, -1, 0), 0.4 / 255 step 0.
        let up = features(&[0.0, 0.6 / 255.0, 0.0, 0.0], 1, 4, 1);
        let down = features(&[0.0, 0.4 / 255.0, 0.0, 0.0], 1, 4, 1);
        assert_eq!(down, features(&[0.0; 4], 1, 4, 1));
        // Pairs (+1, -1) and (-1, 0), at 2 * 3 + 0 and 0 * 3 + 1, each half the row pairs,
        // halved again for the columns (none): sqrt(1/4) each.
        assert_eq!((up[2 * 3], up[1]), (0.5, 0.5));
    }
}
