//! api: the gRPC surface: `medsentry.v1.Sentry`, the Open Inference Protocol
//! (`inference.GRPCInferenceService`, [`oip`]), grpc.health.v1 and server reflection.

pub mod deadline;
pub mod oip;
mod sentry;
pub mod status;

pub use oip::{OipService, Proxy};
pub use sentry::SentryService;

use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use crate::access::Caller;

use crate::metrics;
use crate::registry::Registry;

/// The header a caller sends a score token in (see the policy's [disclosure]).
pub const SCORE_TOKEN_HEADER: &str = "medsentry-score-token";

/// The caller of `request`, admitted to `rpc`, and whether it sees raw detector scores (its
/// [access] rule, or the [disclosure] token). Refusals are counted and logged here.
pub fn admit<T>(registry: &Registry, request: &tonic::Request<T>, rpc: &'static str) -> Result<(Caller, bool), Status> {
    let md = request.metadata();
    let certs = request.peer_certs();
    let cert = certs.as_ref().and_then(|c| c.first()).map(|c| c.as_ref());
    let access = &registry.access;
    match access.identify(md.get("authorization").map(|v| v.as_bytes()), cert).and_then(|c| access.check_rpc(&c, rpc).map(|()| c)) {
        Ok(caller) => {
            metrics::record_caller(&caller.name, rpc);
            let shows = access.shows_scores(&caller) || shows_scores(registry, md);
            Ok((caller, shows))
        }
        Err(e) => {
            metrics::record_access_refused(e.reason());
            tracing::info!(rpc, reason = e.reason(), error = %e, "call refused");
            Err(crate::pipeline::PipelineError::from(e).into())
        }
    }
}

/// Whether `caller` may use `model`; a refusal is counted with the RPC-level ones.
pub fn allow_model(registry: &Registry, caller: &Caller, model: &str) -> Result<(), crate::pipeline::PipelineError> {
    registry.access.check_model(caller, model).map_err(|e| {
        metrics::record_access_refused(e.reason());
        e.into()
    })
}

/// The caller's W3C `traceparent`, which parents the call's span.
pub fn traceparent(md: &MetadataMap) -> Option<&str> {
    md.get("traceparent").and_then(|v| v.to_str().ok())
}

/// Whether the caller of a request with `metadata` sees raw detector scores by the
/// [disclosure] rules.
fn shows_scores(registry: &Registry, metadata: &MetadataMap) -> bool {
    registry.disclosure.shows_scores(metadata.get(SCORE_TOKEN_HEADER).map(|v| v.as_bytes()))
}

/// Counts calls that tonic refuses before they reach a handler (a message over the size
/// limit): their status only shows in the response headers.
pub fn count_transport_refusals(resp: http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body> {
    if let Some(code) = resp.headers().get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|s| s.parse::<i32>().ok()) {
        let message = resp.headers().get("grpc-message").and_then(|v| v.to_str().ok()).unwrap_or("");
        if Code::from_i32(code) == Code::OutOfRange && (message.contains("too large") || message.contains("too%20large")) {
            metrics::record_error("unknown", "grpc", "message_too_large");
        }
    }
    resp
}
