//! trace::export: sends finished spans to an OpenTelemetry collector over OTLP/gRPC.
//!
//! Calls hand their spans to a bounded queue and never wait on the collector: one task
//! batches them (up to [`MAX_BATCH`] spans or [`FLUSH_INTERVAL`], whichever comes first) and
//! exports each batch with a timeout. A full queue, a failed export or spans the collector
//! rejects are counted in `medsentry_trace_spans_dropped_total` and logged once per run of
//! failures; the sidecar's answers never depend on the collector.

use std::sync::RwLock;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tonic::transport::{Channel, Endpoint};

use super::{FinishedSpan, Value};
use crate::metrics;
use crate::otlp::collector::trace::v1::{trace_service_client::TraceServiceClient, ExportTraceServiceRequest};
use crate::otlp::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use crate::otlp::resource::v1::Resource;
use crate::otlp::trace::v1::{span, status, ResourceSpans, ScopeSpans, Span, Status};

/// Calls whose spans may wait for export; beyond it spans are dropped (and counted).
const QUEUE_CALLS: usize = 4096;
/// Spans in one export request.
const MAX_BATCH: usize = 512;
/// Spans wait at most this long for a full batch.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Where spans go and which calls make them (`--otlp-*` flags).
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// The collector's OTLP/gRPC address, `http://host:4317`.
    pub endpoint: String,
    /// Share of calls without a caller's decision that are traced (0..=1); a caller's
    /// `traceparent` flag decides for its own calls.
    pub sample_ratio: f64,
    /// `service.name` of the spans' resource.
    pub service_name: String,
    /// Bound on one export request.
    pub timeout: Duration,
}

impl ExportConfig {
    /// The start-up check of the flags.
    pub fn validate(&self) -> Result<(), String> {
        if !self.endpoint.starts_with("http://") {
            return Err(format!(
                "--otlp-endpoint {:?}: give the collector's OTLP/gRPC address as http://host:port (the exporter speaks plaintext gRPC to a collector on the node or in the pod)",
                self.endpoint
            ));
        }
        Endpoint::from_shared(self.endpoint.clone()).map_err(|e| format!("--otlp-endpoint {:?}: {e}", self.endpoint))?;
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(format!("--otlp-sample-ratio {} is not between 0 and 1", self.sample_ratio));
        }
        if self.service_name.trim().is_empty() {
            return Err("--otlp-service-name is empty".into());
        }
        Ok(())
    }
}

/// Decides, from its trace id, whether a call that brought no decision is traced (the
/// same rule as OpenTelemetry's TraceIdRatioBased sampler: the id's low 8 bytes below
/// ratio * 2^64), so that every service of a trace decides alike.
#[derive(Debug, Clone, Copy)]
pub struct Sampler {
    ratio: f64,
}

impl Sampler {
    pub fn samples(&self, trace_id: &[u8; 16]) -> bool {
        if self.ratio >= 1.0 {
            return true;
        }
        let low = u64::from_be_bytes(trace_id[8..].try_into().expect("8 bytes"));
        (low as f64) < self.ratio * u64::MAX as f64
    }
}

enum Message {
    Spans(Vec<FinishedSpan>),
    /// Export what is pending now, then answer.
    Flush(oneshot::Sender<()>),
}

struct Exporter {
    queue: mpsc::Sender<Message>,
    sampler: Sampler,
}

/// The running exporter; None while tracing is off. A later `start` replaces it (tests
/// start several servers in one process).
static EXPORTER: RwLock<Option<Exporter>> = RwLock::new(None);

/// Starts exporting (on the current Tokio runtime). The collector need not be up: the
/// connection is made, and remade, when a batch is sent.
pub fn start(config: ExportConfig) -> anyhow::Result<()> {
    config.validate().map_err(anyhow::Error::msg)?;
    let channel = Endpoint::from_shared(config.endpoint.clone())?.connect_timeout(config.timeout).timeout(config.timeout).connect_lazy();
    let (queue, rx) = mpsc::channel(QUEUE_CALLS);
    let resource = Resource {
        attributes: vec![
            attribute("service.name", &Value::Str(config.service_name.clone())),
            attribute("service.version", &Value::Str(env!("CARGO_PKG_VERSION").into())),
        ],
        ..Default::default()
    };
    metrics::init_trace_export();
    tokio::spawn(run(rx, TraceServiceClient::new(channel), resource, config.endpoint.clone()));
    *EXPORTER.write().unwrap_or_else(|e| e.into_inner()) = Some(Exporter { queue, sampler: Sampler { ratio: config.sample_ratio } });
    tracing::info!(endpoint = config.endpoint, sample_ratio = config.sample_ratio, "exporting traces over OTLP");
    Ok(())
}

/// The sampler, when tracing is on.
pub(super) fn sampler() -> Option<Sampler> {
    EXPORTER.read().unwrap_or_else(|e| e.into_inner()).as_ref().map(|e| e.sampler)
}

/// Queues one call's spans; drops them (counted) when the queue is full.
pub(super) fn submit(spans: Vec<FinishedSpan>) {
    let guard = EXPORTER.read().unwrap_or_else(|e| e.into_inner());
    let Some(exporter) = guard.as_ref() else { return };
    let n = spans.len();
    if exporter.queue.try_send(Message::Spans(spans)).is_err() {
        metrics::record_spans_dropped("queue_full", n);
    }
}

/// Exports what is queued, waiting at most `within` (shutdown calls it so that the last
/// calls' spans are not lost).
pub async fn flush(within: Duration) {
    let queue = EXPORTER.read().unwrap_or_else(|e| e.into_inner()).as_ref().map(|e| e.queue.clone());
    let Some(queue) = queue else { return };
    let (done, wait) = oneshot::channel();
    if queue.send(Message::Flush(done)).await.is_ok() {
        let _ = tokio::time::timeout(within, wait).await;
    }
}

async fn run(mut rx: mpsc::Receiver<Message>, mut client: TraceServiceClient<Channel>, resource: Resource, endpoint: String) {
    let mut pending: Vec<Span> = Vec::new();
    let mut failing = false;
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = rx.recv() => match message {
                Some(Message::Spans(spans)) => {
                    pending.extend(spans.iter().map(to_otlp));
                    if pending.len() >= MAX_BATCH {
                        export(&mut client, &resource, &mut pending, &mut failing, &endpoint).await;
                    }
                }
                Some(Message::Flush(done)) => {
                    export(&mut client, &resource, &mut pending, &mut failing, &endpoint).await;
                    let _ = done.send(());
                }
                None => {
                    export(&mut client, &resource, &mut pending, &mut failing, &endpoint).await;
                    return;
                }
            },
            _ = tick.tick() => export(&mut client, &resource, &mut pending, &mut failing, &endpoint).await,
        }
    }
}

async fn export(client: &mut TraceServiceClient<Channel>, resource: &Resource, pending: &mut Vec<Span>, failing: &mut bool, endpoint: &str) {
    while !pending.is_empty() {
        let spans: Vec<Span> = pending.drain(..pending.len().min(MAX_BATCH)).collect();
        let n = spans.len();
        let scope = InstrumentationScope { name: "medsentry".into(), version: env!("CARGO_PKG_VERSION").into(), ..Default::default() };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource.clone()),
                scope_spans: vec![ScopeSpans { scope: Some(scope), spans, schema_url: String::new() }],
                schema_url: String::new(),
            }],
        };
        match client.export(request).await {
            Ok(answer) => {
                let rejected = answer.into_inner().partial_success.map(|p| p.rejected_spans.max(0) as usize).unwrap_or(0).min(n);
                metrics::record_spans_exported(n - rejected);
                if rejected > 0 {
                    metrics::record_spans_dropped("rejected", rejected);
                }
                if *failing {
                    tracing::info!(endpoint, "trace export works again");
                    *failing = false;
                }
            }
            Err(status) => {
                metrics::record_spans_dropped("export_failed", n);
                if !*failing {
                    tracing::warn!(endpoint, error = %status, "trace export failed; spans are dropped (and counted) until the collector answers");
                    *failing = true;
                }
            }
        }
    }
}

fn to_otlp(s: &FinishedSpan) -> Span {
    let status = match &s.error {
        Some(message) => Status { message: message.clone(), code: status::StatusCode::Error as i32 },
        None => Status { message: String::new(), code: status::StatusCode::Unset as i32 },
    };
    Span {
        trace_id: s.context.trace_id.to_vec(),
        span_id: s.context.span_id.to_vec(),
        parent_span_id: s.parent.map(|p| p.to_vec()).unwrap_or_default(),
        // Bit 0: sampled (the W3C trace flags).
        flags: 1,
        name: s.name.clone(),
        kind: match s.kind {
            super::SpanKind::Internal => span::SpanKind::Internal,
            super::SpanKind::Server => span::SpanKind::Server,
            super::SpanKind::Client => span::SpanKind::Client,
        } as i32,
        start_time_unix_nano: s.start_unix_nanos,
        end_time_unix_nano: s.end_unix_nanos,
        attributes: s.attributes.iter().map(|(k, v)| attribute(k, v)).collect(),
        status: Some(status),
        ..Default::default()
    }
}

fn attribute(key: &str, value: &Value) -> KeyValue {
    let value = match value {
        Value::Str(s) => any_value::Value::StringValue(s.clone()),
        Value::Int(i) => any_value::Value::IntValue(*i),
        Value::Float(f) => any_value::Value::DoubleValue(*f),
    };
    KeyValue { key: key.to_string(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_sampling_follows_the_trace_id() {
        let half = Sampler { ratio: 0.5 };
        let mut low = [0u8; 16];
        low[8] = 0x10;
        let mut high = [0u8; 16];
        high[8] = 0xf0;
        assert!(half.samples(&low));
        assert!(!half.samples(&high));
        assert!(!Sampler { ratio: 0.0 }.samples(&low));
        assert!(Sampler { ratio: 1.0 }.samples(&high));
    }

    #[test]
    fn only_plain_http_endpoints_and_sane_ratios_pass() {
        let ok =
            ExportConfig { endpoint: "http://127.0.0.1:4317".into(), sample_ratio: 1.0, service_name: "medsentry".into(), timeout: Duration::from_secs(5) };
        assert!(ok.validate().is_ok());
        assert!(ExportConfig { endpoint: "127.0.0.1:4317".into(), ..ok.clone() }.validate().is_err());
        assert!(ExportConfig { endpoint: "https://collector:4317".into(), ..ok.clone() }.validate().is_err());
        assert!(ExportConfig { sample_ratio: 1.5, ..ok.clone() }.validate().is_err());
        assert!(ExportConfig { service_name: " ".into(), ..ok }.validate().is_err());
    }
}
