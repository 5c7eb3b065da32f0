//! registry: the set of models this process serves, each with its batcher, workers,
//! screener and readiness latch, and the handle a reload swaps it behind; loading and
//! verifying the bundles and the policy ([`load_models`], [`start_models`]) for start-up,
//! reloads and the commands.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::oneshot;

use crate::batcher::BatcherHandle;
use anyhow::Context;

use crate::bundle::{self, Bundle};
use crate::config::{ModelArgs, ServingConfig};
use crate::defense::{CampaignMonitor, DefenseError, Screener};
use crate::engine::{spawn_workers, Device, EngineError, ExecutionProvider, InferenceStats};
use crate::metrics;
use crate::policy::{Disclosure, ModelPolicy, Policy, QuarantineConfig};
use crate::quarantine::QuarantineStore;

/// Reads and verifies the bundles (checksums; signatures when keys are trusted) and the
/// policy file, validated against them. Start-up and every reload go through here.
pub fn load_models(args: &ModelArgs) -> anyhow::Result<(Vec<bundle::Bundle>, Policy)> {
    args.validate().map_err(anyhow::Error::msg)?;
    let trusted = args.trusted_keys().map_err(anyhow::Error::msg)?;
    let bundles = bundle::load_all(&bundle::models_dir(args.models_dir.as_deref())?, &trusted)?;
    for b in bundles.iter().filter(|b| b.signed_by.is_some()) {
        tracing::info!(model = b.name(), key = b.signed_by.as_deref().unwrap_or_default(), "bundle signature verified");
    }
    let names: Vec<String> = bundles.iter().map(|b| b.name().to_string()).collect();
    let policy = match &args.policy {
        Some(path) => Policy::load(path, &names)?,
        None => Policy::default(),
    };
    Ok((bundles, policy))
}

/// Loads and verifies the bundles, loads ONNX Runtime and starts every model's batcher
/// and workers (warm-up continues in the background: await the returned warm-ups).
pub fn start_models(args: &ModelArgs) -> anyhow::Result<(Arc<Registry>, Vec<Warmup>)> {
    metrics::install();
    let (bundles, policy) = load_models(args)?;
    let quarantine = match &policy.quarantine {
        Some(q) => Some(Arc::new(QuarantineStore::open(&q.dir, q.max_bytes, q.uid_salt_file.as_deref()).context("opening the quarantine store")?)),
        None => None,
    };
    crate::engine::runtime::environment(args.ort_dylib.clone())?;
    let (registry, warmups) = Registry::start(bundles, args.default_model.as_deref(), args.serving(), &policy, quarantine)?;
    Ok((Arc::new(registry), warmups))
}

pub struct ServedModel {
    pub bundle: Arc<Bundle>,
    pub batcher: BatcherHandle,
    pub screener: Screener,
    /// What happens to flagged inputs (from the policy file, or the defaults).
    pub policy: ModelPolicy,
    /// Signals across requests; None when the bundle has no [campaign] calibration. Shared
    /// so that a reload of the same classifier keeps its windows.
    pub campaign: Option<Arc<CampaignMonitor>>,
    /// Shared by every model; None when no policy quarantines.
    pub quarantine: Option<Arc<QuarantineStore>>,
    /// Counts and durations for the Open Inference Protocol's ModelStatistics (Triton's).
    pub stats: Arc<InferenceStats>,
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

    /// Starts the batcher and workers of one bundle (warming up in the background). Sets
    /// no metric: the caller publishes the model once it is going to serve it.
    pub(crate) fn start(
        mut bundle: Bundle,
        cfg: ServingConfig,
        policy: ModelPolicy,
        quarantine: Option<Arc<QuarantineStore>>,
        campaign: Option<Arc<CampaignMonitor>>,
    ) -> Result<(ServedModel, Warmup), StartError> {
        if cfg.max_batch > 0 {
            bundle.manifest.max_batch = bundle.manifest.max_batch.min(cfg.max_batch);
        }
        let screener = Screener::for_bundle(&bundle, &policy.disable_detectors, policy.cascade)?;
        if policy.cascade {
            metrics::init_cascade(bundle.name());
        }
        let bundle = Arc::new(bundle);
        let name = bundle.name().to_string();
        let (batcher, batches) = BatcherHandle::start(&name, cfg.queue_capacity, bundle.manifest.max_batch, cfg.max_batch_delay);
        let stats = Arc::new(InferenceStats::default());
        let warm = spawn_workers(bundle.clone(), cfg.workers, batches, stats.clone());
        let campaign = campaign.or_else(|| bundle.manifest.campaign.clone().map(|spec| Arc::new(CampaignMonitor::new(&name, spec))));
        Ok((ServedModel { policy, campaign, quarantine, bundle, batcher, screener, stats, ready: AtomicBool::new(false) }, (name, warm)))
    }

    /// The same bundle, workers, queue and campaign windows under another policy (no
    /// warm-up: the workers are the running ones).
    pub(crate) fn with_policy(&self, policy: ModelPolicy, quarantine: Option<Arc<QuarantineStore>>) -> Result<ServedModel, StartError> {
        let screener = Screener::for_bundle(&self.bundle, &policy.disable_detectors, policy.cascade)?;
        if policy.cascade {
            metrics::init_cascade(self.bundle.name());
        }
        Ok(ServedModel {
            bundle: self.bundle.clone(),
            batcher: self.batcher.clone(),
            screener,
            policy,
            campaign: self.campaign.clone(),
            quarantine,
            stats: self.stats.clone(),
            ready: AtomicBool::new(self.is_ready()),
        })
    }

    /// Exports what the dashboards show about the model (info, thresholds, zeroed
    /// counters; counters that exist keep their values).
    pub(crate) fn publish(&self) {
        let (name, m) = (self.name(), &self.bundle.manifest);
        metrics::set_model_info(name, &m.version, self.bundle.classifier_sha256(), m.hardening.is_some());
        let enabled: Vec<_> = m.detectors.iter().filter(|d| !self.policy.disable_detectors.contains(&d.name)).cloned().collect();
        metrics::init_model(name, &enabled, m.campaign.as_ref());
        if !self.policy.disable_detectors.is_empty() {
            tracing::warn!(model = name, disabled = ?self.policy.disable_detectors, "detectors disabled by policy");
        }
        if self.campaign.is_none() {
            tracing::warn!(model = name, "bundle has no [campaign] calibration: the campaign monitor is off for it");
        }
    }
}

/// The registry in force. A reload builds a new one and swaps it in whole; a call takes a
/// snapshot when it starts, so it finishes on the models it began with (their workers stop
/// once the last such call has dropped them).
pub struct Served(RwLock<Arc<Registry>>);

impl Served {
    pub fn new(registry: Arc<Registry>) -> Arc<Served> {
        Arc::new(Served(RwLock::new(registry)))
    }

    pub fn current(&self) -> Arc<Registry> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts `next` in force; returns the registry it replaces.
    pub fn replace(&self, next: Arc<Registry>) -> Arc<Registry> {
        std::mem::replace(&mut *self.0.write().unwrap_or_else(|e| e.into_inner()), next)
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
    /// The quarantine store and the [quarantine] table it was opened from (a reload with
    /// the same table keeps the store).
    pub quarantine: Option<(QuarantineConfig, Arc<QuarantineStore>)>,
}

/// `wanted` when it is among `bundles`, else the first bundle.
pub(crate) fn pick_default(bundles: &[Bundle], wanted: Option<&str>) -> Result<String, StartError> {
    match wanted {
        Some(name) if bundles.iter().any(|b| b.name() == name) => Ok(name.to_string()),
        Some(name) => Err(StartError::UnknownDefault(name.into(), bundles.iter().map(|b| b.name().to_string()).collect())),
        None => bundles.first().map(|b| b.name().to_string()).ok_or(StartError::NoModels),
    }
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
        let default_model = pick_default(&bundles, default_model)?;
        let mut models = BTreeMap::new();
        let mut warmups = Vec::new();
        for bundle in bundles {
            let model_policy = policy.for_model(bundle.name());
            let (served, warm) = ServedModel::start(bundle, cfg, model_policy, quarantine.clone(), None)?;
            metrics::set_model_ready(served.name(), false);
            served.publish();
            warmups.push(warm);
            models.insert(served.name().to_string(), Arc::new(served));
        }
        Ok((Registry::assemble(models, default_model, policy, quarantine), warmups))
    }

    /// A registry from models already started (a reload builds one this way).
    pub(crate) fn assemble(
        models: BTreeMap<String, Arc<ServedModel>>,
        default_model: String,
        policy: &Policy,
        quarantine: Option<Arc<QuarantineStore>>,
    ) -> Registry {
        Registry {
            models,
            default_model,
            disclosure: policy.disclosure.clone(),
            access: policy.access.clone(),
            quarantine: policy.quarantine.clone().zip(quarantine),
        }
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

    pub fn get_exact(&self, name: &str) -> Option<&Arc<ServedModel>> {
        self.models.get(name)
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
