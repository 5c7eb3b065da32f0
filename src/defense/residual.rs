//! residual: the residual-statistics detector, which reads the input rather than the
//! network (steganalysis-style). Gradient attacks add dense, small, high-frequency changes
//! to images that are smooth at the model's resolution; the 4-neighbour Laplacian of the
//! [0, 1] model input shows them. Features: the square root of the share of |residual|
//! values in each bin [edges[k], edges[k+1]) / 255 (the last bin open), the mean |residual|
//! and the root mean square residual; score = logistic regression of those. Twin of
//! models/training/medsentry_training/residual.py (fitted by its `fused` stage).

use serde::Deserialize;

#[derive(Debug, Clone)]
pub struct ResidualStatistics {
    /// Bin edges of |residual| in [0, 1] units (ascending, first 0).
    edges: Vec<f64>,
    mean: Vec<f64>,
    scale: Vec<f64>,
    weights: Vec<f64>,
    bias: f64,
}

#[derive(Deserialize)]
struct File {
    kind: String,
    edges_255: Vec<f64>,
    mean: Vec<f64>,
    scale: Vec<f64>,
    weights: Vec<f64>,
    bias: f64,
}

impl ResidualStatistics {
    pub fn load(bytes: &[u8]) -> Result<ResidualStatistics, String> {
        let f: File = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if f.kind != "residual_statistics" {
            return Err(format!("file says kind {:?}", f.kind));
        }
        if f.edges_255.first() != Some(&0.0)
            || f.edges_255.windows(2).any(|w| w[0].partial_cmp(&w[1]) != Some(std::cmp::Ordering::Less))
            || f.edges_255.len() > 256
        {
            return Err("edges_255 must rise from 0 (at most 256)".into());
        }
        let n = f.edges_255.len() + 2;
        if f.mean.len() != n || f.scale.len() != n || f.weights.len() != n {
            return Err(format!("mean, scale and weights must have {n} values (bins + 2)"));
        }
        let finite = |v: &[f64]| v.iter().all(|x| x.is_finite());
        if !(finite(&f.mean) && finite(&f.weights) && f.bias.is_finite() && f.scale.iter().all(|s| s.is_finite() && *s > 0.0)) {
            return Err("values must be finite and scales positive".into());
        }
        let edges = f.edges_255.iter().map(|e| e / 255.0).collect();
        Ok(ResidualStatistics { edges, mean: f.mean, scale: f.scale, weights: f.weights, bias: f.bias })
    }

    /// The features of the [`laplacian`] of a [0, 1] input.
    pub fn features(&self, laplacian: &[f64]) -> Vec<f64> {
        let mut hist = vec![0u64; self.edges.len()];
        let (mut abs_sum, mut sq_sum) = (0f64, 0f64);
        for &r in laplacian {
            let a = r.abs();
            // Bin k holds [edges[k], edges[k+1]); NaN lands in bin 0 and poisons the sums.
            let bin = self.edges.partition_point(|e| *e <= a).saturating_sub(1);
            hist[bin] += 1;
            abs_sum += a;
            sq_sum += r * r;
        }
        let n = laplacian.len().max(1) as f64;
        let mut f: Vec<f64> = hist.iter().map(|h| (*h as f64 / n).sqrt()).collect();
        f.push(abs_sum / n);
        f.push((sq_sum / n).sqrt());
        f
    }

    /// Score of the features from [`Self::features`]; NaN when they do not fit.
    pub fn score(&self, features: &[f64]) -> f64 {
        if features.len() != self.mean.len() {
            return f64::NAN;
        }
        let z = self.bias + features.iter().zip(&self.mean).zip(&self.scale).zip(&self.weights).map(|(((f, m), s), w)| w * (f - m) / s).sum::<f64>();
        1.0 / (1.0 + (-z).exp())
    }
}

/// 4 x each value minus its 4 neighbours (edges replicated), per channel plane, of a
/// [C, H, W] tensor of [0, 1] intensities: the high-pass residual this detector and the
/// campaign monitor read.
pub fn laplacian(pixels: &[f32], height: usize, width: usize) -> Vec<f64> {
    let plane = height * width;
    let mut r = vec![0f64; pixels.len()];
    for (c, chunk) in pixels.chunks(plane).enumerate() {
        let at = |y: usize, x: usize| chunk[y * width + x] as f64;
        for y in 0..height {
            for x in 0..width {
                let up = at(y.saturating_sub(1), x);
                let down = at((y + 1).min(height - 1), x);
                let left = at(y, x.saturating_sub(1));
                let right = at(y, (x + 1).min(width - 1));
                r[c * plane + y * width + x] = 4.0 * at(y, x) - up - down - left - right;
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flat_image_has_no_residual_and_a_checkerboard_a_large_one() {
        let json = r#"{"kind":"residual_statistics","edges_255":[0,1,8],"mean":[0,0,0,0,0],"scale":[1,1,1,1,1],"weights":[0,0,0,1,0],"bias":0}"#;
        let d = ResidualStatistics::load(json.as_bytes()).unwrap();
        let flat = d.features(&laplacian(&[0.5; 16], 4, 4));
        assert_eq!(flat, [1.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(d.score(&flat), 0.5);
        // Interior pixels of a 0/1 checkerboard: |4 * 1 - 0| = 4 > 8/255: the open last bin.
        let board: Vec<f32> = (0..16).map(|i| ((i / 4 + i % 4) % 2) as f32).collect();
        let f = d.features(&laplacian(&board, 4, 4));
        assert!(f[2] > 0.0 && f[3] > 1.0 && d.score(&f) > 0.7, "{f:?}");
        assert!(d.score(&f[..4]).is_nan());
    }

    #[test]
    fn edges_must_rise_from_zero() {
        let json = r#"{"kind":"residual_statistics","edges_255":[1,0],"mean":[0,0,0,0],"scale":[1,1,1,1],"weights":[0,0,0,0],"bias":0}"#;
        assert!(ResidualStatistics::load(json.as_bytes()).unwrap_err().contains("edges"));
    }
}
