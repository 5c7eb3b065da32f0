//! The cascade (`cascade = true` in the policy) through the real server, against the fused
//! stage's own decisions: every item of the chest and 224 px bundles' advtest_sample.json is skipped
//! (answered CLEAN without feature squeezing) exactly when the pipeline says it is
//! (`cascade_skip`); the items the cascade does not skip get the verdict and fused score of
//! a server without the cascade; the counters count each decision; an Open Inference
//! Protocol batch runs its second passes as one ONNX Runtime call; and a bundle without a
//! cascade is refused at start-up when the policy asks for one.

mod common;

use common::*;
use medsentry::proto::Verdict;

struct Item {
    pixels: Vec<f32>,
    skip: bool,
    kind: String,
}

/// The sample's items and their tensor shape.
fn sample(model: &str) -> (Vec<Item>, Vec<i64>) {
    let text = std::fs::read_to_string(repo().join("models").join(model).join("advtest_sample.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let shape = std::iter::once(1).chain(v["shape"].as_array().unwrap().iter().map(|d| d.as_i64().unwrap())).collect();
    let items = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|it| Item {
            pixels: it["pixels"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect(),
            skip: it["cascade_skip"].as_bool().expect("advtest_sample.json items say whether the cascade skips them (re-run the fused stage)"),
            kind: it["kind"].as_str().unwrap().to_string(),
        })
        .collect();
    (items, shape)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skips_exactly_what_the_pipeline_skips_and_answers_the_rest_as_without_it() {
    let _serial = serial().await;
    check(CHEST, &models_dir()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_224_px_bundle_skips_what_its_fused_stage_skips() {
    let _serial = serial().await;
    let dir = only_bundle(RESNET224);
    check(RESNET224, dir.path()).await;
}

async fn check(model: &str, models: &std::path::Path) {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(dir.path(), &format!("[models.\"{model}\"]\ncascade = true\n"));
    let models = models.to_str().unwrap();
    let cascading = TestServer::ready(&["--models-dir", models, "--policy", &policy]).await;
    let plain = TestServer::ready(&["--models-dir", models]).await;
    let (mut with, mut without) = (cascading.client().await, plain.client().await);
    let (items, shape) = sample(model);
    assert!(items.iter().any(|i| i.skip) && items.iter().any(|i| !i.skip), "the sample has both decisions");
    let (_, before) = cascading.admin_get("/metrics");
    for (n, item) in items.iter().enumerate() {
        let req = || {
            let mut r = tensor_request(&format!("item-{n}"), shape.clone(), item.pixels.clone());
            r.model = model.to_string();
            r
        };
        let got = with.screen(req()).await.unwrap().into_inner().screening.unwrap();
        let full = without.screen(req()).await.unwrap().into_inner().screening.unwrap();
        let skipped = got.note.starts_with("cascade:");
        assert_eq!(skipped, item.skip, "item {n} ({}): the server {} it, the pipeline {} it; note {:?}", item.kind, verb(skipped), verb(item.skip), got.note);
        let names: Vec<&str> = got.detectors.iter().map(|d| d.name.as_str()).collect();
        if skipped {
            assert_eq!(got.verdict(), Verdict::Clean, "item {n}");
            assert!(!names.contains(&"feature-squeezing") && !names.contains(&"fused"), "{names:?}");
            assert!(names.contains(&"mahalanobis"), "the cheap look still reports the detectors it ran: {names:?}");
        } else {
            assert_eq!(got.verdict(), full.verdict(), "item {n} ({}): the full verdict differs from the server without the cascade", item.kind);
            assert!(
                (got.fused_score - full.fused_score).abs() <= 1e-4 * full.fused_score.abs().max(1.0),
                "item {n}: {} vs {}",
                got.fused_score,
                full.fused_score
            );
            assert_eq!(names, full.detectors.iter().map(|d| d.name.as_str()).collect::<Vec<_>>());
        }
    }
    let (_, after) = cascading.admin_get("/metrics");
    let skipped = items.iter().filter(|i| i.skip).count() as f64;
    assert_eq!(delta(&before, &after, "medsentry_cascade_total", &[("model", model), ("decision", "skipped")]), skipped);
    assert_eq!(delta(&before, &after, "medsentry_cascade_total", &[("model", model), ("decision", "full")]), items.len() as f64 - skipped);
    cascading.stop().await.unwrap();
    plain.stop().await.unwrap();
}

/// The hex sha256 of a file's bytes, as bundle.toml lists it.
fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn verb(skipped: bool) -> &'static str {
    if skipped {
        "skipped"
    } else {
        "did not skip"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_request_runs_all_its_second_passes_in_one_onnx_runtime_call() {
    use medsentry::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
    use medsentry::inference::model_infer_request::InferInputTensor;
    use medsentry::inference::{InferTensorContents, ModelInferRequest};
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(dir.path(), &format!("[models.\"{CHEST}\"]\ncascade = true\n"));
    let server = TestServer::ready(&["--policy", &policy]).await;
    let (items, _) = sample(CHEST);
    // Three the cheap look answers and six it does not, interleaved: 9 first-pass rows, then
    // 6 x 2 squeezed copies, both within the bundle's max_batch of 32.
    let (skip, full): (Vec<&Item>, Vec<&Item>) = items.iter().partition(|i| i.skip);
    let chosen: Vec<&Item> = full
        .iter()
        .take(6)
        .zip(skip.iter().take(3).map(Some).chain(std::iter::repeat(None)))
        .flat_map(|(f, s)| std::iter::once(*f).chain(s.copied()))
        .collect();
    assert_eq!(chosen.iter().filter(|i| !i.skip).count(), 6);
    assert_eq!(chosen.len(), 9, "the chest sample has 3 items the cascade skips");
    let request = ModelInferRequest {
        model_name: CHEST.into(),
        id: "batch".into(),
        inputs: vec![InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![chosen.len() as i64, 1, 64, 64],
            contents: Some(InferTensorContents { fp32_contents: chosen.iter().flat_map(|i| i.pixels.iter().copied()).collect(), ..Default::default() }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut oip = GrpcInferenceServiceClient::new(server.channel().await);
    let (_, before) = server.admin_get("/metrics");
    let answer = oip.model_infer(request).await.expect("the batch is screened").into_inner();
    let (_, after) = server.admin_get("/metrics");
    let calls = delta(&before, &after, "medsentry_batch_size_count", &[("model", CHEST)]);
    let rows = delta(&before, &after, "medsentry_batch_size_sum", &[("model", CHEST)]);
    assert_eq!((calls, rows), (2.0, 9.0 + 12.0), "one call for the first passes, one for every second pass");
    let verdicts = &answer.outputs.iter().find(|o| o.name == "verdict").expect("a verdict output").contents.as_ref().unwrap().bytes_contents;
    // Each item is answered as the same server answers it alone.
    let mut client = server.client().await;
    for (n, (item, got)) in chosen.iter().zip(verdicts).enumerate() {
        let mut r = tensor_request(&format!("alone-{n}"), vec![1, 64, 64], item.pixels.clone());
        r.model = CHEST.into();
        let alone = client.screen(r).await.unwrap().into_inner().screening.unwrap();
        let alone = Verdict::try_from(alone.verdict).unwrap().as_str_name().trim_start_matches("VERDICT_").to_string();
        assert_eq!(String::from_utf8_lossy(got), alone, "item {n} ({})", item.kind);
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_without_a_cascade_is_refused_at_start_up() {
    // The chest bundle with its fused detector's cascade taken out (and its sha256 updated).
    let models = tempfile::tempdir().unwrap();
    let dir = copy_bundle(models.path(), CHEST);
    let fused_path = dir.join("detector_fused.json");
    let mut fused: serde_json::Value = serde_json::from_slice(&std::fs::read(&fused_path).unwrap()).unwrap();
    assert!(fused.as_object_mut().unwrap().remove("cascade").is_some(), "the chest bundle has a cascade to take out");
    let bytes = serde_json::to_vec(&fused).unwrap();
    let (old, new) = (sha256_hex(&std::fs::read(&fused_path).unwrap()), sha256_hex(&bytes));
    std::fs::write(&fused_path, &bytes).unwrap();
    let toml = std::fs::read_to_string(dir.join("bundle.toml")).unwrap();
    assert!(toml.contains(&old));
    std::fs::write(dir.join("bundle.toml"), toml.replace(&old, &new)).unwrap();
    let policy_dir = tempfile::tempdir().unwrap();
    let policy = write_policy(policy_dir.path(), "[default]\ncascade = true\n");
    let server = TestServer::start(&["--models-dir", models.path().to_str().unwrap(), "--policy", &policy]).await;
    let started = tokio::time::timeout(std::time::Duration::from_secs(60), server.task).await;
    let err = started.expect("start-up ends with an error, not a serving server").unwrap().expect_err("start-up must refuse the cascade");
    let text = format!("{err:#}");
    assert!(text.contains("cascade = true") && text.contains("has no cascade"), "{text}");
}
