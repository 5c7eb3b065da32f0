//! numeric: the small formulas several layers share (the pipeline's probabilities, the
//! feature-squeezing score, the audit's reading of returned scores).

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_is_stable_and_sums_to_one() {
        let p = softmax(&[1000.0, 1000.0 + 2f32.ln()]);
        assert!((p[0] - 1.0 / 3.0).abs() < 1e-4 && (p[1] - 2.0 / 3.0).abs() < 1e-4, "{p:?}");
        assert_eq!(argmax(&p), 1);
        assert_eq!(argmax(&[0.5, 0.5]), 0);
    }
}
