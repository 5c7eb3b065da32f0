//! Unit tests of the screener: how detector scores and thresholds become a verdict.

use super::*;

fn spec(threshold: f32, suspicious: Option<f32>) -> DetectorSpec {
    DetectorSpec {
        name: "maha".into(),
        kind: "mahalanobis".into(),
        file: "d.json".into(),
        threshold,
        calibrated_fpr: 0.01,
        suspicious_threshold: suspicious,
        suspicious_fpr: suspicious.map(|_| 0.05),
    }
}

fn screener(threshold: f32, suspicious: Option<f32>) -> Screener {
    let file = br#"{"kind":"mahalanobis","means":[[0,0],[100,100]],"precision":[[1,0],[0,1]]}"#;
    let d = Detector::load("mahalanobis", file, 2, 2).unwrap();
    Screener { model: "m".into(), detectors: vec![(spec(threshold, suspicious), d)], ood: None, accepts: None, cascade: false }
}

fn at(x: f32) -> InferResult {
    InferResult {
        logits: vec![0.0, 0.0],
        features: vec![x, 0.0],
        extra_logits: vec![],
        extra_features: vec![],
        queue_seconds: 0.0,
        infer_seconds: 0.0,
        batch_size: 1,
    }
}

#[test]
fn verdicts_follow_the_thresholds() {
    let s = screener(4.0, Some(2.0));
    let clean = s.screen_detectors(&at(1.0), &Evidence::default());
    assert_eq!(clean.verdict, Verdict::Clean);
    assert!((clean.fused_score - 0.25).abs() < 1e-6);
    assert_eq!(s.screen_detectors(&at(3.0), &Evidence::default()).verdict, Verdict::Suspicious);
    let adv = s.screen_detectors(&at(5.0), &Evidence::default());
    assert_eq!(adv.verdict, Verdict::Adversarial);
    assert!(adv.detectors[0].fired && adv.fused_score > 1.0);
    assert_eq!(screener(4.0, None).screen_detectors(&at(3.0), &Evidence::default()).verdict, Verdict::Clean);
}

#[test]
fn a_fused_detector_alone_sets_the_verdict() {
    let mut s = screener(4.0, Some(2.0));
    // fused = sigmoid(maha - 10): over its 0.5 threshold only when maha > 10.
    let file = br#"{"kind":"fused","inputs":["maha"],"mean":[10],"scale":[1],"weights":[1],"bias":0}"#;
    let mut fused_spec = spec(0.5, Some(0.3));
    fused_spec.name = "fused".into();
    s.detectors.push((fused_spec, Detector::load("fused", file, 2, 2).unwrap()));
    let v = s.screen_detectors(&at(5.0), &Evidence::default());
    assert!(v.detectors[0].fired, "maha still reports that it fired");
    assert_eq!(v.verdict, Verdict::Clean, "but the fused score (sigmoid(-5)) decides");
    assert_eq!(s.screen_detectors(&at(11.0), &Evidence::default()).verdict, Verdict::Adversarial);
    let nan = s.screen_detectors(&at(f32::NAN), &Evidence::default());
    assert_eq!(nan.failed, ["maha", "fused"]);
    assert_eq!(nan.verdict, Verdict::NotScreened);
}
