//! The Open Inference Protocol service through NVIDIA's own Python client (tritonclient):
//! metadata, liveness/readiness, ModelInfer with raw and typed contents, FP32, UINT8, JPEG
//! and DICOM files as BYTES, requested outputs and refusals (tests/oip/tritonclient_checks.py);
//! and the same client over TLS and mutual TLS with a bearer token (tritonclient_tls.py).
//! `scripts/test.sh` installs tritonclient into target/pyenv and exports its interpreter as
//! MEDSENTRY_TEST_PYTHON.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

/// Runs the checks script against `addr`; (exit code, stdout + stderr).
fn run_checks(addr: std::net::SocketAddr) -> (Option<i32>, String) {
    let reference = repo().join("models/chest-xray-pneumonia/reference.json");
    let args: Vec<std::ffi::OsString> = vec!["--url".into(), addr.to_string().into(), "--reference".into(), reference.into(), "--data".into(), data("").into()];
    run_python("tests/oip/tritonclient_checks.py", &args)
}

/// Runs a script of tests/oip with `args` under the test interpreter, for at most 5 minutes;
/// (exit code, stdout + stderr).
fn run_python(script: &str, args: &[std::ffi::OsString]) -> (Option<i32>, String) {
    // One log per run: the tests of this file run scripts concurrently.
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out_path = std::env::temp_dir().join(format!("medsentry-tritonclient-{}-{run}.log", std::process::id()));
    let log = std::fs::File::create(&out_path).unwrap();
    let mut child = Command::new(test_python())
        .arg(repo().join(script))
        .args(args)
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("starting the Python interpreter");
    let deadline = Instant::now() + Duration::from_secs(300);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    (code, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_checks_pass_against_medsentry() {
    let _serial = serial().await;
    let server = TestServer::ready(&[]).await;
    let (_, before) = server.admin_get("/metrics");
    let addr = server.grpc;
    let (code, output) = tokio::task::spawn_blocking(move || run_checks(addr)).await.unwrap();
    eprintln!("{output}");
    assert_eq!(code, Some(0), "tritonclient checks failed (exit {code:?}):\n{output}");
    assert!(output.contains("all checks passed"), "{output}");

    // Counted as api="oip", one sample per ModelInfer call, refusals by reason.
    let (_, after) = server.admin_get("/metrics");
    let ok = delta(&before, &after, "medsentry_requests_total", &[("api", "oip"), ("outcome", "ok")]);
    assert!(ok >= 10.0, "oip requests counted: {ok}");
    for reason in ["bad_shape", "bad_datatype", "bad_contents", "bad_tensor", "bad_input_name", "unknown_model", "unknown_output", "unrecognized_format"] {
        assert!(delta(&before, &after, "medsentry_errors_total", &[("api", "oip"), ("reason", reason)]) >= 1.0, "no oip error counted for {reason}");
    }
    assert!(delta(&before, &after, "medsentry_requests_total", &[("api", "oip"), ("outcome", "invalid_argument")]) >= 8.0);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_inference_service() {
    let server = TestServer::ready(&[]).await;
    let mut client = ServerReflectionClient::new(server.channel().await);
    let request = ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
    let mut answers = client.server_reflection_info(futures::stream::iter([request])).await.unwrap().into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = answers.next().await.unwrap().unwrap().message_response else { panic!("no service list") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.iter().any(|n| n == "inference.GRPCInferenceService"), "{names:?}");
    assert!(names.iter().any(|n| n == "medsentry.v1.Sentry"), "{names:?}");
    assert_eq!(server.health_status("inference.GRPCInferenceService").await, 1, "SERVING");
    // The v1alpha service too (grpcio-reflection clients speak only that one).
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as AlphaClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse as AlphaResponse;
    let request =
        tonic_reflection::pb::v1alpha::ServerReflectionRequest { host: String::new(), message_request: Some(AlphaRequest::ListServices(String::new())) };
    let mut alpha = AlphaClient::new(server.channel().await).server_reflection_info(futures::stream::iter([request])).await.unwrap().into_inner();
    let Some(AlphaResponse::ListServicesResponse(list)) = alpha.next().await.unwrap().unwrap().message_response else { panic!("no v1alpha service list") };
    assert!(list.service.iter().any(|s| s.name == "medsentry.v1.Sentry"));
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_speaks_tls_and_mutual_tls_with_a_token() {
    // Its ModelInfer calls move the counters the other tests of this file compare.
    let _serial = serial().await;
    use common::certs::{write_pem, Ca};
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().unwrap();
    let (server_ca, client_ca, stranger_ca) = (Ca::new("server CA"), Ca::new("client CA"), Ca::new("another CA"));
    let (cert, key) = server_ca.issue(&["localhost"]);
    let (client_cert, client_key) = client_ca.issue(&["inference-gateway"]);
    let (other_cert, other_key) = stranger_ca.issue(&["inference-gateway"]);
    let w = |n: &str, t: &str| write_pem(dir.path(), n, t);
    let (c, k, ca, server_ca_pem) = (w("c.pem", &cert), w("k.pem", &key), w("client-ca.pem", &client_ca.pem()), w("server-ca.pem", &server_ca.pem()));
    let (cc, ck, oc, ok) = (w("cc.pem", &client_cert), w("ck.pem", &client_key), w("oc.pem", &other_cert), w("ok.pem", &other_key));
    let digest = hex::encode(Sha256::digest(b"gateway-token"));
    let policy = write_policy(
        dir.path(),
        &format!("[access]\nrequire_caller = true\n[[access.callers]]\nname = \"gateway\"\ntoken_sha256 = [\"{digest}\"]\nmodels = [\"{CHEST}\"]\n"),
    );
    let server = TestServer::start(&["--tls-cert", &c, "--tls-key", &k, "--tls-client-ca", &ca, "--policy", &policy]).await;
    let url = format!("localhost:{}", server.grpc.port());
    let reference = repo().join("models/chest-xray-pneumonia/reference.json").display().to_string();
    let run = |extra: Vec<&str>| {
        let mut args: Vec<std::ffi::OsString> = ["--url", &url, "--ca", &server_ca_pem, "--reference", &reference].iter().map(Into::into).collect();
        args.extend(extra.iter().map(Into::into));
        run_python("tests/oip/tritonclient_tls.py", &args)
    };
    // Warm-up: mutual TLS with the token succeeds once the models are ready.
    let mut last = (None, String::new());
    for _ in 0..60 {
        last = tokio::task::block_in_place(|| run(vec!["--cert", &cc, "--key", &ck, "--token", "gateway-token"]));
        if last.0 == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(last.0, Some(0), "{}", last.1);
    assert!(last.1.contains("all checks passed"), "{}", last.1);
    for (refused, why) in
        [(vec!["--expect-refused"], "no client certificate"), (vec!["--cert", &oc, "--key", &ok, "--expect-refused"], "a certificate another CA signed")]
    {
        let (code, output) = tokio::task::block_in_place(|| run(refused));
        assert_eq!(code, Some(0), "{why}: {output}");
    }
    let (code, output) = tokio::task::block_in_place(|| run(vec!["--cert", &cc, "--key", &ck, "--expect-refused"]));
    assert!(code == Some(0) && output.contains("UNAUTHENTICATED"), "mutual TLS without the token the policy requires: {output}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_http_checks_pass_against_the_rest_port() {
    let _serial = serial().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let server = TestServer::ready(&["--http-listen", &port.to_string()]).await;
    let (_, before) = server.admin_get("/metrics");
    let reference = repo().join("models/chest-xray-pneumonia/reference.json");
    let args: Vec<std::ffi::OsString> = vec!["--url".into(), port.to_string().into(), "--reference".into(), reference.into(), "--data".into(), data("").into()];
    let (code, output) = tokio::task::spawn_blocking(move || run_python("tests/oip/tritonclient_http.py", &args)).await.unwrap();
    eprintln!("{output}");
    assert_eq!(code, Some(0), "tritonclient.http checks failed:\n{output}");
    assert!(output.contains("all checks passed"), "{output}");
    // REST calls are the Open Inference Protocol service's: counted as api="oip".
    let (_, after) = server.admin_get("/metrics");
    assert_eq!(delta(&before, &after, "medsentry_requests_total", &[("api", "oip"), ("outcome", "ok")]), 5.0, "the five ModelInfer calls that were answered");
    assert!(delta(&before, &after, "medsentry_errors_total", &[("api", "oip"), ("reason", "bad_shape")]) >= 1.0);
    server.stop().await.unwrap();
}
