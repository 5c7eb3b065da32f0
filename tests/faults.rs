//! Faults a hospital network produces, on the real binary and real connections: SIGTERM
//! with 500 calls in flight (every call the server took is answered before it exits); an
//! upstream killed mid-load in proxy mode (calls end UNAVAILABLE naming it, the sidecar
//! keeps serving and recovers when the upstream returns); and HTTP/2 abuse: the advertised
//! cap on concurrent streams per connection, a rapid-reset burst (CVE-2023-44487) and
//! stalled clients, none of which starve an ordinary caller.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::capped::CappedServer;
use common::*;
use medsentry::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use medsentry::proto::sentry_client::SentryClient;
use tonic::transport::Channel;

fn chest_request(id: &str) -> medsentry::proto::ScreenRequest {
    let (_, refs) = references(CHEST);
    tensor_request(id, vec![1, 1, 64, 64], refs[0].pixels.clone())
}

async fn connect(addr: std::net::SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_500_calls_in_flight_answers_every_call_then_exits() {
    let models = only_bundle(CHEST);
    // One worker running one image at a time, so that the 500 calls are still queued when
    // the signal comes.
    let flags = ["--shutdown-grace-secs", "120", "--queue-capacity", "1024", "--workers", "1", "--max-batch", "1"];
    let mut server = CappedServer::start_in(models.path(), 8 << 30, &flags).await;
    let answered = Arc::new(AtomicUsize::new(0));
    let mut calls = Vec::new();
    // Four connections of 125 calls each (under the 128-stream cap), all sent at once.
    for conn in 0..4 {
        let client = SentryClient::new(connect(server.grpc).await);
        for i in 0..125 {
            let (mut c, answered) = (client.clone(), answered.clone());
            calls.push(tokio::spawn(async move {
                let r = c.screen(chest_request(&format!("term-{conn}-{i}"))).await;
                answered.fetch_add(1, Ordering::Relaxed);
                r.map(|_| ()).map_err(|e| (e.code(), e.message().to_string()))
            }));
        }
    }
    // SIGTERM once the server holds all 500 (each has passed its decode stage), so that
    // every call counts as admitted.
    let decoded = |text: &str| metric(text, "medsentry_stage_duration_seconds_count", &[("model", CHEST), ("stage", "decode")]);
    while decoded(&http_get(server.admin, "/metrics").1) < 500.0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let at_signal = answered.load(Ordering::Relaxed);
    server.signal(libc::SIGTERM);
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for c in calls {
        let r = tokio::time::timeout(Duration::from_secs(150), c).await.expect("every call ends").unwrap();
        *outcomes
            .entry(match r {
                Ok(()) => "ok".into(),
                Err((code, message)) => format!("{code:?}: {message}"),
            })
            .or_default() += 1;
    }
    eprintln!("answered before SIGTERM: {at_signal}; outcomes: {outcomes:?}");
    assert!(at_signal < 500, "calls were still in flight at SIGTERM");
    assert_eq!(outcomes.get("ok"), Some(&500), "every call the server held at SIGTERM was answered: {outcomes:?}");
    let status = server.exit_status(Duration::from_secs(30)).await.expect("the server exits after draining");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_killed_mid_load_gives_unavailable_and_the_proxy_recovers() {
    let models = only_bundle(CHEST);
    let upstream = CappedServer::start_in(models.path(), 8 << 30, &[]).await;
    let addr = upstream.grpc;
    let proxy = TestServer::ready(&["--upstream", &addr.to_string(), "--upstream-poll-ms", "200", "--upstream-timeout-ms", "10000"]).await;
    let (clean, _) = sample_pair();
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|i| {
            let (stop, clean) = (stop.clone(), clean.clone());
            let grpc = proxy.grpc;
            tokio::spawn(async move {
                let mut via = GrpcInferenceServiceClient::new(connect(grpc).await);
                let mut seen: BTreeMap<String, usize> = BTreeMap::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let key = match via.model_infer(infer_request(CHEST, &format!("kill-{i}-{n}"), &clean)).await {
                        Ok(_) => "ok".to_string(),
                        Err(e) => format!("{:?} {}", e.code(), e.metadata().get("medsentry-reason").and_then(|v| v.to_str().ok()).unwrap_or("-")),
                    };
                    *seen.entry(key).or_default() += 1;
                    n += 1;
                }
                seen
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    upstream.signal(libc::SIGKILL);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for t in load {
        for (k, v) in tokio::time::timeout(Duration::from_secs(30), t).await.expect("no call hangs").unwrap() {
            *seen.entry(k).or_default() += v;
        }
    }
    eprintln!("through the proxy while the upstream was killed: {seen:?}");
    assert!(seen.get("ok").is_some_and(|&n| n > 0), "{seen:?}");
    assert!(seen.get("Unavailable upstream_unavailable").is_some_and(|&n| n > 0), "{seen:?}");
    assert!(seen.keys().all(|k| k == "ok" || k == "Unavailable upstream_unavailable"), "only answers or UNAVAILABLE naming the upstream: {seen:?}");

    // The sidecar keeps serving what it serves itself; the upstream comes back on its port.
    let mut sentry = proxy.client().await;
    sentry.screen(chest_request("local")).await.expect("Screen works without the upstream");
    drop(upstream);
    let _back = CappedServer::start_at(models.path(), addr, 8 << 30, &[]).await;
    let mut via = GrpcInferenceServiceClient::new(proxy.channel().await);
    let mut recovered = false;
    for _ in 0..100 {
        if via.model_infer(infer_request(CHEST, "back", &clean)).await.is_ok() {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "forwarding resumes once the upstream is back");
    let mut ready = proxy.admin_get("/readyz").0;
    for _ in 0..100 {
        if ready == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        ready = proxy.admin_get("/readyz").0;
    }
    assert_eq!(ready, 200, "readiness follows the upstream's next poll");
    proxy.stop().await.unwrap();
}

/// An HTTP/2 connection driven by the raw h2 client; returns its request handle once the
/// server's SETTINGS have arrived, with the stream cap they advertise.
async fn raw_h2(addr: std::net::SocketAddr) -> (h2::client::SendRequest<bytes::Bytes>, usize, tokio::task::JoinHandle<Result<(), h2::Error>>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, mut conn) = h2::client::handshake(tcp).await.unwrap();
    let mut ping = conn.ping_pong().expect("ping handle");
    // The server's SETTINGS precede its answer to our PING.
    tokio::select! {
        r = &mut conn => panic!("connection ended during the handshake: {r:?}"),
        pong = ping.ping(h2::Ping::opaque()) => {
            pong.unwrap();
        }
    }
    let cap = conn.max_concurrent_send_streams();
    (send, cap, tokio::spawn(conn))
}

fn screen_headers(addr: std::net::SocketAddr) -> http::Request<()> {
    http::Request::post(format!("http://{addr}/medsentry.v1.Sentry/Screen"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// 20 ordinary calls on a fresh connection, each within 30 s (a liveness bound, not a speed
/// target).
async fn ordinary_caller_is_served(addr: std::net::SocketAddr, tag: &str) {
    let mut client = SentryClient::new(connect(addr).await);
    for i in 0..20 {
        let call = client.screen(chest_request(&format!("{tag}-{i}")));
        let r = tokio::time::timeout(Duration::from_secs(30), call).await.unwrap_or_else(|_| panic!("{tag}: call {i} starved"));
        r.unwrap_or_else(|e| panic!("{tag}: call {i}: {e:?}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_caps_rapid_resets_and_stalled_clients_do_not_starve_other_callers() {
    let server = TestServer::ready(&["--max-streams-per-connection", "64"]).await;
    let addr = server.grpc;

    // The cap is advertised; a connection's stalled calls (headers, no body) hold only it.
    let (mut stalled, cap, _stalled_conn) = raw_h2(addr).await;
    assert_eq!(cap, 64, "SETTINGS_MAX_CONCURRENT_STREAMS");
    let mut held = Vec::new();
    for _ in 0..64 {
        stalled = stalled.ready().await.unwrap();
        held.push(stalled.send_request(screen_headers(addr), false).unwrap());
    }
    // Stalled TCP peers that never finish the HTTP/2 preface.
    let mut silent = Vec::new();
    for _ in 0..32 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut s, b"PRI * HTTP/2.0\r\n").await.unwrap();
        silent.push(s);
    }
    ordinary_caller_is_served(addr, "beside-stalled").await;

    // Rapid reset: HEADERS then RST_STREAM, as fast as the client can.
    let (mut burst, _, burst_conn) = raw_h2(addr).await;
    let mut sent = 0;
    for _ in 0..20_000 {
        burst = match burst.ready().await {
            Ok(b) => b,
            Err(_) => break,
        };
        match burst.send_request(screen_headers(addr), false) {
            Ok((_, mut body)) => body.send_reset(h2::Reason::CANCEL),
            Err(_) => break,
        }
        sent += 1;
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), burst_conn).await;
    eprintln!("rapid reset: {sent} streams opened and reset before the connection ended: {ended:?}");
    // The server sends GOAWAY (ENHANCE_YOUR_CALM) and closes: the client sees that, or the
    // broken pipe of its next write.
    match ended {
        Ok(Ok(Err(e))) => assert!(e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) || e.is_io(), "{e:?}"),
        other => panic!("the server must end a rapid-reset connection: {other:?}"),
    }
    assert!(sent < 20_000, "closed during the burst, after {sent}");
    ordinary_caller_is_served(addr, "after-burst").await;
    drop((held, silent));
    server.stop().await.unwrap();
}
