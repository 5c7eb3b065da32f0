//! roc: AUROC, ROC curves and flag rates of detector scores, computed as the Python pipeline
//! computes them (scikit-learn's `roc_auc_score`, its own `roc_curve`), so that `medsentry eval`
//! reproduces the pipeline's numbers. Higher scores are more adversarial: negatives are clean
//! inputs, positives adversarial ones.
//!
//! NaN scores are refused rather than sorted: a NaN means the scoring went wrong, and any
//! place it were given in the order would silently shift the result.

use std::cmp::Ordering;

/// Counts of (negatives, positives) per distinct score, in ascending score order; None when
/// either side is empty or any score is NaN.
fn tie_groups(neg: &[f64], pos: &[f64]) -> Option<Vec<(u64, u64)>> {
    if neg.is_empty() || pos.is_empty() || neg.iter().chain(pos).any(|s| s.is_nan()) {
        return None;
    }
    let mut all: Vec<(f64, bool)> = neg.iter().map(|&s| (s, false)).chain(pos.iter().map(|&s| (s, true))).collect();
    // partial_cmp, not total_cmp: -0.0 and 0.0 must tie, as they do in NumPy.
    all.sort_unstable_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(Ordering::Equal));
    let mut groups: Vec<(u64, u64)> = Vec::new();
    let mut last = f64::NAN;
    for (score, positive) in all {
        if score != last || groups.is_empty() {
            groups.push((0, 0));
            last = score;
        }
        if let Some(g) = groups.last_mut() {
            if positive {
                g.1 += 1;
            } else {
                g.0 += 1;
            }
        }
    }
    Some(groups)
}

/// The area under the ROC curve: the probability that a random positive scores above a
/// random negative, ties counting one half (the Mann-Whitney U statistic over n_neg * n_pos).
/// Equals scikit-learn's `roc_auc_score`. None when either side is empty or a score is NaN.
pub fn auroc(neg: &[f64], pos: &[f64]) -> Option<f64> {
    let groups = tie_groups(neg, pos)?;
    // Twice U in integers, so that 10^5 x 10^5 pairs add up exactly and the only rounding is
    // the final division.
    let (mut twice_u, mut neg_below) = (0u128, 0u128);
    for (gn, gp) in groups {
        twice_u += gp as u128 * (2 * neg_below + gn as u128);
        neg_below += gn as u128;
    }
    Some(twice_u as f64 / (2 * neg.len() as u128 * pos.len() as u128) as f64)
}

/// ROC points (false-positive rate, true-positive rate), from (0, 0) to (1, 1): one point per
/// distinct score t, in descending t, counting the scores >= t as flagged. Empty when either
/// side is empty or a score is NaN.
pub fn roc_curve(neg: &[f64], pos: &[f64]) -> Vec<(f64, f64)> {
    let Some(groups) = tie_groups(neg, pos) else {
        return Vec::new();
    };
    let (n_neg, n_pos) = (neg.len() as f64, pos.len() as f64);
    let mut points = Vec::with_capacity(groups.len() + 1);
    points.push((0.0, 0.0));
    let (mut fp, mut tp) = (0u64, 0u64);
    for (gn, gp) in groups.into_iter().rev() {
        fp += gn;
        tp += gp;
        points.push((fp as f64 / n_neg, tp as f64 / n_pos));
    }
    points
}

/// The share of `scores` strictly above `threshold`: what the sidecar flags, since it fires a
/// detector when score > threshold. NaN when `scores` is empty or a score or the threshold is
/// NaN (the sidecar would pass a NaN score as unflagged, which an evaluation must not hide).
pub fn rate_above(scores: &[f64], threshold: f64) -> f64 {
    if scores.is_empty() || threshold.is_nan() || scores.iter().any(|s| s.is_nan()) {
        return f64::NAN;
    }
    scores.iter().filter(|&&s| s > threshold).count() as f64 / scores.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Integer-valued scores with many ties, made the same way in the NumPy reference.
    fn tied_sets() -> (Vec<f64>, Vec<f64>) {
        let neg = (0..2000u64).map(|i| ((i * 7919 + 13) % 503 / 50) as f64).collect();
        let pos = (0..1500u64).map(|i| ((i * 104_729 + 7) % 601 / 50) as f64).collect();
        (neg, pos)
    }

    #[test]
    fn auroc_matches_scikit_learn() {
        // sklearn.metrics.roc_auc_score 1.9.1 on the same arrays (labels 0 = neg, 1 = pos).
        let cases: [(&[f64], &[f64], f64); 5] = [
            (&[0.1, 0.4, 0.35, 0.8], &[0.9, 0.3, 0.7], 0.6666666666666666),
            (&[1.0, 2.0, 2.0, 3.0, 3.0, 3.0], &[2.0, 3.0, 3.0, 4.0], 0.7083333333333334),
            (&[0.5, 0.5], &[0.5], 0.5),
            (&[0.0, 1.0, 2.0], &[3.0, 4.0], 1.0),
            (&[3.0, 4.0], &[0.0, 1.0, 2.0], 0.0),
        ];
        for (neg, pos, want) in cases {
            assert_eq!(auroc(neg, pos), Some(want), "{neg:?} {pos:?}");
        }
        let (neg, pos) = tied_sets();
        assert_eq!(auroc(&neg, &pos), Some(0.580236));
        let neg: Vec<f64> = (0..1000).map(|i| (i as f64 * 1.7).sin()).collect();
        let pos: Vec<f64> = (0..800).map(|i| (i as f64 * 0.9).sin() + 0.3).collect();
        // Loose only because libm's sin may differ from NumPy's in the last bit.
        assert!((auroc(&neg, &pos).unwrap() - 0.63092).abs() < 1e-5);
    }

    #[test]
    fn auroc_counts_pairs_like_the_definition() {
        let (neg, pos) = tied_sets();
        let mut twice = 0u64;
        for n in &neg {
            for p in &pos {
                twice += if p > n { 2 } else { u64::from(p == n) };
            }
        }
        assert_eq!(auroc(&neg, &pos), Some(twice as f64 / (2 * neg.len() * pos.len()) as f64));
    }

    #[test]
    fn roc_curve_matches_the_pipeline() {
        // The pipeline's NumPy roc_curve on the same arrays.
        let points = roc_curve(&[1.0, 2.0, 2.0, 3.0, 3.0, 3.0], &[2.0, 3.0, 3.0, 4.0]);
        assert_eq!(points, vec![(0.0, 0.0), (0.0, 0.25), (0.5, 0.75), (0.8333333333333334, 1.0), (1.0, 1.0)]);
        let points = roc_curve(&[0.1, 0.4, 0.35, 0.8], &[0.9, 0.3, 0.7]);
        let third = 1.0 / 3.0;
        let want = [(0.0, 0.0), (0.0, third), (0.25, third), (0.25, 2.0 * third), (0.5, 2.0 * third), (0.75, 2.0 * third), (0.75, 1.0), (1.0, 1.0)];
        assert_eq!(points, want);
    }

    #[test]
    fn trapezoids_under_the_curve_give_the_auroc() {
        let (neg, pos) = tied_sets();
        let points = roc_curve(&neg, &pos);
        assert_eq!(points.first(), Some(&(0.0, 0.0)));
        assert_eq!(points.last(), Some(&(1.0, 1.0)));
        let area: f64 = points.windows(2).map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0).sum();
        assert!((area - auroc(&neg, &pos).unwrap()).abs() < 1e-12);
    }

    #[test]
    fn signed_zeros_tie_and_infinities_sort() {
        assert_eq!(auroc(&[-0.0], &[0.0]), Some(0.5));
        assert_eq!(roc_curve(&[-0.0], &[0.0]), vec![(0.0, 0.0), (1.0, 1.0)]);
        assert_eq!(auroc(&[f64::NEG_INFINITY, 1.0], &[f64::INFINITY, 1.0]), Some(0.875));
    }

    #[test]
    fn refuses_nan_and_empty_sides() {
        assert_eq!(auroc(&[0.1, f64::NAN], &[0.2]), None);
        assert_eq!(auroc(&[0.1], &[f64::NAN]), None);
        assert_eq!(auroc(&[], &[0.2]), None);
        assert_eq!(auroc(&[0.1], &[]), None);
        assert!(roc_curve(&[f64::NAN], &[0.2]).is_empty());
        assert!(roc_curve(&[0.1], &[]).is_empty());
        assert!(rate_above(&[0.1, f64::NAN], 0.0).is_nan());
        assert!(rate_above(&[0.1], f64::NAN).is_nan());
        assert!(rate_above(&[], 0.0).is_nan());
    }

    #[test]
    fn rate_above_is_strict() {
        let scores = [0.1, 0.5, 0.5, 0.9];
        assert_eq!(rate_above(&scores, 0.5), 0.25);
        assert_eq!(rate_above(&scores, 0.0), 1.0);
        assert_eq!(rate_above(&scores, 0.9), 0.0);
        assert_eq!(rate_above(&scores, f64::NEG_INFINITY), 1.0);
    }

    #[test]
    fn scales_to_a_hundred_thousand_scores() {
        let neg: Vec<f64> = (0..100_000u64).map(|i| (i * 2_654_435_761 % 1_000_003) as f64).collect();
        let pos: Vec<f64> = (0..100_000u64).map(|i| (i * 40_503 % 1_000_033) as f64 + 1000.0).collect();
        let a = auroc(&neg, &pos).unwrap();
        assert!(a > 0.49 && a < 0.52, "{a}");
        assert!(roc_curve(&neg, &pos).len() > 100_000);
    }
}
