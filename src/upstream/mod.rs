//! upstream: proxy mode. medsentry screens each Open Inference Protocol ModelInfer call
//! locally, then forwards it to the real inference server (Triton, KServe, ...) named by
//! `--upstream`, over one reused, lazily connected tonic channel ([`client`]).
//!
//! Readiness: a background task polls the upstream's ServerReady every `--upstream-poll-ms`;
//! the result feeds `medsentry_upstream_ready`, /readyz, grpc.health (see server.rs) and
//! OIP ServerReady/ModelReady. A forwarded call that finds the upstream unreachable marks it
//! not ready at once; the next successful poll restores it.

pub mod client;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tonic::Code;

pub use client::UpstreamClient;

use crate::metrics;

/// Why a forwarded call failed. Every variant names the upstream address.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Not reachable (connection refused, reset, DNS) or it answered UNAVAILABLE.
    #[error("upstream {addr} is unavailable: {detail}")]
    Unavailable { addr: String, detail: String },
    /// No answer within the caller's deadline (or --upstream-timeout-ms).
    #[error("upstream {addr} did not answer within {waited_ms} ms")]
    DeadlineExceeded { addr: String, waited_ms: u64 },
    /// The caller's deadline had passed before the request could be forwarded.
    #[error("the deadline expired during local screening, before forwarding to upstream {addr}")]
    DeadlineBeforeForward { addr: String },
    /// The upstream answered with an error status; its code is passed through.
    #[error("upstream {addr} refused the call ({}): {message}", crate::upstream::code_name(*.code))]
    Refused { addr: String, code: Code, message: String },
}

impl UpstreamError {
    pub fn code(&self) -> Code {
        match self {
            UpstreamError::Unavailable { .. } => Code::Unavailable,
            UpstreamError::DeadlineExceeded { .. } | UpstreamError::DeadlineBeforeForward { .. } => Code::DeadlineExceeded,
            UpstreamError::Refused { code, .. } => *code,
        }
    }

    /// The `reason` label of `medsentry_errors_total` and the `medsentry-reason` header.
    pub fn reason(&self) -> &'static str {
        match self {
            UpstreamError::Unavailable { .. } => "upstream_unavailable",
            UpstreamError::DeadlineExceeded { .. } | UpstreamError::DeadlineBeforeForward { .. } => "upstream_deadline_exceeded",
            UpstreamError::Refused { .. } => "upstream_refused",
        }
    }

    pub fn addr(&self) -> &str {
        match self {
            UpstreamError::Unavailable { addr, .. }
            | UpstreamError::DeadlineExceeded { addr, .. }
            | UpstreamError::DeadlineBeforeForward { addr }
            | UpstreamError::Refused { addr, .. } => addr,
        }
    }
}

/// The upstream server: its client and its readiness.
pub struct Upstream {
    pub client: UpstreamClient,
    ready: watch::Sender<bool>,
}

impl Upstream {
    /// Creates the channel (no connection yet) and starts polling readiness.
    pub fn start(
        addr: &str,
        timeout: Duration,
        poll: Duration,
        max_message_bytes: usize,
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> anyhow::Result<Arc<Upstream>> {
        let client = UpstreamClient::new(addr, timeout, max_message_bytes, tls)?;
        let (ready, _) = watch::channel(false);
        metrics::set_upstream_ready(false);
        let upstream = Arc::new(Upstream { client, ready });
        tokio::spawn(poll_readiness(Arc::downgrade(&upstream), poll));
        Ok(upstream)
    }

    pub fn addr(&self) -> &str {
        self.client.addr()
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Readiness changes (the current value first).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    pub fn set_ready(&self, ready: bool) {
        let changed = self.ready.send_if_modified(|r| std::mem::replace(r, ready) != ready);
        if changed {
            metrics::set_upstream_ready(ready);
            if ready {
                tracing::info!(upstream = self.addr(), "upstream ready");
            } else {
                tracing::warn!(upstream = self.addr(), "upstream not ready");
            }
        }
    }
}

/// Polls ServerReady until the [`Upstream`] is dropped.
async fn poll_readiness(upstream: std::sync::Weak<Upstream>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(u) = upstream.upgrade() else { return };
        let ready = match u.client.server_ready(every.min(Duration::from_secs(2))).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(upstream = u.addr(), error = %crate::logging::escaped(&e), "upstream readiness poll failed");
                false
            }
        };
        u.set_ready(ready);
    }
}

/// Metric label of any gRPC code.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}
