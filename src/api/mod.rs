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

use tonic::Code;

use crate::metrics;

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
