//! The admin HTTP port: Prometheus `/metrics`, liveness `/healthz`, readiness `/readyz`
//! (ready only once every model has warmed up, and no longer while draining; in proxy mode
//! also only while the upstream is ready), and `POST /reload` (what SIGHUP does, for callers
//! the policy's [access] lets call `Reload`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;

use crate::metrics;
use crate::registry::Served;
use crate::reload::Reloader;
use crate::upstream::Upstream;

#[derive(Clone)]
pub struct AdminState {
    pub served: Arc<Served>,
    /// Serves POST /reload; None where nothing can be reloaded (the CLI's in-process servers).
    pub reloader: Option<Arc<Reloader>>,
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
        .route("/reload", post(reload))
        .with_state(state)
}

/// The RPC name a caller's [access] rule must list, by name (`*` does not include it), to
/// reload through the admin port.
pub const RELOAD_RPC: &str = "Reload";

async fn reload(State(s): State<AdminState>, headers: HeaderMap) -> (StatusCode, String) {
    let Some(reloader) = &s.reloader else { return (StatusCode::NOT_FOUND, "nothing to reload\n".into()) };
    let access = s.served.current().access.clone();
    let caller = match access.identify(headers.get("authorization").map(|v| v.as_bytes()), None) {
        Ok(c) => c,
        Err(e) => {
            metrics::record_access_refused(e.reason());
            return (StatusCode::UNAUTHORIZED, format!("{e}\n"));
        }
    };
    if let Err(e) = access.check_named_rpc(&caller, RELOAD_RPC) {
        metrics::record_access_refused(e.reason());
        tracing::info!(caller = caller.name, "reload refused: the caller may not reload");
        return (StatusCode::FORBIDDEN, format!("{e}\n"));
    }
    match reloader.reload("admin").await {
        Ok(changes) => (StatusCode::OK, serde_json::to_string_pretty(&changes).unwrap_or_default() + "\n"),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("reload refused, still serving the previous bundles and policy: {e:#}\n")),
    }
}

async fn readyz(State(s): State<AdminState>) -> (StatusCode, String) {
    if s.draining.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n".into());
    }
    let waiting: Vec<String> = s.served.current().models().filter(|m| !m.is_ready()).map(|m| m.name().to_string()).collect();
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
