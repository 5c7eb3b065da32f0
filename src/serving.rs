//! serving: the set of models this process serves, each with its batcher, workers,
//! screener and readiness latch.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::batcher::BatcherHandle;
use crate::bundle::Bundle;
use crate::defense::policy::Disclosure;
use crate::defense::{CampaignMonitor, DefenseError, ModelPolicy, Policy, Screener};
use crate::engine::{spawn_workers, Device, EngineError, ExecutionProvider, WorkerConfig};
use crate::metrics;
use crate::quarantine::QuarantineStore;

pub struct ServedModel {
    pub bundle: Arc<Bundle>,
    pub batcher: BatcherHandle,
    pub screener: Screener,
    /// What happens to flagged inputs (from the policy file, or the defaults).
    pub policy: ModelPolicy,
    /// Signals across requests; None when the bundle has no [campaign] calibration.
    pub campaign: Option<CampaignMonitor>,
    /// Shared by every model; None when no policy quarantines.
    pub quarantine: Option<Arc<QuarantineStore>>,
    /// Opens once every worker has run its warm-up batch; Screen refuses before that.
    ready: AtomicBool,
}

impl ServedModel {
    pub fn name(&self) -> &str {
        self.bundle.name()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn mark_ready(&self) {
        self.ready.store(true, Ordering::Release);
        metrics::set_model_ready(self.name(), true);
    }
}

/// Start-up of one model: resolves when its workers are warm (or failed).
pub type Warmup = (String, oneshot::Receiver<Result<ExecutionProvider, EngineError>>);

pub struct Registry {
    models: BTreeMap<String, Arc<ServedModel>>,
    default_model: String,
    /// Who sees raw detector scores in answers (the policy's [disclosure]).
    pub disclosure: Disclosure,
    /// Who may call, and what (the policy's [access]).
    pub access: crate::access::Access,
}

#[derive(Debug, Clone, Copy)]
pub struct ServingConfig {
    pub workers: WorkerConfig,
    pub queue_capacity: usize,
    /// Caps every bundle's max_batch (0 = use the bundle's).
    pub max_batch: usize,
    /// How long a short batch may wait for more requests (0 = never wait).
    pub max_batch_delay: std::time::Duration,
}

impl Registry {
    /// Starts batchers and workers for every bundle. Workers open their sessions and warm
    /// up in the background; await the returned [`Warmup`]s, then call `mark_ready`.
    pub fn start(
        bundles: Vec<Bundle>,
        default_model: Option<&str>,
        cfg: ServingConfig,
        policy: &Policy,
        quarantine: Option<Arc<QuarantineStore>>,
    ) -> Result<(Registry, Vec<Warmup>), StartError> {
        let default_model = match default_model {
            Some(name) if bundles.iter().any(|b| b.name() == name) => name.to_string(),
            Some(name) => return Err(StartError::UnknownDefault(name.into(), bundles.iter().map(|b| b.name().to_string()).collect())),
            None => bundles.first().map(|b| b.name().to_string()).ok_or(StartError::NoModels)?,
        };
        let mut models = BTreeMap::new();
        let mut warmups = Vec::new();
        for mut bundle in bundles {
            if cfg.max_batch > 0 {
                bundle.manifest.max_batch = bundle.manifest.max_batch.min(cfg.max_batch);
            }
            let model_policy = policy.for_model(bundle.name());
            if !model_policy.disable_detectors.is_empty() {
                tracing::warn!(model = bundle.name(), disabled = ?model_policy.disable_detectors, "detectors disabled by policy");
            }
            let screener = Screener::for_bundle(&bundle, &model_policy.disable_detectors)?;
            let bundle = Arc::new(bundle);
            let name = bundle.name().to_string();
            let m = &bundle.manifest;
            metrics::set_model_info(&name, &m.version, bundle.classifier_sha256(), m.hardening.is_some());
            metrics::set_model_ready(&name, false);
            let enabled: Vec<_> = m.detectors.iter().filter(|d| !model_policy.disable_detectors.contains(&d.name)).cloned().collect();
            metrics::init_model(&name, &enabled, m.campaign.as_ref());
            let (batcher, batches) = BatcherHandle::start(&name, cfg.queue_capacity, m.max_batch, cfg.max_batch_delay);
            let warm = spawn_workers(bundle.clone(), cfg.workers, batches);
            warmups.push((name.clone(), warm));
            let campaign = m.campaign.clone().map(|spec| CampaignMonitor::new(&name, spec));
            if campaign.is_none() {
                tracing::warn!(model = %name, "bundle has no [campaign] calibration: the campaign monitor is off for it");
            }
            let served =
                ServedModel { policy: model_policy, campaign, quarantine: quarantine.clone(), bundle, batcher, screener, ready: AtomicBool::new(false) };
            models.insert(name, Arc::new(served));
        }
        Ok((Registry { models, default_model, disclosure: policy.disclosure.clone(), access: policy.access.clone() }, warmups))
    }

    /// Awaits every model's warm-up and opens its readiness latch; the first failure wins.
    pub async fn warm_up(&self, warmups: Vec<Warmup>, device: Device) -> Result<(), EngineError> {
        for (name, rx) in warmups {
            let provider = rx.await.map_err(|_| EngineError::WorkerGone)??;
            let requested = if matches!(device, Device::Cpu) { "cpu" } else { "cuda" };
            metrics::set_execution_provider(&name, requested, provider.as_str());
            tracing::info!(model = %name, provider = provider.as_str(), "model warm and ready");
            self.models[&name].mark_ready();
        }
        Ok(())
    }

    /// The named model, or the default one for an empty name.
    pub fn get(&self, name: &str) -> Option<&Arc<ServedModel>> {
        self.models.get(if name.is_empty() { self.default_model.as_str() } else { name })
    }

    pub fn default_model(&self) -> &str {
        &self.default_model
    }

    pub fn names(&self) -> Vec<String> {
        self.models.keys().cloned().collect()
    }

    pub fn models(&self) -> impl Iterator<Item = &Arc<ServedModel>> {
        self.models.values()
    }

    pub fn all_ready(&self) -> bool {
        self.models.values().all(|m| m.is_ready())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("default model {0:?} is not among the loaded bundles {1:?}")]
    UnknownDefault(String, Vec<String>),
    #[error("no model bundles to serve")]
    NoModels,
    #[error(transparent)]
    Defense(#[from] DefenseError),
}
