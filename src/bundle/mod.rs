//! bundle: loads and verifies model bundles (`models/NAME/`), the contract between the
//! offline pipeline and the sidecar. A bundle whose files do not match their sha256, whose
//! manifest is incomplete or whose detectors lack thresholds is refused at start-up; the
//! graph itself is checked against the input spec when the engine opens it.

mod error;
mod kinds;
mod manifest;
mod signature;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use error::BundleError;
pub use kinds::{detector_kinds, is_known_kind, DetectorKind};
pub use manifest::{Accepts, CampaignSpec, ColorMode, DetectorSpec, Hardening, InputSpec, Layout, Manifest, OodSpec, OutputSpec, ScoreKind};
pub use signature::{generate_key, sign, TrustedKey, SIGNATURE_FILE};

include!(concat!(env!("OUT_DIR"), "/embedded_bundle.rs"));

/// A verified bundle, its files held in memory (they are a few MB).
#[derive(Debug, Clone)]
pub struct Bundle {
    pub manifest: Manifest,
    /// Where it was loaded from, or None for the bundle embedded in the binary.
    pub dir: Option<PathBuf>,
    /// File name -> contents, for every file listed in `[files]`.
    pub files: BTreeMap<String, Vec<u8>>,
    /// Fingerprint of the trusted key whose signature verified bundle.toml; None when no
    /// trusted keys were given (signatures are then not read).
    pub signed_by: Option<String>,
    /// SHA-256 of bundle.toml's bytes: it lists every file's digest, so equal digests mean
    /// the same bundle (a reload keeps such a model's workers and queue).
    pub manifest_sha256: String,
}

impl Bundle {
    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    pub fn classifier(&self) -> &[u8] {
        &self.files["classifier.onnx"]
    }

    pub fn classifier_sha256(&self) -> &str {
        &self.manifest.files["classifier.onnx"]
    }

    /// Loads `dir/bundle.toml` and every file it lists, verifying their checksums and,
    /// when `trusted` is not empty, the manifest's signature before any file is read.
    pub fn load_dir(dir: &Path, trusted: &[TrustedKey]) -> Result<Bundle, BundleError> {
        let toml_path = dir.join("bundle.toml");
        let text = read(&toml_path)?;
        let signed_by = if trusted.is_empty() {
            None
        } else {
            let name = parse_manifest(&text, &toml_path)?.name;
            let sig_path = dir.join(SIGNATURE_FILE);
            let sig = match std::fs::read(&sig_path) {
                Ok(bytes) => Some(bytes),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(BundleError::Io { path: sig_path, source: e }),
            };
            Some(signature::verify(&name, &text, sig.as_deref(), trusted)?.fingerprint())
        };
        let files = |name: &str| read(&dir.join(name));
        let mut bundle = Self::from_parts(&text, Some(dir.to_path_buf()), &toml_path, files)?;
        bundle.signed_by = signed_by;
        Ok(bundle)
    }

    /// The default bundle compiled into the binary, if the build found one.
    pub fn embedded() -> Option<Result<Bundle, BundleError>> {
        let lookup = |name: &str| EMBEDDED_FILES.iter().find(|(n, _)| *n == name).map(|(_, b)| *b);
        let text = lookup("bundle.toml")?;
        let path = PathBuf::from("<embedded>/bundle.toml");
        let files = |name: &str| {
            lookup(name).map(<[u8]>::to_vec).ok_or_else(|| BundleError::Io {
                path: PathBuf::from(format!("<embedded>/{name}")),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "not embedded in this binary"),
            })
        };
        Some(Self::from_parts(text, None, &path, files))
    }

    fn from_parts(
        text: &[u8],
        dir: Option<PathBuf>,
        toml_path: &Path,
        mut read_file: impl FnMut(&str) -> Result<Vec<u8>, BundleError>,
    ) -> Result<Bundle, BundleError> {
        let manifest = parse_manifest(text, toml_path)?;
        let mut files = BTreeMap::new();
        for (name, expected) in &manifest.files {
            let bytes = read_file(name)?;
            let actual = hex::encode(Sha256::digest(&bytes));
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(BundleError::Checksum { bundle: manifest.name.clone(), file: name.clone(), expected: expected.clone(), actual });
            }
            files.insert(name.clone(), bytes);
        }
        Ok(Bundle { manifest, dir, files, signed_by: None, manifest_sha256: hex::encode(Sha256::digest(text)) })
    }
}

/// Parses and validates a bundle.toml (`path` names it in errors), before any file it
/// lists is read.
pub fn parse_manifest(text: &[u8], path: &Path) -> Result<Manifest, BundleError> {
    let manifest_err = |message: String| BundleError::Manifest { path: path.to_path_buf(), message };
    let text = std::str::from_utf8(text).map_err(|e| manifest_err(e.to_string()))?;
    let manifest: Manifest = toml::from_str(text).map_err(|e| manifest_err(e.to_string()))?;
    validate(&manifest)?;
    Ok(manifest)
}

/// The bundle folder to serve: `given` (--models-dir / MEDSENTRY_MODELS_DIR), which must
/// exist (a mistyped path must not silently serve the embedded bundle instead), or
/// `models`, which may be absent.
pub fn models_dir(given: Option<&Path>) -> Result<PathBuf, BundleError> {
    match given {
        Some(p) if !p.is_dir() => Err(BundleError::MissingDir(p.to_path_buf())),
        Some(p) => Ok(p.to_path_buf()),
        None => Ok(PathBuf::from("models")),
    }
}

/// Loads every bundle under `models_dir` (each sub-folder holding a bundle.toml). When the
/// folder does not exist, falls back to the bundle embedded in the binary. With trusted
/// keys, every bundle must carry a signature one of them verifies, and the embedded bundle
/// (which has none) is refused.
pub fn load_all(models_dir: &Path, trusted: &[TrustedKey]) -> Result<Vec<Bundle>, BundleError> {
    let mut bundles: Vec<Bundle> = Vec::new();
    if models_dir.is_dir() {
        let entries = std::fs::read_dir(models_dir).map_err(|e| BundleError::Io { path: models_dir.into(), source: e })?;
        let mut dirs: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.join("bundle.toml").is_file()).collect();
        dirs.sort();
        for dir in dirs {
            let b = Bundle::load_dir(&dir, trusted)?;
            if bundles.iter().any(|o| o.name() == b.name()) {
                return Err(BundleError::Duplicate(b.name().to_string()));
            }
            bundles.push(b);
        }
    } else if let Some(embedded) = Bundle::embedded() {
        if !trusted.is_empty() {
            return Err(BundleError::EmbeddedUnsigned);
        }
        bundles.push(embedded?);
    }
    if bundles.is_empty() {
        return Err(BundleError::NoneFound(models_dir.to_path_buf()));
    }
    Ok(bundles)
}

fn read(path: &Path) -> Result<Vec<u8>, BundleError> {
    std::fs::read(path).map_err(|e| BundleError::Io { path: path.to_path_buf(), source: e })
}

fn validate(m: &Manifest) -> Result<(), BundleError> {
    let bad = |message: String| Err(BundleError::Invalid { bundle: m.name.clone(), message });
    let i = &m.input;
    if m.labels.len() < 2 {
        return bad(format!("needs at least 2 labels, has {}", m.labels.len()));
    }
    if !matches!((i.color, i.channels), (ColorMode::Gray, 1) | (ColorMode::Rgb, 3)) {
        return bad(format!("input colour {} does not fit {} channels", i.color.as_str(), i.channels));
    }
    if i.height == 0 || i.width == 0 || i.height > 4096 || i.width > 4096 {
        return bad(format!("input size {}x{} out of range", i.height, i.width));
    }
    if i.mean.len() != i.channels as usize || i.std.len() != i.channels as usize {
        return bad("input mean/std need one value per channel".into());
    }
    if i.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) || i.mean.iter().any(|v| !v.is_finite()) {
        return bad("input std must be finite and positive, mean finite".into());
    }
    if i.resize != "area" {
        return bad(format!("resize {:?} is not supported (only \"area\")", i.resize));
    }
    if i.quantize_bits.is_some_and(|b| !(1..=16).contains(&b)) {
        return bad(format!("quantize_bits {:?} out of 1..=16", i.quantize_bits));
    }
    if !(1..=1024).contains(&m.max_batch) {
        return bad(format!("max_batch {} out of 1..=1024", m.max_batch));
    }
    if !m.files.contains_key("classifier.onnx") {
        return bad("[files] must list classifier.onnx with its sha256".into());
    }
    for d in &m.detectors {
        if !m.files.contains_key(&d.file) {
            return bad(format!("detector {} file {} is not listed in [files]", d.name, d.file));
        }
        // Positive thresholds: the fused score is the largest score / threshold ratio.
        if !(d.threshold.is_finite() && d.threshold > 0.0 && d.calibrated_fpr > 0.0 && d.calibrated_fpr < 1.0) {
            return bad(format!("detector {} needs a finite positive threshold and a calibrated_fpr in (0, 1)", d.name));
        }
        if d.suspicious_threshold.is_some_and(|s| !(s.is_finite() && s > 0.0 && s <= d.threshold)) {
            return bad(format!("detector {}: suspicious_threshold must be positive and at most threshold", d.name));
        }
    }
    if let Some(o) = &m.ood {
        if !m.files.contains_key(&o.file) {
            return bad(format!("[ood] file {} is not listed in [files]", o.file));
        }
        if !(o.threshold.is_finite() && o.threshold > 0.0 && o.calibrated_fpr > 0.0 && o.calibrated_fpr < 1.0) {
            return bad("[ood] needs a finite positive threshold and a calibrated_fpr in (0, 1)".into());
        }
    }
    if let Some(c) = &m.campaign {
        if c.reference_class_mix.len() != m.labels.len() || c.reference_class_mix.iter().any(|p| !(p.is_finite() && *p >= 0.0)) {
            return bad(format!("[campaign] reference_class_mix needs {} non-negative shares, one per label", m.labels.len()));
        }
        if !(2..=10_000).contains(&c.residual_window) || !(2..=100_000).contains(&c.class_mix_window) {
            return bad("[campaign] windows must be 2..=10000 (residual) and 2..=100000 (class mix)".into());
        }
        if !(c.residual_threshold.is_finite() && c.class_mix_threshold.is_finite() && c.class_mix_threshold > 0.0) {
            return bad("[campaign] thresholds must be finite, class_mix_threshold positive".into());
        }
    }
    Ok(())
}
