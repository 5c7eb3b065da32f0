//! numeric: the small formulas several layers share (the pipeline's probabilities, the
//! feature-squeezing score, the audit's reading of returned scores, the dot products of the
//! Mahalanobis scores and the campaign monitor).

/// Probabilities from logits, computed in f64 after subtracting the largest logit.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f64> = logits.iter().map(|&l| ((l - max) as f64).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.iter().map(|e| (e / sum) as f32).collect()
}

/// Index of the largest value (the first of equals; 0 for an empty slice).
pub fn argmax(p: &[f32]) -> usize {
    p.iter().enumerate().fold(0, |best, (i, &v)| if v > p[best] { i } else { best })
}

/// Running sums of [`dot`]: one sum waits on each addition's latency (about 4 cycles); eight
/// independent ones let additions overlap and fill vector registers. At 224 px the campaign
/// monitor's 31 dot products of 150,528 values per input took about 7 ms as one sum.
const LANES: usize = 8;

/// The dot product of `a` and `b` (up to the shorter length), in f64. It differs from a
/// left-to-right sum only by rounding (the terms are added in eight interleaved sums).
pub fn dot<T: Copy + Into<f64>>(a: &[T], b: &[T]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let (chunks_a, chunks_b) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f64 = chunks_a.remainder().iter().zip(chunks_b.remainder()).map(|(x, y)| (*x).into() * (*y).into()).sum();
    let mut sums = [0f64; LANES];
    for (x, y) in chunks_a.zip(chunks_b) {
        for lane in 0..LANES {
            sums[lane] += x[lane].into() * y[lane].into();
        }
    }
    sums.iter().sum::<f64>() + tail
}

/// `d' P d` for a row-major `d.len() x d.len()` matrix `P` given as its rows (a Mahalanobis
/// distance's square); NaN when `P` has another shape.
pub fn quadratic_form<'a>(rows: impl ExactSizeIterator<Item = &'a [f64]>, d: &[f64]) -> f64 {
    if rows.len() != d.len() {
        return f64::NAN;
    }
    rows.zip(d).map(|(row, di)| if row.len() == d.len() { di * dot(row, d) } else { f64::NAN }).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_the_sequential_sum_at_every_length() {
        for n in [0usize, 1, 7, 8, 9, 17, 1000] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 53 % 89) as f32 - 44.0) / 3.0).collect();
            let sequential: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot(&a, &b) - sequential).abs() <= 1e-9 * sequential.abs().max(1.0), "n={n}");
        }
        assert_eq!(dot(&[1.0f64, 2.0, 3.0], &[4.0, 5.0]), 14.0);
    }

    #[test]
    fn quadratic_form_of_a_small_matrix() {
        let p = [vec![2.0, 1.0], vec![1.0, 3.0]];
        // [1, 2] P [1, 2]' = 2 + 2 + 2 + 12.
        assert_eq!(quadratic_form(p.iter().map(Vec::as_slice), &[1.0, 2.0]), 18.0);
        assert!(quadratic_form(p.iter().map(Vec::as_slice), &[1.0]).is_nan());
        assert!(quadratic_form(p.iter().map(|r| &r[..1]), &[1.0, 2.0]).is_nan());
    }

    #[test]
    fn softmax_is_stable_and_sums_to_one() {
        let p = softmax(&[1000.0, 1000.0 + 2f32.ln()]);
        assert!((p[0] - 1.0 / 3.0).abs() < 1e-4 && (p[1] - 2.0 / 3.0).abs() < 1e-4, "{p:?}");
        assert_eq!(argmax(&p), 1);
        assert_eq!(argmax(&[0.5, 0.5]), 0);
    }
}
