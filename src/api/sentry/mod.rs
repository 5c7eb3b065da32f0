//! The `medsentry.v1.Sentry` service: Screen, ScreenStream, ListModels, GetModel.

mod convert;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::{deadline, status::code_label};
use crate::access::Caller;
use crate::decode::DecodeConfig;
use crate::pipeline::{self, PipelineError};
use crate::policy::Origin;
use crate::proto::{self, sentry_server::Sentry};
use crate::registry::Served;
use crate::trace::{CallTrace, Value};
use crate::{logging, metrics};

/// Requests of one ScreenStream that may be in flight at once (they batch together; the
/// answers still leave in request order).
const STREAM_CONCURRENCY: usize = 32;

#[derive(Clone)]
pub struct SentryService {
    /// The models in force; each call takes a snapshot (a reload swaps it).
    served: Arc<Served>,
    decoding: DecodeConfig,
}

impl SentryService {
    pub fn new(served: Arc<Served>, decoding: DecodeConfig) -> Self {
        SentryService { served, decoding }
    }

    /// One request end to end, with its metrics; `api` labels the metrics.
    async fn screen_one(
        &self,
        mut req: proto::ScreenRequest,
        deadline: Option<Instant>,
        (caller, shows_scores): &(Caller, bool),
        api: &'static str,
        trace: &CallTrace,
    ) -> Result<proto::ScreenResponse, PipelineError> {
        let shows_scores = *shows_scores;
        let started = Instant::now();
        let request_id = std::mem::take(&mut req.request_id);
        let registry = self.served.current();
        let Some(model) = registry.get(&req.model).cloned() else {
            let e = PipelineError::UnknownModel { name: req.model.clone(), available: registry.names() };
            // Unknown names are caller-controlled: keep them out of metric labels.
            metrics::record_error("unknown", api, e.reason());
            metrics::record_request("unknown", api, code_label(e.code()), "none", started.elapsed().as_secs_f64());
            return Err(e);
        };
        trace.attribute("medsentry.model", Value::Str(model.name().to_string()));
        trace.attribute("medsentry.caller", Value::Str(caller.name.clone()));
        let result = match super::allow_model(&registry, caller, model.name()).and_then(|()| convert::input_of(&mut req)) {
            Ok(input) => pipeline::run(&model, input, &self.decoding, deadline, Origin { request_id: &request_id, caller: &caller.name }, trace).await,
            Err(e) => Err(e),
        };
        let seconds = started.elapsed().as_secs_f64();
        match result {
            Ok(outcome) => {
                metrics::record_request(model.name(), api, "ok", outcome.screening.verdict.as_str(), seconds);
                trace.attribute("medsentry.verdict", Value::Str(outcome.screening.verdict.as_str().to_uppercase()));
                tracing::debug!(request = %logging::request_ref(&request_id), caller = caller.name, model = model.name(), batch = outcome.batch_size, "screened");
                Ok(convert::response(request_id, &model.bundle, outcome, shows_scores))
            }
            Err(e) => {
                metrics::record_error(model.name(), api, e.reason());
                metrics::record_request(model.name(), api, code_label(e.code()), e.verdict_label(), seconds);
                tracing::info!(request = %logging::request_ref(&request_id), caller = caller.name, model = model.name(), reason = e.reason(), error = %logging::escaped(&e), "request refused");
                Err(e.withhold_scores(!shows_scores))
            }
        }
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<proto::ScreenStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Sentry for SentryService {
    async fn screen(&self, request: Request<proto::ScreenRequest>) -> Result<Response<proto::ScreenResponse>, Status> {
        let deadline = deadline::from_metadata(request.metadata(), Instant::now());
        let trace = CallTrace::start("medsentry.v1.Sentry/Screen", super::traceparent(request.metadata()));
        let answer = match super::admit(&self.served.current(), &request, "Screen") {
            Ok(who) => self.screen_one(request.into_inner(), deadline, &who, "screen", &trace).await.map_err(Status::from),
            Err(status) => Err(status),
        };
        trace.finish(answer.as_ref().err().map(|s| s.message().to_string()));
        Ok(Response::new(answer?))
    }

    type ScreenStreamStream = ResponseStream;

    async fn screen_stream(&self, request: Request<Streaming<proto::ScreenRequest>>) -> Result<Response<ResponseStream>, Status> {
        let deadline = deadline::from_metadata(request.metadata(), Instant::now());
        // Each item of the stream gets a span of its own under the caller's parent.
        let traceparent = super::traceparent(request.metadata()).map(str::to_string);
        let who = Arc::new(super::admit(&self.served.current(), &request, "ScreenStream")?);
        let service = self.clone();
        let answers = request
            .into_inner()
            .map(move |item| {
                let (service, who, traceparent) = (service.clone(), who.clone(), traceparent.clone());
                async move {
                    let req = match item {
                        Ok(r) => r,
                        // A broken client stream ends ours with its status.
                        Err(status) => return Err(status),
                    };
                    let request_id = req.request_id.clone();
                    let trace = CallTrace::start("medsentry.v1.Sentry/ScreenStream", traceparent.as_deref());
                    let result = match service.screen_one(req, deadline, &who, "screen_stream", &trace).await {
                        Ok(r) => {
                            trace.finish(None);
                            proto::screen_stream_response::Result::Response(r)
                        }
                        Err(e) => {
                            trace.finish(Some(e.to_string()));
                            proto::screen_stream_response::Result::Error(proto::StreamError { request_id, code: e.code() as i32, message: e.to_string() })
                        }
                    };
                    Ok(proto::ScreenStreamResponse { result: Some(result) })
                }
            })
            .buffered(STREAM_CONCURRENCY);
        Ok(Response::new(Box::pin(answers)))
    }

    async fn list_models(&self, request: Request<proto::ListModelsRequest>) -> Result<Response<proto::ListModelsResponse>, Status> {
        let registry = self.served.current();
        let (caller, shows) = super::admit(&registry, &request, "ListModels")?;
        // A caller sees the models it may call.
        let models =
            registry.models().filter(|m| registry.access.check_model(&caller, m.name()).is_ok()).map(|m| convert::model_info(&m.bundle, shows)).collect();
        Ok(Response::new(proto::ListModelsResponse { models, default_model: registry.default_model().to_string() }))
    }

    async fn get_model(&self, request: Request<proto::GetModelRequest>) -> Result<Response<proto::ModelInfo>, Status> {
        let registry = self.served.current();
        let (caller, shows) = super::admit(&registry, &request, "GetModel")?;
        let name = request.into_inner().name;
        match registry.get(&name) {
            Some(m) => {
                super::allow_model(&registry, &caller, m.name())?;
                Ok(Response::new(convert::model_info(&m.bundle, shows)))
            }
            None => Err(PipelineError::UnknownModel { name, available: registry.names() }.into()),
        }
    }
}
