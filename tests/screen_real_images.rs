//! Real images through the real server: for every committed bundle (grey chest X-rays at
//! 64 and 28 px, RGB dermoscopy at 64 px), the same tensor and probabilities as the
//! training pipeline's own evaluation of those files; the other RPCs; metrics move.

mod common;

use common::*;
use medsentry::bundle::Bundle;
use medsentry::decode::{decode_raster, DecodeLimits};
use medsentry::preprocess::to_model_space;
use medsentry::proto;

const MODEL: &str = "chest-xray-pneumonia";
/// Every bundle in models/ whose reference.json names real images in ../shared/data.
const BUNDLES: &[&str] = &["chest-xray-pneumonia", "pneumoniamnist-28", "dermoscopy-isic2018"];

#[test]
fn preprocessing_matches_the_pipeline_within_1e_5() {
    for model in BUNDLES {
        preprocessing_matches(model);
    }
}

fn preprocessing_matches(model: &str) {
    let bundle = Bundle::load_dir(&repo().join("models").join(model), &[]).unwrap();
    let (root, refs) = references(model);
    assert!(refs.len() >= 4);
    for r in &refs {
        let bytes = std::fs::read(data(&root).join(&r.file)).unwrap();
        let img = decode_raster(&bytes, &DecodeLimits::default()).unwrap();
        let pixels = to_model_space(&img, &bundle.manifest.input);
        assert_eq!(pixels.len(), r.pixels.len());
        let max = pixels.iter().zip(&r.pixels).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(max <= 1e-5, "{model} {}: max |rust - pipeline| = {max:e}", r.file);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screen_gives_the_pipeline_probabilities_and_metrics_move() {
    // metrics are process-wide: another test's server shutting down resets model_ready
    let _serial = serial().await;
    let server = TestServer::ready(&[]).await;
    for model in BUNDLES {
        screen_matches(&server, model).await;
    }
    assert_eq!(server.admin_get("/readyz").0, 200);
    assert_eq!(server.admin_get("/healthz").0, 200);
    server.stop().await.unwrap();
}

async fn screen_matches(server: &TestServer, model_name: &str) {
    let mut client = server.client().await;
    let (root, refs) = references(model_name);
    let bundle = Bundle::load_dir(&repo().join("models").join(model_name), &[]).unwrap();
    let declared: Vec<&str> = bundle.manifest.detectors.iter().map(|d| d.name.as_str()).collect();
    let (_, before) = server.admin_get("/metrics");
    for r in &refs {
        let bytes = std::fs::read(data(&root).join(&r.file)).unwrap();
        let mut req = image_request(&r.file, bytes);
        req.model = model_name.to_string();
        let resp = client.screen(req).await.unwrap().into_inner();
        assert_eq!(resp.request_id, r.file);
        let model = resp.model.as_ref().unwrap();
        assert_eq!(model.name, model_name);
        assert_eq!(model.sha256.len(), 64);
        let probs: Vec<f32> = resp.probabilities.iter().map(|p| p.probability).collect();
        for (a, b) in probs.iter().zip(&r.probabilities) {
            assert!((a - b).abs() < 1e-4, "{model_name} {}: sidecar {probs:?} vs pipeline {:?}", r.file, r.probabilities);
        }
        let screening = resp.screening.unwrap();
        if declared.is_empty() {
            assert_eq!(screening.verdict, proto::Verdict::NotScreened as i32);
            assert!(screening.note.contains("no detector ran"), "{}", screening.note);
        } else {
            assert_ne!(screening.verdict, proto::Verdict::NotScreened as i32);
            let names: Vec<&str> = screening.detectors.iter().map(|d| d.name.as_str()).collect();
            assert_eq!(names, declared, "every declared detector scores every input");
            assert!(screening.detectors.iter().all(|d| d.score.is_finite() && d.threshold > 0.0));
        }
        let t = resp.timings.unwrap();
        assert!(t.infer_seconds > 0.0 && t.total_seconds >= t.infer_seconds);
    }
    let (code, after) = server.admin_get("/metrics");
    assert_eq!(code, 200);
    let m = model_name;
    let ok = |text: &str| metric(text, "medsentry_requests_total", &[("model", m), ("api", "screen"), ("outcome", "ok")]);
    assert_eq!(ok(&after) - ok(&before), refs.len() as f64, "{m}: requests counter moved by the calls made");
    for stage in ["decode", "preprocess", "queue", "infer", "detect"] {
        assert!(metric(&after, "medsentry_stage_duration_seconds_count", &[("model", m), ("stage", stage)]) >= refs.len() as f64, "{m} stage {stage}");
    }
    assert!(metric(&after, "medsentry_batch_size_count", &[("model", m)]) >= 1.0);
    assert_eq!(metric(&after, "medsentry_model_ready", &[("model", m)]), 1.0);
    assert_eq!(metric(&after, "medsentry_model_info", &[("model", m)]), 1.0);
    assert!(metric(&after, "medsentry_predicted_class_total", &[("model", m)]) >= refs.len() as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screen_stream_answers_in_order_with_errors_inline() {
    // metrics are process-wide: another test's server shutting down resets model_ready
    let _serial = serial().await;
    let server = TestServer::ready(&[]).await;
    let mut client = server.client().await;
    let (root, refs) = references(MODEL);
    let mut requests = Vec::new();
    for (i, r) in refs.iter().enumerate() {
        requests.push(image_request(&format!("ok-{i}"), std::fs::read(data(&root).join(&r.file)).unwrap()));
        if i == 2 {
            requests.push(image_request("bad", b"not an image".to_vec()));
        }
    }
    let ids: Vec<String> = requests.iter().map(|r| r.request_id.clone()).collect();
    let mut stream = client.screen_stream(futures::stream::iter(requests)).await.unwrap().into_inner();
    let mut got = Vec::new();
    while let Some(item) = stream.message().await.unwrap() {
        match item.result.unwrap() {
            proto::screen_stream_response::Result::Response(r) => got.push(r.request_id),
            proto::screen_stream_response::Result::Error(e) => {
                assert_eq!(e.code, tonic::Code::InvalidArgument as i32);
                got.push(e.request_id)
            }
        }
    }
    assert_eq!(got, ids, "one answer per request, in request order");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_get_model_describe_the_bundle() {
    // metrics are process-wide: another test's server shutting down resets model_ready
    let _serial = serial().await;
    let server = TestServer::ready(&[]).await;
    let mut client = server.client().await;
    let list = client.list_models(proto::ListModelsRequest {}).await.unwrap().into_inner();
    assert_eq!(list.default_model, MODEL);
    assert!(list.models.iter().any(|m| m.name == MODEL));
    let info = client.get_model(proto::GetModelRequest { name: MODEL.into() }).await.unwrap().into_inner();
    assert_eq!(info.labels, vec!["NORMAL", "PNEUMONIA"]);
    let input = info.input.unwrap();
    assert_eq!((input.channels, input.height, input.width, input.quantize_bits), (1, 64, 64, 8));
    assert!(info.figures.contains_key("standard_test_accuracy"));
    let derm = client.get_model(proto::GetModelRequest { name: "dermoscopy-isic2018".into() }).await.unwrap().into_inner();
    assert_eq!(derm.labels, vec!["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]);
    let input = derm.input.unwrap();
    assert_eq!((input.channels, input.height, input.width, input.color.as_str()), (3, 64, 64, "rgb"));
    let err = client.get_model(proto::GetModelRequest { name: "nope".into() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains(MODEL), "{}", err.message());
    server.stop().await.unwrap();
}
