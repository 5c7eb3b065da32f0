//! trace: OpenTelemetry spans of each screened call, exported over OTLP/gRPC when
//! `--otlp-endpoint` is given ([`export`]).
//!
//! A call that screens an input gets a server span named after its RPC, parented by the
//! caller's W3C `traceparent` when it sends one, with a child span per stage the input went
//! through (decode, preprocess, queue, infer, detect, policy; upstream in proxy mode). The
//! stages are timed where they run (the blocking decode task, the batcher, the workers) and
//! recorded here afterwards with their own start and end times, so a span never has to
//! cross threads. Spans carry model, verdict, caller and batch size, never a request id or
//! anything of the image. With no endpoint every method is a no-op on an empty handle.

pub mod export;

use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ring::rand::{SecureRandom, SystemRandom};

pub use export::{flush, start, ExportConfig};

/// W3C trace context of a span: what a `traceparent` header carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The caller's sampling decision (flag 01).
    pub sampled: bool,
}

impl SpanContext {
    /// Parses `version-traceid-spanid-flags` (W3C Trace Context level 1). Version ff, ids of
    /// all zeros and malformed headers give None: the call then starts a trace of its own.
    pub fn parse_traceparent(header: &str) -> Option<SpanContext> {
        let mut parts = header.trim().split('-');
        let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        // Version 00 has exactly four fields; later versions may append more.
        if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        let _ = u8::from_str_radix(version, 16).ok()?;
        let trace_id: [u8; 16] = hex_bytes(trace)?;
        let span_id: [u8; 8] = hex_bytes(span)?;
        let flags: [u8; 1] = hex_bytes(flags)?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(SpanContext { trace_id, span_id, sampled: flags[0] & 1 == 1 })
    }

    /// The `traceparent` header naming this span as the parent.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{:02x}", hex::encode(self.trace_id), hex::encode(self.span_id), self.sampled as u8)
    }
}

/// Lowercase hex of exactly N bytes (the W3C format allows no upper case).
fn hex_bytes<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || text.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    hex::decode(text).ok()?.try_into().ok()
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    // The system random source fails only when the kernel has none at all.
    SystemRandom::new().fill(&mut out).expect("system random source");
    out
}

/// A span's kind, as OTLP numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Internal = 1,
    Server = 2,
    Client = 3,
}

/// An attribute value of a span.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Float(f64),
}

/// One finished span, as the exporter sends it.
#[derive(Debug, Clone)]
pub struct FinishedSpan {
    pub context: SpanContext,
    pub parent: Option<[u8; 8]>,
    pub name: String,
    pub kind: SpanKind,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Vec<(&'static str, Value)>,
    /// Set when the span's work failed: the reason the caller was given.
    pub error: Option<String>,
}

/// The spans of one call, recorded as it goes and exported when it ends (or is dropped).
/// Empty (every method a no-op) when tracing is off or the caller's parent is not sampled.
#[derive(Debug, Default)]
pub struct CallTrace {
    recording: Option<Mutex<Recording>>,
}

#[derive(Debug)]
struct Recording {
    /// The call's own (server) span.
    root: FinishedSpan,
    /// When the call started, on both clocks: stage instants become wall-clock times
    /// through it.
    anchor: (Instant, u64),
    stages: Vec<FinishedSpan>,
}

impl CallTrace {
    /// Starts the server span of `rpc` (e.g. `medsentry.v1.Sentry/Screen`) under the
    /// caller's `traceparent`, if tracing is on and the call is sampled.
    pub fn start(rpc: &str, traceparent: Option<&str>) -> CallTrace {
        let Some(sampler) = export::sampler() else { return CallTrace::default() };
        let parent = traceparent.and_then(SpanContext::parse_traceparent);
        let (trace_id, parent_span, sampled) = match parent {
            // The caller decided.
            Some(p) => (p.trace_id, Some(p.span_id), p.sampled),
            None => {
                let id = random_bytes::<16>();
                (id, None, sampler.samples(&id))
            }
        };
        if !sampled {
            return CallTrace::default();
        }
        let now = (Instant::now(), unix_nanos(SystemTime::now()));
        let (service, method) = rpc.rsplit_once('/').unwrap_or(("", rpc));
        let attributes =
            vec![("rpc.system", Value::Str("grpc".into())), ("rpc.service", Value::Str(service.into())), ("rpc.method", Value::Str(method.into()))];
        let root = FinishedSpan {
            context: SpanContext { trace_id, span_id: random_bytes(), sampled: true },
            parent: parent_span,
            name: rpc.to_string(),
            kind: SpanKind::Server,
            start_unix_nanos: now.1,
            end_unix_nanos: now.1,
            attributes,
            error: None,
        };
        CallTrace { recording: Some(Mutex::new(Recording { root, anchor: now, stages: Vec::new() })) }
    }

    /// True when this call's spans are recorded.
    pub fn is_recording(&self) -> bool {
        self.recording.is_some()
    }

    /// Records a stage that ran from `start` to `end` as a child of the call's span.
    pub fn stage(&self, name: &'static str, start: Instant, end: Instant, attributes: Vec<(&'static str, Value)>, error: Option<String>) {
        self.child(self.new_child(), name, SpanKind::Internal, start, end, attributes, error);
    }

    /// A context for a child span about to run elsewhere (the upstream call): its
    /// `traceparent` parents the upstream's own spans; record it with [`CallTrace::child`].
    pub fn new_child(&self) -> Option<SpanContext> {
        let r = self.recording.as_ref()?.lock().ok()?;
        Some(SpanContext { trace_id: r.root.context.trace_id, span_id: random_bytes(), sampled: true })
    }

    /// Records the child span `context` (from [`CallTrace::new_child`]).
    #[allow(clippy::too_many_arguments)] // a span is these eight things
    pub fn child(
        &self,
        context: Option<SpanContext>,
        name: &'static str,
        kind: SpanKind,
        start: Instant,
        end: Instant,
        attributes: Vec<(&'static str, Value)>,
        error: Option<String>,
    ) {
        let (Some(recording), Some(context)) = (&self.recording, context) else { return };
        let Ok(mut r) = recording.lock() else { return };
        let (start_unix_nanos, end_unix_nanos) = (r.at(start), r.at(end.max(start)));
        let parent = Some(r.root.context.span_id);
        r.stages.push(FinishedSpan { context, parent, name: name.to_string(), kind, start_unix_nanos, end_unix_nanos, attributes, error });
    }

    /// Adds an attribute to the call's span (the last value of a key wins).
    pub fn attribute(&self, key: &'static str, value: Value) {
        let Some(Ok(mut r)) = self.recording.as_ref().map(|m| m.lock()) else { return };
        r.root.attributes.retain(|(k, _)| *k != key);
        r.root.attributes.push((key, value));
    }

    /// Ends the call's span (with the reason the caller was given, when it failed) and
    /// hands every span of the call to the exporter.
    pub fn finish(mut self, error: Option<String>) {
        self.end(error);
    }

    fn end(&mut self, error: Option<String>) {
        let Some(recording) = self.recording.take() else { return };
        let Ok(mut r) = recording.into_inner() else { return };
        r.root.end_unix_nanos = r.at(Instant::now());
        r.root.error = error;
        let mut spans = std::mem::take(&mut r.stages);
        spans.push(r.root);
        export::submit(spans);
    }
}

impl Drop for CallTrace {
    /// A call dropped before it answered (the caller cancelled or went away) still shows.
    fn drop(&mut self) {
        self.end(Some("the call ended before it was answered (cancelled or timed out)".into()));
    }
}

impl Recording {
    /// `at` on the wall clock, through the call's anchor.
    fn at(&self, at: Instant) -> u64 {
        let (anchor, nanos) = self.anchor;
        match at.checked_duration_since(anchor) {
            Some(after) => nanos.saturating_add(after.as_nanos() as u64),
            None => nanos.saturating_sub(anchor.duration_since(at).as_nanos() as u64),
        }
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trip_and_refusals() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = SpanContext::parse_traceparent(header).unwrap();
        assert!(c.sampled);
        assert_eq!(c.traceparent(), header);
        assert!(!SpanContext::parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap().sampled);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(SpanContext::parse_traceparent(bad), None, "{bad:?}");
        }
        // A later version may carry more fields.
        assert!(SpanContext::parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more").is_some());
    }

    #[test]
    fn an_untraced_call_records_nothing() {
        let t = CallTrace::start("medsentry.v1.Sentry/Screen", None);
        assert!(!t.is_recording());
        assert_eq!(t.new_child(), None);
    }
}
