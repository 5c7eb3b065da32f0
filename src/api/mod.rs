//! api: the gRPC surface: `medsentry.v1.Sentry`, the Open Inference Protocol
//! (`inference.GRPCInferenceService`, [`oip`]), grpc.health.v1 and server reflection.

mod convert;
pub mod deadline;
pub mod oip;
pub mod oip_convert;
mod sentry;
pub mod status;

pub use oip::{OipService, Proxy};
pub use sentry::SentryService;

use tonic::metadata::MetadataMap;
use tonic::Code;

use crate::metrics;
use crate::serving::Registry;

/// The header a caller sends a score token in (see the policy's [disclosure]).
pub const SCORE_TOKEN_HEADER: &str = "medsentry-score-token";

/// Whether the caller of a request with `metadata` sees raw detector scores.
pub fn shows_scores(registry: &Registry, metadata: &MetadataMap) -> bool {
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
