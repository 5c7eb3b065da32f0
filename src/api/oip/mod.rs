//! The Open Inference Protocol service (`inference.GRPCInferenceService`, KServe V2 /
//! Triton gRPC): ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata and
//! ModelInfer, on the same port as medsentry.v1, and Triton's ModelConfig, ModelStatistics
//! and RepositoryIndex ([`repository`]; forwarded upstream in proxy mode).
//!
//! ModelInfer screens every batch item through [`pipeline::run`] (concurrently, so the
//! items meet in the batcher) and answers with the probabilities and the screening
//! ([`convert`] has the tensors and parameters). In proxy mode (`--upstream`) the
//! request is screened with the `--upstream-screen-model` bundle, then forwarded as it came
//! to the upstream server, whose answer comes back with the screening outputs and
//! parameters added (an upstream output of the same name is replaced); a request the
//! policy refuses is never forwarded.

pub mod convert;
mod repository;
pub mod rest;
mod rest_convert;
mod rest_repository;

use std::sync::Arc;
use std::time::Instant;

use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use super::{deadline, status::code_label};
use crate::decode::DecodeConfig;
use crate::decode::Input;
use crate::defense::Verdict;
use crate::inference::grpc_inference_service_server::GrpcInferenceService;
use crate::inference::*;
use crate::pipeline::{self, Outcome, PipelineError};
use crate::policy::Origin;
use crate::registry::{Served, ServedModel};
use crate::trace::{CallTrace, SpanKind, Value};
use crate::upstream::{Upstream, UpstreamError};
use crate::{logging, metrics};
use convert::Parsed;

/// The `api` label of this service's metrics.
const API: &str = "oip";
/// Batch items of one ModelInfer prepared and queued together (a chunk of
/// [`pipeline::run_items`]); as many as a ScreenStream keeps in flight.
const ITEM_CONCURRENCY: usize = 32;
/// Fully-qualified name, for health checks.
pub const SERVICE_NAME: &str = "inference.GRPCInferenceService";

/// Proxy mode: where screened requests go, and which local bundle screens them.
#[derive(Clone)]
pub struct Proxy {
    pub upstream: Arc<Upstream>,
    pub screen_model: String,
}

#[derive(Clone)]
pub struct OipService {
    /// The models in force; each call takes a snapshot (a reload swaps it).
    served: Arc<Served>,
    decoding: DecodeConfig,
    proxy: Option<Proxy>,
}

/// A refused ModelInfer, with the batch item that caused it when there is one.
struct Failed {
    error: PipelineError,
    item: Option<usize>,
}

impl From<PipelineError> for Failed {
    fn from(error: PipelineError) -> Failed {
        Failed { error, item: None }
    }
}

impl OipService {
    pub fn new(served: Arc<Served>, decoding: DecodeConfig, proxy: Option<Proxy>) -> Self {
        OipService { served, decoding, proxy }
    }

    /// The named local model (empty name: the default); a version, when given, must match.
    fn model(&self, name: &str, version: &str) -> Result<Arc<ServedModel>, PipelineError> {
        let registry = self.served.current();
        match registry.get(name) {
            Some(m) if version.is_empty() || version == m.bundle.manifest.version => Ok(m.clone()),
            Some(m) => Err(PipelineError::UnknownModel { name: format!("{} version {version}", m.name()), available: registry.names() }),
            None => Err(PipelineError::UnknownModel { name: name.to_string(), available: registry.names() }),
        }
    }

    /// Runs the items through the pipeline ([`pipeline::run_items`]): up to
    /// [`ITEM_CONCURRENCY`] at a time, prepared concurrently and queued as one group so that
    /// they share an ONNX Runtime call; the first failure (by index) ends the call.
    async fn screen(
        &self,
        model: &Arc<ServedModel>,
        items: Vec<Input>,
        deadline: Option<Instant>,
        (id, caller): (&str, &str),
        trace: &CallTrace,
    ) -> Result<Vec<Outcome>, Failed> {
        let n = items.len();
        if n == 1 {
            let input = items.into_iter().next().expect("one item");
            return Ok(vec![pipeline::run(model, input, &self.decoding, deadline, Origin { request_id: id, caller }, trace).await?]);
        }
        let items = items.into_iter().enumerate().map(|(i, input)| (input, format!("{id}#{i}"))).collect();
        pipeline::run_items(model, items, &self.decoding, deadline, caller, ITEM_CONCURRENCY, trace)
            .await
            .map_err(|(item, error)| Failed { error, item: Some(item) })
    }

    async fn infer_local(
        &self,
        req: ModelInferRequest,
        deadline: Option<Instant>,
        Call { caller, shows, trace }: Call<'_>,
        label: &mut String,
    ) -> Result<(ModelInferResponse, Verdict), Failed> {
        let model = self.model(&req.model_name, &req.model_version)?;
        *label = model.name().to_string();
        let bundle = &model.bundle;
        let Parsed { items, raw, .. } = convert::parse_request(&req, bundle, false)?;
        convert::check_requested_outputs(&req)?;
        let outcomes = self.screen(&model, items, deadline, (&req.id, caller), trace).await?;
        let tensors = convert::select_outputs(&req, convert::model_outputs(bundle, &outcomes, shows))?;
        let mut resp = ModelInferResponse {
            model_name: bundle.name().to_string(),
            model_version: bundle.manifest.version.clone(),
            id: req.id,
            parameters: convert::screening_parameters(bundle, &outcomes, shows),
            ..Default::default()
        };
        convert::append_outputs(&mut resp, tensors, raw);
        Ok((resp, worst(&outcomes)))
    }

    async fn infer_proxy(
        &self,
        proxy: &Proxy,
        mut md: MetadataMap,
        req: ModelInferRequest,
        deadline: Option<Instant>,
        Call { caller, shows, trace }: Call<'_>,
        label: &mut String,
    ) -> Result<(ModelInferResponse, Verdict), Failed> {
        let model = self.model(&proxy.screen_model, "")?;
        *label = model.name().to_string();
        let bundle = &model.bundle;
        let Parsed { items, raw, layout } = convert::parse_request(&req, bundle, true)?;
        let outcomes = match self.screen(&model, items, deadline, (&req.id, caller), trace).await {
            Ok(o) => o,
            Err(f) => {
                if matches!(f.error, PipelineError::Refused(_)) {
                    metrics::record_blocked_before_forward(model.name());
                }
                return Err(f);
            }
        };
        let upstream = &proxy.upstream;
        // The upstream's own spans go under this call's upstream span.
        let span = trace.new_child();
        if let Some(parent) = span.and_then(|c| c.traceparent().parse().ok()) {
            md.insert("traceparent", parent);
        }
        let forwarded = Instant::now();
        let answer = upstream.client.model_infer(req, &md, deadline).await;
        let target = vec![("server.address", Value::Str(upstream.client.address().to_string()))];
        trace.child(span, "upstream", SpanKind::Client, forwarded, Instant::now(), target, answer.as_ref().err().map(|e| e.to_string()));
        let mut resp = answer.map_err(|e| {
            if matches!(e, UpstreamError::Unavailable { .. }) {
                upstream.set_ready(false);
            }
            PipelineError::from(e)
        })?;
        // Answer in the upstream's form; raw and typed contents must not mix.
        let raw = if resp.outputs.is_empty() { raw } else { !resp.raw_output_contents.is_empty() && resp.raw_output_contents.len() == resp.outputs.len() };
        resp.parameters.extend(convert::screening_parameters(bundle, &outcomes, shows));
        resp.parameters.insert("medsentry.screened_inputs".to_string(), convert::string_param(layout));
        convert::remove_screening_outputs(&mut resp);
        convert::append_outputs(&mut resp, convert::screening_outputs(bundle, &outcomes, shows), raw);
        Ok((resp, worst(&outcomes)))
    }
}

/// Who is calling and how the answer is made, for one ModelInfer.
#[derive(Clone, Copy)]
struct Call<'a> {
    /// The caller's name from [access] (quarantine records, logs).
    caller: &'a str,
    /// Whether the caller sees raw detector scores.
    shows: bool,
    /// The call's trace, which gets the stage and upstream spans.
    trace: &'a CallTrace,
}

/// The most severe verdict of a batch (the `verdict` label of medsentry_requests_total).
fn worst(outcomes: &[Outcome]) -> Verdict {
    outcomes.iter().map(|o| o.screening.verdict).fold(Verdict::NotScreened, |a, b| if b.rank() > a.rank() || a == Verdict::NotScreened { b } else { a })
}

#[tonic::async_trait]
impl GrpcInferenceService for OipService {
    async fn server_live(&self, request: Request<ServerLiveRequest>) -> Result<Response<ServerLiveResponse>, Status> {
        super::admit(&self.served.current(), &request, "ServerLive")?;
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, request: Request<ServerReadyRequest>) -> Result<Response<ServerReadyResponse>, Status> {
        super::admit(&self.served.current(), &request, "ServerReady")?;
        let upstream = self.proxy.as_ref().is_none_or(|p| p.upstream.is_ready());
        Ok(Response::new(ServerReadyResponse { ready: self.served.current().all_ready() && upstream }))
    }

    async fn model_ready(&self, request: Request<ModelReadyRequest>) -> Result<Response<ModelReadyResponse>, Status> {
        let deadline = deadline::from_metadata(request.metadata(), Instant::now());
        // One snapshot of the served models for admission and the model check.
        let registry = self.served.current();
        let (caller, _) = super::admit(&registry, &request, "ModelReady")?;
        let (md, _, req) = request.into_parts();
        super::allow_model(&registry, &caller, &req.name)?;
        let ready = match &self.proxy {
            None => self.model(&req.name, &req.version).is_ok_and(|m| m.is_ready()),
            Some(p) => {
                let local = self.model(&p.screen_model, "").is_ok_and(|m| m.is_ready());
                local && p.upstream.client.model_ready(req, &md, deadline).await.unwrap_or(false)
            }
        };
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(&self, request: Request<ServerMetadataRequest>) -> Result<Response<ServerMetadataResponse>, Status> {
        super::admit(&self.served.current(), &request, "ServerMetadata")?;
        let mut extensions = vec!["medsentry_screening".to_string()];
        if self.proxy.is_some() {
            extensions.push("medsentry_proxy".to_string());
        }
        Ok(Response::new(ServerMetadataResponse { name: "medsentry".into(), version: env!("CARGO_PKG_VERSION").into(), extensions }))
    }

    async fn model_metadata(&self, request: Request<ModelMetadataRequest>) -> Result<Response<ModelMetadataResponse>, Status> {
        let deadline = deadline::from_metadata(request.metadata(), Instant::now());
        let registry = self.served.current();
        let (caller, _) = super::admit(&registry, &request, "ModelMetadata")?;
        let (md, _, req) = request.into_parts();
        super::allow_model(&registry, &caller, &req.name)?;
        match &self.proxy {
            None => Ok(Response::new(convert::model_metadata(&self.model(&req.name, &req.version)?.bundle))),
            Some(p) => {
                let screen = self.model(&p.screen_model, "")?;
                let mut meta = p.upstream.client.model_metadata(req, &md, deadline).await.map_err(PipelineError::from)?;
                meta.outputs.retain(|o| !convert::SCREENING_OUTPUTS.contains(&o.name.as_str()));
                meta.outputs.extend(convert::screening_metadata(&screen.bundle));
                Ok(Response::new(meta))
            }
        }
    }

    async fn model_config(&self, request: Request<ModelConfigRequest>) -> Result<Response<ModelConfigResponse>, Status> {
        let deadline = deadline::from_metadata(request.metadata(), Instant::now());
        let registry = self.served.current();
        let (caller, _) = super::admit(&registry, &request, "ModelConfig")?;
        let (md, _, req) = request.into_parts();
        super::allow_model(&registry, &caller, &req.name)?;
        match &self.proxy {
            None => Ok(Response::new(ModelConfigResponse { config: Some(repository::model_config(&self.model(&req.name, &req.version)?.bundle)) })),
            Some(p) => Ok(Response::new(p.upstream.client.model_config(req, &md, deadline).await.map_err(PipelineError::from)?)),
        }
    }

    async fn model_statistics(&self, request: Request<ModelStatisticsRequest>) -> Result<Response<ModelStatisticsResponse>, Status> {
        let deadline = deadline::from_metadata(request.metadata(), Instant::now());
        let registry = self.served.current();
        let (caller, _) = super::admit(&registry, &request, "ModelStatistics")?;
        let (md, _, req) = request.into_parts();
        if let Some(p) = &self.proxy {
            super::allow_model(&registry, &caller, &req.name)?;
            return Ok(Response::new(p.upstream.client.model_statistics(req, &md, deadline).await.map_err(PipelineError::from)?));
        }
        let model_stats = if req.name.is_empty() {
            // Every model the caller may call.
            registry.models().filter(|m| registry.access.check_model(&caller, m.name()).is_ok()).map(|m| repository::model_statistics(m)).collect()
        } else {
            super::allow_model(&registry, &caller, &req.name)?;
            vec![repository::model_statistics(&*self.model(&req.name, &req.version)?)]
        };
        Ok(Response::new(ModelStatisticsResponse { model_stats }))
    }

    async fn repository_index(&self, request: Request<RepositoryIndexRequest>) -> Result<Response<RepositoryIndexResponse>, Status> {
        let deadline = deadline::from_metadata(request.metadata(), Instant::now());
        let registry = self.served.current();
        let (caller, _) = super::admit(&registry, &request, "RepositoryIndex")?;
        let (md, _, req) = request.into_parts();
        match &self.proxy {
            None => Ok(Response::new(repository::repository_index(&registry, req.ready, |m| registry.access.check_model(&caller, m).is_ok()))),
            Some(p) => {
                let mut index = p.upstream.client.repository_index(req, &md, deadline).await.map_err(PipelineError::from)?;
                index.models.retain(|m| registry.access.check_model(&caller, &m.name).is_ok());
                Ok(Response::new(index))
            }
        }
    }

    async fn model_infer(&self, request: Request<ModelInferRequest>) -> Result<Response<ModelInferResponse>, Status> {
        let trace = CallTrace::start("inference.GRPCInferenceService/ModelInfer", super::traceparent(request.metadata()));
        let answer = self.model_infer_traced(request, &trace).await;
        trace.finish(answer.as_ref().err().map(|s| s.message().to_string()));
        answer
    }
}

impl OipService {
    async fn model_infer_traced(&self, request: Request<ModelInferRequest>, trace: &CallTrace) -> Result<Response<ModelInferResponse>, Status> {
        let started = Instant::now();
        let deadline = deadline::from_metadata(request.metadata(), started);
        let registry = self.served.current();
        let (caller, shows) = super::admit(&registry, &request, "ModelInfer")?;
        let (md, _, req) = request.into_parts();
        super::allow_model(&registry, &caller, &req.model_name)?;
        let id = req.id.clone();
        trace.attribute("medsentry.caller", Value::Str(caller.name.clone()));
        // Unknown names are caller-controlled: keep them out of metric labels.
        let mut label = "unknown".to_string();
        let result = match &self.proxy {
            None => self.infer_local(req, deadline, Call { caller: &caller.name, shows, trace }, &mut label).await,
            Some(p) => self.infer_proxy(p, md, req, deadline, Call { caller: &caller.name, shows, trace }, &mut label).await,
        };
        trace.attribute("medsentry.model", Value::Str(label.clone()));
        let seconds = started.elapsed().as_secs_f64();
        match result {
            Ok((resp, verdict)) => {
                metrics::record_request(&label, API, "ok", verdict.as_str(), seconds);
                trace.attribute("medsentry.verdict", Value::Str(verdict.as_str().to_uppercase()));
                tracing::debug!(request = %logging::request_ref(&id), model = label, items = resp.outputs.first().and_then(|o| o.shape.first()).copied().unwrap_or(0), "ModelInfer answered");
                Ok(Response::new(resp))
            }
            Err(Failed { error, item }) => {
                metrics::record_error(&label, API, error.reason());
                metrics::record_request(&label, API, code_label(error.code()), error.verdict_label(), seconds);
                tracing::info!(request = %logging::request_ref(&id), model = label, reason = error.reason(), item, error = %logging::escaped(&error), "ModelInfer refused");
                let mut status = Status::from(error.withhold_scores(!shows));
                if let Some(i) = item {
                    // Which batch item was refused (the message is that item's).
                    status.metadata_mut().insert("medsentry-batch-item", i.into());
                }
                Err(status)
            }
        }
    }
}
