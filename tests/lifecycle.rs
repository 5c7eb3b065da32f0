//! Readiness and shutdown: health is NOT_SERVING until the warm-up batches have run;
//! on shutdown, calls in flight finish and the server stops taking new ones.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_flips_to_serving_only_after_warm_up() {
    // Enough warm-up runs of a 32-image batch that the window is observable.
    let server = TestServer::start(&["--warmup-runs", "150"]).await;
    let started = Instant::now();
    let first = server.health_status("").await;
    assert_eq!(first, ServingStatus::NotServing as i32, "health before warm-up");
    assert_eq!(server.health_status("medsentry.v1.Sentry").await, ServingStatus::NotServing as i32);
    let (code, body) = server.admin_get("/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("warming up"), "{body}");
    let mut client = server.client().await;
    let err = client.screen(tensor_request("early", vec![1, 1, 64, 64], vec![0.5; 4096])).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
    assert!(err.message().contains("warming up"), "{}", err.message());

    server.wait_serving().await;
    eprintln!("warm-up took {:?}", started.elapsed());
    assert_eq!(server.health_status("chest-xray-pneumonia").await, ServingStatus::Serving as i32);
    assert_eq!(server.admin_get("/readyz").0, 200);
    client.screen(tensor_request("late", vec![1, 1, 64, 64], vec![0.5; 4096])).await.unwrap();
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_calls_in_flight_then_refuses_new_ones() {
    let mut server = TestServer::ready(&["--shutdown-grace-secs", "20"]).await;
    let client = server.client().await;
    let dicom = std::fs::read(data("dicom/RG1_UNCR.dcm")).unwrap();
    let calls: Vec<_> = (0..4)
        .map(|i| {
            let (mut c, d) = (client.clone(), dicom.clone());
            tokio::spawn(async move { c.screen(dicom_request(&format!("inflight-{i}"), d)).await })
        })
        .collect();
    // Let the calls arrive (7 MB each over loopback), then ask for shutdown while they decode.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.signal_stop();
    for c in calls {
        let r = c.await.unwrap();
        assert!(r.is_ok(), "a call in flight at shutdown must complete: {:?}", r.err());
    }
    tokio::time::timeout(Duration::from_secs(30), &mut server.task).await.expect("server stops after draining").unwrap().unwrap();
    let addr = server.grpc;
    let fresh = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await;
    assert!(fresh.is_err(), "the listener is closed after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuda_without_cuda_refuses_or_falls_back_as_configured() {
    // No CUDA here (the CPU ONNX Runtime, and no `cuda` feature in the default build).
    let refused = TestServer::start(&["--device", "cuda"]).await;
    let err = tokio::time::timeout(Duration::from_secs(30), refused.task).await.unwrap().unwrap().unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("CUDA execution provider unavailable") && msg.contains("--cuda-fallback=cpu"), "{msg}");

    let server = TestServer::ready(&["--device", "cuda", "--cuda-fallback", "cpu"]).await;
    let mut client = server.client().await;
    client.screen(tensor_request("cpu", vec![1, 1, 64, 64], vec![0.5; 4096])).await.unwrap();
    let (_, m) = server.admin_get("/metrics");
    assert_eq!(
        metric(&m, "medsentry_execution_provider", &[("model", "chest-xray-pneumonia"), ("requested", "cuda"), ("active", "cpu_fallback")]),
        1.0,
        "fallback visible in metrics"
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_explains_itself_and_process_metrics_are_exported() {
    let server = TestServer::ready(&[]).await;
    let mut client = server.client().await;
    let (_, refs) = references(CHEST);
    client.screen(tensor_request("help", vec![1, 1, 64, 64], refs[0].pixels.clone())).await.unwrap();
    let (code, text) = server.admin_get("/metrics");
    assert_eq!(code, 200);
    let families: std::collections::BTreeSet<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).filter_map(|l| l.split_whitespace().nth(2)).collect();
    assert!(families.len() > 20, "{families:?}");
    for family in &families {
        let help = text.lines().find(|l| l.starts_with(&format!("# HELP {family} ")));
        assert!(help.is_some_and(|h| h.len() > format!("# HELP {family} ").len() + 10), "{family} has no HELP text");
    }
    for name in ["process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds", "process_start_time_seconds", "process_threads"] {
        assert!(metric(&text, name, &[]) > 0.0, "{name} missing or zero");
    }
    let start = metric(&text, "process_start_time_seconds", &[]);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(start <= now + 1.0 && start > now - 86_400.0 * 365.0, "start time {start} vs now {now}");
    server.stop().await.unwrap();
}
