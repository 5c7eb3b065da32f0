//! Test harness: the real server on port 0, a real tonic client, the admin port over HTTP.
#![allow(dead_code)]

pub mod bombs;
pub mod capped;
pub mod certs;
pub mod deploy;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use medsentry::config::ServeArgs;
use medsentry::proto::sentry_client::SentryClient;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};

#[derive(Parser)]
struct Wrapper {
    #[command(flatten)]
    args: ServeArgs,
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// ../shared/data beside the repository (where CI lays it too).
pub fn data(rel: &str) -> PathBuf {
    repo().join("..").join("shared").join("data").join(rel)
}

/// Bundles larger than this are left out of [`models_dir`].
const LARGE_CLASSIFIER_BYTES: u64 = 16 << 20;

/// The repository's bundles that every test server loads: those under models/ whose
/// classifier.onnx is at most 16 MB, linked into a folder under the test target's tmp dir.
/// The 224 px bundle (a 45 MB ResNet-18) would add its ONNX Runtime session and warm-up to
/// each of the suite's ~100 servers on 2 cores; tests/resnet224.rs serves it on its own.
pub fn models_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("models-small");
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(repo().join("models")).unwrap() {
        let path = entry.unwrap().path();
        let onnx = path.join("classifier.onnx");
        let small = std::fs::metadata(&onnx).is_ok_and(|m| m.len() <= LARGE_CLASSIFIER_BYTES);
        let link = dir.join(path.file_name().unwrap());
        if small && path.join("bundle.toml").is_file() && std::fs::symlink_metadata(&link).is_err() {
            // Test binaries run in parallel: another may have made the link first.
            match std::os::unix::fs::symlink(&path, &link) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => panic!("linking {}: {e}", link.display()),
                _ => {}
            }
        }
    }
    dir
}

/// A models folder holding only the repository's bundle `name` (linked, not copied).
pub fn only_bundle(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(repo().join("models").join(name), dir.path().join(name)).unwrap();
    dir
}

/// One bundle of the repository, loaded and verified.
pub fn repo_bundle(name: &str) -> medsentry::bundle::Bundle {
    medsentry::bundle::Bundle::load_dir(&repo().join("models").join(name), &[]).unwrap()
}

pub struct TestServer {
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// Holds the policy file written when the test passed none.
    _policy_dir: Option<tempfile::TempDir>,
}

/// Tests read detector scores, which the sidecar withholds from callers by default: a
/// server started without --policy gets one that shows them (tests/disclosure.rs checks
/// the default), and [`write_policy`] adds the same unless the TOML has a [disclosure].
const SHOW_SCORES: &str = "\n[disclosure]\nscores = \"all\"\n";

impl TestServer {
    /// Starts the sidecar on the repository's models/ with extra flags; does not wait.
    pub async fn start(extra: &[&str]) -> TestServer {
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (g, a) = (grpc.local_addr().unwrap(), admin.local_addr().unwrap());
        let models = models_dir();
        let mut argv = vec!["medsentry".to_string(), "--intra-threads".into(), "2".into()];
        if !extra.contains(&"--models-dir") {
            argv.extend(["--models-dir".to_string(), models.display().to_string()]);
        }
        argv.extend(extra.iter().map(|s| s.to_string()));
        let mut policy_dir = None;
        if !extra.contains(&"--policy") {
            let dir = tempfile::tempdir().unwrap();
            argv.extend(["--policy".to_string(), write_policy(dir.path(), "")]);
            policy_dir = Some(dir);
        }
        let args = Wrapper::try_parse_from(argv).expect("test flags parse").args;
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(medsentry::server::run(args, grpc, admin, async move {
            let _ = rx.await;
        }));
        TestServer { grpc: g, admin: a, stop: Some(tx), task, _policy_dir: policy_dir }
    }

    /// Starts and waits until health says SERVING.
    pub async fn ready(extra: &[&str]) -> TestServer {
        let s = TestServer::start(extra).await;
        s.wait_serving().await;
        s
    }

    pub async fn channel(&self) -> Channel {
        for _ in 0..100 {
            if let Ok(c) = tonic::transport::Endpoint::from_shared(format!("http://{}", self.grpc)).unwrap().connect().await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("cannot connect to {}", self.grpc);
    }

    pub async fn client(&self) -> SentryClient<Channel> {
        SentryClient::new(self.channel().await).max_decoding_message_size(256 << 20).max_encoding_message_size(256 << 20)
    }

    pub async fn health_status(&self, service: &str) -> i32 {
        let mut h = HealthClient::new(self.channel().await);
        h.check(HealthCheckRequest { service: service.into() }).await.map(|r| r.into_inner().status).unwrap_or(-1)
    }

    pub async fn wait_serving(&self) {
        for _ in 0..600 {
            if self.health_status("").await == ServingStatus::Serving as i32 {
                return;
            }
            assert!(!self.task.is_finished(), "server exited during start-up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("server not SERVING after 30 s");
    }

    /// GET on the admin port: (status code, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path)
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.await.unwrap()
    }

    pub fn signal_stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_get_as(addr, path, "HTTP/1.1", "Connection: close\r\n")
}

/// HTTP/1.0 GET, so that the answer is not chunked (Prometheus's API): (status, body).
pub fn http10_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_get_as(addr, path, "HTTP/1.0", "")
}

/// POST with an empty body and extra header lines (each ending in \r\n): (status, body).
/// Waits up to 5 minutes (a reload warms up new bundles before it answers).
pub fn http_post(addr: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    http_request(addr, "POST", path, "HTTP/1.0", &format!("{headers}Content-Length: 0\r\n"), Duration::from_secs(300))
}

/// POST of a JSON body (HTTP/1.0, so the answer is not chunked): (status, body).
pub fn http_post_json(addr: SocketAddr, path: &str, json: &serde_json::Value) -> (u16, String) {
    let body = json.to_string();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(s, "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let code = buf.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

fn http_get_as(addr: SocketAddr, path: &str, version: &str, headers: &str) -> (u16, String) {
    http_request(addr, "GET", path, version, headers, Duration::from_secs(10))
}

fn http_request(addr: SocketAddr, method: &str, path: &str, version: &str, headers: &str, timeout: Duration) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    write!(s, "{method} {path} {version}\r\nHost: {addr}\r\n{headers}\r\n").unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let code = buf.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

/// Sum of a metric's samples whose label set contains every `label="value"` given.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn image_request(id: &str, bytes: Vec<u8>) -> medsentry::proto::ScreenRequest {
    medsentry::proto::ScreenRequest { request_id: id.into(), model: String::new(), input: Some(medsentry::proto::screen_request::Input::Image(bytes)) }
}

pub fn dicom_request(id: &str, bytes: Vec<u8>) -> medsentry::proto::ScreenRequest {
    medsentry::proto::ScreenRequest { request_id: id.into(), model: String::new(), input: Some(medsentry::proto::screen_request::Input::Dicom(bytes)) }
}

pub fn tensor_request(id: &str, shape: Vec<i64>, data: Vec<f32>) -> medsentry::proto::ScreenRequest {
    medsentry::proto::ScreenRequest {
        request_id: id.into(),
        model: String::new(),
        input: Some(medsentry::proto::screen_request::Input::Tensor(medsentry::proto::Tensor { shape, data })),
    }
}

/// A ModelInfer of one [1, 1, 64, 64] FP32 tensor in raw_input_contents (tritonclient's way).
pub fn infer_request(model: &str, id: &str, pixels: &[f32]) -> medsentry::inference::ModelInferRequest {
    use medsentry::inference::model_infer_request::InferInputTensor;
    medsentry::inference::ModelInferRequest {
        model_name: model.into(),
        id: id.into(),
        inputs: vec![InferInputTensor { name: "input".into(), datatype: "FP32".into(), shape: vec![1, 1, 64, 64], ..Default::default() }],
        raw_input_contents: vec![pixels.iter().flat_map(|v| v.to_le_bytes()).collect()],
        ..Default::default()
    }
}

/// The pipeline's reference outputs for real test images (models/NAME/reference.json).
pub struct Reference {
    pub file: String,
    pub label: usize,
    pub pixels: Vec<f32>,
    pub probabilities: Vec<f32>,
}

pub fn references(bundle: &str) -> (String, Vec<Reference>) {
    let text = std::fs::read_to_string(repo().join("models").join(bundle).join("reference.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let root = v["data_root"].as_str().unwrap().to_string();
    let items = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|it| Reference {
            file: it["file"].as_str().unwrap().into(),
            label: it["label"].as_u64().unwrap() as usize,
            pixels: it["pixels"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect(),
            probabilities: it["probabilities"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect(),
        })
        .collect();
    (root, items)
}

/// A policy file in `dir` with the given TOML; returns its path as a flag value.
pub fn write_policy(dir: &std::path::Path, toml: &str) -> String {
    let path = dir.join("policy.toml");
    let toml = if toml.contains("[disclosure]") { toml.to_string() } else { format!("{toml}{SHOW_SCORES}") };
    std::fs::write(&path, toml).unwrap();
    path.display().to_string()
}

/// The chest X-ray bundle's input spec.
pub fn chest_spec() -> medsentry::bundle::InputSpec {
    repo_bundle("chest-xray-pneumonia").manifest.input
}

/// A shared-data image as the model sees it before mean/std: [0, 1], model size.
pub fn model_pixels(rel: &str, spec: &medsentry::bundle::InputSpec) -> Vec<f32> {
    let bytes = std::fs::read(data("chest_xray_kermany").join(rel)).unwrap();
    let img = medsentry::decode::decode_raster(&bytes, &medsentry::decode::DecodeLimits::default()).unwrap();
    medsentry::preprocess::to_model_space(&img, spec)
}

/// A committed perturbation (tests/fixtures/campaign/NAME.npy), flattened.
pub fn perturbation(name: &str) -> Vec<f32> {
    let bytes = std::fs::read(repo().join("tests/fixtures/campaign").join(format!("{name}.npy"))).unwrap();
    medsentry::eval::npy::read_npy(&bytes).unwrap().data
}

/// clip(x + delta, 0, 1).
pub fn add_clipped(x: &[f32], delta: &[f32]) -> Vec<f32> {
    x.iter().zip(delta).map(|(a, d)| (a + d).clamp(0.0, 1.0)).collect()
}

/// The eval fixture of the pipeline's export_eval stage (AdvTest file lists + Python AUROCs).
pub fn eval_fixture() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(repo().join("tests/fixtures/eval/chest-xray-pneumonia.json")).unwrap()).unwrap()
}

/// A deterministic shuffle (clean traffic does not arrive sorted by class).
pub fn shuffled<T: Clone>(items: &[T], seed: u64) -> Vec<T> {
    let mut v = items.to_vec();
    let mut s = seed.wrapping_add(0x9E3779B97F4A7C15);
    for i in (1..v.len()).rev() {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        v.swap(i, (s >> 33) as usize % (i + 1));
    }
    v
}

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Metrics are process-wide: tests that assert on counters hold this so that no other
/// server of the same test binary moves them meanwhile.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// A metric's change between two scrapes.
pub fn delta(before: &str, after: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(after, name, labels) - metric(before, name, labels)
}

/// A copy of models/MODEL in `to`/MODEL (for tests that alter a bundle); returns its folder.
pub fn copy_bundle(to: &std::path::Path, model: &str) -> PathBuf {
    let dir = to.join(model);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(repo().join("models").join(model)).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    dir
}

/// The default bundle, whose AdvTest sample the policy tests use.
pub const CHEST: &str = "chest-xray-pneumonia";

/// The bundle `fit` made from a ResNet-18 at 224 px trained the ordinary way (README,
/// "Protect your own classifier").
pub const RESNET224: &str = "chest-xray-resnet18-224";

/// (clean, flagged) chest X-ray AdvTest tensors from advtest_sample.json, chosen by the pipeline's
/// scores against the thresholds that set the verdict (the fused detector's when the bundle
/// has one, else every detector's): the clean one is below every SUSPICIOUS threshold, the
/// flagged one above an ADVERSARIAL threshold, both with a margin.
pub fn sample_pair() -> (Vec<f32>, Vec<f32>) {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(repo().join("models").join(CHEST).join("advtest_sample.json")).unwrap()).unwrap();
    let bundle = repo_bundle(CHEST);
    let manifest = &bundle.manifest;
    let has_fused = manifest.detectors.iter().any(|d| d.kind == "fused");
    let thresholds: Vec<(&str, f64, f64)> = manifest
        .detectors
        .iter()
        .filter(|d| !has_fused || d.kind == "fused")
        .map(|d| {
            // advtest_sample.json's scores are keyed by the contract's detector names.
            (d.name.as_str(), d.threshold as f64, d.suspicious_threshold.unwrap_or(d.threshold) as f64)
        })
        .collect();
    let pixels = |it: &serde_json::Value| it["pixels"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect::<Vec<f32>>();
    let items = v["items"].as_array().unwrap();
    let score = |it: &serde_json::Value, k: &str| it["scores"][k].as_f64().unwrap();
    let clean = items
        .iter()
        .find(|it| it["kind"] == "clean" && thresholds.iter().all(|(k, _, s)| score(it, k) < s * 0.98))
        .expect("a clean sample below every threshold");
    let flagged = items
        .iter()
        // Fused scores are probabilities: a margin of a quarter of the way from t to 1.
        .find(|it| it["kind"] != "clean" && thresholds.iter().any(|(k, t, _)| score(it, k) > if has_fused { t + 0.25 * (1.0 - t) } else { t * 1.02 }))
        .expect("an adversarial sample over a threshold");
    (pixels(clean), pixels(flagged))
}

/// The Python interpreter with tritonclient and grpcio-tools that scripts/test.sh installs
/// (MEDSENTRY_TEST_PYTHON, else target/pyenv).
pub fn test_python() -> PathBuf {
    if let Some(p) = std::env::var_os("MEDSENTRY_TEST_PYTHON") {
        return p.into();
    }
    let venv = repo().join("target/pyenv/bin/python");
    assert!(venv.exists(), "the test Python is not installed: run scripts/test.sh (it creates target/pyenv and sets MEDSENTRY_TEST_PYTHON)");
    venv
}
