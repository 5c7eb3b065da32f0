//! oip::rest: KServe's V2 inference protocol over HTTP/REST (`--http-listen`), the binding half
//! of Triton's and KServe's users call. Every route runs through the same Open Inference
//! Protocol service as gRPC ([`OipService`]: pipeline, policy, access, proxy mode), with
//! the caller's `authorization` and score-token headers passed as gRPC metadata, and a
//! refusal answered with the HTTP code of its gRPC status, `{"error": message}` and the
//! same `medsentry-reason` header.

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tonic::metadata::{MetadataMap, MetadataValue};

use super::rest_convert::{self, BadBody};
use super::rest_repository;
use super::OipService;
use crate::inference::grpc_inference_service_server::GrpcInferenceService;
use crate::inference::*;

/// The header that gives the JSON part's length in a body with binary data.
const HEADER_LENGTH: &str = "inference-header-content-length";
/// Headers passed to the service as gRPC metadata.
const FORWARDED: [&str; 3] = ["authorization", crate::api::SCORE_TOKEN_HEADER, "traceparent"];

pub fn router(service: OipService) -> Router {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{model}", get(model_metadata))
        .route("/v2/models/{model}/versions/{version}", get(model_metadata_version))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route("/v2/models/{model}/config", get(model_config))
        .route("/v2/models/{model}/versions/{version}/config", get(model_config_version))
        .route("/v2/models/stats", get(all_statistics))
        .route("/v2/models/{model}/stats", get(model_statistics))
        .route("/v2/models/{model}/versions/{version}/stats", get(model_statistics_version))
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer_version))
        .with_state(service)
}

/// Serves REST until `shutdown` resolves, then stops accepting and lets the calls in
/// flight finish (the caller bounds the wait with the grace period).
pub async fn serve(listener: TcpListener, service: OipService, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    axum::serve(listener, router(service)).with_graceful_shutdown(shutdown).await
}

fn request<T>(message: T, headers: &HeaderMap) -> tonic::Request<T> {
    let mut md = MetadataMap::new();
    for name in FORWARDED {
        if let Some(v) = headers.get(name).and_then(|v| MetadataValue::try_from(v.as_bytes()).ok()) {
            md.insert(name, v);
        }
    }
    let mut r = tonic::Request::new(message);
    *r.metadata_mut() = md;
    r
}

fn http_code(code: tonic::Code) -> StatusCode {
    use tonic::Code::*;
    match code {
        InvalidArgument | OutOfRange | FailedPrecondition => StatusCode::BAD_REQUEST,
        NotFound => StatusCode::NOT_FOUND,
        Unauthenticated => StatusCode::UNAUTHORIZED,
        PermissionDenied => StatusCode::FORBIDDEN,
        ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Unimplemented => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn refused(status: tonic::Status) -> Response {
    let mut resp = (http_code(status.code()), json_body(&json!({"error": status.message()}))).into_response();
    if let Some(reason) = status.metadata().get("medsentry-reason").and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok()) {
        resp.headers_mut().insert("medsentry-reason", reason);
    }
    resp
}

fn bad_body(e: BadBody) -> Response {
    let mut resp = (StatusCode::BAD_REQUEST, json_body(&json!({"error": e.0}))).into_response();
    resp.headers_mut().insert("medsentry-reason", HeaderValue::from_static("bad_request_body"));
    resp
}

fn json_body(v: &Value) -> ([(&'static str, &'static str); 1], String) {
    ([("content-type", "application/json")], v.to_string())
}

fn answer<T>(r: Result<tonic::Response<T>, tonic::Status>, to_json: impl FnOnce(T) -> Value) -> Response {
    match r {
        Ok(resp) => json_body(&to_json(resp.into_inner())).into_response(),
        Err(status) => refused(status),
    }
}

async fn live(State(s): State<OipService>, headers: HeaderMap) -> Response {
    answer(s.server_live(request(ServerLiveRequest {}, &headers)).await, |r| json!({"live": r.live}))
}

async fn ready(State(s): State<OipService>, headers: HeaderMap) -> Response {
    match s.server_ready(request(ServerReadyRequest {}, &headers)).await {
        Ok(r) if r.get_ref().ready => json_body(&json!({"ready": true})).into_response(),
        Ok(_) => (StatusCode::SERVICE_UNAVAILABLE, json_body(&json!({"ready": false}))).into_response(),
        Err(status) => refused(status),
    }
}

async fn server_metadata(State(s): State<OipService>, headers: HeaderMap) -> Response {
    answer(s.server_metadata(request(ServerMetadataRequest {}, &headers)).await, |r| json!({"name": r.name, "version": r.version, "extensions": r.extensions}))
}

async fn model_ready(State(s): State<OipService>, Path(model): Path<String>, headers: HeaderMap) -> Response {
    match s.model_ready(request(ModelReadyRequest { name: model, version: String::new() }, &headers)).await {
        Ok(r) if r.get_ref().ready => json_body(&json!({"ready": true})).into_response(),
        Ok(_) => (StatusCode::SERVICE_UNAVAILABLE, json_body(&json!({"ready": false}))).into_response(),
        Err(status) => refused(status),
    }
}

async fn model_metadata(State(s): State<OipService>, Path(model): Path<String>, headers: HeaderMap) -> Response {
    metadata(s, model, String::new(), headers).await
}

async fn model_metadata_version(State(s): State<OipService>, Path((model, version)): Path<(String, String)>, headers: HeaderMap) -> Response {
    metadata(s, model, version, headers).await
}

async fn metadata(s: OipService, name: String, version: String, headers: HeaderMap) -> Response {
    let tensor = |t: &model_metadata_response::TensorMetadata| json!({"name": t.name, "datatype": t.datatype, "shape": t.shape});
    answer(s.model_metadata(request(ModelMetadataRequest { name, version }, &headers)).await, |r| {
        json!({"name": r.name, "versions": r.versions, "platform": r.platform,
               "inputs": r.inputs.iter().map(tensor).collect::<Vec<_>>(), "outputs": r.outputs.iter().map(tensor).collect::<Vec<_>>()})
    })
}

async fn model_config(State(s): State<OipService>, Path(model): Path<String>, headers: HeaderMap) -> Response {
    answer(s.model_config(request(ModelConfigRequest { name: model, version: String::new() }, &headers)).await, rest_repository::model_config)
}

async fn model_config_version(State(s): State<OipService>, Path((name, version)): Path<(String, String)>, headers: HeaderMap) -> Response {
    answer(s.model_config(request(ModelConfigRequest { name, version }, &headers)).await, rest_repository::model_config)
}

async fn all_statistics(State(s): State<OipService>, headers: HeaderMap) -> Response {
    statistics(s, String::new(), String::new(), headers).await
}

async fn model_statistics(State(s): State<OipService>, Path(model): Path<String>, headers: HeaderMap) -> Response {
    statistics(s, model, String::new(), headers).await
}

async fn model_statistics_version(State(s): State<OipService>, Path((model, version)): Path<(String, String)>, headers: HeaderMap) -> Response {
    statistics(s, model, version, headers).await
}

async fn statistics(s: OipService, name: String, version: String, headers: HeaderMap) -> Response {
    answer(s.model_statistics(request(ModelStatisticsRequest { name, version }, &headers)).await, rest_repository::model_statistics)
}

/// The body is empty (tritonclient) or `{"ready": true}` to list ready models only.
async fn repository_index(State(s): State<OipService>, headers: HeaderMap, body: Bytes) -> Response {
    let ready = if body.iter().all(u8::is_ascii_whitespace) {
        false
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(v) => v.get("ready").and_then(Value::as_bool).unwrap_or(false),
            Err(e) => return bad_body(BadBody(format!("repository index body is not JSON: {e}"))),
        }
    };
    answer(s.repository_index(request(RepositoryIndexRequest { repository_name: String::new(), ready }, &headers)).await, rest_repository::repository_index)
}

async fn infer(State(s): State<OipService>, Path(model): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    run_infer(s, model, String::new(), headers, body).await
}

async fn infer_version(State(s): State<OipService>, Path((model, version)): Path<(String, String)>, headers: HeaderMap, body: Bytes) -> Response {
    run_infer(s, model, version, headers, body).await
}

async fn run_infer(s: OipService, model: String, version: String, headers: HeaderMap, body: Bytes) -> Response {
    let header_len = match headers.get(HEADER_LENGTH).map(|v| v.to_str().ok().and_then(|t| t.trim().parse::<usize>().ok())) {
        None => None,
        Some(Some(n)) => Some(n),
        Some(None) => return bad_body(BadBody(format!("{HEADER_LENGTH} must be a byte count"))),
    };
    let parsed = rest_convert::split_body(&body, header_len).and_then(|(json, binary)| rest_convert::infer_request(&model, &version, &json, binary));
    let (req, binary_outputs) = match parsed {
        Ok(p) => p,
        Err(e) => return bad_body(e),
    };
    let resp = match s.model_infer(request(req, &headers)).await {
        Ok(r) => r.into_inner(),
        Err(status) => return refused(status),
    };
    let (json, tail) = rest_convert::infer_response(&resp, &binary_outputs);
    if tail.is_empty() {
        return json_body(&json).into_response();
    }
    let head = json.to_string();
    let len = head.len();
    let mut bytes = head.into_bytes();
    bytes.extend(tail);
    let mut resp = Response::new(Body::from(bytes));
    resp.headers_mut().insert("content-type", HeaderValue::from_static("application/octet-stream"));
    resp.headers_mut().insert(HEADER_LENGTH, HeaderValue::from(len));
    resp
}
