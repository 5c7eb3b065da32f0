//! Square attack (Andriushchenko et al., ECCV 2020), Linf, score-based: random square
//! patches of +-eps, kept when the returned probabilities move towards another class
//! (margin p_y - max_{j != y} p_j, y = the clean answer). Uses only what the endpoint
//! returns; a refused or failed query is a rejected candidate.

use super::image::{Image, Rng};
use super::target::{Answer, Target};
use super::ImageResult;

/// Share of the image a square covers at the start; halved on the paper's schedule.
const P_INIT: f64 = 0.1;

pub struct Square {
    /// Linf budget in grey levels (k/255).
    pub eps: u8,
    /// Queries per image, the first (stripes) included.
    pub queries: usize,
}

fn margin(a: &Answer, y: usize) -> Option<f32> {
    if a.probabilities.len() <= y {
        return None;
    }
    let other = a.probabilities.iter().enumerate().filter(|(j, _)| *j != y).map(|(_, p)| *p).fold(f32::MIN, f32::max);
    Some(a.probabilities[y] - other)
}

/// The paper's square-size schedule, stretched to `budget` queries: the share of pixels a
/// square covers halves at 1, 5, 20, 50, 100, 200, 400, 600, 800 thousandths of the run.
fn share(it: usize, budget: usize) -> f64 {
    let t = it as f64 / budget.max(1) as f64 * 1000.0;
    let halvings = [1.0, 5.0, 20.0, 50.0, 100.0, 200.0, 400.0, 600.0, 800.0].iter().filter(|&&b| t > b).count();
    P_INIT / 2f64.powi(halvings as i32)
}

impl Square {
    pub async fn run(&self, t: &mut Target, x: &Image, y: usize, name: &str, rng: &mut Rng) -> anyhow::Result<ImageResult> {
        let (c, h, w) = (x.channels, x.height, x.width);
        let eps = self.eps as i16;
        // Vertical stripes of +-eps: the paper's initialisation.
        let mut delta = vec![0i16; x.data.len()];
        for ch in 0..c {
            for col in 0..w {
                let s = eps * rng.sign();
                (0..h).for_each(|row| delta[ch * h * w + row * w + col] = s);
            }
        }
        let mut result = ImageResult::new(name);
        let first = t.query(&x.add(&delta), "square", name).await?;
        result.record(&first, y, &x.add(&delta), x);
        let mut best = margin(&first, y).unwrap_or(f32::INFINITY);
        let mut it = 1;
        while it < self.queries && !result.fooled && !t.out_of_time() {
            let side = ((share(it, self.queries) * (h * w) as f64).sqrt().round() as usize).clamp(1, h.min(w).saturating_sub(1).max(1));
            let (r0, c0) = (rng.below(h - side + 1), rng.below(w - side + 1));
            let mut candidate = delta.clone();
            for ch in 0..c {
                let s = eps * rng.sign();
                for row in r0..r0 + side {
                    candidate[ch * h * w + row * w + c0..ch * h * w + row * w + c0 + side].fill(s);
                }
            }
            let img = x.add(&candidate);
            let answer = t.query(&img, "square", name).await?;
            it += 1;
            if let Some(m) = margin(&answer, y) {
                if m < best {
                    best = m;
                    delta = candidate;
                    result.record(&answer, y, &img, x);
                }
            } else {
                result.note_refusal(&answer);
            }
        }
        result.queries = it;
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn square_share_halves_on_schedule() {
        assert_eq!(super::share(0, 1000), 0.1);
        assert_eq!(super::share(2, 1000), 0.05);
        assert_eq!(super::share(999, 1000), 0.1 / 512.0);
        assert_eq!(super::share(30, 100), 0.1 / 64.0); // 300 thousandths: past 1, 5, 20, 50, 100, 200
    }
}
