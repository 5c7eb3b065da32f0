//! The 224 px bundle `fit` made from a hospital-style classifier (a torchvision ResNet-18
//! trained the ordinary way and exported by torch; models/chest-xray-resnet18-224), served
//! on its own: real chest X-rays, decoded and resized by the sidecar, get the pixels the
//! pipeline computed and the probabilities ONNX Runtime gives on the original graph, within
//! 1e-5; the answer names the bundle and its classifier; the stage metrics move.

mod common;

use common::*;
use medsentry::decode::{decode_raster, DecodeLimits};
use medsentry::preprocess::to_model_space;

#[test]
fn preprocessing_at_224_px_rgb_matches_the_pipeline() {
    let bundle = repo_bundle(RESNET224);
    let (root, refs) = references(RESNET224);
    assert!(refs.len() >= 2, "one reference image per class");
    for r in &refs {
        let img = decode_raster(&std::fs::read(data(&root).join(&r.file)).unwrap(), &DecodeLimits::default()).unwrap();
        let pixels = to_model_space(&img, &bundle.manifest.input);
        assert_eq!(pixels.len(), 3 * 224 * 224);
        let max = pixels.iter().zip(&r.pixels).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(max <= 1e-5, "{}: max |rust - pipeline| = {max:e}", r.file);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_images_get_the_original_graphs_probabilities() {
    let dir = only_bundle(RESNET224);
    let server = TestServer::ready(&["--models-dir", dir.path().to_str().unwrap()]).await;
    let bundle = repo_bundle(RESNET224);
    let mut client = server.client().await;
    let (root, refs) = references(RESNET224);
    for r in &refs {
        let resp = client.screen(image_request(&r.file, std::fs::read(data(&root).join(&r.file)).unwrap())).await.unwrap().into_inner();
        let model = resp.model.unwrap();
        assert_eq!((model.name.as_str(), model.sha256.as_str()), (RESNET224, bundle.classifier_sha256()));
        let got: Vec<f32> = resp.probabilities.iter().map(|p| p.probability).collect();
        let max = got.iter().zip(&r.probabilities).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(max <= 1e-5, "{}: sidecar {got:?} vs ONNX Runtime on the original graph {:?}", r.file, r.probabilities);
        assert_eq!(resp.top_index as usize, argmax(&r.probabilities));
        assert!(resp.screening.unwrap().detectors.len() >= 3, "the fitted detectors run");
    }
    let (_, m) = server.admin_get("/metrics");
    assert!(metric(&m, "medsentry_stage_duration_seconds_count", &[("model", RESNET224), ("stage", "infer")]) >= refs.len() as f64);
    server.stop().await.unwrap();
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap()
}

/// The bundle's own non-targeted UAP (Linf, 4 % of the mean image maximum, crafted on
/// AdvTrain by the attack stage; tests/fixtures/campaign) added to a stream of clean AdvTest
/// images after 20 clean ones: the shared-perturbation alarm stays off on the clean prefix and
/// is raised once the window (32) holds perturbed inputs, and stays raised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn its_own_universal_perturbation_raises_the_campaign_alarm() {
    let dir = only_bundle(RESNET224);
    let server = TestServer::ready(&["--models-dir", dir.path().to_str().unwrap()]).await;
    let spec = repo_bundle(RESNET224).manifest.input;
    let split: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("models").join(RESNET224).join("adv_split.json")).unwrap()).unwrap();
    let files: Vec<String> = split["AdvTest"]["file"].as_array().unwrap().iter().map(|f| f.as_str().unwrap().to_string()).collect();
    let (root, _) = references(RESNET224);
    let uap = perturbation("chest-xray-resnet18-224__uap__linf_z4");
    let mut client = server.client().await;
    let mut alarms = Vec::new();
    for (i, f) in shuffled(&files, 7).iter().take(56).enumerate() {
        let img = decode_raster(&std::fs::read(data(&root).join(f)).unwrap(), &DecodeLimits::default()).unwrap();
        let clean = to_model_space(&img, &spec);
        let x = if i < 20 { clean } else { add_clipped(&clean, &uap) };
        let mut req = tensor_request(&format!("r{i}"), vec![1, 3, 224, 224], x);
        req.model = RESNET224.to_string();
        let s = client.screen(req).await.unwrap().into_inner().screening.unwrap();
        alarms.push(s.campaign.expect("the bundle has a [campaign] calibration").shared_perturbation_alarm);
    }
    assert!(alarms[..20].iter().all(|a| !a), "alarm on clean traffic: {alarms:?}");
    let first = alarms.iter().position(|a| *a).expect("the campaign is noticed");
    assert!(first < 20 + 32, "alarm only after {first} requests");
    assert!(alarms[first..].iter().all(|a| *a), "the alarm holds while the campaign lasts: {alarms:?}");
    server.stop().await.unwrap();
}
