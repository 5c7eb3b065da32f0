//! reload: SIGHUP and `POST /reload` on the admin port re-read `--models-dir`, the policy
//! file and the TLS certificates without a restart.
//!
//! Every bundle is verified again (checksums, signature when keys are trusted) and the
//! policy validated against the new set before anything changes. An unchanged bundle keeps
//! its workers, queue and campaign windows (a new policy for it takes effect without a
//! warm-up); a new or changed bundle gets its own workers, warmed before it takes traffic,
//! and a changed bundle of the same classifier keeps its campaign windows. The new set is
//! swapped in whole: calls already running finish on the models they started with, whose
//! workers stop once the last of them is answered. Anything wrong (a bundle that does not
//! verify or warm up, a policy that does not validate, the proxy's screening model gone)
//! leaves the served set as it was, with a log line and
//! `medsentry_reloads_total{result="failed"}`.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::config::ModelArgs;
use crate::defense::CampaignMonitor;
use crate::quarantine::QuarantineStore;
use crate::registry::{pick_default, Registry, Served, ServedModel};
use crate::{bundle, metrics};

pub struct Reloader {
    /// The flags the sidecar started with: the same folder, policy file and keys are re-read.
    args: ModelArgs,
    served: Arc<Served>,
    /// Keeps grpc.health.v1 in step with the served models.
    health: HealthReporter,
    /// Proxy mode screens forwarded calls with this model: a reload may not drop it.
    required: Option<String>,
    /// Certificates are re-read at once rather than at the next poll.
    tls: Option<crate::tls::CurrentConfig>,
    /// One reload at a time (a SIGHUP during an admin reload waits for it).
    running: tokio::sync::Mutex<()>,
}

/// What a reload did, by model name.
#[derive(Debug, Default, Serialize)]
pub struct Changes {
    /// Bundles not served before.
    pub added: Vec<String>,
    /// Bundles whose files changed: new workers, warmed before the swap.
    pub replaced: Vec<String>,
    /// Same bundle, new policy (or quarantine store): the running workers.
    pub policy_changed: Vec<String>,
    pub unchanged: Vec<String>,
    /// Served before, no longer in the folder.
    pub removed: Vec<String>,
    /// Replaced bundles of the same classifier whose campaign windows carried over.
    pub campaign_kept: Vec<String>,
}

impl Reloader {
    pub fn new(args: ModelArgs, served: Arc<Served>, health: HealthReporter, required: Option<String>, tls: Option<crate::tls::CurrentConfig>) -> Reloader {
        metrics::init_reloads();
        Reloader { args, served, health, required, tls, running: tokio::sync::Mutex::new(()) }
    }

    /// Re-reads everything; on failure the served set is unchanged. `trigger` names the
    /// cause in the log (sighup, admin).
    pub async fn reload(&self, trigger: &'static str) -> anyhow::Result<Changes> {
        let _one_at_a_time = self.running.lock().await;
        tracing::info!(trigger, "reload: re-reading the bundles, the policy and the certificates");
        if let Some(tls) = &self.tls {
            tls.reload_now();
        }
        match self.apply().await {
            Ok(changes) => {
                metrics::record_reload("ok");
                tracing::info!(trigger, added = ?changes.added, replaced = ?changes.replaced, policy_changed = ?changes.policy_changed,
                    removed = ?changes.removed, campaign_kept = ?changes.campaign_kept, "reload done");
                Ok(changes)
            }
            Err(e) => {
                metrics::record_reload("failed");
                tracing::error!(trigger, error = format!("{e:#}"), "reload refused; still serving the previous bundles and policy");
                Err(e)
            }
        }
    }

    async fn apply(&self) -> anyhow::Result<Changes> {
        let args = self.args.clone();
        // Verifying reads and hashes every file (tens of MB): off the async threads.
        let (bundles, policy) = tokio::task::spawn_blocking(move || crate::registry::load_models(&args)).await.context("loading the bundles")??;
        if let Some(name) = self.required.as_deref().filter(|n| !bundles.iter().any(|b| b.name() == *n)) {
            anyhow::bail!("the proxy screens with {name:?}, which is no longer in the models folder");
        }
        let default_model = pick_default(&bundles, self.args.default_model.as_deref())?;
        let old = self.served.current();
        let quarantine = match (&policy.quarantine, &old.quarantine) {
            (Some(q), Some((was, store))) if q == was => Some(store.clone()),
            (Some(q), _) => Some(Arc::new(QuarantineStore::open(&q.dir, q.max_bytes, q.uid_salt_file.as_deref()).context("opening the quarantine store")?)),
            (None, _) => None,
        };
        let mut changes = Changes::default();
        let (mut models, mut warmups) = (BTreeMap::new(), Vec::new());
        for bundle in bundles {
            let name = bundle.name().to_string();
            let model_policy = policy.for_model(&name);
            let prev = old.get_exact(&name);
            let served = match prev {
                Some(p) if p.bundle.manifest_sha256 == bundle.manifest_sha256 => {
                    if p.policy == model_policy && same_store(p.quarantine.as_ref(), quarantine.as_ref()) {
                        changes.unchanged.push(name.clone());
                        p.clone()
                    } else {
                        changes.policy_changed.push(name.clone());
                        Arc::new(p.with_policy(model_policy, quarantine.clone())?)
                    }
                }
                _ => {
                    let campaign = prev.and_then(|p| carried_campaign(p, &bundle));
                    if campaign.is_some() {
                        changes.campaign_kept.push(name.clone());
                    }
                    let (started, warm) = ServedModel::start(bundle, self.args.serving(), model_policy, quarantine.clone(), campaign)?;
                    warmups.push(warm);
                    if prev.is_some() { &mut changes.replaced } else { &mut changes.added }.push(name.clone());
                    Arc::new(started)
                }
            };
            models.insert(name, served);
        }
        changes.removed = old.names().into_iter().filter(|n| !models.contains_key(n)).collect();
        let next = Arc::new(Registry::assemble(models, default_model, &policy, quarantine));
        // A model that cannot warm up is refused here; its workers stop with `next`.
        next.warm_up(warmups, self.args.device()).await.context("warming up the new bundles")?;
        self.served.replace(next.clone());
        self.publish(&old, &next, &changes).await;
        Ok(changes)
    }

    /// Metrics and health after the swap.
    async fn publish(&self, old: &Registry, next: &Registry, changes: &Changes) {
        for name in changes.added.iter().chain(&changes.replaced).chain(&changes.policy_changed) {
            if let Some(m) = next.get_exact(name) {
                m.publish();
            }
        }
        for name in changes.replaced.iter().chain(&changes.removed) {
            let Some(was) = old.get_exact(name) else { continue };
            let (b, now) = (&was.bundle, next.get_exact(name));
            if now.is_none_or(|n| n.bundle.manifest.version != b.manifest.version || n.bundle.classifier_sha256() != b.classifier_sha256()) {
                metrics::clear_model_info(name, &b.manifest.version, b.classifier_sha256(), b.manifest.hardening.is_some());
            }
        }
        for name in &changes.removed {
            metrics::set_model_ready(name, false);
            self.health.clone().clear_service_status(name).await;
        }
        for name in &changes.added {
            self.health.set_service_status(name, ServingStatus::Serving).await;
        }
    }
}

/// The campaign monitor a replaced bundle keeps: its predecessor's, when both watch the
/// same classifier (a new calibration goes on from the old windows where their sizes allow).
fn carried_campaign(prev: &ServedModel, bundle: &bundle::Bundle) -> Option<Arc<CampaignMonitor>> {
    let (monitor, spec) = (prev.campaign.as_ref()?, bundle.manifest.campaign.as_ref()?);
    if prev.bundle.classifier_sha256() != bundle.classifier_sha256() {
        return None;
    }
    if monitor.spec() == spec {
        return Some(monitor.clone());
    }
    Some(Arc::new(CampaignMonitor::continuing(monitor, spec.clone())))
}

fn same_store(a: Option<&Arc<QuarantineStore>>, b: Option<&Arc<QuarantineStore>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}
