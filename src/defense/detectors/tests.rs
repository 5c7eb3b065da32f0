//! Unit tests of the detector formulas and files (the Rust twins of the pipeline's).

use super::*;

fn logits_only(logits: &[f32]) -> CombinerInputs<'_> {
    CombinerInputs { logits, features: &[], residual_features: None, squeeze_shift: None }
}

#[test]
fn a_combiner_reads_vectors_of_the_forward_pass_by_width() {
    let file = br#"{"kind":"fused","inputs":["penultimate-features","residual-features","margin"],"widths":[2,1,1],
        "mean":[1,0,0,0],"scale":[2,1,1,1],"weights":[1,-1,0.5,0],"bias":0.25,"thresholds":{}}"#;
    let Detector::Fused(f) = Detector::load("fused", file, 2, 2).unwrap() else { panic!("not fused") };
    let x = CombinerInputs { logits: &[0.0, 0.0], features: &[3.0, 2.0], residual_features: Some(&[4.0]), squeeze_shift: None };
    // z = 0.25 + (3 - 1) / 2 - (2 - 0) + 0.5 * 4 + 0 * margin
    let want = 1.0 / (1.0 + (-(0.25 + 1.0 - 2.0 + 2.0f64)).exp());
    assert!((f.combiner.score(&[], x) - want).abs() < 1e-12);
    assert!(f.combiner.score(&[], CombinerInputs { residual_features: None, ..x }).is_nan(), "a missing vector scores NaN");
    assert!(f.combiner.score(&[], CombinerInputs { features: &[1.0], ..x }).is_nan(), "a vector of another width scores NaN");
    let shift = br#"{"kind":"fused","inputs":["squeeze-feature-shift"],"widths":[2],"mean":[1,0],"scale":[1,2],"weights":[1,1],"bias":0,"thresholds":{}}"#;
    let Detector::Fused(f) = Detector::load("fused", shift, 2, 2).unwrap() else { panic!("not fused") };
    let with_shift = CombinerInputs { squeeze_shift: Some([3.0, 4.0]), ..x };
    assert!((f.combiner.score(&[], with_shift) - 1.0 / (1.0 + (-4.0f64).exp())).abs() < 1e-12, "z = (3 - 1) + 4 / 2");
    assert!(f.combiner.score(&[], x).is_nan(), "without the squeezed copies the shift is missing");
    let scalar_as_vector = br#"{"kind":"fused","inputs":["a"],"widths":[2],"mean":[0,0],"scale":[1,1],"weights":[1,1],"bias":0,"thresholds":{}}"#;
    assert!(Detector::load("fused", scalar_as_vector, 2, 2).unwrap_err().contains("one score"));
}

#[test]
fn mahalanobis_is_the_distance_to_the_nearest_class_mean() {
    let file = br#"{"kind":"mahalanobis","means":[[0,0],[3,4]],"precision":[[1,0],[0,1]]}"#;
    let d = Detector::load("mahalanobis", file, 2, 2).unwrap();
    assert!((d.score(&[3.0, 4.0], &[0.0, 0.0]) - 0.0).abs() < 1e-12);
    assert!((d.score(&[0.0, 1.0], &[0.0, 0.0]) - 1.0).abs() < 1e-12);
    let scaled = br#"{"kind":"mahalanobis","means":[[0,0],[30,40]],"precision":[[4,0],[0,4]]}"#;
    let d = Detector::load("mahalanobis", scaled, 2, 2).unwrap();
    assert!((d.score(&[0.0, 1.0], &[0.0, 0.0]) - 2.0).abs() < 1e-12);
}

#[test]
fn logistic_standardises_then_applies_the_sigmoid() {
    let file = br#"{"kind":"logistic","mean":[1,0,0],"scale":[2,1,1],"weights":[4,0,0],"bias":-1}"#;
    let d = Detector::load("logistic", file, 1, 2).unwrap();
    // z = -1 + 4 * (3 - 1) / 2 = 3
    let want = 1.0 / (1.0 + (-3.0f64).exp());
    assert!((d.score(&[3.0], &[9.0, 9.0]) - want).abs() < 1e-12);
}

#[test]
fn fused_combines_named_scores_and_the_margin() {
    let file = br#"{"kind":"fused","inputs":["a","margin"],"mean":[1,0],"scale":[2,1],"weights":[4,-1],"bias":-1}"#;
    let Detector::Fused(f) = Detector::load("fused", file, 1, 2).unwrap() else { panic!("not fused") };
    // logits (0, 0): margin 0; z = -1 + 4 * (3 - 1) / 2 - 0 = 3
    let want = 1.0 / (1.0 + (-3.0f64).exp());
    assert!((f.combiner.score(&[("a".into(), 3.0)], logits_only(&[0.0, 0.0])) - want).abs() < 1e-12);
    // logits (ln 3, 0): p = (0.75, 0.25), margin 0.5, z = 3 - 0.5
    let want = 1.0 / (1.0 + (-2.5f64).exp());
    assert!((f.combiner.score(&[("a".into(), 3.0)], logits_only(&[3f32.ln(), 0.0])) - want).abs() < 1e-6);
    assert!(f.combiner.score(&[], logits_only(&[0.0, 0.0])).is_nan(), "a missing input scores NaN");
}

#[test]
fn log_margin_is_the_floored_log_of_the_margin() {
    let file = br#"{"kind":"fused","inputs":["log-margin"],"mean":[0],"scale":[1],"weights":[1],"bias":0}"#;
    let Detector::Fused(f) = Detector::load("fused", file, 1, 2).unwrap() else { panic!("not fused") };
    let sigmoid = |z: f64| 1.0 / (1.0 + (-z).exp());
    // logits (ln 3, 0): margin 0.5, z = ln 0.5
    assert!((f.combiner.score(&[], logits_only(&[3f32.ln(), 0.0])) - sigmoid(0.5f64.ln())).abs() < 1e-6);
    // Equal logits: margin 0, floored at 1e-6 (pipeline: detectors.LOG_MARGIN_FLOOR)
    assert!((f.combiner.score(&[], logits_only(&[0.0, 0.0])) - sigmoid(1e-6f64.ln())).abs() < 1e-12);
    assert_eq!(forward_pass_input("log-margin", |_| false), Some(true), "needs only the forward pass");
}

#[test]
fn wrong_shapes_and_kinds_are_refused() {
    let file = br#"{"kind":"mahalanobis","means":[[0,0]],"precision":[[1,0],[0,1]]}"#;
    assert!(Detector::load("mahalanobis", file, 2, 2).unwrap_err().contains("means"));
    let file = br#"{"kind":"logistic","mean":[0],"scale":[0],"weights":[1],"bias":0}"#;
    assert!(Detector::load("logistic", file, 1, 0).unwrap_err().contains("scales positive"));
    assert!(Detector::load("quantum", b"{}", 1, 2).unwrap_err().contains("unknown"));
}

#[test]
fn a_cascade_is_read_and_checked() {
    let file = br#"{"kind":"fused","inputs":["a","margin"],"mean":[1,0],"scale":[2,1],"weights":[4,-1],"bias":-1,
        "cascade":{"inputs":["margin"],"mean":[0],"scale":[1],"weights":[2],"bias":0,"skip_below":0.3}}"#;
    let Detector::Fused(f) = Detector::load("fused", file, 1, 2).unwrap() else { panic!("not fused") };
    let c = f.cascade.expect("a cascade");
    assert_eq!((c.combiner.inputs.clone(), c.skip_below), (vec!["margin".to_string()], 0.3));
    // Equal logits: margin 0, so the cheap score is 1 / (1 + e^0).
    assert!((c.combiner.score(&[], logits_only(&[0.0, 0.0])) - 0.5).abs() < 1e-12);
    let bad = br#"{"kind":"fused","inputs":["a"],"mean":[1],"scale":[2],"weights":[4],"bias":-1,
        "cascade":{"inputs":["margin"],"mean":[0],"scale":[1],"weights":[2],"bias":0,"skip_below":1.5}}"#;
    assert!(Detector::load("fused", bad, 1, 2).unwrap_err().contains("skip_below"));
    let plain = br#"{"kind":"fused","inputs":["a"],"mean":[1],"scale":[2],"weights":[4],"bias":-1}"#;
    let Detector::Fused(f) = Detector::load("fused", plain, 1, 2).unwrap() else { panic!("not fused") };
    assert!(f.cascade.is_none());
}

#[test]
fn residual_features_must_fit_the_input_and_the_combiner() {
    let resid = br#"{"kind":"residual_statistics","edges_255":[0,1],"scales":[1,4],"mean":[0,0,0,0,0,0,0,0],"scale":[1,1,1,1,1,1,1,1],"weights":[0,0,0,0,0,0,0,0],"bias":0}"#;
    let r = Detector::load("residual_statistics", resid, 2, 2).unwrap();
    assert_eq!(mismatch(&r, std::iter::empty(), (4, 8)), None);
    assert!(mismatch(&r, std::iter::empty(), (3, 8)).unwrap().contains("block size 4"));
    let fused = |w: usize| {
        let zeros = vec!["0"; w].join(",");
        let ones = vec!["1"; w].join(",");
        let file = format!(
            r#"{{"kind":"fused","inputs":["residual-features"],"widths":[{w}],"mean":[{zeros}],"scale":[{ones}],"weights":[{zeros}],"bias":0,"thresholds":{{}}}}"#
        );
        Detector::load("fused", file.as_bytes(), 2, 2).unwrap()
    };
    assert_eq!(mismatch(&fused(8), [&r].into_iter(), (4, 4)), None);
    assert!(mismatch(&fused(4), [&r].into_iter(), (4, 4)).unwrap().contains("reads 4 residual features; the residual-statistics detector makes 8"));
    assert_eq!(mismatch(&fused(4), std::iter::empty(), (4, 4)), None, "without the detector the fused input is refused elsewhere");
}
