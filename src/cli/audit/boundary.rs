//! Boundary attack (Brendel et al., ICLR 2018), decision-based: it sees only the top label.
//! It starts from an image the endpoint already labels differently (another image of the
//! set, else uniform noise), walks it to the boundary by binary search on the blend with
//! the original, then takes random steps along the boundary and towards the original,
//! keeping those that still change the label. What it reaches is the perturbation size
//! (Linf, RMS) within the query budget; the image counts as fooled when the Linf distance
//! is within the audit's eps.

use super::image::{Image, Rng};
use super::target::Target;
use super::ImageResult;

pub struct Boundary {
    /// Linf size within which the image counts as fooled (grey levels).
    pub eps: u8,
    pub queries: usize,
}

/// Points on the segment x -> o: x + alpha (o - x), rounded to grey levels.
fn blend(x: &Image, o: &Image, alpha: f64) -> Image {
    let data = x.data.iter().zip(&o.data).map(|(&a, &b)| (a as f64 + alpha * (b as f64 - a as f64)).round().clamp(0.0, 255.0) as u8).collect();
    Image { data, ..x.clone() }
}

impl Boundary {
    /// `starts`: images of the same shape the endpoint labels other than `y` (their clean
    /// answers are known from the clean pass, so they cost no query).
    pub async fn run(&self, t: &mut Target, x: &Image, y: usize, name: &str, starts: &[&Image], rng: &mut Rng) -> anyhow::Result<ImageResult> {
        let mut result = ImageResult::new(name);
        let mut used = 0;
        let mut adv: Option<Image> = starts.iter().find(|s| s.data.len() == x.data.len()).map(|s| (*s).clone());
        while adv.is_none() && used < 5.min(self.queries) && !t.out_of_time() {
            let noise = Image { data: (0..x.data.len()).map(|_| rng.below(256) as u8).collect(), ..x.clone() };
            let a = t.query(&noise, "boundary", name).await?;
            used += 1;
            if a.top.is_some_and(|top| top != y) {
                adv = Some(noise);
            }
        }
        let Some(mut adv) = adv else {
            result.queries = used;
            return Ok(result);
        };
        // Binary search on the blend: the smallest alpha that still changes the label.
        let (mut lo, mut hi) = (0.0f64, 1.0f64);
        let mut hi_answer = None;
        for _ in 0..8 {
            if used >= self.queries || t.out_of_time() {
                break;
            }
            let mid = (lo + hi) / 2.0;
            let img = blend(x, &adv, mid);
            let a = t.query(&img, "boundary", name).await?;
            used += 1;
            if a.top.is_some_and(|top| top != y) {
                hi = mid;
                hi_answer = Some((a, img));
            } else {
                lo = mid;
                result.note_refusal(&a);
            }
        }
        if let Some((a, img)) = hi_answer {
            result.record(&a, y, &img, x);
            adv = img;
        }
        // Random walk along the boundary, then a step towards the original.
        let (mut sigma, mut step) = (0.05f64, 0.05f64);
        while used < self.queries && !t.out_of_time() {
            let dist = adv.rms(x) * (x.data.len() as f64).sqrt();
            if dist < 1.0 {
                break;
            }
            let noise: Vec<f64> = (0..x.data.len()).map(|_| rng.normal()).collect();
            let norm = noise.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
            let data = adv
                .data
                .iter()
                .zip(&x.data)
                .zip(&noise)
                .map(|((&a, &o), n)| {
                    let moved = a as f64 + sigma * dist * n / norm;
                    (moved + step * (o as f64 - moved)).round().clamp(0.0, 255.0) as u8
                })
                .collect();
            let candidate = Image { data, ..x.clone() };
            let a = t.query(&candidate, "boundary", name).await?;
            used += 1;
            if a.top.is_some_and(|top| top != y) {
                result.record(&a, y, &candidate, x);
                adv = candidate;
                step = (step * 1.5).min(0.5);
            } else {
                result.note_refusal(&a);
                step = (step * 0.8).max(0.005);
                sigma = (sigma * 0.95).max(0.005);
            }
        }
        result.queries = used;
        // Only a perturbation within the audit's budget counts as fooling the model.
        result.fooled = result.fooled && result.linf <= self.eps;
        Ok(result)
    }
}
