//! access: who is calling, and what they may do. A caller is named by a bearer token
//! (`authorization: Bearer TOKEN`: a static token matched by its SHA-256 so the policy file
//! holds no secret, or a JWT verified against a local JWKS file, [`jwt`]) or by the
//! mutual-TLS client certificate (a DNS name in its subjectAltName); each caller has an
//! allow-list of models and RPCs and may or may not see raw scores. The rules live in the
//! policy file's `[access]` (README, "Callers").

pub mod jwt;

use serde::Deserialize;
use sha2::{Digest, Sha256};

pub use jwt::JwtConfig;

/// `[access]` of the policy file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Access {
    /// Refuse calls from callers that no rule names (UNAUTHENTICATED). Off = such calls are
    /// served as `anonymous`, with the defaults of the rest of the policy.
    pub require_caller: bool,
    /// Bearer JWTs from the hospital's identity provider, checked against a local JWKS.
    pub jwt: Option<JwtConfig>,
    pub callers: Vec<CallerRule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerRule {
    /// Name in logs, metrics and quarantine records (keep the set small: it is a label).
    pub name: String,
    /// Hex SHA-256 of the caller's bearer tokens.
    #[serde(default)]
    pub token_sha256: Vec<String>,
    /// DNS names (subjectAltName) of the caller's client certificates.
    #[serde(default)]
    pub client_cert_names: Vec<String>,
    /// Values of the JWT caller claim (`[access.jwt] caller_claim`, default `sub`) that
    /// name this caller.
    #[serde(default)]
    pub jwt_subjects: Vec<String>,
    /// Models it may call; `*` = all.
    #[serde(default = "everything")]
    pub models: Vec<String>,
    /// RPCs it may call by method name (Screen, ScreenStream, ListModels, GetModel,
    /// ModelInfer, ModelMetadata, ModelReady, ServerMetadata, ...); `*` = all.
    #[serde(default = "everything")]
    pub rpcs: Vec<String>,
    /// Sees raw detector scores and thresholds.
    #[serde(default)]
    pub scores: bool,
}

fn everything() -> Vec<String> {
    vec!["*".into()]
}

/// The identified caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    rule: Option<usize>,
}

/// Why a call was refused before it reached a model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error("unauthenticated: {0}")]
    Unauthenticated(&'static str),
    #[error("caller {caller} may not call {what}")]
    Denied { caller: String, what: String },
}

impl AccessError {
    pub fn reason(&self) -> &'static str {
        match self {
            AccessError::Unauthenticated(_) => "unauthenticated",
            AccessError::Denied { .. } => "not_allowed",
        }
    }
}

pub const ANONYMOUS: &str = "anonymous";

impl Access {
    pub fn validate(&self) -> Result<(), String> {
        let mut names = std::collections::BTreeSet::new();
        for r in &self.callers {
            if r.name.is_empty() || r.name == ANONYMOUS || !names.insert(r.name.as_str()) {
                return Err(format!("[access] caller name {:?} is empty, reserved or repeated", r.name));
            }
            if r.token_sha256.is_empty() && r.client_cert_names.is_empty() && r.jwt_subjects.is_empty() {
                return Err(format!("[access] caller {:?} has none of token_sha256, client_cert_names, jwt_subjects", r.name));
            }
            if !r.jwt_subjects.is_empty() && self.jwt.is_none() {
                return Err(format!("[access] caller {:?} lists jwt_subjects but the policy has no [access.jwt]", r.name));
            }
            if let Some(d) = r.token_sha256.iter().find(|d| d.len() != 64 || !d.bytes().all(|b| b.is_ascii_hexdigit())) {
                return Err(format!("[access] caller {:?}: token_sha256 entry {d:?} is not a hex SHA-256 digest", r.name));
            }
        }
        Ok(())
    }

    /// Reads the JWKS file of `[access.jwt]`, when there is one (start-up and reloads).
    pub fn load_keys(&mut self) -> Result<(), String> {
        self.jwt.as_mut().map_or(Ok(()), JwtConfig::load_keys)
    }

    /// Names the caller from its bearer token, else its client certificate (DER), else
    /// anonymous. A token that matches no rule is refused: it was meant to identify.
    pub fn identify(&self, authorization: Option<&[u8]>, peer_cert: Option<&[u8]>) -> Result<Caller, AccessError> {
        if let Some(value) = authorization {
            let token = value.strip_prefix(b"Bearer ").ok_or(AccessError::Unauthenticated("the authorization header is not `Bearer TOKEN`"))?;
            if let Some(jwt) = self.jwt.as_ref().filter(|_| jwt::looks_like_jwt(token)) {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                let text = std::str::from_utf8(token).map_err(|_| AccessError::Unauthenticated("the JWT is not ASCII"))?;
                let subject = jwt.verify(text, now).map_err(AccessError::Unauthenticated)?;
                let i = self.callers.iter().position(|r| r.jwt_subjects.contains(&subject));
                return i.map(|i| self.caller(i)).ok_or(AccessError::Unauthenticated("the JWT's caller claim names no caller of the policy"));
            }
            let digest = hex::encode(Sha256::digest(token));
            let i = self.callers.iter().position(|r| r.token_sha256.iter().any(|d| d.eq_ignore_ascii_case(&digest)));
            return i.map(|i| self.caller(i)).ok_or(AccessError::Unauthenticated("the bearer token is not one of the policy's"));
        }
        if let Some(der) = peer_cert {
            let der = rustls_pki_types::CertificateDer::from(der);
            if let Ok(cert) = webpki::EndEntityCert::try_from(&der) {
                let named = |n: &String| rustls_pki_types::ServerName::try_from(n.as_str()).is_ok_and(|sn| cert.verify_is_valid_for_subject_name(&sn).is_ok());
                if let Some(i) = self.callers.iter().position(|r| r.client_cert_names.iter().any(named)) {
                    return Ok(self.caller(i));
                }
            }
        }
        if self.require_caller {
            return Err(AccessError::Unauthenticated("no bearer token or known client certificate, and the policy requires one"));
        }
        Ok(Caller { name: ANONYMOUS.into(), rule: None })
    }

    fn caller(&self, i: usize) -> Caller {
        Caller { name: self.callers[i].name.clone(), rule: Some(i) }
    }

    fn rule(&self, c: &Caller) -> Option<&CallerRule> {
        c.rule.and_then(|i| self.callers.get(i))
    }

    /// May `c` call `rpc`? Anonymous callers may call everything (require_caller decides
    /// whether they get here at all).
    pub fn check_rpc(&self, c: &Caller, rpc: &str) -> Result<(), AccessError> {
        match self.rule(c) {
            Some(r) if !r.rpcs.iter().any(|x| x == "*" || x == rpc) => Err(AccessError::Denied { caller: c.name.clone(), what: format!("RPC {rpc}") }),
            _ => Ok(()),
        }
    }

    /// May `c` call `rpc`, an RPC that a rule must name (`*` does not open it)? Anonymous
    /// callers may, as for [`Access::check_rpc`].
    pub fn check_named_rpc(&self, c: &Caller, rpc: &str) -> Result<(), AccessError> {
        match self.rule(c) {
            Some(r) if !r.rpcs.iter().any(|x| x == rpc) => Err(AccessError::Denied { caller: c.name.clone(), what: format!("RPC {rpc}") }),
            _ => Ok(()),
        }
    }

    pub fn check_model(&self, c: &Caller, model: &str) -> Result<(), AccessError> {
        match self.rule(c) {
            Some(r) if !r.models.iter().any(|x| x == "*" || x == model) => Err(AccessError::Denied { caller: c.name.clone(), what: format!("model {model}") }),
            _ => Ok(()),
        }
    }

    /// Whether the caller's rule opens raw scores (the [disclosure] rules apply as well).
    pub fn shows_scores(&self, c: &Caller) -> bool {
        self.rule(c).is_some_and(|r| r.scores)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(toml_text: &str) -> Access {
        let a: Access = toml::from_str(toml_text).unwrap();
        a.validate().unwrap();
        a
    }

    #[test]
    fn tokens_name_callers_and_rules_limit_them() {
        let digest = hex::encode(Sha256::digest(b"s3cret"));
        let a =
            access(&format!("require_caller = true\n[[callers]]\nname = \"pacs\"\ntoken_sha256 = [\"{digest}\"]\nmodels = [\"chest\"]\nrpcs = [\"Screen\"]\n"));
        let c = a.identify(Some(b"Bearer s3cret"), None).unwrap();
        assert_eq!(c.name, "pacs");
        assert!(a.check_rpc(&c, "Screen").is_ok() && a.check_model(&c, "chest").is_ok());
        assert_eq!(a.check_rpc(&c, "ModelInfer").unwrap_err().reason(), "not_allowed");
        assert!(a.check_model(&c, "derm").is_err());
        assert!(!a.shows_scores(&c));
        assert_eq!(a.identify(Some(b"Bearer wrong"), None).unwrap_err().reason(), "unauthenticated");
        assert_eq!(a.identify(Some(b"Basic abc"), None).unwrap_err().reason(), "unauthenticated");
        assert_eq!(a.identify(None, None).unwrap_err().reason(), "unauthenticated", "required");
        let open = access("");
        assert_eq!(open.identify(None, None).unwrap().name, ANONYMOUS);
    }

    #[test]
    fn bad_rules_are_refused() {
        for bad in [
            "[[callers]]\nname = \"x\"\n",
            "[[callers]]\nname = \"anonymous\"\ntoken_sha256 = []\nclient_cert_names = [\"a\"]\n",
            "[[callers]]\nname = \"x\"\ntoken_sha256 = [\"abc\"]\n",
        ] {
            let a: Access = toml::from_str(bad).unwrap();
            assert!(a.validate().is_err(), "{bad}");
        }
    }
}
