//! The bundle's detectors, computed by the sidecar on its own forward pass through real
//! gRPC, give the scores the pipeline computed for the same AdvTest examples
//! (models/NAME/advtest_sample.json, written by medsentry_training.detectors).

mod common;

use common::*;
use medsentry::bundle::detector_kinds;
use medsentry::proto;

/// Every committed bundle's detectors are rows of the contract (models/detector_kinds.toml),
/// in its order, with its kind and file: the pipeline wrote them from the same table.
#[test]
fn committed_bundles_declare_their_detectors_as_the_contract_does() {
    let contract = detector_kinds();
    let fitted = repo().join("tests/fixtures/fitted");
    let dirs = ["chest-xray-pneumonia", "pneumoniamnist-28", "dermoscopy-isic2018", RESNET224].map(|m| repo().join("models").join(m));
    for dir in dirs.into_iter().chain(["tiny-nchw-logits", "tiny-nhwc-softmax"].map(|m| fitted.join(m))) {
        let bundle = medsentry::bundle::Bundle::load_dir(&dir, &[]).unwrap();
        let mut last = None;
        for d in &bundle.manifest.detectors {
            let row = contract.iter().position(|k| k.name == d.name).unwrap_or_else(|| panic!("{}: {} is not in the contract", dir.display(), d.name));
            assert_eq!((&contract[row].kind, &contract[row].file), (&d.kind, &d.file), "{}: {}", dir.display(), d.name);
            assert!(last < Some(row), "{}: {} out of the contract's order", dir.display(), d.name);
            last = Some(row);
        }
        let names: Vec<&str> = bundle.manifest.detectors.iter().map(|d| d.name.as_str()).collect();
        assert!(contract.iter().filter(|k| !k.optional).all(|k| names.contains(&k.name.as_str())), "{}: {names:?}", dir.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chest_xray_detector_scores_match_the_pipeline_and_attacks_are_flagged() {
    check("chest-xray-pneumonia").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pneumoniamnist_detector_scores_match_the_pipeline_and_attacks_are_flagged() {
    check("pneumoniamnist-28").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dermoscopy_detector_scores_match_the_pipeline_and_attacks_are_flagged() {
    check("dermoscopy-isic2018").await;
}

/// Bundles fitted by `python -m medsentry_training.fit` from a user's ONNX graph, in both
/// layouts (tests/fixtures/fitted, written by models/training/tests/make_fit_fixtures.py).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fitted_bundles_detector_scores_match_the_pipeline() {
    let dir = repo().join("tests/fixtures/fitted");
    // Fitted on 24 AdvTrain images with 16 features, these bundles test serving and score
    // parity, not how well a detector separates attacks.
    for model in ["tiny-nchw-logits", "tiny-nhwc-softmax"] {
        check_in(&dir, model, false).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_224_px_bundle_detector_scores_match_the_pipeline() {
    // One clean image per class and one PGD-20 example (a 224 px sample item is 1.5 MB of
    // JSON): score parity, not separation.
    let dir = only_bundle(RESNET224);
    check_in(dir.path(), RESNET224, false).await;
}

async fn check(model: &str) {
    check_in(&models_dir(), model, true).await;
}

async fn check_in(models: &std::path::Path, model: &str, separates: bool) {
    let path = models.join(model).join("advtest_sample.json");
    let sample: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let dir = models.display().to_string();
    let server = TestServer::ready(&["--models-dir", &dir]).await;
    let mut client = server.client().await;
    let (mut clean, mut clean_flagged, mut adv, mut adv_flagged) = (0, 0, 0, 0);
    for item in sample["items"].as_array().unwrap() {
        let pixels: Vec<f32> = item["pixels"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let id = format!("{}:{}", item["kind"], item["file"]);
        let shape = sample["shape"].as_array().unwrap().iter().map(|d| d.as_i64().unwrap());
        let mut req = tensor_request(&id, std::iter::once(1).chain(shape).collect(), pixels);
        req.model = model.to_string();
        let resp = client.screen(req).await.unwrap().into_inner();
        let s = resp.screening.unwrap();
        assert_ne!(s.verdict, proto::Verdict::NotScreened as i32, "the bundle's detectors run");
        // The contract's names are the sample's score keys (models/detector_kinds.toml).
        for kind in detector_kinds() {
            let served = &kind.name;
            let Some(d) = s.detectors.iter().find(|d| &d.name == served) else {
                assert!(kind.optional, "{served} missing");
                continue;
            };
            let got = d.score as f64;
            let want = item["scores"][served].as_f64().unwrap_or_else(|| panic!("advtest_sample.json has no {served} score"));
            assert!((got - want).abs() <= 1e-4 * want.abs().max(1.0), "{id} {served}: sidecar {got} vs pipeline {want}");
        }
        let flagged = s.verdict == proto::Verdict::Adversarial as i32;
        if item["kind"] == "clean" {
            clean += 1;
            clean_flagged += flagged as usize;
        } else {
            adv += 1;
            adv_flagged += flagged as usize;
        }
    }
    let (_, m) = server.admin_get("/metrics");
    for served in detector_kinds().iter().filter(|d| !d.optional || m.contains(&format!("detector=\"{}\"", d.name))).map(|d| d.name.as_str()) {
        assert!(metric(&m, "medsentry_detector_score_count", &[("model", model), ("detector", served)]) >= (clean + adv) as f64, "{served} score histogram");
    }
    assert!(metric(&m, "medsentry_requests_total", &[("model", model), ("verdict", "adversarial")]) >= adv_flagged as f64);
    eprintln!("{model}: clean flagged {clean_flagged}/{clean}, adversarial flagged {adv_flagged}/{adv}");
    assert!(clean > 0 && adv > 0);
    assert!(!separates || adv_flagged * clean > clean_flagged * adv, "attacks are flagged more often than clean images");
    server.stop().await.unwrap();
}
