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

/// Histograms updated in turn, so that consecutive pairs (which mostly fall in one bin) do
/// not each wait on the previous update of the same counter.
const LANES: usize = 4;

/// Of a [C, H, W] tensor of [0, 1] intensities: for the first-order differences, then the
/// second-order ones, of the steps floor(255 v + 0.5) along every row and every column of
/// every plane, clipped to [-t, t], the square root of the joint frequency of each
/// consecutive pair (a, b) at (a + t) (2t + 1) + (b + t), the rows' and the columns'
/// frequencies averaged.
pub fn features(pixels: &[f32], height: usize, width: usize, t: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(len(t));
    if t == 0 {
        return out;
    }
    let k = 2 * t + 1;
    // `as` saturates (and maps NaN to 0): the pixels were checked finite and in range before.
    let steps: Vec<i32> = pixels.iter().map(|&v| (f64::from(v) * 255.0 + 0.5).floor() as i32).collect();
    let plane = height * width;
    let planes: Vec<&[i32]> = if plane == 0 { Vec::new() } else { steps.chunks_exact(plane).collect() };
    let mut counter = Counter { t: t as i32, k, hist: vec![0u64; LANES * k * k], total: 0, clipped: Vec::with_capacity(height.max(width)) };
    let mut column = Vec::with_capacity(height);
    for order in [1, 2] {
        let mut freq = vec![0f64; k * k];
        for s in &planes {
            for row in s.chunks_exact(width) {
                counter.add_line(row, order);
            }
        }
        counter.drain_into(&mut freq);
        for s in &planes {
            for x in 0..width {
                column.clear();
                column.extend((0..height).map(|y| s[y * width + x]));
                counter.add_line(&column, order);
            }
        }
        counter.drain_into(&mut freq);
        out.extend(freq.iter().map(|f| (f / 2.0).sqrt()));
    }
    out
}

/// One direction's pair counts, line by line.
struct Counter {
    t: i32,
    /// 2t + 1: the clipped values.
    k: usize,
    /// LANES histograms of k * k pairs, updated in turn.
    hist: Vec<u64>,
    total: u64,
    /// The current line's clipped differences, shifted to [0, 2t] (reused).
    clipped: Vec<usize>,
}

impl Counter {
    fn add_line(&mut self, line: &[i32], order: usize) {
        let t = self.t;
        let clip = |d: i32| (d.clamp(-t, t) + t) as usize;
        self.clipped.clear();
        if order == 1 {
            self.clipped.extend(line.windows(2).map(|w| clip(w[1] - w[0])));
        } else {
            self.clipped.extend(line.windows(3).map(|w| clip(w[2] - 2 * w[1] + w[0])));
        }
        let bins = self.k * self.k;
        for (i, w) in self.clipped.windows(2).enumerate() {
            self.hist[(i % LANES) * bins + w[0] * self.k + w[1]] += 1;
        }
        self.total += self.clipped.len().saturating_sub(1) as u64;
    }

    /// Adds the joint frequencies counted since the last call (lanes summed) to `freq`.
    fn drain_into(&mut self, freq: &mut [f64]) {
        let bins = freq.len();
        for (b, f) in freq.iter_mut().enumerate() {
            let count: u64 = (0..LANES).map(|l| self.hist[l * bins + b]).sum();
            // A line too short for a pair adds nothing (the pipeline divides by max(total, 1)).
            *f += count as f64 / self.total.max(1) as f64;
        }
        self.hist.fill(0);
        self.total = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A benchmark, not a check (`cargo test --release --lib cooccurrence -- --ignored
    /// --nocapture`): the co-occurrences' cost against the Laplacian every input already
    /// pays, measured in the same run.
    #[test]
    #[ignore]
    fn cost_against_the_laplacian() {
        for (c, h) in [(1usize, 64usize), (3, 64), (3, 224)] {
            let px: Vec<f32> = (0..c * h * h).map(|i| ((i * 7919 % 256) as f32) / 255.0).collect();
            let n = if h > 100 { 200 } else { 3000 };
            let time = |f: &dyn Fn()| {
                let t0 = std::time::Instant::now();
                (0..n).for_each(|_| f());
                t0.elapsed().as_secs_f64() / n as f64
            };
            let co = time(&|| drop(std::hint::black_box(features(std::hint::black_box(&px), h, h, 3))));
            let lap = time(&|| drop(std::hint::black_box(super::super::residual::laplacian(std::hint::black_box(&px), h, h))));
            println!("{c} x {h} x {h}: co-occurrences {:.1} us, Laplacian {:.1} us, ratio {:.1}", co * 1e6, lap * 1e6, co / lap);
        }
    }

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
