//! Detached ed25519 signatures over a bundle's `bundle.toml`. The manifest lists the
//! sha256 of every file the sidecar loads, so a valid signature over its exact bytes
//! covers the whole bundle: editing a model and its checksum together, which the checksums
//! alone cannot catch, breaks the signature.
//!
//! The signature is 64 raw bytes in `bundle.toml.sig`, the format OpenSSL writes
//! (`openssl pkeyutl -sign -rawin -inkey key.pem -in bundle.toml -out bundle.toml.sig`), so
//! an operator can sign with `medsentry bundle sign` or with OpenSSL alone. Keys are PEM:
//! PKCS#8 private keys and SubjectPublicKeyInfo public keys, as `openssl genpkey -algorithm
//! ed25519` and `openssl pkey -pubout` write them.

use std::path::{Path, PathBuf};

use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};

use super::BundleError;

/// File beside bundle.toml that holds its signature.
pub const SIGNATURE_FILE: &str = "bundle.toml.sig";

/// DER prefix of an ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE { SEQUENCE { OID
/// 1.3.101.112 }, BIT STRING (33 bytes) }, followed by the 32 key bytes.
const SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// One public key the operator trusts to sign bundles.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    /// The file it came from, named in refusals.
    pub path: PathBuf,
    /// The raw 32-byte ed25519 public key.
    pub key: [u8; 32],
}

impl TrustedKey {
    /// Reads a PEM "PUBLIC KEY" (ed25519 SubjectPublicKeyInfo).
    pub fn load(path: &Path) -> Result<TrustedKey, String> {
        let spki = SubjectPublicKeyInfoDer::from_pem_file(path).map_err(|e| format!("trusted key {}: {e}", path.display()))?;
        let der = spki.as_ref();
        match der.strip_prefix(&SPKI_PREFIX[..]) {
            Some(key) if key.len() == 32 => Ok(TrustedKey { path: path.to_path_buf(), key: key.try_into().expect("32 bytes") }),
            _ => Err(format!("trusted key {}: not an ed25519 public key (expected the PEM `openssl pkey -pubout` writes)", path.display())),
        }
    }

    /// A short fingerprint for logs: the first 8 bytes of the key's sha256, in hex.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(&Sha256::digest(self.key)[..8])
    }
}

/// Checks `signature` over `manifest` against every trusted key; Ok names the key that
/// verified it.
pub fn verify<'k>(bundle: &str, manifest: &[u8], signature: Option<&[u8]>, keys: &'k [TrustedKey]) -> Result<&'k TrustedKey, BundleError> {
    let signature = signature.ok_or_else(|| BundleError::Unsigned(bundle.to_string()))?;
    if signature.len() != 64 {
        return Err(BundleError::BadSignature {
            bundle: bundle.to_string(),
            reason: format!("{SIGNATURE_FILE} holds {} bytes, an ed25519 signature is 64", signature.len()),
        });
    }
    keys.iter().find(|k| UnparsedPublicKey::new(&ED25519, k.key).verify(manifest, signature).is_ok()).ok_or_else(|| {
        let tried: Vec<String> = keys.iter().map(|k| format!("{} ({})", k.path.display(), k.fingerprint())).collect();
        BundleError::BadSignature {
            bundle: bundle.to_string(),
            reason: format!(
                "bundle.toml does not verify against any trusted key [{}]: it was changed after signing or signed with another key",
                tried.join(", ")
            ),
        }
    })
}

/// A new signing key: (PKCS#8 private key PEM, SubjectPublicKeyInfo public key PEM).
pub fn generate_key() -> Result<(String, String), String> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| format!("generating a key: {e}"))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|e| format!("reading the new key: {e}"))?;
    let mut spki = SPKI_PREFIX.to_vec();
    spki.extend_from_slice(pair.public_key().as_ref());
    Ok((pem("PRIVATE KEY", pkcs8.as_ref()), pem("PUBLIC KEY", &spki)))
}

/// Signs `manifest` with the PKCS#8 PEM private key at `key_path` (ours or OpenSSL's).
pub fn sign(key_path: &Path, manifest: &[u8]) -> Result<[u8; 64], String> {
    let der = PrivatePkcs8KeyDer::from_pem_file(key_path).map_err(|e| format!("signing key {}: {e}", key_path.display()))?;
    // OpenSSL writes PKCS#8 v1 (no public key inside); ring's own keys are v2.
    let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
        .map_err(|e| format!("signing key {}: not an ed25519 PKCS#8 key ({e})", key_path.display()))?;
    Ok(pair.sign(manifest).as_ref().try_into().expect("ed25519 signatures are 64 bytes"))
}

/// PEM armour, 64 base64 characters per line.
fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn a_signature_verifies_only_the_bytes_it_signed_and_only_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = generate_key().unwrap();
        let (_, other_public) = generate_key().unwrap();
        let key = write(dir.path(), "k.pem", &private);
        let trusted = vec![TrustedKey::load(&write(dir.path(), "k.pub", &public)).unwrap()];
        let other = vec![TrustedKey::load(&write(dir.path(), "o.pub", &other_public)).unwrap()];
        let manifest = b"name = \"x\"\n";
        let sig = sign(&key, manifest).unwrap();
        assert!(verify("x", manifest, Some(&sig), &trusted).is_ok());
        assert!(matches!(verify("x", b"name = \"y\"\n", Some(&sig), &trusted), Err(BundleError::BadSignature { .. })));
        assert!(matches!(verify("x", manifest, Some(&sig), &other), Err(BundleError::BadSignature { .. })));
        assert!(matches!(verify("x", manifest, None, &trusted), Err(BundleError::Unsigned(_))));
        assert!(matches!(verify("x", manifest, Some(&sig[..63]), &trusted), Err(BundleError::BadSignature { .. })));
        // Any trusted key may have signed (rotation: old and new keys trusted together).
        let both: Vec<TrustedKey> = other.into_iter().chain(trusted).collect();
        assert!(verify("x", manifest, Some(&sig), &both).is_ok());
    }

    #[test]
    fn a_private_key_is_not_a_trusted_key() {
        let dir = tempfile::tempdir().unwrap();
        let (private, _) = generate_key().unwrap();
        let err = TrustedKey::load(&write(dir.path(), "k.pem", &private)).unwrap_err();
        assert!(err.contains("k.pem"), "{err}");
    }
}
