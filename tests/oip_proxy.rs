//! Proxy mode through real gRPC: a second medsentry (serving a copy of the chest X-ray
//! bundle named `upstream-xray`, so that its metrics are told apart from the proxy's in this
//! process-wide registry) plays the upstream inference server; the proxy screens with its
//! own bundle and forwards. Checked: the upstream sees the same tensor (its answer through
//! the proxy equals its direct answer, byte for byte) and counts the call; the answer
//! carries the verdict; a flagged input under `reject` never reaches the upstream; an
//! upstream that stops, refuses connections or hangs gives UNAVAILABLE / DEADLINE_EXCEEDED
//! naming it, while the sidecar keeps serving medsentry.v1 and its health follows.

mod common;

use std::time::{Duration, Instant};

use common::*;
use medsentry::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use medsentry::inference::model_infer_request::InferInputTensor;
use medsentry::inference::*;
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

const LOCAL: &str = "chest-xray-pneumonia";
const UPSTREAM: &str = "upstream-xray";

/// models/ with one bundle: the chest X-ray bundle renamed `upstream-xray`.
fn upstream_models() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join(UPSTREAM);
    std::fs::create_dir_all(&bundle).unwrap();
    let src = repo().join("models").join(LOCAL);
    for f in std::fs::read_dir(&src).unwrap() {
        let p = f.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, bundle.join(p.file_name().unwrap())).unwrap();
        }
    }
    let toml = std::fs::read_to_string(src.join("bundle.toml")).unwrap().replacen(&format!("name = \"{LOCAL}\""), &format!("name = \"{UPSTREAM}\""), 1);
    std::fs::write(bundle.join("bundle.toml"), toml).unwrap();
    dir
}

async fn oip(server: &TestServer) -> GrpcInferenceServiceClient<Channel> {
    GrpcInferenceServiceClient::new(server.channel().await)
}

fn string_param(resp: &ModelInferResponse, key: &str) -> String {
    match resp.parameters.get(key).and_then(|p| p.parameter_choice.clone()) {
        Some(infer_parameter::ParameterChoice::StringParam(s)) => s,
        other => panic!("{key}: {other:?}"),
    }
}

/// The raw bytes of an output, by name.
fn raw_output<'a>(resp: &'a ModelInferResponse, name: &str) -> &'a [u8] {
    let i = resp.outputs.iter().position(|o| o.name == name).unwrap_or_else(|| panic!("no output {name}"));
    &resp.raw_output_contents[i]
}

async fn wait_health(server: &TestServer, service: &str, want: ServingStatus, within: Duration) {
    let until = Instant::now() + within;
    while server.health_status(service).await != want as i32 {
        assert!(Instant::now() < until, "health of {service:?} not {want:?} after {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn upstream_calls(metrics: &str) -> f64 {
    metric(metrics, "medsentry_requests_total", &[("api", "oip"), ("model", UPSTREAM)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_requests_are_forwarded_unchanged_and_flagged_ones_never_leave_under_reject() {
    let _serial = serial().await;
    let models = upstream_models();
    let upstream = TestServer::ready(&["--models-dir", models.path().to_str().unwrap()]).await;
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(dir.path(), "[default]\naction = \"reject\"\n");
    let upstream_addr = upstream.grpc.to_string();
    let proxy = TestServer::ready(&["--upstream", &upstream_addr, "--upstream-poll-ms", "200", "--policy", &policy]).await;
    let (mut direct, mut via) = (oip(&upstream).await, oip(&proxy).await);
    let (clean, flagged) = sample_pair();

    // Readiness and metadata pass through, with the screening outputs added.
    assert!(via.server_ready(ServerReadyRequest {}).await.unwrap().into_inner().ready);
    assert!(via.model_ready(ModelReadyRequest { name: UPSTREAM.into(), version: String::new() }).await.unwrap().into_inner().ready);
    assert!(!via.model_ready(ModelReadyRequest { name: "nope".into(), version: String::new() }).await.unwrap().into_inner().ready);
    let meta = via.model_metadata(ModelMetadataRequest { name: UPSTREAM.into(), version: String::new() }).await.unwrap().into_inner();
    assert_eq!(meta.name, UPSTREAM);
    let names: Vec<&str> = meta.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["probabilities", "verdict", "fused_score", "detector_scores"], "no duplicates");
    let sm = via.server_metadata(ServerMetadataRequest {}).await.unwrap().into_inner();
    assert!(sm.extensions.contains(&"medsentry_proxy".to_string()), "{sm:?}");

    // A clean input: forwarded as it came, answered by the upstream, plus the verdict.
    let want = direct.model_infer(infer_request(UPSTREAM, "clean-1", &clean)).await.unwrap().into_inner();
    let (_, before) = upstream.admin_get("/metrics");
    let mut call = tonic::Request::new(infer_request(UPSTREAM, "clean-1", &clean));
    call.metadata_mut().insert("x-request-id", "clean-1".parse().unwrap());
    call.set_timeout(Duration::from_secs(20));
    let got = via.model_infer(call).await.expect("a clean input is forwarded").into_inner();
    let (_, after) = upstream.admin_get("/metrics");
    assert_eq!(upstream_calls(&after) - upstream_calls(&before), 1.0, "the upstream answered once");
    assert_eq!(delta(&before, &after, "medsentry_upstream_requests_total", &[("code", "ok")]), 1.0);
    assert_eq!(delta(&before, &after, "medsentry_upstream_duration_seconds_count", &[]), 1.0);
    assert_eq!((got.model_name.as_str(), got.id.as_str()), (UPSTREAM, "clean-1"));
    assert_eq!(raw_output(&got, "probabilities"), raw_output(&want, "probabilities"), "the upstream saw the same tensor");
    assert_eq!(got.outputs.len(), got.raw_output_contents.len(), "raw answer stays raw");
    assert_eq!(got.outputs.iter().filter(|o| o.name == "verdict").count(), 1);
    assert_eq!(raw_output(&got, "verdict"), [&5u32.to_le_bytes()[..], b"CLEAN"].concat());
    assert_eq!(string_param(&got, "medsentry.verdict"), "CLEAN");
    assert_eq!(string_param(&got, "medsentry.screen_model"), LOCAL);
    assert!(string_param(&got, "medsentry.fused_score").parse::<f32>().unwrap() < 1.0);

    // A flagged input: refused by the proxy's policy, never forwarded.
    let (_, before) = upstream.admin_get("/metrics");
    let err = via.model_infer(infer_request(UPSTREAM, "adv-1", &flagged)).await.expect_err("rejected");
    let (_, after) = upstream.admin_get("/metrics");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(err.metadata().get("medsentry-reason").unwrap(), "rejected_by_policy");
    assert!(err.message().contains("> threshold"), "{}", err.message());
    assert_eq!(upstream_calls(&after) - upstream_calls(&before), 0.0, "the upstream never saw it");
    assert_eq!(delta(&before, &after, "medsentry_upstream_requests_total", &[]), 0.0);
    assert_eq!(delta(&before, &after, "medsentry_blocked_before_forward_total", &[("model", LOCAL)]), 1.0);
    assert_eq!(delta(&before, &after, "medsentry_requests_total", &[("api", "oip"), ("model", LOCAL), ("outcome", "permission_denied")]), 1.0);

    // The flagged tensor as a second input beside the clean one: every input is screened,
    // so it is refused the same way; an input the bundle cannot screen is refused too.
    let mut pair = infer_request(UPSTREAM, "adv-2", &clean);
    pair.inputs.push(InferInputTensor { name: "second".into(), datatype: "FP32".into(), shape: vec![1, 1, 64, 64], ..Default::default() });
    pair.raw_input_contents.push(flagged.iter().flat_map(|v| v.to_le_bytes()).collect());
    let err = via.model_infer(pair.clone()).await.expect_err("the second input is screened and rejected");
    assert_eq!((err.code(), err.metadata().get("medsentry-reason").unwrap().to_str().unwrap()), (Code::PermissionDenied, "rejected_by_policy"), "{err:?}");
    assert_eq!(err.metadata().get("medsentry-batch-item").unwrap(), "1", "the second input's item");
    pair.inputs[1].datatype = "INT64".into();
    pair.inputs[1].shape = vec![1, 4];
    pair.raw_input_contents[1] = vec![0; 32];
    let err = via.model_infer(pair).await.expect_err("an unscreenable input is refused");
    assert_eq!((err.code(), err.metadata().get("medsentry-reason").unwrap().to_str().unwrap()), (Code::InvalidArgument, "unscreenable_input"), "{err:?}");
    assert!(err.message().contains("\"second\""), "{}", err.message());
    let (_, after) = upstream.admin_get("/metrics");
    assert_eq!(upstream_calls(&after) - upstream_calls(&before), 0.0, "the upstream saw neither");

    // A bad request is refused locally too, and not forwarded.
    let mut bad = infer_request(UPSTREAM, "bad", &clean);
    bad.raw_input_contents[0].truncate(100);
    assert_eq!(via.model_infer(bad).await.unwrap_err().code(), Code::InvalidArgument);
    let (_, later) = upstream.admin_get("/metrics");
    assert_eq!(upstream_calls(&later) - upstream_calls(&after), 0.0);

    // The upstream's own refusals come back with their code, naming it.
    let err = via.model_infer(infer_request("no-such-model", "n", &clean)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains(&upstream_addr) && err.message().contains("no-such-model"), "{}", err.message());
    assert_eq!(err.metadata().get("medsentry-reason").unwrap(), "upstream_refused");

    proxy.stop().await.unwrap();
    upstream.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stops_gives_unavailable_and_health_follows_while_screen_still_works() {
    let _serial = serial().await;
    let models = upstream_models();
    let upstream = TestServer::ready(&["--models-dir", models.path().to_str().unwrap()]).await;
    let addr = upstream.grpc.to_string();
    let proxy = TestServer::ready(&["--upstream", &addr, "--upstream-poll-ms", "200"]).await;
    let mut via = oip(&proxy).await;
    let (clean, _) = sample_pair();
    via.model_infer(infer_request(UPSTREAM, "before", &clean)).await.expect("forwarded while the upstream is up");
    assert_eq!(proxy.admin_get("/readyz").0, 200);

    let (_, before) = proxy.admin_get("/metrics");
    upstream.stop().await.unwrap();
    let started = Instant::now();
    let err = via.model_infer(infer_request(UPSTREAM, "after", &clean)).await.expect_err("upstream down");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains(&addr), "names the upstream: {}", err.message());
    assert_eq!(err.metadata().get("medsentry-reason").unwrap(), "upstream_unavailable");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());

    // The sidecar itself keeps serving.
    let mut sentry = proxy.client().await;
    let screened = sentry.screen(tensor_request("still-here", vec![1, 1, 64, 64], clean.clone())).await.expect("Screen works without the upstream");
    assert!(screened.into_inner().screening.is_some());

    // Health: overall and the OIP service follow the upstream; medsentry.v1 does not.
    wait_health(&proxy, "", ServingStatus::NotServing, Duration::from_secs(5)).await;
    assert_eq!(proxy.health_status("inference.GRPCInferenceService").await, ServingStatus::NotServing as i32);
    assert_eq!(proxy.health_status("medsentry.v1.Sentry").await, ServingStatus::Serving as i32);
    let (code, body) = proxy.admin_get("/readyz");
    assert_eq!(code, 503);
    assert!(body.contains(&addr), "{body}");
    assert!(!via.server_ready(ServerReadyRequest {}).await.unwrap().into_inner().ready);
    assert!(!via.model_ready(ModelReadyRequest { name: UPSTREAM.into(), version: String::new() }).await.unwrap().into_inner().ready);

    let (_, after) = proxy.admin_get("/metrics");
    assert_eq!(delta(&before, &after, "medsentry_upstream_errors_total", &[("code", "unavailable")]), 1.0);
    assert_eq!(delta(&before, &after, "medsentry_errors_total", &[("api", "oip"), ("reason", "upstream_unavailable")]), 1.0);
    assert_eq!(metric(&after, "medsentry_upstream_ready", &[]), 0.0);
    proxy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_retried_once_and_a_hung_upstream_times_out_without_retry() {
    let _serial = serial().await;
    let (clean, _) = sample_pair();

    // Nothing listens: each call is tried twice, then UNAVAILABLE naming the address.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let proxy = TestServer::start(&["--upstream", &dead, "--upstream-poll-ms", "200"]).await;
    wait_health(&proxy, "medsentry.v1.Sentry", ServingStatus::Serving, Duration::from_secs(30)).await;
    assert_eq!(proxy.health_status("").await, ServingStatus::NotServing as i32, "never ready without its upstream");
    let mut via = oip(&proxy).await;
    let (_, before) = proxy.admin_get("/metrics");
    let err = via.model_infer(infer_request(UPSTREAM, "x", &clean)).await.unwrap_err();
    let (_, after) = proxy.admin_get("/metrics");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains(&dead), "{}", err.message());
    assert_eq!(delta(&before, &after, "medsentry_upstream_retries_total", &[]), 1.0);
    assert_eq!(delta(&before, &after, "medsentry_upstream_requests_total", &[("code", "unavailable")]), 1.0);
    proxy.stop().await.unwrap();

    // Accepts connections and never answers: DEADLINE_EXCEEDED at --upstream-timeout-ms,
    // or before the caller's own deadline, and no retry.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_addr = hung.local_addr().unwrap().to_string();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hung.accept().await {
            held.push(socket);
        }
    });
    let proxy = TestServer::start(&["--upstream", &hung_addr, "--upstream-timeout-ms", "700", "--upstream-poll-ms", "200"]).await;
    wait_health(&proxy, "medsentry.v1.Sentry", ServingStatus::Serving, Duration::from_secs(30)).await;
    let mut via = oip(&proxy).await;
    let (_, before) = proxy.admin_get("/metrics");
    let started = Instant::now();
    let err = via.model_infer(infer_request(UPSTREAM, "slow", &clean)).await.unwrap_err();
    let waited = started.elapsed();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains(&hung_addr), "{}", err.message());
    assert!(waited >= Duration::from_millis(600) && waited < Duration::from_secs(3), "{waited:?}");
    let mut call = tonic::Request::new(infer_request(UPSTREAM, "slow-deadline", &clean));
    call.set_timeout(Duration::from_millis(400));
    let started = Instant::now();
    let err = via.model_infer(call).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains(&hung_addr), "{}", err.message());
    assert!(started.elapsed() < Duration::from_millis(650), "{:?}", started.elapsed());
    let (_, after) = proxy.admin_get("/metrics");
    assert_eq!(delta(&before, &after, "medsentry_upstream_retries_total", &[]), 0.0);
    assert_eq!(delta(&before, &after, "medsentry_upstream_errors_total", &[("code", "deadline_exceeded")]), 2.0);
    proxy.stop().await.unwrap();
    holder.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritons_repository_calls_are_answered_by_the_upstream() {
    // Its forwarded call moves the upstream counters other tests of this file compare.
    let _serial = serial().await;
    let models = upstream_models();
    let upstream = TestServer::ready(&["--models-dir", models.path().to_str().unwrap()]).await;
    let proxy = TestServer::ready(&["--upstream", &upstream.grpc.to_string(), "--upstream-poll-ms", "200"]).await;
    let mut via = oip(&proxy).await;
    let config = via.model_config(ModelConfigRequest { name: UPSTREAM.into(), version: String::new() }).await.unwrap().into_inner().config.unwrap();
    assert_eq!(config.name, UPSTREAM, "the upstream's model, not a local one");
    let index = via.repository_index(RepositoryIndexRequest { repository_name: String::new(), ready: false }).await.unwrap().into_inner();
    assert_eq!(index.models.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), [UPSTREAM]);
    let (clean, _) = sample_pair();
    via.model_infer(infer_request(UPSTREAM, "counted", &clean)).await.unwrap();
    let stats = via.model_statistics(ModelStatisticsRequest { name: UPSTREAM.into(), version: String::new() }).await.unwrap().into_inner();
    assert_eq!(stats.model_stats[0].inference_count, 1, "the upstream counted the forwarded call");
    proxy.stop().await.unwrap();
    upstream.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_calls_are_screened_and_forwarded_in_proxy_mode() {
    let _serial = serial().await;
    let models = upstream_models();
    let upstream = TestServer::ready(&["--models-dir", models.path().to_str().unwrap()]).await;
    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let proxy = TestServer::ready(&["--upstream", &upstream.grpc.to_string(), "--upstream-poll-ms", "200", "--http-listen", &http.to_string()]).await;
    let (clean, _) = sample_pair();
    let body = serde_json::json!({"id": "rest-1", "inputs": [{"name": "input", "shape": [1, 1, 64, 64], "datatype": "FP32", "data": clean}]});
    let (_, before) = upstream.admin_get("/metrics");
    let (code, text) = tokio::task::spawn_blocking(move || http_post_json(http, &format!("/v2/models/{UPSTREAM}/infer"), &body)).await.unwrap();
    assert_eq!(code, 200, "{text}");
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["model_name"], UPSTREAM, "the upstream answered");
    assert!(answer["parameters"]["medsentry.verdict"].is_string(), "screened by the proxy: {answer}");
    let probs = answer["outputs"].as_array().unwrap().iter().find(|o| o["name"] == "probabilities").unwrap()["data"].as_array().unwrap().len();
    assert_eq!(probs, 2);
    let (_, after) = upstream.admin_get("/metrics");
    assert_eq!(upstream_calls(&after) - upstream_calls(&before), 1.0, "forwarded once");
    let (code, _) = tokio::task::spawn_blocking(move || http_post_json(http, "/v2/models/x/infer", &serde_json::json!({"inputs": 3}))).await.unwrap();
    assert_eq!(code, 400, "a body that is not a V2 request");
    proxy.stop().await.unwrap();
    upstream.stop().await.unwrap();
}
