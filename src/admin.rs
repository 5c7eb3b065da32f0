//! The admin HTTP port: Prometheus `/metrics`, liveness `/healthz`, readiness `/readyz`
//! (ready only once every model has warmed up, and no longer while draining; in proxy mode
//! also only while the upstream is ready).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::metrics;
use crate::serving::Registry;
use crate::upstream::Upstream;

#[derive(Clone)]
pub struct AdminState {
    pub registry: Arc<Registry>,
    /// Set when shutdown begins: readiness drops so load balancers stop sending.
    pub draining: Arc<AtomicBool>,
    /// Proxy mode: the upstream, whose readiness gates ours.
    pub upstream: Option<Arc<Upstream>>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(|| async { ([("content-type", "text/plain; version=0.0.4")], metrics::render()) }))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn readyz(State(s): State<AdminState>) -> (StatusCode, String) {
    if s.draining.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n".into());
    }
    let waiting: Vec<String> = s.registry.models().filter(|m| !m.is_ready()).map(|m| m.name().to_string()).collect();
    if !waiting.is_empty() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("warming up: {}\n", waiting.join(", ")));
    }
    match &s.upstream {
        Some(u) if !u.is_ready() => (StatusCode::SERVICE_UNAVAILABLE, format!("upstream {} not ready\n", u.addr())),
        _ => (StatusCode::OK, "ready\n".into()),
    }
}

/// Serves the admin port until the task is aborted.
pub async fn serve(listener: TcpListener, state: AdminState) -> std::io::Result<()> {
    axum::serve(listener, router(state)).await
}
