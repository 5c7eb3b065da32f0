//! noise: the fixed-noise copy of an input and how the network answers it, an input of the
//! fused detector (`noise-response`). An attack that stops just past the decision boundary
//! sits where the network is unusually sensitive (Roth et al. 2019, "The odds are odd"); a
//! clean image the model is unsure of is only near the boundary. A sidecar can afford one
//! extra row per input, not the hundreds of noise draws of the paper, so the noise is one
//! fixed sign pattern. The copy runs with feature squeezing's copies (its recipe is in
//! detector_squeeze.json, `noise_copy`), after them in the input's batch entry.
//!
//! Bit for bit models/training/medsentry_training/squeeze.py: `noise_signs`, `noise_copy`
//! (`clip(x + sigma * signs, 0, 1)` in f32 on the [0, 1] input before mean/std) and
//! `noise_response`.

use serde::Deserialize;

use super::detectors::{log_margin, margin};
use super::numeric::argmax;

/// The recipe of the copy: `sigma` per value, signs from SplitMix64 seeded with `seed`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct NoiseCopy {
    pub sigma: f64,
    pub seed: u64,
}

/// Values of [`response`]: the L2 shift of the penultimate features, the change of the
/// log-margin, and 1 where the top class changes.
pub const RESPONSE_WIDTH: usize = 3;

impl NoiseCopy {
    pub fn check(&self) -> Result<(), String> {
        if !(self.sigma.is_finite() && self.sigma > 0.0 && self.sigma <= 1.0) {
            return Err(format!("noise_copy sigma {} must be in (0, 1]", self.sigma));
        }
        Ok(())
    }

    /// The copy of a [C, H, W] input of [0, 1] intensities.
    pub fn apply(&self, pixels: &[f32]) -> Vec<f32> {
        let sigma = self.sigma as f32;
        pixels.iter().zip(signs(pixels.len(), self.seed)).map(|(v, s)| (v + s * sigma).clamp(0.0, 1.0)).collect()
    }
}

/// `n` values of +-1: bit k (least significant first) of the i-th SplitMix64 output is the
/// sign of value 64 i + k, set = +1.
pub fn signs(n: usize, seed: u64) -> impl Iterator<Item = f32> {
    let mut state = seed;
    (0..n.div_ceil(64))
        .flat_map(move |_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (0..64).map(move |k| if (z >> k) & 1 == 1 { 1.0 } else { -1.0 })
        })
        .take(n)
}

/// How the network answered the copy, from the input's logits and features and the copy's;
/// None without the copy (or a copy of another width).
pub fn response(logits: &[f32], features: &[f32], copy_logits: Option<&Vec<f32>>, copy_features: Option<&Vec<f32>>) -> Option<[f64; RESPONSE_WIDTH]> {
    let (cl, cf) = (copy_logits?, copy_features?);
    if cl.len() != logits.len() || cf.len() != features.len() {
        return None;
    }
    let shift = cf.iter().zip(features).map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2)).sum::<f64>().sqrt();
    let change = log_margin(margin(cl)) - log_margin(margin(logits));
    let flipped = if argmax(cl) != argmax(logits) { 1.0 } else { 0.0 };
    Some([shift, change, flipped])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signs_are_the_splitmix64_bits() {
        // SplitMix64 from 0: first output 0xE220A8397B1DCDAF (the published reference value).
        let s: Vec<f32> = signs(64, 0).collect();
        let word = 0xE220_A839_7B1D_CDAFu64;
        assert!(s.iter().enumerate().all(|(k, v)| *v == if (word >> k) & 1 == 1 { 1.0 } else { -1.0 }));
        assert_eq!(signs(130, 7).count(), 130);
        // squeeze.noise_signs(20, 7) in the pipeline
        let want = [1., 1., 1., -1., 1., -1., 1., 1., 1., -1., 1., 1., -1., -1., -1., -1., -1., 1., -1., -1.];
        assert_eq!(signs(20, 7).collect::<Vec<f32>>(), want);
    }

    #[test]
    fn the_copy_is_clipped_to_the_unit_range() {
        let copy = NoiseCopy { sigma: 0.5, seed: 7 }.apply(&[0.0, 1.0, 0.25, 0.75]);
        // signs +1, +1, +1, -1
        assert_eq!(copy, vec![0.5, 1.0, 0.75, 0.25]);
        assert!(NoiseCopy { sigma: 0.0, seed: 1 }.check().is_err());
        assert!(NoiseCopy { sigma: f64::NAN, seed: 1 }.check().is_err());
    }

    #[test]
    fn the_response_reads_the_copy() {
        let r = response(&[2.0, 0.0], &[1.0, 1.0], Some(&vec![0.0, 2.0]), Some(&vec![4.0, 5.0])).unwrap();
        assert!((r[0] - 5.0).abs() < 1e-12, "{r:?}");
        assert!(r[1].abs() < 1e-12, "the same margin, the other class");
        assert_eq!(r[2], 1.0);
        assert!(response(&[2.0, 0.0], &[1.0], None, None).is_none());
        assert!(response(&[2.0, 0.0], &[1.0], Some(&vec![0.0]), Some(&vec![1.0])).is_none(), "another width");
    }
}
