//! Bundles fitted by `python -m medsentry_training.fit` for a classifier the pipeline did
//! not train (tests/fixtures/fitted, written by models/training/tests/make_fit_fixtures.py):
//! one small CNN exported twice, NCHW with logits and NHWC with softmax and [-1, 1]
//! scaling. Served by the real sidecar and screened through gRPC, both answer ONNX
//! Runtime's probabilities on the original graph (reference.json) within 1e-5, for the
//! real files and for their tensors, and answer each other the same.

mod common;

use common::*;
use medsentry::bundle::{Bundle, Layout, ScoreKind};
use medsentry::proto;

const FITTED: &[(&str, Layout, ScoreKind)] =
    &[("tiny-nchw-logits", Layout::Nchw, ScoreKind::Logits), ("tiny-nhwc-softmax", Layout::Nhwc, ScoreKind::Probabilities)];

fn fitted_dir() -> std::path::PathBuf {
    repo().join("tests/fixtures/fitted")
}

struct Item {
    file: String,
    pixels: Vec<f32>,
    probabilities: Vec<f32>,
}

fn reference(model: &str) -> (String, Vec<Item>) {
    let text = std::fs::read_to_string(fitted_dir().join(model).join("reference.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let floats = |x: &serde_json::Value| x.as_array().unwrap().iter().map(|f| f.as_f64().unwrap() as f32).collect::<Vec<f32>>();
    let items = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|it| Item { file: it["file"].as_str().unwrap().into(), pixels: floats(&it["pixels"]), probabilities: floats(&it["probabilities"]) })
        .collect();
    (v["data_root"].as_str().expect("fixtures are fitted on shared data").into(), items)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

#[test]
fn fitted_manifests_declare_their_layout_and_scores() {
    for (model, layout, scores) in FITTED {
        let b = Bundle::load_dir(&fitted_dir().join(model), &[]).unwrap();
        assert_eq!(b.manifest.input.layout, *layout, "{model}");
        assert_eq!(b.manifest.outputs.scores, *scores, "{model}");
        assert_eq!(b.manifest.outputs.features, "medsentry_features");
        assert!(b.manifest.detectors.iter().any(|d| d.kind == "fused"), "{model}: the fused detector is served");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fitted_bundles_answer_onnx_runtime_probabilities_in_both_layouts() {
    let _serial = serial().await;
    let dir = fitted_dir().display().to_string();
    let server = TestServer::ready(&["--models-dir", &dir]).await;
    let mut client = server.client().await;
    let mut answers: Vec<Vec<Vec<f32>>> = Vec::new();
    for (model, _, _) in FITTED {
        let (root, items) = reference(model);
        assert!(items.len() >= 2, "{model}: one reference image per class at least");
        let mut per_model = Vec::new();
        for it in &items {
            let mut req = image_request(&it.file, std::fs::read(data(&root).join(&it.file)).unwrap());
            req.model = model.to_string();
            let resp = client.screen(req).await.unwrap().into_inner();
            let probs: Vec<f32> = resp.probabilities.iter().map(|p| p.probability).collect();
            let d = max_diff(&probs, &it.probabilities);
            assert!(d <= 1e-5, "{model} {}: sidecar {probs:?} vs ONNX Runtime on the original graph {:?}", it.file, it.probabilities);
            let s = resp.screening.unwrap();
            assert_ne!(s.verdict, proto::Verdict::NotScreened as i32, "{model}: the fitted detectors run");
            assert!(s.detectors.iter().any(|d| d.name == "fused" && d.score.is_finite()));

            let shape = vec![1, 1, 32, 32];
            let mut req = tensor_request(&it.file, shape, it.pixels.clone());
            req.model = model.to_string();
            let resp = client.screen(req).await.unwrap().into_inner();
            let tensor_probs: Vec<f32> = resp.probabilities.iter().map(|p| p.probability).collect();
            assert!(max_diff(&tensor_probs, &it.probabilities) <= 1e-5, "{model} {} as a tensor: {tensor_probs:?}", it.file);
            per_model.push(probs);
        }
        answers.push(per_model);
    }
    // The same network behind two layouts and two output kinds answers the same.
    for (a, b) in answers[0].iter().zip(&answers[1]) {
        assert!(max_diff(a, b) <= 1e-5, "NCHW/logits {a:?} vs NHWC/softmax {b:?}");
    }
    let (_, m) = server.admin_get("/metrics");
    for (model, _, _) in FITTED {
        assert_eq!(metric(&m, "medsentry_model_ready", &[("model", model)]), 1.0, "{model}");
    }
    server.stop().await.unwrap();
}
