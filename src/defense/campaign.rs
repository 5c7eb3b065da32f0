//! campaign: signs of an attack that no single request shows, watched across the requests
//! of one model.
//!
//! - Shared perturbation: a universal adversarial perturbation is one pattern added to
//!   every image. The Laplacian high-pass residual of each input is correlated with those of
//!   the last `residual_window` inputs; clean images share little high-frequency content
//!   (mean pairwise correlation ~0.01 on chest X-rays), images carrying the same UAP share
//!   its residual (0.05-0.35). The score is the window's mean pairwise correlation.
//! - Class-mix drift: the predicted classes of the last `class_mix_window` inputs against the
//!   mix the bundle was evaluated on, by Pearson's chi-square. A population signal, not a
//!   campaign alarm: a targeted UAP drives images to one class, but so does a day of one
//!   ward's patients or traffic grouped by diagnosis (the clean official chest test set in
//!   file order scores 172.8 against a threshold of 15.1), and every UAP stream of the
//!   bundles' reports is caught by the shared-perturbation signal. It is exported and has
//!   its own ticket-level alert; [`CampaignStatus::alarm`] does not include it.
//!
//! An input whose residual is already in the window (a resend of the same image) is not
//! added to it again.
//!
//! Both thresholds come from the bundle (`[campaign]`, calibrated on clean images by the
//! pipeline's `campaign` stage, which computes the residual with the same formula: the
//! residual threshold covers random windows and the training set streamed in file order and
//! grouped by patient, as PACS traffic arrives). A signal only alarms once its window is
//! full, as it was calibrated.

use std::collections::VecDeque;
use std::sync::Mutex;

use super::numeric::dot;
use crate::bundle::CampaignSpec;
use crate::metrics;

/// The campaign signals after one input was added.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CampaignStatus {
    pub residual_score: f32,
    pub residual_alarm: bool,
    pub class_mix_score: f32,
    pub class_mix_alarm: bool,
}

impl CampaignStatus {
    /// A campaign is suspected: the inputs share a perturbation. (Class-mix drift alone is
    /// a population signal, reported beside it.)
    pub fn alarm(&self) -> bool {
        self.residual_alarm
    }
}

pub struct CampaignMonitor {
    model: String,
    spec: CampaignSpec,
    state: Mutex<State>,
}

#[derive(Clone)]
struct State {
    residuals: ResidualWindow,
    classes: VecDeque<usize>,
    counts: Vec<usize>,
    /// Alarm states of the previous input, so that alarms are counted once per episode.
    was_alarmed: (bool, bool),
}

impl CampaignMonitor {
    pub fn new(model: &str, spec: CampaignSpec) -> CampaignMonitor {
        let state = State {
            residuals: ResidualWindow::new(spec.residual_window),
            classes: VecDeque::with_capacity(spec.class_mix_window),
            counts: vec![0; spec.reference_class_mix.len()],
            was_alarmed: (false, false),
        };
        metrics::set_campaign(model, (0.0, false), (0.0, false));
        CampaignMonitor { model: model.to_string(), spec, state: Mutex::new(state) }
    }

    /// A monitor for `spec` that goes on from `previous`'s windows (the same classifier
    /// reloaded with a new calibration) when the window sizes and the class count are
    /// unchanged; otherwise one that starts empty.
    pub fn continuing(previous: &CampaignMonitor, spec: CampaignSpec) -> CampaignMonitor {
        let old = &previous.spec;
        if old.residual_window != spec.residual_window
            || old.class_mix_window != spec.class_mix_window
            || old.reference_class_mix.len() != spec.reference_class_mix.len()
        {
            return CampaignMonitor::new(&previous.model, spec);
        }
        let state = previous.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
        CampaignMonitor { model: previous.model.clone(), spec, state: Mutex::new(state) }
    }

    pub fn spec(&self) -> &CampaignSpec {
        &self.spec
    }

    /// Adds one screened input (its residual from [`residual`], its predicted class).
    pub fn observe(&self, residual: Vec<f32>, predicted: usize) -> CampaignStatus {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.residuals.push(residual);
        if st.classes.len() == self.spec.class_mix_window {
            if let Some(old) = st.classes.pop_front() {
                st.counts[old] -= 1;
            }
        }
        st.classes.push_back(predicted);
        st.counts[predicted] += 1;

        let residual_score = st.residuals.mean_correlation();
        let class_mix_score = chi_square(&st.counts, &self.spec.reference_class_mix);
        let status = CampaignStatus {
            residual_score: residual_score as f32,
            residual_alarm: st.residuals.is_full() && residual_score > self.spec.residual_threshold as f64,
            class_mix_score: class_mix_score as f32,
            class_mix_alarm: st.classes.len() == self.spec.class_mix_window && class_mix_score > self.spec.class_mix_threshold as f64,
        };
        if status.residual_alarm && !st.was_alarmed.0 {
            metrics::record_campaign_alarm(&self.model, "shared_perturbation");
            tracing::warn!(model = %self.model, score = status.residual_score, "campaign alarm: inputs share a perturbation");
        }
        if status.class_mix_alarm && !st.was_alarmed.1 {
            metrics::record_campaign_alarm(&self.model, "class_mix_drift");
            tracing::info!(model = %self.model, score = status.class_mix_score, "predicted-class mix drifted (a change of population, or a targeted attack; not a campaign alarm by itself)");
        }
        st.was_alarmed = (status.residual_alarm, status.class_mix_alarm);
        drop(st);
        metrics::set_campaign(&self.model, (status.residual_score, status.residual_alarm), (status.class_mix_score, status.class_mix_alarm));
        status
    }
}

/// Pearson chi-square of observed class counts against reference shares.
fn chi_square(counts: &[usize], reference: &[f32]) -> f64 {
    let n: usize = counts.iter().sum();
    if n == 0 {
        return 0.0;
    }
    counts
        .iter()
        .zip(reference)
        .map(|(&c, &p)| {
            // A class the reference never predicted: any occurrence is maximal drift.
            let expected = (n as f64 * p as f64).max(1e-9);
            (c as f64 - expected).powi(2) / expected
        })
        .sum()
}

/// Unit-norm, zero-mean 4-neighbour Laplacian residual (edges replicated) of a [C, H, W]
/// tensor of [0, 1] intensities; all channels in one vector. Zero for a flat image.
pub fn residual(pixels: &[f32], height: usize, width: usize) -> Vec<f32> {
    normalized(super::residual::laplacian(pixels, height, width))
}

/// [`residual`] from the Laplacian itself (the pipeline computes it once for the campaign
/// monitor and the residual-statistics detector).
pub fn normalized(mut r: Vec<f64>) -> Vec<f32> {
    let mean = r.iter().sum::<f64>() / r.len().max(1) as f64;
    r.iter_mut().for_each(|v| *v -= mean);
    let norm = dot(&r, &r).sqrt();
    let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
    r.iter().map(|v| (v * scale) as f32).collect()
}

/// The last `capacity` residuals and the sum of their pairwise correlations. The sum of
/// all pairwise dot products of a set is (|S|^2 - sum_i |r_i|^2) / 2 with S the sum of its
/// residuals, so the window keeps S and each residual's squared norm: an input costs one
/// pass over S, the new residual and the one it replaces, instead of a dot product with
/// every other residual in the window (31 passes of 150,528 values at 224 px RGB).
#[derive(Clone)]
struct ResidualWindow {
    slots: Vec<Option<Vec<f32>>>,
    /// |r|^2 of the residual in each slot (1 up to rounding; 0 for a flat image).
    norms: Vec<f64>,
    /// Sum of the residuals in the window, element by element.
    sum: Vec<f64>,
    /// |sum|^2 after the last push.
    sum_sq: f64,
    next: usize,
    filled: usize,
    /// Pushes since `sum` was last rebuilt from the slots: additions and subtractions
    /// leave rounding behind, so it is summed afresh every REBUILD_EVERY pushes.
    since_rebuild: usize,
}

const REBUILD_EVERY: usize = 4096;

impl ResidualWindow {
    fn new(capacity: usize) -> ResidualWindow {
        ResidualWindow { slots: vec![None; capacity], norms: vec![0.0; capacity], sum: Vec::new(), sum_sq: 0.0, next: 0, filled: 0, since_rebuild: 0 }
    }

    /// Adds a residual, unless the same one is already in the window: a PACS that resends
    /// a study (a retry, a second routing rule) is not two images sharing a perturbation,
    /// and on sets whose clean residuals barely correlate (RGB dermoscopy: window mean
    /// ~0.001) two resends in a window were enough to alarm.
    fn push(&mut self, r: Vec<f32>) {
        if self.slots.iter().flatten().any(|other| *other == r) {
            return;
        }
        if self.sum.len() != r.len() {
            // The first input, or residuals of another length (never from one classifier):
            // the window starts afresh.
            *self = ResidualWindow::new(self.slots.len());
            self.sum = vec![0.0; r.len()];
        }
        let slot = self.next;
        let old = self.slots[slot].take();
        if old.is_none() {
            self.filled += 1;
        }
        let (sum_sq, norm) = slide(&mut self.sum, &r, old.as_deref());
        self.sum_sq = sum_sq;
        self.norms[slot] = norm;
        self.slots[slot] = Some(r);
        self.next = (slot + 1) % self.slots.len();
        self.since_rebuild += 1;
        if self.since_rebuild >= REBUILD_EVERY {
            self.rebuild();
        }
    }

    /// `sum` and `sum_sq` summed afresh from the residuals in the window.
    fn rebuild(&mut self) {
        self.sum.iter_mut().for_each(|v| *v = 0.0);
        for r in self.slots.iter().flatten() {
            self.sum.iter_mut().zip(r).for_each(|(s, v)| *s += f64::from(*v));
        }
        self.sum_sq = dot(&self.sum, &self.sum);
        self.since_rebuild = 0;
    }

    fn is_full(&self) -> bool {
        self.filled == self.slots.len()
    }

    fn mean_correlation(&self) -> f64 {
        let n = self.filled as f64;
        if self.filled < 2 {
            return 0.0;
        }
        let norms: f64 = self.slots.iter().zip(&self.norms).filter(|(s, _)| s.is_some()).map(|(_, n)| n).sum();
        (self.sum_sq - norms) / (n * (n - 1.0))
    }
}

/// `sum += add - remove` in one pass; returns the new |sum|^2 and |add|^2 (each in eight
/// interleaved running sums, as numeric::dot).
fn slide(sum: &mut [f64], add: &[f32], remove: Option<&[f32]>) -> (f64, f64) {
    const LANES: usize = 8;
    const ZEROS: [f32; LANES] = [0.0; LANES];
    let (mut sq, mut nn) = ([0f64; LANES], [0f64; LANES]);
    let mut lanes = |s: &mut [f64], a: &[f32], o: &[f32], width: usize| {
        for l in 0..width {
            let (a, v) = (f64::from(a[l]), s[l] + f64::from(a[l]) - f64::from(o[l]));
            s[l] = v;
            sq[l] += v * v;
            nn[l] += a * a;
        }
    };
    let body = sum.len() / LANES * LANES;
    let (sum_body, sum_tail) = sum.split_at_mut(body);
    let chunks = sum_body.chunks_exact_mut(LANES).zip(add[..body].chunks_exact(LANES));
    match remove {
        Some(old) => chunks.zip(old[..body].chunks_exact(LANES)).for_each(|((s, a), o)| lanes(s, a, o, LANES)),
        None => chunks.for_each(|(s, a)| lanes(s, a, &ZEROS, LANES)),
    }
    let tail = sum_tail.len();
    lanes(sum_tail, &add[body..], remove.map_or(&ZEROS[..tail], |o| &o[body..]), tail);
    (sq.iter().sum(), nn.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> CampaignSpec {
        CampaignSpec { residual_window: 4, residual_threshold: 0.5, class_mix_window: 10, class_mix_threshold: 6.0, reference_class_mix: vec![0.5, 0.5] }
    }

    fn noise(seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..64)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (s >> 40) as f32 / (1u64 << 24) as f32
            })
            .collect()
    }

    #[test]
    fn the_window_mean_matches_a_direct_computation_after_wrapping() {
        let mut w = ResidualWindow::new(3);
        let rs: Vec<Vec<f32>> = (0..7).map(|i| residual(&noise(i), 8, 8)).collect();
        for r in &rs {
            w.push(r.clone());
        }
        let last = &rs[4..];
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum::<f64>();
        let direct = (dot(&last[0], &last[1]) + dot(&last[0], &last[2]) + dot(&last[1], &last[2])) / 3.0;
        assert!((w.mean_correlation() - direct).abs() < 1e-9, "{} vs {direct}", w.mean_correlation());
    }

    #[test]
    fn the_running_sum_stays_exact_over_a_long_stream() {
        // Past REBUILD_EVERY pushes (the sum is rebuilt) and with a tail shorter than the
        // eight lanes (63 values).
        let mut w = ResidualWindow::new(5);
        let rs: Vec<Vec<f32>> = (0..REBUILD_EVERY as u64 + 37).map(|i| residual(&noise(i)[..63], 9, 7)).collect();
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum::<f64>();
        for (k, r) in rs.iter().enumerate() {
            w.push(r.clone());
            if k % 997 == 0 || k + 1 == rs.len() {
                let last = &rs[k.saturating_sub(4)..=k];
                let pairs: Vec<f64> = (0..last.len()).flat_map(|i| (i + 1..last.len()).map(move |j| (i, j))).map(|(i, j)| dot(&last[i], &last[j])).collect();
                let direct = if pairs.is_empty() { 0.0 } else { pairs.iter().sum::<f64>() / pairs.len() as f64 };
                assert!((w.mean_correlation() - direct).abs() < 1e-12, "push {k}: {} vs {direct}", w.mean_correlation());
            }
        }
    }

    #[test]
    fn a_shared_pattern_alarms_and_independent_noise_does_not() {
        let m = CampaignMonitor::new("t", spec());
        let quiet: Vec<CampaignStatus> = (0..8).map(|i| m.observe(residual(&noise(i), 8, 8), (i % 2) as usize)).collect();
        assert!(quiet.iter().all(|s| !s.residual_alarm), "{quiet:?}");
        let pattern = noise(99);
        let loud = (0..4)
            .map(|i| {
                let x: Vec<f32> = noise(100 + i).iter().zip(&pattern).map(|(a, p)| 0.2 * a + p).collect();
                m.observe(residual(&x, 8, 8), (i % 2) as usize)
            })
            .last()
            .unwrap();
        assert!(loud.residual_alarm && loud.residual_score > 0.5, "{loud:?}");
    }

    #[test]
    fn a_resent_input_is_counted_once() {
        let mut w = ResidualWindow::new(4);
        for i in 0..3 {
            w.push(residual(&noise(i), 8, 8));
        }
        let before = w.mean_correlation();
        for _ in 0..5 {
            w.push(residual(&noise(1), 8, 8));
        }
        assert_eq!(w.mean_correlation(), before);
        assert!(!w.is_full(), "resends do not fill the window");
        w.push(residual(&noise(3), 8, 8));
        assert!(w.is_full());
    }

    #[test]
    fn class_mix_alarms_only_on_a_full_drifted_window() {
        let m = CampaignMonitor::new("t2", spec());
        let flat = residual(&[0.5; 64], 8, 8);
        assert!(flat.iter().all(|v| *v == 0.0));
        for i in 0..9 {
            assert!(!m.observe(flat.clone(), 1).class_mix_alarm, "window not full at {i}");
        }
        let s = m.observe(flat.clone(), 1);
        assert!(s.class_mix_alarm && (s.class_mix_score - 10.0).abs() < 1e-4, "{s:?}");
        for i in 0..10 {
            m.observe(flat.clone(), i % 2);
        }
        assert!(!m.observe(flat, 0).class_mix_alarm);
    }
}
