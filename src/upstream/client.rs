//! The upstream's gRPC client: one lazily connected tonic channel for the life of the
//! process; each call carries the caller's forwardable metadata and what is left of its
//! deadline (capped by `--upstream-timeout-ms`), enforced here too so that a hung upstream
//! cannot hold a call forever. A call is tried again once, and only when its connection
//! was refused (the request never reached the upstream); never after a timeout.

use std::future::Future;
use std::time::{Duration, Instant};

use tonic::metadata::{KeyAndValueRef, MetadataMap};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Response, Status};

use super::{code_name, UpstreamError};
use crate::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use crate::inference::{
    ModelConfigRequest, ModelConfigResponse, ModelInferRequest, ModelInferResponse, ModelMetadataRequest, ModelMetadataResponse, ModelReadyRequest,
    ModelStatisticsRequest, ModelStatisticsResponse, RepositoryIndexRequest, RepositoryIndexResponse, ServerReadyRequest,
};
use crate::metrics;

/// Pause before the one retry after a refused connection.
const RETRY_BACKOFF: Duration = Duration::from_millis(100);

/// Request headers never forwarded: HTTP/2 connection and gRPC transport headers (tonic
/// sets its own), and the deadline, which is re-sent as what is left of it.
/// Transport headers, and medsentry's own score token (a secret for this sidecar only).
const NOT_FORWARDED: &[&str] =
    &["te", "content-type", "content-length", "user-agent", "connection", "keep-alive", "transfer-encoding", "upgrade", "host", "medsentry-score-token"];

#[derive(Clone)]
pub struct UpstreamClient {
    addr: String,
    inner: GrpcInferenceServiceClient<Channel>,
    timeout: Duration,
}

/// How one attempt ended, before it becomes an [`UpstreamError`].
enum Failure {
    TimedOut,
    Status(Status),
}

impl UpstreamClient {
    /// The upstream's address as configured (`--upstream`).
    pub fn address(&self) -> &str {
        &self.addr
    }

    /// The channel connects on first use and reconnects by itself after a failure.
    /// With `tls`, the channel speaks TLS (mutual when it carries an identity).
    pub fn new(addr: &str, timeout: Duration, max_message_bytes: usize, tls: Option<ClientTlsConfig>) -> anyhow::Result<UpstreamClient> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))?;
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls).map_err(|e| anyhow::anyhow!("upstream TLS settings: {e}"))?;
        }
        let endpoint = endpoint
            .tcp_nodelay(true)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        let inner =
            GrpcInferenceServiceClient::new(endpoint.connect_lazy()).max_decoding_message_size(max_message_bytes).max_encoding_message_size(max_message_bytes);
        Ok(UpstreamClient { addr: addr.to_string(), inner, timeout })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Forwards one ModelInfer as it came (metadata and deadline included); counted in the
    /// medsentry_upstream_* metrics.
    pub async fn model_infer(&self, req: ModelInferRequest, md: &MetadataMap, deadline: Option<Instant>) -> Result<ModelInferResponse, UpstreamError> {
        let started = Instant::now();
        let result = self.call(req, md, deadline, true, |mut c, r| async move { c.model_infer(r).await }).await;
        let code = match &result {
            Ok(_) => "ok",
            Err(e) => code_name(e.code()),
        };
        metrics::record_upstream(code, started.elapsed().as_secs_f64());
        result
    }

    pub async fn model_metadata(&self, req: ModelMetadataRequest, md: &MetadataMap, deadline: Option<Instant>) -> Result<ModelMetadataResponse, UpstreamError> {
        self.call(req, md, deadline, true, |mut c, r| async move { c.model_metadata(r).await }).await
    }

    pub async fn model_config(&self, req: ModelConfigRequest, md: &MetadataMap, deadline: Option<Instant>) -> Result<ModelConfigResponse, UpstreamError> {
        self.call(req, md, deadline, true, |mut c, r| async move { c.model_config(r).await }).await
    }

    pub async fn model_statistics(
        &self,
        req: ModelStatisticsRequest,
        md: &MetadataMap,
        deadline: Option<Instant>,
    ) -> Result<ModelStatisticsResponse, UpstreamError> {
        self.call(req, md, deadline, true, |mut c, r| async move { c.model_statistics(r).await }).await
    }

    pub async fn repository_index(
        &self,
        req: RepositoryIndexRequest,
        md: &MetadataMap,
        deadline: Option<Instant>,
    ) -> Result<RepositoryIndexResponse, UpstreamError> {
        self.call(req, md, deadline, true, |mut c, r| async move { c.repository_index(r).await }).await
    }

    pub async fn model_ready(&self, req: ModelReadyRequest, md: &MetadataMap, deadline: Option<Instant>) -> Result<bool, UpstreamError> {
        Ok(self.call(req, md, deadline, true, |mut c, r| async move { c.model_ready(r).await }).await?.ready)
    }

    /// The readiness poll: ServerReady within `wait`, not retried (the next poll is).
    pub async fn server_ready(&self, wait: Duration) -> Result<bool, UpstreamError> {
        let deadline = Some(Instant::now() + wait);
        Ok(self.call(ServerReadyRequest {}, &MetadataMap::new(), deadline, false, |mut c, r| async move { c.server_ready(r).await }).await?.ready)
    }

    async fn call<Req, Resp, F, Fut>(&self, msg: Req, md: &MetadataMap, deadline: Option<Instant>, retry: bool, rpc: F) -> Result<Resp, UpstreamError>
    where
        Req: Clone,
        F: Fn(GrpcInferenceServiceClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let started = Instant::now();
        let until = effective_deadline(started, deadline, self.timeout);
        if until <= started {
            return Err(UpstreamError::DeadlineBeforeForward { addr: self.addr.clone() });
        }
        let forwarded = forwardable(md);
        let first = self.attempt(msg.clone(), &forwarded, until, &rpc).await;
        let result = match first {
            Err(Failure::Status(s)) if retry && never_reached(&s) && Instant::now() + RETRY_BACKOFF < until => {
                tracing::info!(upstream = %self.addr, error = %crate::logging::escaped(&detail(&s)), "upstream refused the connection; retrying once");
                metrics::record_upstream_retry();
                tokio::time::sleep(RETRY_BACKOFF).await;
                self.attempt(msg, &forwarded, until, &rpc).await
            }
            other => other,
        };
        result.map_err(|f| self.error(f, started))
    }

    async fn attempt<Req, Resp, F, Fut>(&self, msg: Req, md: &MetadataMap, until: Instant, rpc: &F) -> Result<Resp, Failure>
    where
        F: Fn(GrpcInferenceServiceClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Failure::TimedOut);
        }
        let mut request = Request::new(msg);
        *request.metadata_mut() = md.clone();
        // grpc-timeout for the upstream; the timer below for an upstream that never answers.
        request.set_timeout(left);
        match tokio::time::timeout(left, rpc(self.inner.clone(), request)).await {
            Err(_) => Err(Failure::TimedOut),
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            // tonic (the channel here, or the upstream's server) cancels a call at its
            // grpc-timeout with CANCELLED "Timeout expired": that is our deadline passing.
            Ok(Err(status)) if status.code() == Code::Cancelled && Instant::now() + Duration::from_millis(5) >= until => Err(Failure::TimedOut),
            Ok(Err(status)) => Err(Failure::Status(status)),
        }
    }

    fn error(&self, f: Failure, started: Instant) -> UpstreamError {
        let addr = self.addr.clone();
        let waited_ms = started.elapsed().as_millis() as u64;
        match f {
            Failure::TimedOut => UpstreamError::DeadlineExceeded { addr, waited_ms },
            Failure::Status(s) => match s.code() {
                Code::Unavailable => UpstreamError::Unavailable { addr, detail: detail(&s) },
                Code::DeadlineExceeded => UpstreamError::DeadlineExceeded { addr, waited_ms },
                // A status with an error source was made by our own transport (connection
                // closed or reset mid-call), not answered by the upstream.
                _ if std::error::Error::source(&s).is_some() => UpstreamError::Unavailable { addr, detail: detail(&s) },
                code => UpstreamError::Refused { addr, code, message: s.message().to_string() },
            },
        }
    }
}

/// The earlier of the caller's deadline and now + the upstream timeout. The caller's
/// deadline is shortened by a margin (a tenth of what is left, at most 20 ms) so that the
/// answer, naming the upstream, leaves before tonic cancels the call at the deadline itself.
pub fn effective_deadline(now: Instant, caller: Option<Instant>, timeout: Duration) -> Instant {
    let cap = now + timeout;
    match caller {
        None => cap,
        Some(d) => {
            let margin = (d.saturating_duration_since(now) / 10).min(Duration::from_millis(20));
            (d - margin).min(cap)
        }
    }
}

/// The caller's metadata minus the transport headers (`NOT_FORWARDED`, `grpc-*`,
/// `proxy-*`): application headers (authorization, traceparent, x-request-id, ...) and
/// binary (`-bin`) headers go through as they came.
pub fn forwardable(md: &MetadataMap) -> MetadataMap {
    let keep = |k: &str| !NOT_FORWARDED.contains(&k) && !k.starts_with("grpc-") && !k.starts_with("proxy-") && !k.starts_with(':');
    let mut out = MetadataMap::new();
    for kv in md.iter() {
        match kv {
            KeyAndValueRef::Ascii(k, v) if keep(k.as_str()) => {
                out.append(k.clone(), v.clone());
            }
            KeyAndValueRef::Binary(k, v) if keep(k.as_str()) => {
                out.append_bin(k.clone(), v.clone());
            }
            _ => {}
        }
    }
    out
}

/// True when the call failed to connect (connection refused): it never reached the
/// upstream, so trying again cannot run it twice.
fn never_reached(s: &Status) -> bool {
    if s.code() != Code::Unavailable {
        return false;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(s);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        source = e.source();
    }
    detail(s).contains("Connection refused")
}

/// The status message and its error chain, e.g. "tcp connect error: Connection refused".
fn detail(s: &Status) -> String {
    let mut text = s.message().to_string();
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(s);
    while let Some(e) = source {
        let part = e.to_string();
        if !text.contains(&part) {
            text = format!("{text}: {part}");
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_application_headers_only() {
        let mut md = MetadataMap::new();
        md.insert("authorization", "Bearer t".parse().unwrap());
        md.insert("x-request-id", "42".parse().unwrap());
        md.insert("grpc-timeout", "1S".parse().unwrap());
        md.insert("grpc-accept-encoding", "gzip".parse().unwrap());
        md.insert("te", "trailers".parse().unwrap());
        md.insert("content-type", "application/grpc".parse().unwrap());
        md.insert("user-agent", "grpc-python".parse().unwrap());
        md.insert_bin("trace-bin", tonic::metadata::MetadataValue::from_bytes(b"\x01\x02"));
        let out = forwardable(&md);
        let mut keys: Vec<&str> = out
            .keys()
            .map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => k.as_str(),
                tonic::metadata::KeyRef::Binary(k) => k.as_str(),
            })
            .collect();
        keys.sort();
        assert_eq!(keys, ["authorization", "trace-bin", "x-request-id"]);
        assert_eq!(out.get_bin("trace-bin").unwrap().to_bytes().unwrap().as_ref(), b"\x01\x02");
    }

    #[test]
    fn the_earlier_deadline_wins() {
        let now = Instant::now();
        let t = Duration::from_secs(30);
        assert_eq!(effective_deadline(now, None, t), now + t);
        assert_eq!(effective_deadline(now, Some(now + Duration::from_secs(1)), t), now + Duration::from_millis(980));
        assert_eq!(effective_deadline(now, Some(now + Duration::from_millis(100)), t), now + Duration::from_millis(90));
        assert_eq!(effective_deadline(now, Some(now + Duration::from_secs(99)), t), now + t);
        assert!(effective_deadline(now, Some(now), t) <= now);
    }

    #[tokio::test]
    async fn a_refused_connection_is_recognised_and_named() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let client = UpstreamClient::new(&addr, Duration::from_secs(5), 1 << 20, None).unwrap();
        let status = client.inner.clone().server_ready(ServerReadyRequest {}).await.unwrap_err();
        assert!(never_reached(&status), "{status:?}");
        let err = client.server_ready(Duration::from_secs(2)).await.unwrap_err();
        assert!(matches!(err, UpstreamError::Unavailable { .. }), "{err:?}");
        assert!(err.to_string().contains(&addr), "{err}");
        assert!(!never_reached(&Status::unavailable("model warming up")));
        assert!(!never_reached(&Status::deadline_exceeded("Connection refused")));
    }
}
