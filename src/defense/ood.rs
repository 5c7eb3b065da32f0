//! ood: is this input the kind of image the bundle was trained on at all?
//!
//! An MR sent to the chest model, a dermoscopy photograph or a screenshot is not an attack,
//! and the adversarial detectors (calibrated on clean in-distribution images only) say
//! nothing reliable about it. Two kinds of evidence make an input OUT_OF_DISTRIBUTION:
//! - its DICOM header says it is something the bundle does not accept (`[accepts]`:
//!   Modality, BodyPartExamined, PhotometricInterpretation);
//! - its image statistics: one Gaussian over the [0, 1] model input averaged over a grid of
//!   cells, the square root of its 16-bin intensity histogram (for colour inputs also that
//!   of each pixel's chroma, max - min over its channels), and the classifier's
//!   penultimate features; the score is the squared Mahalanobis distance, the threshold the
//!   pipeline's out-of-fold percentile on clean training images (`[ood]`). The formula's
//!   Python twin is models/training/medsentry_training/ood.py.

use serde::Deserialize;

use super::numeric::quadratic_form;
use crate::bundle::Accepts;
use crate::decode::DicomAttributes;

/// The fitted Gaussian (`ood.json`).
#[derive(Debug, Clone)]
pub struct OodModel {
    /// Cells per side of the layout grid.
    grid: usize,
    /// Histogram bins over [0, 1].
    bins: usize,
    /// Bins of the chroma histogram (0: none; colour inputs only).
    chroma_bins: usize,
    channels: usize,
    /// Penultimate features appended after the image statistics.
    feature_dim: usize,
    mean: Vec<f64>,
    /// Row-major inverse covariance, `dim x dim`.
    precision: Vec<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    kind: String,
    grid: usize,
    bins: usize,
    #[serde(default)]
    chroma_bins: usize,
    channels: usize,
    feature_dim: usize,
    mean: Vec<f64>,
    precision: Vec<Vec<f64>>,
}

impl OodModel {
    /// Parses `ood.json` for a model of `channels` x `size` x `size` inputs and `feature_dim`
    /// penultimate features; any mismatch is refused with the reason.
    pub fn load(bytes: &[u8], channels: usize, size: (usize, usize), feature_dim: usize) -> Result<OodModel, String> {
        let f: File = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if f.kind != "gaussian" {
            return Err(format!("kind {:?} is not \"gaussian\"", f.kind));
        }
        if f.grid == 0 || size.0 % f.grid != 0 || size.1 % f.grid != 0 || !(1..=256).contains(&f.bins) {
            return Err(format!("grid {} does not divide the {}x{} input, or bins {} is not 1..=256", f.grid, size.0, size.1, f.bins));
        }
        if f.channels != channels || f.feature_dim != feature_dim {
            return Err(format!("fitted for {} channels and {} features, the bundle has {channels} and {feature_dim}", f.channels, f.feature_dim));
        }
        if f.chroma_bins > 256 || (f.chroma_bins > 0 && channels != 3) {
            return Err(format!("chroma_bins {} needs a 3-channel input and at most 256 bins", f.chroma_bins));
        }
        let dim = channels * f.grid * f.grid + f.bins + f.chroma_bins + feature_dim;
        if f.mean.len() != dim || f.precision.len() != dim || f.precision.iter().any(|r| r.len() != dim) {
            return Err(format!("mean and precision must have dimension {dim}"));
        }
        let precision: Vec<f64> = f.precision.into_iter().flatten().collect();
        if f.mean.iter().chain(&precision).any(|v| !v.is_finite()) {
            return Err("non-finite values".into());
        }
        Ok(OodModel { grid: f.grid, bins: f.bins, chroma_bins: f.chroma_bins, channels, feature_dim, mean: f.mean, precision })
    }

    /// Cell means per channel, then the square roots of the histogram shares (bin k holds
    /// [k/bins, (k+1)/bins), the last also 1.0) of all values, then (colour models) those
    /// of the per-pixel chroma, of a [C, H, W] tensor of [0, 1] intensities.
    pub fn image_statistics(&self, pixels: &[f32], height: usize, width: usize) -> Vec<f64> {
        let (g, plane) = (self.grid, height * width);
        let (ch, cw) = (height / g, width / g);
        let cells = self.channels * g * g;
        let mut out = vec![0f64; cells + self.bins + self.chroma_bins];
        // Four histograms filled in turn: neighbouring pixels mostly share a bin, and one
        // histogram would wait on each increment of it before the next.
        let mut hist = vec![0u64; 4 * self.bins];
        for (c, chunk) in pixels.chunks(plane).take(self.channels).enumerate() {
            for (y, row) in chunk.chunks(width).enumerate() {
                // A cell's share of a row summed on its own: no division per pixel.
                let cells_of_row = &mut out[c * g * g + (y / ch) * g..][..g];
                for (cell, part) in cells_of_row.iter_mut().zip(row.chunks(cw)) {
                    *cell += part.iter().map(|&v| v as f64).sum::<f64>();
                }
                for quad in row.chunks(4) {
                    for (lane, &v) in quad.iter().enumerate() {
                        hist[lane * self.bins + bin(v as f64, self.bins)] += 1;
                    }
                }
            }
        }
        let cell = (ch * cw) as f64;
        out[..cells].iter_mut().for_each(|v| *v /= cell);
        let total = pixels.len().max(1) as f64;
        for (k, o) in out[cells..cells + self.bins].iter_mut().enumerate() {
            let count: u64 = hist.chunks(self.bins).map(|h| h[k]).sum();
            *o = (count as f64 / total).sqrt();
        }
        if self.chroma_bins > 0 && pixels.len() == 3 * plane {
            let mut chroma = vec![0u64; self.chroma_bins];
            for i in 0..plane {
                let (r, gr, b) = (pixels[i] as f64, pixels[plane + i] as f64, pixels[2 * plane + i] as f64);
                let c = r.max(gr).max(b) - r.min(gr).min(b);
                chroma[bin(c, self.chroma_bins)] += 1;
            }
            for (o, h) in out[cells + self.bins..].iter_mut().zip(&chroma) {
                *o = (*h as f64 / plane as f64).sqrt();
            }
        }
        out
    }

    /// Squared Mahalanobis distance of (image statistics, penultimate features); NaN when
    /// either has the wrong length.
    pub fn score(&self, statistics: &[f64], features: &[f32]) -> f64 {
        let dim = self.mean.len();
        if statistics.len() + self.feature_dim != dim || features.len() != self.feature_dim {
            return f64::NAN;
        }
        let d: Vec<f64> = statistics.iter().copied().chain(features.iter().map(|f| *f as f64)).zip(&self.mean).map(|(v, m)| v - m).collect();
        quadratic_form(self.precision.chunks(dim), &d)
    }
}

/// The histogram bin of a [0, 1] value: [k/bins, (k+1)/bins), the last bin also 1.0.
fn bin(v: f64, bins: usize) -> usize {
    // `as` truncates toward zero and maps NaN and negatives to 0: the same bin as
    // floor().max(0.0), without a libm call per value.
    ((v * bins as f64) as usize).min(bins - 1)
}

/// Why a DICOM header does not fit the bundle (None: it fits, or says nothing checked).
pub fn header_mismatch(accepts: &Accepts, attrs: &DicomAttributes) -> Option<String> {
    let checks = [
        ("Modality", &accepts.modality, &attrs.modality),
        ("BodyPartExamined", &accepts.body_part, &attrs.body_part),
        ("PhotometricInterpretation", &accepts.photometric, &attrs.photometric),
    ];
    checks.into_iter().find_map(|(name, allowed, value)| {
        let value = value.as_ref()?;
        (!allowed.is_empty() && !allowed.iter().any(|a| a.eq_ignore_ascii_case(value)))
            .then(|| format!("DICOM {name} {:?} is not one this model accepts ({})", value.chars().take(32).collect::<String>(), allowed.join(", ")))
    })
}

/// Why a decoded image's colour contradicts [accepts] (its mean chroma, max - min over
/// R, G, B; 0 for a single-channel image), or None.
pub fn colour_mismatch(accepts: &Accepts, chroma: f32) -> Option<String> {
    if let Some(max) = accepts.max_chroma.filter(|max| chroma > *max) {
        return Some(format!("a colour image (mean chroma {chroma:.3} > {max}) sent to a grayscale model"));
    }
    let min = accepts.min_chroma.filter(|min| chroma < *min)?;
    Some(format!("a grayscale image (mean chroma {chroma:.3} < {min}) sent to a colour model"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> OodModel {
        // 1 channel, 2x2 grid, 2 bins, 1 feature: dimension 7, identity precision.
        let dim = 7;
        let precision: Vec<Vec<f64>> = (0..dim).map(|i| (0..dim).map(|j| f64::from(u8::from(i == j))).collect()).collect();
        let json =
            serde_json::json!({"kind": "gaussian", "grid": 2, "bins": 2, "channels": 1, "feature_dim": 1, "mean": vec![0.0; dim], "precision": precision});
        OodModel::load(json.to_string().as_bytes(), 1, (4, 4), 1).unwrap()
    }

    #[test]
    fn statistics_are_cell_means_and_root_histogram_shares() {
        let m = model();
        // Top-left 2x2 cell at 1.0 (the last bin includes 1.0), the rest at 0.25.
        let mut px = vec![0.25f32; 16];
        for i in [0, 1, 4, 5] {
            px[i] = 1.0;
        }
        let s = m.image_statistics(&px, 4, 4);
        assert_eq!(s[..4], [1.0, 0.25, 0.25, 0.25]);
        assert!((s[4] - 0.75f64.sqrt()).abs() < 1e-12 && (s[5] - 0.5).abs() < 1e-12, "{s:?}");
        let score = m.score(&s, &[2.0]);
        let want: f64 = s.iter().map(|v| v.powi(2)).sum::<f64>() + 4.0;
        assert!((score - want).abs() < 1e-9);
        assert!(m.score(&s, &[]).is_nan());
    }

    #[test]
    fn a_model_for_another_input_is_refused() {
        let json = serde_json::json!({"kind": "gaussian", "grid": 3, "bins": 2, "channels": 1, "feature_dim": 1, "mean": [0.0], "precision": [[1.0]]});
        assert!(OodModel::load(json.to_string().as_bytes(), 1, (4, 4), 1).unwrap_err().contains("grid 3"));
    }

    #[test]
    fn headers_are_checked_only_where_both_sides_say_something() {
        let accepts =
            Accepts { modality: vec!["CR".into(), "DX".into()], body_part: vec!["CHEST".into()], photometric: vec![], max_chroma: None, min_chroma: None };
        let attrs =
            |m: Option<&str>, b: Option<&str>| DicomAttributes { modality: m.map(Into::into), body_part: b.map(Into::into), photometric: Some("RGB".into()) };
        assert_eq!(header_mismatch(&accepts, &attrs(Some("DX"), Some("chest"))), None);
        assert_eq!(header_mismatch(&accepts, &attrs(None, None)), None);
        assert!(header_mismatch(&accepts, &attrs(Some("MR"), None)).unwrap().contains("Modality \"MR\""));
        assert!(header_mismatch(&accepts, &attrs(Some("CR"), Some("LEG"))).unwrap().contains("BodyPartExamined"));
    }

    #[test]
    fn colour_is_checked_against_the_side_the_model_declares() {
        let gray = Accepts { max_chroma: Some(0.02), ..Accepts::default() };
        let colour = Accepts { min_chroma: Some(0.02), ..Accepts::default() };
        assert_eq!(colour_mismatch(&gray, 0.0), None);
        assert!(colour_mismatch(&gray, 0.1).unwrap().contains("sent to a grayscale model"));
        assert_eq!(colour_mismatch(&colour, 0.1), None);
        assert!(colour_mismatch(&colour, 0.0).unwrap().contains("sent to a colour model"));
        assert_eq!(colour_mismatch(&Accepts::default(), 0.5), None);
    }
}
