//! Few-pixel attack by differential evolution (Su, Vargas and Sakurai 2019, the seed's
//! one-pixel attack), score-based: a candidate sets `pixels` pixels to chosen values; the
//! population evolves by DE/rand/1 (mutant = a + F (b - c)) and a mutant replaces its parent
//! when the returned probability of the clean answer drops. It stops at the first candidate
//! that changes the top label or when the query budget is spent.
//!
//! Pixels are the image's own: an endpoint that shrinks a large file to the model's size
//! averages a single pixel away, so the attack means something on images at the model's
//! size (`--protocol oip-fp32`, or model-size PNGs).

use super::image::{Image, Rng};
use super::target::{Answer, Target};
use super::ImageResult;

/// Candidates per generation (the paper uses 400 for CIFAR; a query budget of a few hundred
/// per image affords a small population).
const POPULATION: usize = 16;
/// DE mutation scale.
const F: f64 = 0.5;

pub struct Pixels {
    /// Pixels a candidate may change.
    pub pixels: usize,
    pub queries: usize,
}

/// One candidate: per changed pixel (row, column, value per channel), as reals so that DE
/// can mix them; rounded and clamped when applied.
type Genome = Vec<f64>;

impl Pixels {
    fn genes(&self, c: usize) -> usize {
        self.pixels * (2 + c)
    }

    fn random(&self, x: &Image, rng: &mut Rng) -> Genome {
        let mut g = Vec::with_capacity(self.genes(x.channels));
        for _ in 0..self.pixels {
            g.push(rng.below(x.height) as f64);
            g.push(rng.below(x.width) as f64);
            (0..x.channels).for_each(|_| g.push(rng.below(256) as f64));
        }
        g
    }

    fn apply(&self, x: &Image, g: &Genome) -> Image {
        let (c, h, w) = (x.channels, x.height, x.width);
        let mut img = x.clone();
        for p in g.chunks(2 + c) {
            let row = (p[0].round() as i64).clamp(0, h as i64 - 1) as usize;
            let col = (p[1].round() as i64).clamp(0, w as i64 - 1) as usize;
            for ch in 0..c {
                img.data[ch * h * w + row * w + col] = p[2 + ch].round().clamp(0.0, 255.0) as u8;
            }
        }
        img
    }

    pub async fn run(&self, t: &mut Target, x: &Image, y: usize, name: &str, rng: &mut Rng) -> anyhow::Result<ImageResult> {
        let mut result = ImageResult::new(name);
        let mut best = f32::INFINITY;
        let mut used = 0;
        // Fitness: the probability of the clean answer (lower is better); refused or
        // failed queries are the worst.
        let fitness = |a: &Answer| a.probabilities.get(y).copied().unwrap_or(f32::INFINITY);
        let mut population: Vec<(Genome, f32)> = Vec::with_capacity(POPULATION);
        while population.len() < POPULATION.min(self.queries) && !result.fooled && !t.out_of_time() {
            let g = self.random(x, rng);
            let img = self.apply(x, &g);
            let a = t.query(&img, "pixels", name).await?;
            used += 1;
            keep_if_better(&mut result, &mut best, &a, y, &img, x);
            population.push((g, fitness(&a)));
        }
        let mut i = 0;
        while used < self.queries && !result.fooled && !t.out_of_time() && population.len() >= 4 {
            let n = population.len();
            let (a, b, c) = distinct_three(i % n, n, rng);
            let mutant: Genome = (0..population[i % n].0.len()).map(|k| population[a].0[k] + F * (population[b].0[k] - population[c].0[k])).collect();
            let img = self.apply(x, &mutant);
            let answer = t.query(&img, "pixels", name).await?;
            used += 1;
            keep_if_better(&mut result, &mut best, &answer, y, &img, x);
            let f = fitness(&answer);
            if f < population[i % n].1 {
                population[i % n] = (mutant, f);
            }
            i += 1;
        }
        result.queries = used;
        Ok(result)
    }
}

/// Records the first answer that changes the label, else the one with the lowest
/// clean-class probability so far (`best`).
fn keep_if_better(result: &mut ImageResult, best: &mut f32, a: &Answer, y: usize, img: &Image, x: &Image) {
    if a.top.is_none() {
        result.note_refusal(a);
        return;
    }
    let p = a.probabilities.get(y).copied().unwrap_or(f32::INFINITY);
    if !result.fooled && (a.top != Some(y) || p < *best) {
        result.record(a, y, img, x);
        *best = p;
    }
}

/// Three indices in 0..n, distinct from each other and from `i`.
fn distinct_three(i: usize, n: usize, rng: &mut Rng) -> (usize, usize, usize) {
    let mut pick = |taken: &[usize]| loop {
        let k = rng.below(n);
        if !taken.contains(&k) {
            return k;
        }
    };
    let a = pick(&[i]);
    let b = pick(&[i, a]);
    let c = pick(&[i, a, b]);
    (a, b, c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_candidate_changes_at_most_its_pixels_within_the_image() {
        let x = Image { width: 5, height: 4, channels: 3, data: vec![100; 60] };
        let attack = Pixels { pixels: 2, queries: 10 };
        let mut rng = Rng::new(3);
        for _ in 0..50 {
            let mut g = attack.random(&x, &mut rng);
            g.iter_mut().for_each(|v| *v = *v * 3.0 - 200.0); // mutants leave the ranges
            let img = attack.apply(&x, &g);
            let changed = (0..20).filter(|&p| (0..3).any(|ch| img.data[ch * 20 + p] != 100)).count();
            assert!(changed <= 2);
        }
        let (a, b, c) = distinct_three(1, 4, &mut rng);
        assert!(a != b && b != c && a != c && ![a, b, c].contains(&1));
    }
}
