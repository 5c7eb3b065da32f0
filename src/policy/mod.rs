//! policy: what happens to a flagged input, per model, from the `--policy` TOML file,
//! validated at start-up (unknown keys, unknown models and a quarantine action without a
//! quarantine folder all stop the process with a message), and its enforcement on each
//! screened input ([`enforce`]), whose refusals are a [`Refusal`].
//!
//! ```toml
//! [default]                       # every model not listed below
//! action = "annotate"             # annotate | reject | quarantine
//! flag_on = "adversarial"         # adversarial | suspicious (SUSPICIOUS and ADVERSARIAL)
//! on_failure = "fail_closed"      # a detector that cannot score, a quarantine that cannot write
//! shadow = false                  # record what the policy would do, change no answer
//! after_quarantine = "annotate"   # action = quarantine: then annotate or reject
//! disable_detectors = []          # bundle detectors not to run, e.g. ["feature-squeezing"]
//! out_of_distribution = "annotate" # OUT_OF_DISTRIBUTION inputs: annotate | reject | quarantine
//! cascade = false                 # feature squeezing only where the cheap fused score is unsure
//!
//! [models."chest-xray-pneumonia"]
//! action = "quarantine"
//! after_quarantine = "reject"
//!
//! [quarantine]
//! dir = "/var/lib/medsentry/quarantine"
//! max_bytes = 1073741824
//! uid_salt_file = "/etc/medsentry/uid-salt"   # default: <dir>/uid-salt, made on first start
//!
//! [disclosure]                    # what callers see of the detectors
//! scores = "hidden"               # hidden (default) | all
//! score_token_sha256 = []         # hex SHA-256 of tokens whose holders see scores anyway
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::defense::Verdict;

pub mod enforce;
mod refusal;

pub use enforce::{enforce, Enforced, Origin, Subject};
pub use refusal::{Refusal, Rejection};

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
    /// What happens to an OUT_OF_DISTRIBUTION input (a misrouted study, a photograph): not
    /// an attack, so it has its own action; `flag_on` does not apply to it.
    pub out_of_distribution: Action,
    /// Run feature squeezing (two extra forward passes) only for inputs the bundle's cheap
    /// fused score cannot call clean (README "Cascade"); start-up stops when the bundle has
    /// no cascade.
    pub cascade: bool,
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
            out_of_distribution: Action::Annotate,
            cascade: false,
        }
    }
}

impl ModelPolicy {
    /// The action for an input with this verdict; None when the verdict is not flagged.
    pub fn action_for(&self, verdict: Verdict) -> Option<Action> {
        match verdict {
            Verdict::OutOfDistribution => Some(self.out_of_distribution),
            v => self.is_flagged(v).then_some(self.action),
        }
    }

    /// Whether an attack verdict is flagged (`flag_on`); OUT_OF_DISTRIBUTION never is.
    pub fn is_flagged(&self, verdict: Verdict) -> bool {
        if verdict == Verdict::OutOfDistribution {
            return false;
        }
        let min = match self.flag_on {
            FlagOn::Adversarial => Verdict::Adversarial.rank(),
            FlagOn::Suspicious => Verdict::Suspicious.rank(),
        };
        verdict.rank() >= min
    }

    /// Whether any verdict is quarantined (a quarantine folder is then required).
    pub fn quarantines(&self) -> bool {
        self.action == Action::Quarantine || self.out_of_distribution == Action::Quarantine
    }

    /// Whether an input handled with `action` is refused (before shadow mode is applied).
    pub fn rejects(&self, action: Action) -> bool {
        action == Action::Reject || (action == Action::Quarantine && self.after_quarantine == AfterQuarantine::Reject)
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
    out_of_distribution: Option<Action>,
    cascade: Option<bool>,
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
            out_of_distribution: self.out_of_distribution.unwrap_or(d.out_of_distribution),
            cascade: self.cascade.unwrap_or(d.cascade),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineConfig {
    /// Folder of the store (created if missing).
    pub dir: PathBuf,
    /// Cap on the store's size; the oldest entries are evicted to make room.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Secret keying the UID replacement of de-identified DICOM (at least 16 bytes);
    /// unset: `uid-salt` in `dir`, generated on first start.
    pub uid_salt_file: Option<PathBuf>,
}

fn default_max_bytes() -> u64 {
    1 << 30
}

/// Who sees raw detector scores and thresholds in answers. They are what a score-based
/// attacker needs to tune an input until it slips under every detector, so by default
/// callers get the verdict, which detectors fired and the policy's action; metrics, logs
/// and the quarantine keep the scores.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Disclosure {
    pub scores: ScoreAccess,
    /// Hex SHA-256 digests of tokens: a caller sending one of the tokens in the
    /// `medsentry-score-token` header sees scores (e.g. the operator's evaluation jobs).
    pub score_token_sha256: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoreAccess {
    /// Only holders of a listed token.
    #[default]
    Hidden,
    /// Every caller (a closed network where no caller is an attacker).
    All,
}

impl Disclosure {
    /// Whether a caller presenting `token` (the header's value, if any) sees scores.
    pub fn shows_scores(&self, token: Option<&[u8]>) -> bool {
        if self.scores == ScoreAccess::All {
            return true;
        }
        let Some(token) = token.filter(|t| !t.is_empty()) else { return false };
        use sha2::Digest;
        let digest = hex::encode(sha2::Sha256::digest(token));
        self.score_token_sha256.iter().any(|d| d.eq_ignore_ascii_case(&digest))
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub default: ModelPolicy,
    #[serde(default)]
    pub models: BTreeMap<String, ModelOverride>,
    pub quarantine: Option<QuarantineConfig>,
    #[serde(default)]
    pub disclosure: Disclosure,
    #[serde(default)]
    pub access: crate::access::Access,
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
        Policy::parse(&text, served).map_err(|message| PolicyError::Invalid { path: path.into(), message })
    }

    /// Parses and validates a policy file's text for a sidecar serving `served`.
    pub fn parse(text: &str, served: &[String]) -> Result<Policy, String> {
        let mut policy: Policy = toml::from_str(text).map_err(|e| e.to_string())?;
        policy.access.load_keys()?;
        policy.validate(served)?;
        Ok(policy)
    }

    pub fn validate(&self, served: &[String]) -> Result<(), String> {
        self.access.validate()?;
        if let Some(name) = self.models.keys().find(|n| !served.contains(n)) {
            return Err(format!("[models.{name:?}] names a model this sidecar does not serve (serving {served:?})"));
        }
        if let Some(d) = self.disclosure.score_token_sha256.iter().find(|d| d.len() != 64 || !d.bytes().all(|b| b.is_ascii_hexdigit())) {
            return Err(format!(
                "[disclosure] score_token_sha256 entry {d:?} is not a hex SHA-256 digest (64 hex digits, e.g. from `printf %s TOKEN | sha256sum`)"
            ));
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
        assert!(q.default.quarantines() && q.default.rejects(q.default.action));
        assert_eq!(q.quarantine.unwrap().max_bytes, 1 << 30);
        assert!(parse("[disclosure]\nscore_token_sha256 = [\"abc\"]\n").unwrap_err().contains("not a hex SHA-256"));
        assert!(parse("[disclosure]\nscores = \"some\"\n").unwrap_err().contains("unknown variant"));
    }

    #[test]
    fn scores_are_hidden_unless_the_policy_or_a_listed_token_shows_them() {
        assert!(!Policy::default().disclosure.shows_scores(None));
        // sha256("letmein")
        let digest = "1c8bfe8f801d79745c4631d09fff36c82aa37fc4cce4fc946683d7b336b63032";
        let p = parse(&format!("[disclosure]\nscore_token_sha256 = [\"{}\"]\n", digest.to_uppercase())).unwrap();
        assert!(p.disclosure.shows_scores(Some(b"letmein")));
        assert!(!p.disclosure.shows_scores(Some(b"letmeout")) && !p.disclosure.shows_scores(Some(b"")) && !p.disclosure.shows_scores(None));
        assert!(parse("[disclosure]\nscores = \"all\"\n").unwrap().disclosure.shows_scores(None));
    }
}
