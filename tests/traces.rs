//! OpenTelemetry traces through the real binary: an OTLP/gRPC receiver built from the
//! official protobufs (proto/opentelemetry) runs in the test; medsentry exports to it with
//! `--otlp-endpoint`. Checked: a Screen call's span is parented by the caller's
//! `traceparent` and has a child per stage inside its own time; an unsampled parent makes no
//! spans; a refused input's span carries the error; an OIP batch gets a stage span per item;
//! in proxy mode the upstream's own span sits under the proxy's `upstream` span (one trace
//! across two processes); a collector that is down costs no answer, and its dropped spans
//! are counted.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::capped::CappedServer;
use common::*;
use medsentry::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use medsentry::otlp::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use medsentry::otlp::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use medsentry::otlp::common::v1::any_value;
use medsentry::otlp::trace::v1::{span::SpanKind, status::StatusCode, Span};
use tonic::{Request, Response, Status};

const CAP: u64 = 8 << 30;
const MODEL: &str = "chest-xray-pneumonia";

/// A received span with its resource's service.name.
#[derive(Clone, Debug)]
struct Got {
    service: String,
    span: Span,
}

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Got>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(&self, request: Request<ExportTraceServiceRequest>) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut got = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service =
                rs.resource.as_ref().and_then(|r| r.attributes.iter().find(|a| a.key == "service.name")).map(|a| text(a.value.as_ref())).unwrap_or_default();
            for ss in rs.scope_spans {
                got.extend(ss.spans.into_iter().map(|span| Got { service: service.clone(), span }));
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

fn text(v: Option<&medsentry::otlp::common::v1::AnyValue>) -> String {
    match v.and_then(|v| v.value.clone()) {
        Some(any_value::Value::StringValue(s)) => s,
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(f)) => f.to_string(),
        other => format!("{other:?}"),
    }
}

fn attr(span: &Span, key: &str) -> String {
    text(span.attributes.iter().find(|a| a.key == key).and_then(|a| a.value.as_ref()))
}

async fn start_receiver() -> (SocketAddr, Receiver) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let receiver = Receiver::default();
    let service = TraceServiceServer::new(receiver.clone());
    tokio::spawn(tonic::transport::Server::builder().add_service(service).serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)));
    (addr, receiver)
}

impl Receiver {
    /// The spans of `trace_id` once `count` have arrived (the exporter sends every second).
    async fn trace(&self, trace_id: &[u8], count: usize) -> Vec<Got> {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let got: Vec<Got> = self.spans.lock().unwrap().iter().filter(|g| g.span.trace_id == trace_id).cloned().collect();
            if got.len() >= count {
                return got;
            }
            assert!(Instant::now() < until, "{} of {count} spans of the trace arrived: {got:#?}", got.len());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn traceparent(trace: &[u8; 16], span: &[u8; 8], sampled: bool) -> String {
    format!("00-{}-{}-{}", hex(trace), hex(span), if sampled { "01" } else { "00" })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn with_parent<T>(message: T, parent: &str) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut().insert("traceparent", parent.parse().unwrap());
    r
}

fn one<'a>(spans: &'a [Got], name: &str) -> &'a Span {
    let found: Vec<&Got> = spans.iter().filter(|g| g.span.name == name).collect();
    assert_eq!(found.len(), 1, "spans named {name}: {spans:#?}");
    &found[0].span
}

/// Every stage span is a child of `root` and lies within its time.
fn stages_inside(spans: &[Got], root: &Span) -> Vec<String> {
    let mut names = Vec::new();
    for g in spans.iter().filter(|g| g.span.span_id != root.span_id) {
        let s = &g.span;
        assert_eq!(s.parent_span_id, root.span_id, "{} is not a child of {}", s.name, root.name);
        assert!(
            s.start_time_unix_nano >= root.start_time_unix_nano && s.end_time_unix_nano <= root.end_time_unix_nano,
            "{} outside {}: {s:?} {root:?}",
            s.name,
            root.name
        );
        assert!(s.end_time_unix_nano >= s.start_time_unix_nano);
        names.push(s.name.clone());
    }
    names.sort();
    names
}

fn image_bytes() -> Vec<u8> {
    let (root, refs) = references(MODEL);
    std::fs::read(data(&root).join(&refs[0].file)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn screen_and_model_infer_spans_follow_the_caller() {
    let (collector, receiver) = start_receiver().await;
    let endpoint = format!("http://{collector}");
    let server = CappedServer::start(CAP, &["--otlp-endpoint", &endpoint, "--max-batch-delay-us", "2000"]).await;
    let mut client = server.client().await;

    // Screen under the caller's sampled parent: the server span and six stages.
    let (trace_id, caller_span) = ([0x11u8; 16], [0x22u8; 8]);
    let request = with_parent(image_request("traced", image_bytes()), &traceparent(&trace_id, &caller_span, true));
    let answer = client.screen(request).await.unwrap().into_inner();
    let spans = receiver.trace(&trace_id, 7).await;
    let root = one(&spans, "medsentry.v1.Sentry/Screen");
    assert_eq!(root.parent_span_id, caller_span.to_vec());
    assert_eq!(root.kind, SpanKind::Server as i32);
    assert_eq!(attr(root, "medsentry.model"), MODEL);
    assert_eq!(attr(root, "rpc.method"), "Screen");
    assert_eq!(attr(root, "medsentry.verdict"), answer.screening.as_ref().unwrap().verdict().as_str_name().trim_start_matches("VERDICT_"));
    assert_eq!(spans.iter().filter(|g| g.service == "medsentry").count(), spans.len());
    assert_eq!(stages_inside(&spans, root), ["decode", "detect", "infer", "policy", "preprocess", "queue"]);
    // The input and its two feature-squeezing copies run as rows of one batch.
    let rows: usize = attr(one(&spans, "preprocess"), "medsentry.rows").parse().unwrap();
    assert_eq!(rows, 3);
    assert!(attr(one(&spans, "infer"), "medsentry.batch_size").parse::<usize>().unwrap() >= rows);

    // An unsampled parent: nothing is exported for its trace (checked after a later call's
    // spans have arrived, so the exporter has had its turn).
    let unsampled = [0x33u8; 16];
    client.screen(with_parent(image_request("unsampled", image_bytes()), &traceparent(&unsampled, &caller_span, false))).await.unwrap();
    // A refused input: the call's span says why, and so does the decode stage.
    let refused_trace = [0x44u8; 16];
    let refused =
        client.screen(with_parent(image_request("bad", b"%PDF-1.4 not pixels".to_vec()), &traceparent(&refused_trace, &caller_span, true))).await.unwrap_err();
    let spans = receiver.trace(&refused_trace, 2).await;
    let root = one(&spans, "medsentry.v1.Sentry/Screen");
    let status = root.status.clone().unwrap();
    assert_eq!(status.code, StatusCode::Error as i32);
    assert_eq!(status.message, refused.message());
    assert_eq!(one(&spans, "decode").status.clone().unwrap().code, StatusCode::Error as i32);
    assert!(receiver.spans.lock().unwrap().iter().all(|g| g.span.trace_id != unsampled), "an unsampled call was exported");

    // A call without a parent starts its own trace (sample ratio 1).
    client.screen(image_request("own-trace", image_bytes())).await.unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    let own = loop {
        let found = receiver.spans.lock().unwrap().iter().find(|g| g.span.name == "medsentry.v1.Sentry/Screen" && g.span.parent_span_id.is_empty()).cloned();
        if let Some(g) = found {
            break g.span;
        }
        assert!(Instant::now() < until, "no root span for a call without traceparent");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(own.trace_id.iter().any(|b| *b != 0) && own.trace_id != trace_id.to_vec());

    // An OIP batch of two: the ModelInfer span with each stage twice.
    let (_, refs) = references(MODEL);
    let mut req = infer_request(MODEL, "batch", &[refs[0].pixels.clone(), refs[1].pixels.clone()].concat());
    req.inputs[0].shape = vec![2, 1, 64, 64];
    let oip_trace = [0x55u8; 16];
    let mut oip = GrpcInferenceServiceClient::new(tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc)).unwrap().connect().await.unwrap());
    oip.model_infer(with_parent(req, &traceparent(&oip_trace, &caller_span, true))).await.unwrap();
    let spans = receiver.trace(&oip_trace, 13).await;
    let root = one(&spans, "inference.GRPCInferenceService/ModelInfer");
    assert_eq!(attr(root, "medsentry.model"), MODEL);
    let stages = stages_inside(&spans, root);
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for s in &stages {
        *counts.entry(s.as_str()).or_default() += 1;
    }
    assert_eq!(counts, HashMap::from([("decode", 2), ("preprocess", 2), ("queue", 2), ("infer", 2), ("detect", 2), ("policy", 2)]));

    let (_, text) = http_get(server.admin, "/metrics");
    assert!(metric(&text, "medsentry_trace_spans_exported_total", &[]) >= 22.0, "{text}");
    assert_eq!(metric(&text, "medsentry_trace_spans_dropped_total", &[("reason", "export_failed")]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proxy_and_upstream_spans_form_one_trace() {
    let (collector, receiver) = start_receiver().await;
    let endpoint = format!("http://{collector}");
    let upstream = CappedServer::start(CAP, &["--otlp-endpoint", &endpoint, "--otlp-service-name", "upstream"]).await;
    let upstream_addr = upstream.grpc.to_string();
    let proxy =
        CappedServer::start(CAP, &["--otlp-endpoint", &endpoint, "--otlp-service-name", "proxy", "--upstream", &upstream_addr, "--upstream-poll-ms", "200"])
            .await;

    let (_, refs) = references(MODEL);
    let trace_id = [0x66u8; 16];
    let mut oip = GrpcInferenceServiceClient::new(tonic::transport::Endpoint::from_shared(format!("http://{}", proxy.grpc)).unwrap().connect().await.unwrap());
    oip.model_infer(with_parent(infer_request(MODEL, "proxied", &refs[0].pixels), &traceparent(&trace_id, &[0x77; 8], true))).await.unwrap();
    // Proxy: ModelInfer + 6 stages + upstream; upstream: ModelInfer + 6 stages.
    let spans = receiver.trace(&trace_id, 15).await;
    let of = |service: &str| spans.iter().filter(|g| g.service == service).cloned().collect::<Vec<Got>>();
    let (at_proxy, at_upstream) = (of("proxy"), of("upstream"));
    let proxy_root = one(&at_proxy, "inference.GRPCInferenceService/ModelInfer");
    assert_eq!(proxy_root.parent_span_id, vec![0x77; 8]);
    assert_eq!(stages_inside(&at_proxy, proxy_root), ["decode", "detect", "infer", "policy", "preprocess", "queue", "upstream"]);
    let forwarded = one(&at_proxy, "upstream");
    assert_eq!(forwarded.kind, SpanKind::Client as i32);
    assert_eq!(attr(forwarded, "server.address"), upstream_addr);
    let upstream_root = one(&at_upstream, "inference.GRPCInferenceService/ModelInfer");
    assert_eq!(upstream_root.parent_span_id, forwarded.span_id, "the upstream's span is not under the proxy's upstream span");
    assert_eq!(stages_inside(&at_upstream, upstream_root).len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_collector_that_is_down_costs_no_answer() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let endpoint = format!("http://{closed}");
    let server = CappedServer::start(CAP, &["--otlp-endpoint", &endpoint, "--otlp-timeout-ms", "500"]).await;
    let mut client = server.client().await;
    for i in 0..3 {
        client.screen(image_request(&format!("r{i}"), image_bytes())).await.unwrap();
    }
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, text) = http_get(server.admin, "/metrics");
        let dropped = metric(&text, "medsentry_trace_spans_dropped_total", &[("reason", "export_failed")]);
        if dropped >= 21.0 {
            assert_eq!(metric(&text, "medsentry_trace_spans_exported_total", &[]), 0.0);
            break;
        }
        assert!(Instant::now() < until, "dropped spans not counted: {dropped}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
