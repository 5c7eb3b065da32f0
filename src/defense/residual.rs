//! residual: the residual-statistics detector, which reads the input rather than the
//! network (steganalysis-style). Gradient attacks add dense, small, high-frequency changes
//! to images that are smooth at the model's resolution; the 4-neighbour Laplacian of the
//! [0, 1] model input shows them. Features: the square root of the share of |residual|
//! values in each bin [edges[k], edges[k+1]) / 255 (the last bin open), the mean |residual|
//! and the root mean square residual, at each of the file's scales (1: the input itself;
//! s: the means of its s x s blocks, so that a perturbation made smooth at full resolution
//! is dense and high-frequency again), then, when the file sets `cooccurrence_t`, the
//! co-occurrences of consecutive pixel differences ([`super::cooccurrence`]); score =
//! logistic regression of those. Twin of
//! models/training/medsentry_training/residual.py (fitted by its `fused` stage).

use serde::Deserialize;

use super::cooccurrence;

/// The largest co-occurrence clip a file may set: (2t + 1)^2 values per order, 289 at 8
/// (578 in all).
const MAX_COOCCURRENCE_T: usize = 8;

/// Interleaved histograms and sums in [`ResidualStatistics::features`].
const LANES: usize = 4;

#[derive(Debug, Clone)]
pub struct ResidualStatistics {
    /// Bin edges of |residual| in [0, 1] units (ascending, first 0).
    edges: Vec<f64>,
    /// The bin of each cell's lower end, on cells of width 1 / `cells_per_unit` from 0 to
    /// the last edge: a value's bin is its cell's entry, moved by the exact comparisons
    /// that rounding near an edge may need. A binary search per value took about 1 ms of
    /// a 224 px input's 150,528 values.
    lut: Vec<u8>,
    cells_per_unit: f64,
    /// Block sizes the features are computed at, in this order (1: the input itself).
    scales: Vec<usize>,
    /// Clip of the co-occurrences appended after the scales (0: none).
    cooccurrence_t: usize,
    mean: Vec<f64>,
    scale: Vec<f64>,
    weights: Vec<f64>,
    bias: f64,
}

fn full_resolution() -> Vec<usize> {
    vec![1]
}

#[derive(Deserialize)]
struct File {
    kind: String,
    edges_255: Vec<f64>,
    /// Files written before scales were fitted at full resolution only.
    #[serde(default = "full_resolution")]
    scales: Vec<usize>,
    /// Files written before 2026-12-04 have no co-occurrences.
    #[serde(default)]
    cooccurrence_t: usize,
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
        if f.scales.is_empty() || f.scales.iter().any(|s| !(1..=64).contains(s)) {
            return Err("scales must list block sizes from 1 to 64".into());
        }
        if f.cooccurrence_t > MAX_COOCCURRENCE_T {
            return Err(format!("cooccurrence_t must be at most {MAX_COOCCURRENCE_T}"));
        }
        let n = f.scales.len() * (f.edges_255.len() + 2) + cooccurrence::len(f.cooccurrence_t);
        if f.mean.len() != n || f.scale.len() != n || f.weights.len() != n {
            return Err(format!("mean, scale and weights must have {n} values ((bins + 2) per scale, then the co-occurrences)"));
        }
        let finite = |v: &[f64]| v.iter().all(|x| x.is_finite());
        if !(finite(&f.mean) && finite(&f.weights) && f.bias.is_finite() && f.scale.iter().all(|s| s.is_finite() && *s > 0.0)) {
            return Err("values must be finite and scales positive".into());
        }
        let edges: Vec<f64> = f.edges_255.iter().map(|e| e / 255.0).collect();
        let (lut, cells_per_unit) = bin_table(&edges);
        Ok(ResidualStatistics {
            edges,
            lut,
            cells_per_unit,
            scales: f.scales,
            cooccurrence_t: f.cooccurrence_t,
            mean: f.mean,
            scale: f.scale,
            weights: f.weights,
            bias: f.bias,
        })
    }

    /// How many features [`Self::features`] makes.
    pub fn feature_len(&self) -> usize {
        self.mean.len()
    }

    /// The largest block size the features are computed at.
    pub fn largest_scale(&self) -> usize {
        self.scales.iter().copied().max().unwrap_or(1)
    }

    /// The features of a [C, H, W] [0, 1] input whose [`laplacian`] is `laplacian`, scale
    /// after scale, then the co-occurrences: the Laplacian is shared with the campaign
    /// monitor, which reads it too.
    pub fn features(&self, pixels: &[f32], height: usize, width: usize, laplacian: &[f64]) -> Vec<f64> {
        let mut f = Vec::with_capacity(self.mean.len());
        for &s in &self.scales {
            if s == 1 {
                f.extend(self.features_at(laplacian));
            } else {
                let (means, h, w) = block_means(pixels, height, width, s);
                f.extend(self.features_at(&self::laplacian(&means, h, w)));
            }
        }
        f.extend(cooccurrence::features(pixels, height, width, self.cooccurrence_t));
        f
    }

    /// The features of one scale, from its [`laplacian`].
    fn features_at(&self, laplacian: &[f64]) -> Vec<f64> {
        let bins = self.edges.len();
        // Values go to four histograms and four pairs of sums in turn: one of each waits
        // on its own previous update (most values fall in bin 0), four overlap.
        let mut hist = vec![0u64; LANES * bins];
        let (mut abs_sums, mut sq_sums) = ([0f64; LANES], [0f64; LANES]);
        for chunk in laplacian.chunks(LANES) {
            for (lane, &r) in chunk.iter().enumerate() {
                let a = r.abs();
                // Bin k holds [edges[k], edges[k+1]); NaN lands in bin 0 and poisons the sums.
                hist[lane * bins + self.bin(a)] += 1;
                abs_sums[lane] += a;
                sq_sums[lane] += r * r;
            }
        }
        let n = laplacian.len().max(1) as f64;
        let mut f: Vec<f64> = (0..bins).map(|k| ((0..LANES).map(|l| hist[l * bins + k]).sum::<u64>() as f64 / n).sqrt()).collect();
        f.push(abs_sums.iter().sum::<f64>() / n);
        f.push((sq_sums.iter().sum::<f64>() / n).sqrt());
        f
    }

    /// The bin of |residual| `a`: the last k with edges[k] <= a (0 for NaN).
    fn bin(&self, a: f64) -> usize {
        let last = self.edges.len() - 1;
        if a >= self.edges[last] {
            return last;
        }
        // `as` truncates and maps NaN to 0; the index stays below the table's length.
        let mut k = self.lut[((a * self.cells_per_unit) as usize).min(self.lut.len() - 1)] as usize;
        while k > 0 && self.edges[k] > a {
            k -= 1;
        }
        while k < last && self.edges[k + 1] <= a {
            k += 1;
        }
        k
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

/// [`ResidualStatistics::bin`]'s table for ascending `edges` from 0: cells as wide as the
/// narrowest gap between edges (at most 4,096 cells), so that a cell holds at most one edge.
fn bin_table(edges: &[f64]) -> (Vec<u8>, f64) {
    let last = edges[edges.len() - 1];
    let narrowest = edges.windows(2).map(|w| w[1] - w[0]).fold(f64::INFINITY, f64::min);
    let cells = if narrowest.is_finite() { (last / narrowest).ceil().clamp(1.0, 4096.0) as usize } else { 1 };
    let cells_per_unit = if last > 0.0 { cells as f64 / last } else { 0.0 };
    let lut = (0..cells).map(|i| (edges.partition_point(|e| *e <= i as f64 / cells_per_unit).saturating_sub(1)) as u8).collect();
    (lut, cells_per_unit)
}

/// The mean of each s x s block of each plane of a [C, H, W] tensor, in f64, with its
/// height and width (H / s, W / s: a remainder row or column is dropped, as the pipeline's
/// twin does).
fn block_means(pixels: &[f32], height: usize, width: usize, s: usize) -> (Vec<f64>, usize, usize) {
    let (h, w) = (height / s, width / s);
    let plane = height * width;
    let Some(planes) = pixels.len().checked_div(plane) else {
        return (Vec::new(), h, w);
    };
    let mut out = Vec::with_capacity(planes * h * w);
    let area = (s * s) as f64;
    for chunk in pixels.chunks_exact(plane) {
        for y in 0..h {
            for x in 0..w {
                let sum: f64 = (0..s).flat_map(|dy| &chunk[(y * s + dy) * width + x * s..][..s]).map(|&v| v as f64).sum();
                out.push(sum / area);
            }
        }
    }
    (out, h, w)
}

/// 4 x each value minus its 4 neighbours (edges replicated), per channel plane, of a
/// [C, H, W] tensor of [0, 1] intensities: the high-pass residual this detector and the
/// campaign monitor read.
pub fn laplacian<T: Copy + Into<f64>>(pixels: &[T], height: usize, width: usize) -> Vec<f64> {
    let plane = height * width;
    let mut r = vec![0f64; pixels.len()];
    if plane == 0 {
        return r;
    }
    for (chunk, out) in pixels.chunks(plane).zip(r.chunks_mut(plane)) {
        for y in 0..height {
            let row = &chunk[y * width..][..width];
            // Edges replicated: the first row's "up" is itself, the last row's "down".
            let up = &chunk[y.saturating_sub(1) * width..][..width];
            let down = &chunk[(y + 1).min(height - 1) * width..][..width];
            let out = &mut out[y * width..][..width];
            for x in 0..width {
                let left = row[x.saturating_sub(1)];
                let right = row[(x + 1).min(width - 1)];
                // Summed in this order, as before: the pipeline's twin and the fitted
                // thresholds see the same values.
                out[x] = 4.0 * row[x].into() - up[x].into() - down[x].into() - left.into() - right.into();
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bin_table_agrees_with_a_search_over_the_edges() {
        let json = r#"{"kind":"residual_statistics","edges_255":[0,0.5,1,1.5,2,3,4,6,8,12,16,24,32],"mean":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],"scale":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1],"weights":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],"bias":0}"#;
        let d = ResidualStatistics::load(json.as_bytes()).unwrap();
        let search = |a: f64| d.edges.partition_point(|e| *e <= a).saturating_sub(1);
        let mut values: Vec<f64> = (0..200_000).map(|i| i as f64 / 1e6).collect();
        // Every edge, and the floats either side of it.
        for e in &d.edges {
            values.extend([*e, f64::from_bits(e.to_bits() + 1), f64::from_bits(e.to_bits().saturating_sub(1))]);
        }
        values.extend([f64::NAN, f64::INFINITY, 4.0, 1e-300]);
        for a in values {
            assert_eq!(d.bin(a), search(a), "a = {a:e}");
        }
    }

    #[test]
    fn a_flat_image_has_no_residual_and_a_checkerboard_a_large_one() {
        let json = r#"{"kind":"residual_statistics","edges_255":[0,1,8],"mean":[0,0,0,0,0],"scale":[1,1,1,1,1],"weights":[0,0,0,1,0],"bias":0}"#;
        let d = ResidualStatistics::load(json.as_bytes()).unwrap();
        let features = |p: &[f32]| d.features(p, 4, 4, &laplacian(p, 4, 4));
        let flat = features(&[0.5; 16]);
        assert_eq!(flat, [1.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(d.score(&flat), 0.5);
        // Interior pixels of a 0/1 checkerboard: |4 * 1 - 0| = 4 > 8/255: the open last bin.
        let board: Vec<f32> = (0..16).map(|i| ((i / 4 + i % 4) % 2) as f32).collect();
        let f = features(&board);
        assert!(f[2] > 0.0 && f[3] > 1.0 && d.score(&f) > 0.7, "{f:?}");
        assert!(d.score(&f[..4]).is_nan());
    }

    #[test]
    fn coarser_scales_read_the_block_means() {
        let json = r#"{"kind":"residual_statistics","edges_255":[0,1],"scales":[1,2],"mean":[0,0,0,0,0,0,0,0],"scale":[1,1,1,1,1,1,1,1],"weights":[0,0,0,0,0,0,0,0],"bias":0}"#;
        let d = ResidualStatistics::load(json.as_bytes()).unwrap();
        // 2 x 2 blocks of a 4 x 4 checkerboard: each block's mean is 0.5, so the coarse
        // scale is flat while the full resolution is not; with a 5th row and column (dropped).
        let board: Vec<f32> = (0..25).map(|i| if i / 5 == 4 || i % 5 == 4 { 9.0 } else { ((i / 5 + i % 5) % 2) as f32 }).collect();
        let f = d.features(&board, 5, 5, &laplacian(&board, 5, 5));
        assert_eq!(f.len(), 8);
        assert!(f[1] > 0.5, "full resolution: {f:?}");
        assert_eq!(&f[4..], [1.0, 0.0, 0.0, 0.0], "2 x 2 blocks: {f:?}");
        let bad = json.replace(r#""scales":[1,2]"#, r#""scales":[0]"#);
        assert!(ResidualStatistics::load(bad.as_bytes()).unwrap_err().contains("scales"));
        let old = json.replace(r#""scales":[1,2],"#, "");
        assert!(ResidualStatistics::load(old.as_bytes()).unwrap_err().contains("4 values"));
    }

    #[test]
    fn edges_must_rise_from_zero() {
        let json = r#"{"kind":"residual_statistics","edges_255":[1,0],"mean":[0,0,0,0],"scale":[1,1,1,1],"weights":[0,0,0,0],"bias":0}"#;
        assert!(ResidualStatistics::load(json.as_bytes()).unwrap_err().contains("edges"));
    }
}
