//! sentry::convert: conversions between the pipeline's types and the medsentry.v1 messages.

use crate::bundle::Bundle;
use crate::decode::Input;
use crate::defense::{CampaignStatus, Screening, Verdict};
use crate::pipeline::{Outcome, PipelineError};
use crate::policy::Enforced;
use crate::proto;

pub fn input_of(req: &mut proto::ScreenRequest) -> Result<Input, PipelineError> {
    use proto::screen_request::Input as P;
    match req.input.take() {
        Some(P::Dicom(b)) => Ok(Input::Dicom(b)),
        Some(P::Image(b)) => Ok(Input::Image(b)),
        Some(P::Tensor(t)) => Ok(Input::Tensor { shape: t.shape, data: t.data }),
        None => Err(PipelineError::NoInput),
    }
}

/// The answer to a Screen call; `shows_scores`: whether this caller sees raw scores.
pub fn response(request_id: String, bundle: &Bundle, o: Outcome, shows_scores: bool) -> proto::ScreenResponse {
    let m = &bundle.manifest;
    proto::ScreenResponse {
        request_id,
        model: Some(proto::ModelRef { name: m.name.clone(), version: m.version.clone(), sha256: bundle.classifier_sha256().to_string() }),
        probabilities: m
            .labels
            .iter()
            .zip(&o.probabilities)
            .map(|(label, &probability)| proto::ClassProbability { label: label.clone(), probability })
            .collect(),
        top_label: m.labels[o.top_index].clone(),
        top_index: o.top_index as u32,
        top_probability: o.probabilities[o.top_index],
        screening: Some(screening(o.screening, o.enforced, o.campaign, shows_scores)),
        timings: Some(proto::StageTimings {
            decode_seconds: o.timings.decode,
            preprocess_seconds: o.timings.preprocess,
            queue_seconds: o.timings.queue,
            infer_seconds: o.timings.infer,
            detect_seconds: o.timings.detect,
            total_seconds: o.timings.total,
        }),
    }
}

fn screening(s: Screening, enforced: Enforced, campaign: Option<CampaignStatus>, shows_scores: bool) -> proto::Screening {
    // Withheld values are 0 and `scores_withheld` says so.
    let shown = |v: f32| if shows_scores { v } else { 0.0 };
    let verdict = match s.verdict {
        Verdict::NotScreened => proto::Verdict::NotScreened,
        Verdict::Clean => proto::Verdict::Clean,
        Verdict::Suspicious => proto::Verdict::Suspicious,
        Verdict::Adversarial => proto::Verdict::Adversarial,
        Verdict::OutOfDistribution => proto::Verdict::OutOfDistribution,
    };
    let out_of_distribution = s.ood.map(|o| proto::OutOfDistribution {
        reason: o.reason.unwrap_or_default(),
        score: shown(o.score.unwrap_or(0.0)),
        threshold: shown(o.threshold.unwrap_or(0.0)),
    });
    proto::Screening {
        verdict: verdict as i32,
        fused_score: shown(s.fused_score),
        detectors: s
            .detectors
            .into_iter()
            .map(|d| proto::DetectorScore {
                name: d.name,
                score: shown(d.score),
                threshold: shown(d.threshold),
                calibrated_fpr: shown(d.calibrated_fpr),
                fired: d.fired,
            })
            .collect(),
        note: s.note,
        action: enforced.action,
        quarantine_id: enforced.quarantine_id.unwrap_or_default(),
        campaign: campaign.map(|c| proto::Campaign {
            alarm: c.alarm(),
            shared_perturbation_score: shown(c.residual_score),
            shared_perturbation_alarm: c.residual_alarm,
            class_mix_score: shown(c.class_mix_score),
            class_mix_alarm: c.class_mix_alarm,
        }),
        scores_withheld: !shows_scores,
        out_of_distribution,
    }
}

/// A bundle's description; thresholds only for callers who see scores.
pub fn model_info(bundle: &Bundle, shows_scores: bool) -> proto::ModelInfo {
    let m = &bundle.manifest;
    proto::ModelInfo {
        name: m.name.clone(),
        version: m.version.clone(),
        task: m.task.clone(),
        labels: m.labels.clone(),
        input: Some(proto::InputSpec {
            channels: m.input.channels,
            height: m.input.height,
            width: m.input.width,
            color: m.input.color.as_str().into(),
            mean: m.input.mean.clone(),
            std: m.input.std.clone(),
            resize: m.input.resize.clone(),
            quantize_bits: m.input.quantize_bits.unwrap_or(0),
        }),
        hardening: m.hardening.as_ref().map(|h| proto::Hardening { method: h.method.clone(), norm: h.norm.clone(), epsilon: h.epsilon, steps: h.steps }),
        detectors: m
            .detectors
            .iter()
            .map(|d| {
                let (threshold, calibrated_fpr) = if shows_scores { (d.threshold, d.calibrated_fpr) } else { (0.0, 0.0) };
                proto::DetectorInfo { name: d.name.clone(), kind: d.kind.clone(), threshold, calibrated_fpr }
            })
            .collect(),
        classifier_sha256: bundle.classifier_sha256().to_string(),
        max_batch: m.max_batch as u32,
        figures: m.figures.clone().into_iter().collect(),
        data_source: m.data_source.clone(),
    }
}
