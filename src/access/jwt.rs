//! jwt: bearer tokens issued by the hospital's identity provider (Keycloak, Entra ID, ...),
//! verified against a local JWKS file. Nothing is fetched over the network, so an
//! unreachable or impersonated key endpoint cannot change who may call; a rotation is the
//! new JWKS file plus a reload.
//!
//! RS256, ES256 and EdDSA (Ed25519). A key is only used with the algorithm its type implies
//! (an RSA key never verifies an HS256 or ES256 token: no `alg` confusion, never `none`);
//! `exp` is required, `nbf` honoured, both with `leeway_secs` of clock skew; `iss` must equal
//! the policy's issuer and `aud` (a string or a list) must contain its audience. The
//! caller's name comes from `caller_claim` (default `sub`), matched against the rules'
//! `jwt_subjects`.

use std::path::PathBuf;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::Deserialize;

/// `[access.jwt]` of the policy file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// The identity provider's published keys (a JWKS document), saved locally.
    pub jwks_file: PathBuf,
    /// Required value of `iss`.
    pub issuer: String,
    /// Required among the values of `aud`.
    pub audience: String,
    /// Claim whose (string) value names the caller.
    #[serde(default = "default_claim")]
    pub caller_claim: String,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// The keys read from `jwks_file` ([`JwtConfig::load_keys`]).
    #[serde(skip)]
    keys: Vec<Key>,
}

fn default_claim() -> String {
    "sub".into()
}

fn default_leeway() -> u64 {
    60
}

#[derive(Debug, Clone)]
struct Key {
    kid: Option<String>,
    material: Material,
}

#[derive(Debug, Clone)]
enum Material {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed SEC1 point (0x04 || x || y).
    P256(Vec<u8>),
    Ed25519(Vec<u8>),
}

impl Material {
    /// The one JWS algorithm this key verifies.
    fn alg(&self) -> &'static str {
        match self {
            Material::Rsa { .. } => "RS256",
            Material::P256(_) => "ES256",
            Material::Ed25519(_) => "EdDSA",
        }
    }

    fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        match self {
            Material::Rsa { n, e } => RsaPublicKeyComponents { n, e }.verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, sig).is_ok(),
            Material::P256(point) => UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point).verify(message, sig).is_ok(),
            Material::Ed25519(x) => UnparsedPublicKey::new(&signature::ED25519, x).verify(message, sig).is_ok(),
        }
    }
}

/// One JWK as published; fields of other key types are ignored.
#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
    alg: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

fn b64(field: Option<&String>, what: &str) -> Result<Vec<u8>, String> {
    let text = field.ok_or_else(|| format!("a JWK lacks {what}"))?;
    URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).map_err(|e| format!("JWK {what}: {e}"))
}

impl Jwk {
    /// The key, None for keys this module does not use (encryption keys, other curves).
    fn key(&self) -> Result<Option<Key>, String> {
        if self.usage.as_deref().is_some_and(|u| u != "sig") {
            return Ok(None);
        }
        let material = match (self.kty.as_str(), self.crv.as_deref()) {
            ("RSA", _) => Material::Rsa { n: b64(self.n.as_ref(), "n")?, e: b64(self.e.as_ref(), "e")? },
            ("EC", Some("P-256")) => {
                let (x, y) = (b64(self.x.as_ref(), "x")?, b64(self.y.as_ref(), "y")?);
                if x.len() != 32 || y.len() != 32 {
                    return Err("a P-256 JWK's x and y must be 32 bytes".into());
                }
                Material::P256([&[4u8][..], &x, &y].concat())
            }
            ("OKP", Some("Ed25519")) => Material::Ed25519(b64(self.x.as_ref(), "x")?),
            _ => return Ok(None),
        };
        if self.alg.as_deref().is_some_and(|a| a != material.alg()) {
            return Ok(None);
        }
        Ok(Some(Key { kid: self.kid.clone(), material }))
    }
}

/// Why a JWT was refused (the text goes back in UNAUTHENTICATED).
pub type Refusal = &'static str;

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
}

impl JwtConfig {
    /// Reads and parses `jwks_file`; a file without any usable signing key is an error.
    pub fn load_keys(&mut self) -> Result<(), String> {
        let file = self.jwks_file.display();
        let text = std::fs::read(&self.jwks_file).map_err(|e| format!("[access.jwt] jwks_file {file}: {e}"))?;
        let jwks: Jwks = serde_json::from_slice(&text).map_err(|e| format!("[access.jwt] jwks_file {file}: not a JWKS document: {e}"))?;
        let keys: Vec<Key> = jwks
            .keys
            .iter()
            .map(Jwk::key)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("[access.jwt] jwks_file {file}: {e}"))?
            .into_iter()
            .flatten()
            .collect();
        if keys.is_empty() {
            return Err(format!("[access.jwt] jwks_file {file} holds no RS256, ES256 or EdDSA signing key"));
        }
        self.keys = keys;
        Ok(())
    }

    /// Verifies `token` at `now` (seconds since the epoch); the caller claim's value.
    pub fn verify(&self, token: &str, now: u64) -> Result<String, Refusal> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err("the bearer token is not a JWT (header.payload.signature)");
        };
        let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).map_err(|_| "the JWT is not base64url");
        let header: Header = serde_json::from_slice(&decode(h)?).map_err(|_| "the JWT header is not JSON with alg")?;
        let sig = decode(s)?;
        let mut candidates = self.keys.iter().filter(|k| k.material.alg() == header.alg && (header.kid.is_none() || k.kid == header.kid));
        let message = &token.as_bytes()[..h.len() + 1 + p.len()];
        if !candidates.any(|k| k.material.verify(message, &sig)) {
            return Err(if ["RS256", "ES256", "EdDSA"].contains(&header.alg.as_str()) {
                "the JWT's signature does not verify with any key of the JWKS file"
            } else {
                "the JWT's algorithm is not RS256, ES256 or EdDSA"
            });
        }
        let claims: serde_json::Value = serde_json::from_slice(&decode(p)?).map_err(|_| "the JWT payload is not JSON")?;
        let time = |name: &str| claims.get(name).map(|v| v.as_u64().ok_or("the JWT's exp or nbf is not a number of seconds"));
        let exp = time("exp").ok_or("the JWT has no exp")??;
        if now > exp.saturating_add(self.leeway_secs) {
            return Err("the JWT has expired");
        }
        if let Some(nbf) = time("nbf").transpose()? {
            if now.saturating_add(self.leeway_secs) < nbf {
                return Err("the JWT is not valid yet (nbf)");
            }
        }
        if claims.get("iss").and_then(|v| v.as_str()) != Some(self.issuer.as_str()) {
            return Err("the JWT's issuer is not the policy's");
        }
        let audience = match claims.get("aud") {
            Some(serde_json::Value::String(a)) => a == &self.audience,
            Some(serde_json::Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(self.audience.as_str())),
            _ => false,
        };
        if !audience {
            return Err("the JWT's audience does not include the policy's");
        }
        claims.get(&self.caller_claim).and_then(|v| v.as_str()).map(str::to_string).ok_or("the JWT lacks the caller claim the policy names")
    }
}

/// Whether a bearer token has the shape of a JWT (three base64url parts), so that a static
/// token is never parsed as one.
pub fn looks_like_jwt(token: &[u8]) -> bool {
    token.iter().filter(|&&b| b == b'.').count() == 2 && token.starts_with(b"eyJ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    fn enc(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn token(alg: &str, kid: &str, claims: &serde_json::Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
        let head = enc(serde_json::json!({"alg": alg, "kid": kid, "typ": "JWT"}).to_string().as_bytes());
        let body = enc(claims.to_string().as_bytes());
        let message = format!("{head}.{body}");
        format!("{message}.{}", enc(&sign(message.as_bytes())))
    }

    fn config(jwks: serde_json::Value) -> JwtConfig {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, jwks.to_string()).unwrap();
        let mut c: JwtConfig = toml::from_str(&format!("jwks_file = {:?}\nissuer = \"idp\"\naudience = \"medsentry\"\n", path.display().to_string())).unwrap();
        c.load_keys().unwrap();
        c
    }

    #[test]
    fn es256_and_eddsa_tokens_verify_and_their_claims_are_checked() {
        let rng = SystemRandom::new();
        let ec = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap().as_ref(),
            &rng,
        )
        .unwrap();
        let ed = Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref()).unwrap();
        let point = ec.public_key().as_ref();
        let jwks = serde_json::json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "ec1", "use": "sig", "x": enc(&point[1..33]), "y": enc(&point[33..])},
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed1", "x": enc(ed.public_key().as_ref())},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
        ]});
        let c = config(jwks);
        let es = |m: &[u8]| ec.sign(&rng, m).unwrap().as_ref().to_vec();
        let eds = |m: &[u8]| ed.sign(m).as_ref().to_vec();
        let now = 1_800_000_000;
        let good = serde_json::json!({"iss": "idp", "aud": ["other", "medsentry"], "sub": "pacs", "exp": now + 300});
        assert_eq!(c.verify(&token("ES256", "ec1", &good, es), now), Ok("pacs".into()));
        assert_eq!(c.verify(&token("EdDSA", "ed1", &good, eds), now), Ok("pacs".into()));
        // Claimed algorithm or kid of another key; a tampered payload; none.
        assert!(c.verify(&token("EdDSA", "ec1", &good, es), now).unwrap_err().contains("signature"));
        assert!(c.verify(&token("HS256", "ec1", &good, es), now).unwrap_err().contains("algorithm"));
        let t = token("ES256", "ec1", &good, es);
        let (head, rest) = t.split_once('.').unwrap();
        let forged = format!(
            "{head}.{}.{}",
            enc(serde_json::json!({"iss": "idp", "aud": "medsentry", "sub": "admin", "exp": now + 300}).to_string().as_bytes()),
            rest.split_once('.').unwrap().1
        );
        assert!(c.verify(&forged, now).unwrap_err().contains("signature"));
        let none = format!("{}.{}.", enc(br#"{"alg":"none"}"#), enc(good.to_string().as_bytes()));
        assert!(c.verify(&none, now).is_err());
        // Time, issuer, audience, claim.
        let with = |patch: serde_json::Value| {
            let mut claims = good.clone();
            claims.as_object_mut().unwrap().extend(patch.as_object().unwrap().clone());
            c.verify(&token("ES256", "ec1", &claims, es), now)
        };
        assert_eq!(with(serde_json::json!({"exp": now - 61})), Err("the JWT has expired"));
        assert!(with(serde_json::json!({"exp": now - 30})).is_ok(), "within the leeway");
        assert_eq!(with(serde_json::json!({"nbf": now + 120})), Err("the JWT is not valid yet (nbf)"));
        assert_eq!(with(serde_json::json!({"iss": "elsewhere"})), Err("the JWT's issuer is not the policy's"));
        assert_eq!(with(serde_json::json!({"aud": "medsentry-dev"})), Err("the JWT's audience does not include the policy's"));
        assert_eq!(with(serde_json::json!({"sub": 7})), Err("the JWT lacks the caller claim the policy names"));
        let mut no_exp = good.clone();
        no_exp.as_object_mut().unwrap().remove("exp");
        assert_eq!(c.verify(&token("ES256", "ec1", &no_exp, es), now), Err("the JWT has no exp"));
        assert!(looks_like_jwt(token("ES256", "ec1", &good, es).as_bytes()) && !looks_like_jwt(b"s3cret.token.value"));
    }

    #[test]
    fn a_jwks_without_usable_keys_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#).unwrap();
        let mut c: JwtConfig = toml::from_str(&format!("jwks_file = {:?}\nissuer = \"i\"\naudience = \"a\"\n", path.display().to_string())).unwrap();
        assert!(c.load_keys().unwrap_err().contains("no RS256, ES256 or EdDSA"));
    }
}
