//! server: `run(config, listeners, shutdown)` wires bundles, engine, batchers, the gRPC
//! services and the admin port together. It takes its listeners and shutdown future as
//! arguments so tests run the real server on port 0.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::admin::{self, AdminState};
use crate::api::{self, oip, OipService, Proxy, SentryService};
use crate::config::ServeArgs;
use crate::inference;
use crate::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use crate::proto::{self, sentry_server::SentryServer};
use crate::registry::{Registry, Served};
use crate::reload::Reloader;
use crate::upstream::Upstream;

/// Runs the sidecar until `shutdown` resolves, then drains in-flight calls for at most the
/// grace period.
pub async fn run(args: ServeArgs, grpc: TcpListener, admin_listener: TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    args.validate().map_err(anyhow::Error::msg)?;
    if let Some(export) = args.trace.export() {
        crate::trace::start(export)?;
    }
    // Certificates before the models: a missing key file stops start-up before ONNX Runtime
    // has loaded anything.
    let tls = args.tls.files().map(|files| crate::tls::start(files, Duration::from_secs(args.tls.tls_reload_secs))).transpose()?;
    let (registry, warmups) = crate::registry::start_models(&args.model)?;
    let proxy = start_proxy(&args, &registry)?;
    let upstream = proxy.as_ref().map(|p| p.upstream.clone());
    let served = Served::new(registry.clone());
    let (health, health_service) = tonic_health::server::health_reporter();
    // Health of what this process serves on its own, and of what depends on the upstream in
    // proxy mode (overall and the OIP service): the latter follows the upstream's readiness.
    let local_services: Vec<String> = std::iter::once(SERVICE_NAME.to_string()).chain(registry.names()).collect();
    let proxied_services: Vec<String> = vec![String::new(), oip::SERVICE_NAME.to_string()];
    let services: Vec<String> = proxied_services.iter().chain(&local_services).cloned().collect();
    set_health(&health, &services, ServingStatus::NotServing).await;
    let reloader = Arc::new(Reloader::new(args.model.clone(), served.clone(), health.clone(), proxy.as_ref().map(|p| p.screen_model.clone()), tls.clone()));
    let hangups = tokio::spawn(reload_on_hangup(reloader.clone()));

    let draining = Arc::new(AtomicBool::new(false));
    let admin_state = AdminState { served: served.clone(), draining: draining.clone(), upstream: upstream.clone(), reloader: Some(reloader) };
    let admin_task = tokio::spawn(admin::serve(admin_listener, admin_state));

    // Reflection v1 and v1alpha: grpcurl speaks v1, grpcio-reflection and many older tools
    // only v1alpha.
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(inference::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_builder().build_v1().context("building the reflection service")?;
    let reflection_v1alpha = reflection_builder().build_v1alpha().context("building the reflection service (v1alpha)")?;
    // One decode budget for both APIs.
    let decoding = args.model.decoding();
    let sentry = SentryServer::new(SentryService::new(served.clone(), decoding.clone()))
        .max_decoding_message_size(args.max_message_bytes)
        .max_encoding_message_size(args.max_message_bytes);
    let oip_service = OipService::new(served.clone(), decoding, proxy);
    // KServe V2 REST: the same service behind HTTP routes.
    // Shutdown reaches the REST port through this watch (the gRPC server consumes `signal`).
    let (rest_stop_tx, mut rest_stop_rx) = tokio::sync::watch::channel(false);
    let rest_stop_tx = Arc::new(rest_stop_tx);
    let rest_task = match args.http_listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr).await.with_context(|| format!("binding --http-listen {addr}"))?;
            tracing::info!(http = ?listener.local_addr().ok(), "KServe V2 REST listening");
            let stopped = async move {
                let _ = rest_stop_rx.wait_for(|stop| *stop).await;
            };
            Some(tokio::spawn(oip::rest::serve(listener, oip_service.clone(), stopped)))
        }
        None => None,
    };
    let oip = GrpcInferenceServiceServer::new(oip_service).max_decoding_message_size(args.max_message_bytes).max_encoding_message_size(args.max_message_bytes);

    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = {
        let (health, mut services, draining, served, rest_stop_tx) = (health.clone(), services.clone(), draining.clone(), served.clone(), rest_stop_tx.clone());
        async move {
            shutdown.await;
            tracing::info!("shutdown requested: refusing new calls, draining those in flight");
            draining.store(true, Ordering::Release);
            // Models a reload added since start-up go NOT_SERVING too.
            services.extend(served.current().names());
            set_health(&health, &services, ServingStatus::NotServing).await;
            let _ = rest_stop_tx.send(true);
            let _ = drain_tx.send(());
        }
    };
    let local = grpc.local_addr().ok();
    let router = Server::builder()
        .max_concurrent_streams(args.max_streams_per_connection)
        // HTTP/2 rapid reset (CVE-2023-44487): a connection that opens and cancels streams
        // faster than they are accepted is closed with GOAWAY.
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_RESETS))
        // Finds peers that vanished without closing (a killed PACS gateway, a dropped NAT
        // entry), so their streams do not stay open.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .layer(tower::util::MapResponseLayer::new(api::count_transport_refusals))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(sentry)
        .add_service(oip);
    tracing::info!(grpc = ?local, admin = ?args.admin_listen, tls = tls.is_some(), mutual_tls = args.tls.tls_client_ca.is_some(), "medsentry listening");
    let server: std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> = match tls {
        // TCP_NODELAY: without it small answers wait for the peer's delayed ACK (~40 ms).
        None => Box::pin(router.serve_with_incoming_shutdown(TcpIncoming::from(grpc).with_nodelay(Some(true)), signal)),
        Some(config) => Box::pin(router.serve_with_incoming_shutdown(crate::tls::incoming(grpc, config), signal)),
    };

    let warm = {
        let (registry, health, draining) = (registry.clone(), health.clone(), draining.clone());
        let device = args.model.device();
        async move {
            registry.warm_up(warmups, device).await?;
            set_health(&health, &local_services, ServingStatus::Serving).await;
            match upstream {
                None => set_health(&health, &proxied_services, ServingStatus::Serving).await,
                // Proxy mode: runs until shutdown.
                Some(u) => follow_upstream(u.subscribe(), &health, &proxied_services, &draining).await,
            }
            anyhow::Ok(())
        }
    };
    let grace = args.grace();
    let deadline = async move {
        if drain_rx.await.is_ok() {
            tokio::time::sleep(grace).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(server, warm, deadline);
    let mut warming = true;
    let result = loop {
        tokio::select! {
            r = &mut server => break r.context("gRPC server"),
            r = &mut warm, if warming => {
                warming = false;
                if let Err(e) = r {
                    break Err(e.context("model start-up failed"));
                }
            }
            _ = &mut deadline => {
                tracing::warn!(grace_secs = grace.as_secs(), "grace period over: abandoning calls still in flight");
                break Ok(());
            }
        }
    };
    admin_task.abort();
    hangups.abort();
    if let Some(mut t) = rest_task {
        // REST calls in flight finish too, within the grace period (at once when the server
        // stopped for another reason).
        let _ = rest_stop_tx.send(true);
        if tokio::time::timeout(grace, &mut t).await.is_err() {
            t.abort();
        }
    }
    // The last calls' spans, within a bound: a collector that is down must not hold the exit.
    crate::trace::flush(Duration::from_secs(2)).await;
    result
}

/// SIGHUP reloads the bundles, the policy and the certificates (a failed reload is logged
/// and counted; the sidecar keeps serving what it served).
async fn reload_on_hangup(reloader: Arc<Reloader>) {
    #[cfg(unix)]
    {
        let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            tracing::warn!("cannot install the SIGHUP handler: reload through POST /reload on the admin port");
            return;
        };
        while hangup.recv().await.is_some() {
            let _ = reloader.reload("sighup").await;
        }
    }
    #[cfg(not(unix))]
    let _ = reloader;
}

/// Proxy mode (`--upstream`): the upstream's client and readiness poll, and the local
/// bundle that screens forwarded requests.
fn start_proxy(args: &ServeArgs, registry: &Registry) -> anyhow::Result<Option<Proxy>> {
    let Some(addr) = &args.upstream.upstream else { return Ok(None) };
    let screen_model = args.upstream.upstream_screen_model.clone().unwrap_or_else(|| registry.default_model().to_string());
    if registry.get(&screen_model).is_none() {
        anyhow::bail!("--upstream-screen-model {screen_model:?} is not among the served bundles {:?}", registry.names());
    }
    let tls = args.upstream.tls()?;
    let upstream_tls = tls.is_some();
    let upstream = Upstream::start(addr, args.upstream.timeout(), args.upstream.poll_interval(), args.max_message_bytes, tls)?;
    tracing::info!(upstream = addr, screen_model, upstream_tls, "proxy mode: screened ModelInfer calls are forwarded upstream");
    Ok(Some(Proxy { upstream, screen_model }))
}

/// Sets `services` SERVING while the upstream is ready and NOT_SERVING otherwise, until
/// the upstream goes away; leaves them alone once shutdown has begun.
async fn follow_upstream(mut ready: tokio::sync::watch::Receiver<bool>, health: &HealthReporter, services: &[String], draining: &AtomicBool) {
    loop {
        let up = *ready.borrow_and_update();
        if !draining.load(Ordering::Acquire) {
            set_health(health, services, if up { ServingStatus::Serving } else { ServingStatus::NotServing }).await;
            if draining.load(Ordering::Acquire) {
                // Shutdown began while we were setting it: it wins.
                set_health(health, services, ServingStatus::NotServing).await;
            }
        }
        if ready.changed().await.is_err() {
            return;
        }
    }
}

/// Streams a peer may reset before the server has accepted them (h2's own default).
const MAX_PENDING_RESETS: usize = 20;

/// The fully-qualified name health checks use for the Sentry service.
pub const SERVICE_NAME: &str = "medsentry.v1.Sentry";

async fn set_health(health: &HealthReporter, services: &[String], status: ServingStatus) {
    for s in services {
        health.set_service_status(s, status).await;
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn termination_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
