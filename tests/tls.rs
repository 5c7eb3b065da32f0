//! TLS and mutual TLS on the gRPC port with certificates made here (rcgen): a TLS client
//! is served, a plaintext one is refused and counted; with a client CA only clients holding
//! a certificate it signed get in; replacing the certificate files switches new
//! connections to the new certificate while an open connection and its open ScreenStream
//! keep working (an expired client certificate is refused), and a broken
//! replacement keeps the old one. In proxy mode medsentry speaks mutual TLS to its upstream.

mod common;

use std::time::Duration;

use common::certs::{write_pem, Ca};
use common::*;
use medsentry::proto::sentry_client::SentryClient;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

/// The receiving half of a channel as the request stream of a streaming call.
fn tokio_stream_from<T: Send + 'static>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn tls_channel(server: &TestServer, ca: &str, identity: Option<(&str, &str)>) -> Result<Channel, tonic::transport::Error> {
    common::certs::tls_channel(server.grpc, ca, identity).await
}

/// Health over TLS: true once the overall service is SERVING.
async fn serving(channel: Channel) -> bool {
    HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await.map(|r| r.into_inner().status == 1).unwrap_or(false)
}

async fn wait_serving(server: &TestServer, ca: &str, identity: Option<(&str, &str)>) {
    for _ in 0..200 {
        if let Ok(c) = tls_channel(server, ca, identity).await {
            if serving(c).await {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the TLS server never became ready");
}

async fn screen_ok(channel: Channel) -> bool {
    let (_, refs) = references("chest-xray-pneumonia");
    let mut req = tensor_request("tls", vec![1, 1, 64, 64], refs[0].pixels.clone());
    req.model = "chest-xray-pneumonia".into();
    SentryClient::new(channel).screen(req).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_tls_clients_and_refuses_plaintext() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("medsentry test CA");
    let (cert, key) = ca.issue(&["localhost", "127.0.0.1"]);
    let (c, k) = (write_pem(dir.path(), "cert.pem", &cert), write_pem(dir.path(), "key.pem", &key));
    let server = TestServer::start(&["--tls-cert", &c, "--tls-key", &k]).await;
    wait_serving(&server, &ca.pem(), None).await;
    assert!(screen_ok(tls_channel(&server, &ca.pem(), None).await.unwrap()).await, "a TLS client is served");

    let (_, before) = server.admin_get("/metrics");
    let plain = Endpoint::from_shared(format!("http://{}", server.grpc)).unwrap().connect().await;
    let served = match plain {
        Ok(ch) => screen_ok(ch).await,
        Err(_) => false,
    };
    assert!(!served, "a plaintext client is not served");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, after) = server.admin_get("/metrics");
    assert!(delta(&before, &after, "medsentry_tls_handshake_failures_total", &[("reason", "refused")]) >= 1.0, "the refused handshake is counted");
    // A client that trusts another CA does not accept the server.
    assert!(
        tls_channel(&server, &Ca::new("other").pem(), None).await.is_err()
            || !screen_ok(tls_channel(&server, &Ca::new("other").pem(), None).await.unwrap()).await
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_clients_the_client_ca_signed() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let (server_ca, client_ca, stranger) = (Ca::new("server CA"), Ca::new("client CA"), Ca::new("stranger CA"));
    let (cert, key) = server_ca.issue(&["localhost"]);
    let args = [write_pem(dir.path(), "cert.pem", &cert), write_pem(dir.path(), "key.pem", &key), write_pem(dir.path(), "clients.pem", &client_ca.pem())];
    let server = TestServer::start(&["--tls-cert", &args[0], "--tls-key", &args[1], "--tls-client-ca", &args[2]]).await;
    let (pacs_cert, pacs_key) = client_ca.issue(&["pacs-gateway"]);
    wait_serving(&server, &server_ca.pem(), Some((&pacs_cert, &pacs_key))).await;
    assert!(screen_ok(tls_channel(&server, &server_ca.pem(), Some((&pacs_cert, &pacs_key))).await.unwrap()).await, "a client of the client CA is served");

    let refused = |identity: Option<(String, String)>| {
        let ca = server_ca.pem();
        let server = &server;
        async move {
            match tls_channel(server, &ca, identity.as_ref().map(|(c, k)| (c.as_str(), k.as_str()))).await {
                Ok(ch) => !screen_ok(ch).await,
                Err(_) => true,
            }
        }
    };
    assert!(refused(None).await, "no client certificate: refused");
    assert!(refused(Some(stranger.issue(&["intruder"]))).await, "a certificate another CA signed: refused");
    assert!(refused(Some(client_ca.issue_expired(&["pacs-gateway"]))).await, "an expired certificate of the client CA: refused");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_certificates_take_effect_for_new_connections_without_dropping_open_ones() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let (cert, key) = old_ca.issue(&["localhost"]);
    let (c, k) = (write_pem(dir.path(), "cert.pem", &cert), write_pem(dir.path(), "key.pem", &key));
    let server = TestServer::start(&["--tls-cert", &c, "--tls-key", &k, "--tls-reload-secs", "1"]).await;
    wait_serving(&server, &old_ca.pem(), None).await;
    let open = tls_channel(&server, &old_ca.pem(), None).await.unwrap();
    assert!(screen_ok(open.clone()).await);
    // A ScreenStream open across the rotation.
    let (stream_tx, stream_rx) = tokio::sync::mpsc::channel(4);
    let (_, refs) = references(CHEST);
    let item = |id: &str| tensor_request(id, vec![1, 1, 64, 64], refs[0].pixels.clone());
    stream_tx.send(item("before-rotation")).await.unwrap();
    let mut answers = SentryClient::new(open.clone()).screen_stream(tokio_stream_from(stream_rx)).await.unwrap().into_inner();
    assert!(answers.message().await.unwrap().is_some(), "the stream answers before the rotation");
    let (_, before) = server.admin_get("/metrics");

    // The files are replaced: key first, then certificate (a half-done rotation in between).
    let (cert2, key2) = new_ca.issue(&["localhost"]);
    write_pem(dir.path(), "key.pem", &key2);
    write_pem(dir.path(), "cert.pem", &cert2);
    let mut switched = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(ch) = tls_channel(&server, &new_ca.pem(), None).await {
            if screen_ok(ch).await {
                switched = true;
                break;
            }
        }
    }
    assert!(switched, "new connections get the new certificate");
    assert!(screen_ok(open.clone()).await, "the connection opened before the reload still works");
    stream_tx.send(item("after-rotation")).await.unwrap();
    assert!(answers.message().await.unwrap().is_some(), "the stream opened before the rotation still answers");
    drop(stream_tx);
    let (_, after) = server.admin_get("/metrics");
    assert!(delta(&before, &after, "medsentry_tls_reloads_total", &[("result", "ok")]) >= 1.0);

    // A broken key: the reload fails, is counted, and the new certificate stays in use.
    write_pem(dir.path(), "key.pem", "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, later) = server.admin_get("/metrics");
    assert!(delta(&after, &later, "medsentry_tls_reloads_total", &[("result", "failed")]) >= 1.0, "the failed reload is counted");
    assert!(screen_ok(tls_channel(&server, &new_ca.pem(), None).await.unwrap()).await, "the last good certificate keeps serving");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_speaks_mutual_tls_to_its_upstream() {
    use medsentry::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let (upstream_ca, proxies_ca) = (Ca::new("upstream CA"), Ca::new("proxies CA"));
    let (cert, key) = upstream_ca.issue(&["localhost"]);
    let (proxy_cert, proxy_key) = proxies_ca.issue(&["medsentry-proxy"]);
    let f = |n: &str, t: &str| write_pem(dir.path(), n, t);
    let (uc, uk, clients, ca, pc, pk) = (
        f("u.pem", &cert),
        f("u.key", &key),
        f("clients.pem", &proxies_ca.pem()),
        f("ca.pem", &upstream_ca.pem()),
        f("p.pem", &proxy_cert),
        f("p.key", &proxy_key),
    );
    let upstream = TestServer::start(&["--tls-cert", &uc, "--tls-key", &uk, "--tls-client-ca", &clients]).await;
    wait_serving(&upstream, &upstream_ca.pem(), Some((&proxy_cert, &proxy_key))).await;
    let addr = upstream.grpc.to_string();
    let tls_flags = ["--upstream", &addr, "--upstream-tls-ca", &ca, "--upstream-tls-domain", "localhost", "--upstream-poll-ms", "100"];

    let proxy = TestServer::ready(&[&tls_flags[..], &["--upstream-tls-cert", &pc, "--upstream-tls-key", &pk]].concat()).await;
    let (_, refs) = references("chest-xray-pneumonia");
    let req = infer_request("chest-xray-pneumonia", "tls-proxy", &refs[0].pixels);
    let resp = GrpcInferenceServiceClient::new(proxy.channel().await).model_infer(req.clone()).await.expect("forwarded over mutual TLS").into_inner();
    assert!(resp.outputs.iter().any(|o| o.name == "probabilities"), "the upstream's answer came back");

    // Without a client certificate the upstream refuses the proxy: never ready, UNAVAILABLE.
    let lonely = TestServer::start(&tls_flags).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_ne!(lonely.health_status("").await, 1, "not SERVING while the upstream refuses it");
    let err = GrpcInferenceServiceClient::new(lonely.channel().await).model_infer(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    for s in [lonely, proxy, upstream] {
        s.stop().await.unwrap();
    }
}
