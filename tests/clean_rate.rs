//! Clean real images through real gRPC: the 312 clean AdvTest JPEGs (../shared/data) come
//! back flagged at the rate the pipeline measured for each detector on the same images
//! (report.json), and CLEAN for the large majority.

mod common;

use common::*;
use medsentry::proto::Verdict;

/// Served detector -> where report.json keeps its clean-AdvTest rate at the 1 % threshold.
const PYTHON_RATE: &[(&str, &str)] = &[
    ("mahalanobis", "/adversarial_evaluation/detection/clean_advtest_fpr/mahalanobis/fpr_0.01"),
    ("learned-logistic", "/adversarial_evaluation/detection/clean_advtest_fpr/logreg/fpr_0.01"),
    ("feature-squeezing", "/feature_squeezing/clean_advtest_fpr/fpr_0.01"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_advtest_images_are_flagged_at_the_rate_the_pipeline_measured() {
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(repo().join("models/chest-xray-pneumonia/report.json")).unwrap()).unwrap();
    let files: Vec<String> = eval_fixture()["clean_files"].as_array().unwrap().iter().map(|f| f.as_str().unwrap().to_string()).collect();
    let server = TestServer::ready(&[]).await;
    let mut client = server.client().await;
    let mut fired = std::collections::BTreeMap::<String, usize>::new();
    let (mut adversarial, mut suspicious) = (0, 0);
    for f in &files {
        let bytes = std::fs::read(data("chest_xray_kermany").join(f)).unwrap();
        let s = client.screen(image_request(f, bytes)).await.unwrap().into_inner().screening.unwrap();
        for d in &s.detectors {
            *fired.entry(d.name.clone()).or_default() += d.fired as usize;
        }
        adversarial += (s.verdict == Verdict::Adversarial as i32) as usize;
        suspicious += (s.verdict == Verdict::Suspicious as i32) as usize;
    }
    let n = files.len() as f64;
    for (detector, pointer) in PYTHON_RATE {
        let rust = fired.get(*detector).copied().unwrap_or(0) as f64 / n;
        let python = report.pointer(pointer).and_then(|v| v.as_f64()).unwrap_or_else(|| panic!("report.json has no {pointer}"));
        eprintln!("{detector}: {rust:.4} of clean AdvTest fired (pipeline: {python:.4}, calibrated for 0.01)");
        // Same pixels, same formulas: at most one image may sit on the threshold differently.
        assert!((rust - python).abs() <= 1.0 / n + 1e-9, "{detector}: sidecar {rust} vs pipeline {python}");
    }
    let rate = adversarial as f64 / n;
    let flagged = (adversarial + suspicious) as f64 / n;
    eprintln!("clean AdvTest: {adversarial}/{} ADVERSARIAL ({rate:.3}), {suspicious} SUSPICIOUS; flagged {flagged:.3}", files.len());
    // The fused detector sets the verdict at its calibrated 1 % and 5 % thresholds (the
    // pipeline measured 0.3 % and 3.8 % on these images; the union of the three detectors,
    // which decided before, 3.2 % and 14.7 %).
    let fused = report.pointer("/fused_detector/clean_advtest").expect("report.json has the fused detector's clean rates");
    let (py_adv, py_flagged) = (fused["fpr_0.01"]["fused"].as_f64().unwrap(), fused["fpr_0.05"]["fused"].as_f64().unwrap());
    assert!((rate - py_adv).abs() <= 1.0 / n + 1e-9, "ADVERSARIAL: sidecar {rate} vs pipeline {py_adv}");
    assert!((flagged - py_flagged).abs() <= 2.0 / n + 1e-9, "flagged: sidecar {flagged} vs pipeline {py_flagged}");
    server.stop().await.unwrap();
}
