//! policy: what happens to a flagged input, per model, from the `--policy` TOML file,
//! validated at start-up (unknown keys, unknown models and a quarantine action without a
//! quarantine folder all stop the process with a message).
//!
//! ```toml
//! [default]                       # every model not listed below
//! action = "annotate"             # annotate | reject | quarantine
//! flag_on = "adversarial"         # adversarial | suspicious (SUSPICIOUS and ADVERSARIAL)
//! on_failure = "fail_closed"      # a detector that cannot score, a quarantine that cannot write
//! shadow = false                  # record what the policy would do, change no answer
//! after_quarantine = "annotate"   # action = quarantine: then annotate or reject
//! disable_detectors = []          # bundle detectors not to run, e.g. ["feature-squeezing"]
//!
//! [models."chest-xray-pneumonia"]
//! action = "quarantine"
//! after_quarantine = "reject"
//!
//! [quarantine]
//! dir = "/var/lib/medsentry/quarantine"
//! max_bytes = 1073741824
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use super::Verdict;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Answer with the verdict; the caller decides.
    Annotate,
    /// Refuse flagged inputs with PERMISSION_DENIED and the detectors that fired.
    Reject,
    /// Keep flagged inputs in the quarantine store, then annotate or reject.
    Quarantine,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Answer anyway, saying what could not be done.
    FailOpen,
    /// Refuse the request (UNAVAILABLE) rather than answer unscreened or lose a flagged input.
    FailClosed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlagOn {
    Adversarial,
    Suspicious,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AfterQuarantine {
    Annotate,
    Reject,
}

/// One model's policy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelPolicy {
    pub action: Action,
    pub flag_on: FlagOn,
    pub on_failure: FailureMode,
    pub shadow: bool,
    pub after_quarantine: AfterQuarantine,
    /// Bundle detectors not to run (e.g. feature squeezing, which triples the forward work);
    /// a name the bundle does not have stops start-up.
    pub disable_detectors: Vec<String>,
}

impl Default for ModelPolicy {
    /// Without a policy file: answer with the verdict, and never answer as screened what
    /// a detector could not score.
    fn default() -> Self {
        ModelPolicy {
            action: Action::Annotate,
            flag_on: FlagOn::Adversarial,
            on_failure: FailureMode::FailClosed,
            shadow: false,
            after_quarantine: AfterQuarantine::Annotate,
            disable_detectors: Vec::new(),
        }
    }
}

impl ModelPolicy {
    pub fn is_flagged(&self, verdict: Verdict) -> bool {
        let min = match self.flag_on {
            FlagOn::Adversarial => Verdict::Adversarial.rank(),
            FlagOn::Suspicious => Verdict::Suspicious.rank(),
        };
        verdict.rank() >= min
    }

    pub fn quarantines(&self) -> bool {
        self.action == Action::Quarantine
    }

    /// Whether a flagged input is refused (before shadow mode is applied).
    pub fn rejects(&self) -> bool {
        self.action == Action::Reject || (self.action == Action::Quarantine && self.after_quarantine == AfterQuarantine::Reject)
    }
}

/// A `[models.NAME]` table: what it sets replaces the `[default]` value.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelOverride {
    action: Option<Action>,
    flag_on: Option<FlagOn>,
    on_failure: Option<FailureMode>,
    shadow: Option<bool>,
    after_quarantine: Option<AfterQuarantine>,
    disable_detectors: Option<Vec<String>>,
}

impl ModelOverride {
    fn over(&self, d: &ModelPolicy) -> ModelPolicy {
        ModelPolicy {
            action: self.action.unwrap_or(d.action),
            flag_on: self.flag_on.unwrap_or(d.flag_on),
            on_failure: self.on_failure.unwrap_or(d.on_failure),
            shadow: self.shadow.unwrap_or(d.shadow),
            after_quarantine: self.after_quarantine.unwrap_or(d.after_quarantine),
            disable_detectors: self.disable_detectors.clone().unwrap_or_else(|| d.disable_detectors.clone()),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineConfig {
    /// Folder of the store (created if missing).
    pub dir: PathBuf,
    /// Cap on the store's size; the oldest entries are evicted to make room.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
}

fn default_max_bytes() -> u64 {
    1 << 30
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub default: ModelPolicy,
    #[serde(default)]
    pub models: BTreeMap<String, ModelOverride>,
    pub quarantine: Option<QuarantineConfig>,
}

#[derive(Debug, Error)]
pub enum PolicyError {
    #[error("policy file {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("policy file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Policy {
    pub fn load(path: &Path, served: &[String]) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError::Read { path: path.into(), message: e.to_string() })?;
        let policy: Policy = toml::from_str(&text).map_err(|e| PolicyError::Invalid { path: path.into(), message: e.to_string() })?;
        policy.validate(served).map_err(|message| PolicyError::Invalid { path: path.into(), message })?;
        Ok(policy)
    }

    pub fn validate(&self, served: &[String]) -> Result<(), String> {
        if let Some(name) = self.models.keys().find(|n| !served.contains(n)) {
            return Err(format!("[models.{name:?}] names a model this sidecar does not serve (serving {served:?})"));
        }
        let quarantining = self.default.quarantines() || self.models.keys().any(|n| self.for_model(n).quarantines());
        match &self.quarantine {
            None if quarantining => Err("action = \"quarantine\" needs a [quarantine] table with dir".into()),
            Some(q) if q.max_bytes < 64 * 1024 => Err(format!("[quarantine] max_bytes {} is below 64 KiB", q.max_bytes)),
            Some(q) if q.dir.as_os_str().is_empty() => Err("[quarantine] dir is empty".into()),
            _ => Ok(()),
        }
    }

    pub fn for_model(&self, name: &str) -> ModelPolicy {
        self.models.get(name).map_or_else(|| self.default.clone(), |o| o.over(&self.default))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Policy, String> {
        let p: Policy = toml::from_str(text).map_err(|e| e.to_string())?;
        p.validate(&["m".to_string()])?;
        Ok(p)
    }

    #[test]
    fn defaults_and_per_model_overrides() {
        let p = parse("[default]\naction = \"reject\"\ndisable_detectors = [\"a\"]\n[models.m]\nshadow = true\nflag_on = \"suspicious\"\n").unwrap();
        assert_eq!(p.for_model("other").action, Action::Reject);
        let m = p.for_model("m");
        // A model table changes only what it sets.
        assert_eq!(m.action, Action::Reject);
        assert!(m.shadow && m.is_flagged(Verdict::Suspicious) && !m.is_flagged(Verdict::Clean));
        assert!(!ModelPolicy::default().is_flagged(Verdict::Suspicious));
        assert_eq!(m.disable_detectors, ["a"], "inherited from [default]");
    }

    #[test]
    fn invalid_files_are_refused_with_the_reason() {
        assert!(parse("[default]\naction = \"drop\"\n").unwrap_err().contains("unknown variant"));
        assert!(parse("[default]\nactoin = \"reject\"\n").unwrap_err().contains("unknown field"));
        assert!(parse("[models.x]\naction = \"reject\"\n").unwrap_err().contains("does not serve"));
        assert!(parse("[default]\naction = \"quarantine\"\n").unwrap_err().contains("[quarantine]"));
        let q = parse("[default]\naction = \"quarantine\"\nafter_quarantine = \"reject\"\n[quarantine]\ndir = \"/q\"\n").unwrap();
        assert!(q.default.quarantines() && q.default.rejects());
        assert_eq!(q.quarantine.unwrap().max_bytes, 1 << 30);
    }
}
