//! medsentry: an adversarial-input screening sidecar for medical image classifiers.
//!
//! Data flow of one call: [`api`] (medsentry.v1 in `api::sentry`, the Open Inference
//! Protocol over gRPC and REST in `api::oip`) -> [`pipeline`] -> [`decode`] ->
//! [`preprocess`] -> [`batcher`] -> [`engine`] -> [`defense`] (detectors, out of
//! distribution, campaign monitor) -> [`policy`] (reject, quarantine into [`quarantine`]) ->
//! the answer; [`metrics`] and [`trace`] record every step, [`upstream`] forwards screened
//! ModelInfer calls to a real inference server in proxy mode.
//!
//! Module map, top layer first; a module uses only modules in rows below it, or to its
//! right in its own row (`tests/layering.rs` checks that src/ has no import cycle):
//!
//! | layer | modules | for |
//! |---|---|---|
//! | commands | [`cli`], [`server`] | the command line; `run(config, listeners, shutdown)` wiring everything |
//! | surfaces | [`api`], [`admin`], [`reload`] | gRPC and REST services; /metrics, /readyz, POST /reload; SIGHUP reloads |
//! | one input | [`pipeline`] | decode -> preprocess -> batch -> detect -> policy, with each stage's time |
//! | served set | [`registry`] | the served models (batcher, workers, screener, policy, readiness); loading and verifying bundles |
//! | decisions | [`policy`], [`defense`], [`quarantine`] | what to do with a flagged input; the verdict and its evidence; the evidence store |
//! | preparation | [`config`], [`preprocess`], [`batcher`] | flags and their validation; model-space tensors; dynamic batches |
//! | runtime | [`engine`], [`decode`], [`tls`], [`upstream`], [`trace`] | ONNX Runtime sessions; bytes to pixels; certificates; the upstream client; spans |
//! | foundations | [`metrics`], [`bundle`], [`access`], [`logging`], [`eval`] | Prometheus names; the bundle contract; callers; log hygiene; ROC and npy |
//!
//! Generated protocol code: [`proto`] (medsentry.v1), [`inference`] (Open Inference
//! Protocol), [`otlp`] (OpenTelemetry traces).

pub mod access;
pub mod admin;
pub mod api;
pub mod batcher;
pub mod bundle;
pub mod cli;
pub mod config;
pub mod decode;
pub mod defense;
pub mod engine;
pub mod eval;
pub mod logging;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod preprocess;
pub mod quarantine;
pub mod registry;
pub mod reload;
pub mod server;

pub mod tls;
pub mod trace;
pub mod upstream;

/// Generated gRPC code of proto/medsentry/v1/sentry.proto.
pub mod proto {
    tonic::include_proto!("medsentry.v1");

    /// Encoded descriptors, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/medsentry_descriptor.bin"));
}

/// Generated gRPC code of proto/inference/grpc_predict_v2.proto (Open Inference Protocol).
pub mod inference {
    tonic::include_proto!("inference");

    /// Encoded descriptors, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/inference_descriptor.bin"));
}

/// Generated gRPC code of OpenTelemetry's OTLP trace service (proto/opentelemetry): the
/// exporter's client, and the receiver the tests start. The modules mirror the protobuf
/// packages, whose generated code refers to one another by relative paths.
pub mod otlp {
    pub mod common {
        pub mod v1 {
            tonic::include_proto!("opentelemetry.proto.common.v1");
        }
    }
    pub mod resource {
        pub mod v1 {
            tonic::include_proto!("opentelemetry.proto.resource.v1");
        }
    }
    pub mod trace {
        pub mod v1 {
            tonic::include_proto!("opentelemetry.proto.trace.v1");
        }
    }
    pub mod collector {
        pub mod trace {
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.collector.trace.v1");
            }
        }
    }
}
