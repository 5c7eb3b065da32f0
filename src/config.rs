//! config: the `serve` flags (each also readable from a MEDSENTRY_* environment variable),
//! validated at start-up so that a bad value exits with a clear message.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::decode::{DecodeBudget, DecodeConfig, DecodeLimits, DEFAULT_MAX_PIXELS};
use crate::engine::{Device, WorkerConfig};

/// How often certificate files are checked for changes, in seconds.
const DEFAULT_TLS_RELOAD_SECS: u64 = 10;

/// Longest a decode waits for others to release decode memory before it is refused.
const DECODE_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    Cpu,
    Cuda,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CudaFallback {
    /// Refuse to start when CUDA cannot be used.
    Refuse,
    /// Log, export medsentry_execution_provider{active="cpu_fallback"} and run on CPU.
    Cpu,
}

#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Folder of model bundles (one sub-folder with bundle.toml each; default `models`).
    /// Given explicitly, it must exist; the default may be absent, and then the bundle
    /// compiled into the binary is served.
    #[arg(long, env = "MEDSENTRY_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// Bundle used when a request names no model (default: the first bundle by name).
    #[arg(long, env = "MEDSENTRY_DEFAULT_MODEL")]
    pub default_model: Option<String>,
    /// ONNX Runtime intra-op threads per session (0 = ONNX Runtime's default, one per core).
    #[arg(long, env = "MEDSENTRY_INTRA_THREADS", default_value_t = 0)]
    pub intra_threads: usize,
    /// Inference worker threads (one ONNX Runtime session each) per model.
    #[arg(long, env = "MEDSENTRY_WORKERS", default_value_t = 1)]
    pub workers: usize,
    /// Cap on the batch size the batcher forms (0 = each bundle's max_batch).
    #[arg(long, env = "MEDSENTRY_MAX_BATCH", default_value_t = 0)]
    pub max_batch: usize,
    /// Microseconds a batch smaller than max_batch may wait for more requests (like Triton's
    /// max_queue_delay); 0 runs whatever is waiting at once.
    #[arg(long, env = "MEDSENTRY_MAX_BATCH_DELAY_US", default_value_t = 0)]
    pub max_batch_delay_us: u64,
    /// Requests admitted per model (queued or running); beyond it calls get RESOURCE_EXHAUSTED.
    #[arg(long, env = "MEDSENTRY_QUEUE_CAPACITY", default_value_t = 256)]
    pub queue_capacity: usize,
    /// Execution provider: cpu, or cuda (needs the `cuda` build feature and onnxruntime-gpu).
    #[arg(long, env = "MEDSENTRY_DEVICE", value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
    /// CUDA device ordinal for --device cuda.
    #[arg(long, env = "MEDSENTRY_CUDA_DEVICE_ID", default_value_t = 0)]
    pub cuda_device_id: i32,
    /// What to do when --device cuda cannot be honoured: refuse to start, or run on CPU.
    #[arg(long, env = "MEDSENTRY_CUDA_FALLBACK", value_enum, default_value_t = CudaFallback::Refuse)]
    pub cuda_fallback: CudaFallback,
    /// Times each worker runs a max-size batch before its model reports ready.
    #[arg(long, env = "MEDSENTRY_WARMUP_RUNS", default_value_t = 2)]
    pub warmup_runs: usize,
    /// Largest image accepted, in pixels per frame (checked from headers before decoding).
    #[arg(long, env = "MEDSENTRY_MAX_IMAGE_PIXELS", default_value_t = DEFAULT_MAX_PIXELS)]
    pub max_image_pixels: u64,
    /// Memory that decodes in flight may hold together, in MiB (what their headers say they
    /// will allocate, reserved before they allocate it). A call that would pass it waits up
    /// to 2 s, then gets RESOURCE_EXHAUSTED; an image that alone needs more is refused.
    #[arg(long, env = "MEDSENTRY_DECODE_MEMORY_MIB", default_value_t = 512)]
    pub decode_memory_mib: u64,
    /// Policy file (TOML): per-model action on flagged inputs (annotate, reject, quarantine),
    /// fail_open / fail_closed, shadow mode, and the quarantine store. Without one: annotate,
    /// fail_closed, no quarantine.
    #[arg(long, env = "MEDSENTRY_POLICY")]
    pub policy: Option<PathBuf>,
    /// Path of libonnxruntime.so (default: ORT_DYLIB_PATH, else the library the build fetched).
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_dylib: Option<PathBuf>,
    /// PEM ed25519 public key trusted to sign bundles (repeatable; in the environment,
    /// comma-separated). Set = every bundle must carry a bundle.toml.sig one of them
    /// verifies, and the bundle compiled into the binary is not served.
    #[arg(long = "trusted-key", env = "MEDSENTRY_TRUSTED_KEYS", value_delimiter = ',')]
    pub trusted_keys: Vec<PathBuf>,
}

pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 128;

/// How every model is served (from the model flags): workers, queue, batching.
#[derive(Debug, Clone, Copy)]
pub struct ServingConfig {
    pub workers: WorkerConfig,
    pub queue_capacity: usize,
    /// Caps every bundle's max_batch (0 = use the bundle's).
    pub max_batch: usize,
    /// How long a short batch may wait for more requests (0 = never wait).
    pub max_batch_delay: std::time::Duration,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// gRPC listen address (medsentry.v1.Sentry, inference.GRPCInferenceService,
    /// grpc.health.v1, reflection).
    #[arg(long, env = "MEDSENTRY_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,
    /// Admin HTTP listen address: /metrics, /healthz, /readyz. Loopback by default: the
    /// metrics name the models and show the traffic, so exposing them is an explicit choice
    /// (the container image and the manifests set 0.0.0.0:9464 for the scraper and probes).
    #[arg(long, env = "MEDSENTRY_ADMIN_LISTEN", default_value = "127.0.0.1:9464")]
    pub admin_listen: SocketAddr,
    /// KServe V2 REST (HTTP/1.1) listen address, e.g. 0.0.0.0:8000; unset = no REST port.
    /// The same service as the Open Inference Protocol's gRPC binding. Plain HTTP: put it
    /// behind the pod's loopback or a TLS-terminating proxy.
    #[arg(long, env = "MEDSENTRY_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Largest gRPC message accepted, in bytes (a DICOM file travels in one message).
    #[arg(long, env = "MEDSENTRY_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_message_bytes: usize,
    /// Seconds in-flight calls get to finish after SIGTERM/SIGINT before the process exits.
    #[arg(long, env = "MEDSENTRY_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,
    /// Concurrent calls (HTTP/2 streams) one connection may have open; more wait in the
    /// client. Keeps one connection from taking every queue slot.
    #[arg(long, env = "MEDSENTRY_MAX_STREAMS_PER_CONNECTION", default_value_t = DEFAULT_MAX_STREAMS_PER_CONNECTION)]
    pub max_streams_per_connection: u32,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub upstream: UpstreamArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub trace: TraceArgs,
}

/// OpenTelemetry traces (README, "Traces"): off unless an OTLP endpoint is given.
#[derive(Debug, Clone, Args)]
pub struct TraceArgs {
    /// OTLP/gRPC collector address (e.g. http://127.0.0.1:4317, an OpenTelemetry Collector on
    /// the node or in the pod): each screened call's span and its stages are exported there.
    #[arg(long, env = "MEDSENTRY_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Share of calls that bring no sampling decision (no `traceparent`) that are traced;
    /// a caller's `traceparent` decides for its own calls.
    #[arg(long, env = "MEDSENTRY_OTLP_SAMPLE_RATIO", default_value_t = 1.0)]
    pub otlp_sample_ratio: f64,
    /// `service.name` of the exported spans.
    #[arg(long, env = "MEDSENTRY_OTLP_SERVICE_NAME", default_value = "medsentry")]
    pub otlp_service_name: String,
    /// Milliseconds one export request may take before its spans are counted as dropped.
    #[arg(long, env = "MEDSENTRY_OTLP_TIMEOUT_MS", default_value_t = 5_000)]
    pub otlp_timeout_ms: u64,
}

/// Tracing off, with the flags' defaults.
impl Default for TraceArgs {
    fn default() -> Self {
        TraceArgs { otlp_endpoint: None, otlp_sample_ratio: 1.0, otlp_service_name: "medsentry".into(), otlp_timeout_ms: 5_000 }
    }
}

impl TraceArgs {
    /// The exporter's settings, when an endpoint was given.
    pub fn export(&self) -> Option<crate::trace::ExportConfig> {
        self.otlp_endpoint.as_ref().map(|endpoint| crate::trace::ExportConfig {
            endpoint: endpoint.clone(),
            sample_ratio: self.otlp_sample_ratio,
            service_name: self.otlp_service_name.clone(),
            timeout: Duration::from_millis(self.otlp_timeout_ms.max(1)),
        })
    }
}

/// TLS on the gRPC port (README, "TLS"). Unset = plaintext, for a sidecar reached only over
/// the pod's loopback.
#[derive(Debug, Clone, Args)]
pub struct TlsArgs {
    /// PEM certificate chain of the gRPC port (with --tls-key).
    #[arg(long, env = "MEDSENTRY_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "MEDSENTRY_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: clients must present a certificate it signed (mutual TLS).
    #[arg(long, env = "MEDSENTRY_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// How often the certificate files are checked for changes, in seconds.
    #[arg(long, env = "MEDSENTRY_TLS_RELOAD_SECS", default_value_t = DEFAULT_TLS_RELOAD_SECS)]
    pub tls_reload_secs: u64,
}

/// Plaintext, with the flags' defaults (what `bench` starts its in-process server with).
impl Default for TlsArgs {
    fn default() -> Self {
        TlsArgs { tls_cert: None, tls_key: None, tls_client_ca: None, tls_reload_secs: DEFAULT_TLS_RELOAD_SECS }
    }
}

impl TlsArgs {
    pub fn validate(&self) -> Result<(), String> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) | (None, Some(_)) => return Err("--tls-cert and --tls-key go together".into()),
            (None, None) if self.tls_client_ca.is_some() => return Err("--tls-client-ca needs --tls-cert and --tls-key".into()),
            _ => {}
        }
        if !(1..=86_400).contains(&self.tls_reload_secs) {
            return Err(format!("--tls-reload-secs must be 1..=86400, got {}", self.tls_reload_secs));
        }
        Ok(())
    }

    /// The files to serve TLS from; None = plaintext.
    pub fn files(&self) -> Option<crate::tls::TlsFiles> {
        Some(crate::tls::TlsFiles { cert: self.tls_cert.clone()?, key: self.tls_key.clone()?, client_ca: self.tls_client_ca.clone() })
    }
}

/// Proxy mode: ModelInfer calls of the Open Inference Protocol are screened, then forwarded
/// to an upstream OIP server (Triton, KServe, ...).
#[derive(Debug, Clone, Args)]
pub struct UpstreamArgs {
    /// host:port of the upstream Open Inference Protocol gRPC server; unset = no proxy.
    #[arg(long, env = "MEDSENTRY_UPSTREAM")]
    pub upstream: Option<String>,
    /// Local bundle that screens forwarded requests (default: the default model).
    #[arg(long, env = "MEDSENTRY_UPSTREAM_SCREEN_MODEL")]
    pub upstream_screen_model: Option<String>,
    /// Longest wait for the upstream's answer, in ms, when the caller's deadline is later
    /// or absent.
    #[arg(long, env = "MEDSENTRY_UPSTREAM_TIMEOUT_MS", default_value_t = 30_000)]
    pub upstream_timeout_ms: u64,
    /// How often the upstream's ServerReady is polled, in ms (health follows it).
    #[arg(long, env = "MEDSENTRY_UPSTREAM_POLL_MS", default_value_t = 2_000)]
    pub upstream_poll_ms: u64,
    /// PEM CA bundle the upstream's certificate must chain to: TLS to the upstream.
    #[arg(long, env = "MEDSENTRY_UPSTREAM_TLS_CA")]
    pub upstream_tls_ca: Option<PathBuf>,
    /// PEM certificate and key medsentry presents to the upstream (mutual TLS).
    #[arg(long, env = "MEDSENTRY_UPSTREAM_TLS_CERT")]
    pub upstream_tls_cert: Option<PathBuf>,
    #[arg(long, env = "MEDSENTRY_UPSTREAM_TLS_KEY")]
    pub upstream_tls_key: Option<PathBuf>,
    /// Name the upstream's certificate must carry (default: the host of --upstream).
    #[arg(long, env = "MEDSENTRY_UPSTREAM_TLS_DOMAIN")]
    pub upstream_tls_domain: Option<String>,
}

impl Default for UpstreamArgs {
    fn default() -> Self {
        UpstreamArgs {
            upstream: None,
            upstream_screen_model: None,
            upstream_timeout_ms: 30_000,
            upstream_poll_ms: 2_000,
            upstream_tls_ca: None,
            upstream_tls_cert: None,
            upstream_tls_key: None,
            upstream_tls_domain: None,
        }
    }
}

impl UpstreamArgs {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(addr) = &self.upstream {
            let (host, port) = addr.rsplit_once(':').ok_or_else(|| format!("--upstream {addr:?} must be host:port"))?;
            if host.is_empty() || host.contains('/') || port.parse::<u16>().is_err() {
                return Err(format!("--upstream {addr:?} must be host:port (no scheme, no path)"));
            }
        } else if self.upstream_screen_model.is_some() {
            return Err("--upstream-screen-model needs --upstream".into());
        }
        if self.upstream_timeout_ms == 0 {
            return Err("--upstream-timeout-ms must be at least 1".into());
        }
        if !(50..=600_000).contains(&self.upstream_poll_ms) {
            return Err(format!("--upstream-poll-ms must be 50..=600000, got {}", self.upstream_poll_ms));
        }
        let tls_flags = self.upstream_tls_cert.is_some() || self.upstream_tls_key.is_some() || self.upstream_tls_domain.is_some();
        if tls_flags && self.upstream_tls_ca.is_none() {
            return Err("--upstream-tls-cert/--upstream-tls-key/--upstream-tls-domain need --upstream-tls-ca".into());
        }
        if self.upstream_tls_cert.is_some() != self.upstream_tls_key.is_some() {
            return Err("--upstream-tls-cert and --upstream-tls-key go together".into());
        }
        if self.upstream_tls_ca.is_some() && self.upstream.is_none() {
            return Err("--upstream-tls-ca needs --upstream".into());
        }
        Ok(())
    }

    /// TLS settings for the upstream channel, read from their files (a clear error at
    /// start-up); None = plaintext.
    pub fn tls(&self) -> anyhow::Result<Option<tonic::transport::ClientTlsConfig>> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let Some(ca) = &self.upstream_tls_ca else { return Ok(None) };
        let read = |p: &PathBuf, flag: &str| std::fs::read(p).map_err(|e| anyhow::anyhow!("{flag} {}: {e}", p.display()));
        let host = self.upstream.as_deref().and_then(|a| a.rsplit_once(':')).map(|(h, _)| h.trim_matches(['[', ']']).to_string()).unwrap_or_default();
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(ca, "--upstream-tls-ca")?))
            .domain_name(self.upstream_tls_domain.clone().unwrap_or(host));
        if let (Some(c), Some(k)) = (&self.upstream_tls_cert, &self.upstream_tls_key) {
            tls = tls.identity(Identity::from_pem(read(c, "--upstream-tls-cert")?, read(k, "--upstream-tls-key")?));
        }
        Ok(Some(tls))
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.upstream_timeout_ms)
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.upstream_poll_ms)
    }
}

impl ModelArgs {
    /// Reads --trusted-key files (an unreadable or non-ed25519 key stops start-up).
    pub fn trusted_keys(&self) -> Result<Vec<crate::bundle::TrustedKey>, String> {
        self.trusted_keys.iter().map(|p| crate::bundle::TrustedKey::load(p)).collect()
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.workers == 0 || self.workers > 64 {
            return Err(format!("--workers must be 1..=64, got {}", self.workers));
        }
        if self.max_batch_delay_us > 1_000_000 {
            return Err(format!("--max-batch-delay-us {} is over one second", self.max_batch_delay_us));
        }
        if self.queue_capacity == 0 {
            return Err("--queue-capacity must be at least 1".into());
        }
        if self.max_image_pixels < 64 * 64 {
            return Err(format!("--max-image-pixels {} is too small to hold any medical image", self.max_image_pixels));
        }
        if self.decode_memory_mib < 16 {
            return Err(format!("--decode-memory-mib {} is too small to decode any medical image (at least 16)", self.decode_memory_mib));
        }
        if self.device == DeviceArg::Cpu && self.cuda_fallback == CudaFallback::Cpu {
            tracing::debug!("--cuda-fallback has no effect with --device cpu");
        }
        Ok(())
    }

    pub fn device(&self) -> Device {
        match self.device {
            DeviceArg::Cpu => Device::Cpu,
            DeviceArg::Cuda => Device::Cuda { device_id: self.cuda_device_id, fallback_to_cpu: self.cuda_fallback == CudaFallback::Cpu },
        }
    }

    pub fn serving(&self) -> ServingConfig {
        ServingConfig {
            workers: WorkerConfig { intra_threads: self.intra_threads, workers: self.workers, device: self.device(), warmup_runs: self.warmup_runs },
            queue_capacity: self.queue_capacity,
            max_batch: self.max_batch,
            max_batch_delay: Duration::from_micros(self.max_batch_delay_us),
        }
    }

    pub fn limits(&self) -> DecodeLimits {
        DecodeLimits { max_pixels: self.max_image_pixels }
    }

    /// The limits and a new decode budget: call once per process, share the result.
    pub fn decoding(&self) -> DecodeConfig {
        DecodeConfig::new(self.limits(), DecodeBudget::new(self.decode_memory_mib << 20, DECODE_WAIT))
    }
}

impl ServeArgs {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_message_bytes < 1024 {
            return Err("--max-message-bytes must be at least 1024".into());
        }
        if !(1..=65_536).contains(&self.max_streams_per_connection) {
            return Err(format!("--max-streams-per-connection must be 1..=65536, got {}", self.max_streams_per_connection));
        }
        self.upstream.validate()?;
        self.tls.validate()?;
        if let Some(export) = self.trace.export() {
            export.validate()?;
        }
        self.model.validate()
    }

    pub fn grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}
