//! medsentry: an adversarial-input screening sidecar for medical image classifiers.
//!
//! Data flow: [`api`] -> [`decode`] -> [`preprocess`] -> [`batcher`] -> [`engine`] ->
//! [`defense`] (+ [`enforce`], [`quarantine`]) -> [`metrics`]; [`server::run`] wires them together, [`cli`] is the command
//! line. [`api`] also serves the Open Inference Protocol ([`inference`]), whose ModelInfer
//! calls [`upstream`] forwards to a real inference server in proxy mode. [`trace`] turns each
//! call and its stages into OpenTelemetry spans ([`otlp`]).

pub mod access;
pub mod admin;
pub mod api;
pub mod batcher;
pub mod bundle;
pub mod cli;
pub mod config;
pub mod decode;
pub mod defense;
pub mod enforce;
pub mod engine;
pub mod eval;
pub mod logging;
pub mod metrics;
pub mod pipeline;
pub mod preprocess;
pub mod quarantine;
pub mod reload;
pub mod server;
pub mod serving;
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
