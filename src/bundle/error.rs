//! Errors of bundle loading: each stops start-up with a message naming the file at fault.

use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum BundleError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: invalid bundle.toml: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("bundle {bundle}: file {file} has sha256 {actual}, bundle.toml says {expected}: refusing a modified or corrupt model")]
    Checksum { bundle: String, file: String, expected: String, actual: String },
    #[error("bundle {bundle}: {message}")]
    Invalid { bundle: String, message: String },
    #[error("no model bundle found in {0} (a bundle is a folder with bundle.toml), and this binary embeds none")]
    NoneFound(PathBuf),
    #[error("--models-dir {0} does not exist or is not a folder (set by the flag or MEDSENTRY_MODELS_DIR)")]
    MissingDir(PathBuf),
    #[error("two bundles are named {0}")]
    Duplicate(String),
    #[error("bundle {0} is not signed (no bundle.toml.sig) and trusted keys are set: sign it with `medsentry bundle sign`")]
    Unsigned(String),
    #[error("bundle {bundle}: signature refused: {reason}")]
    BadSignature { bundle: String, reason: String },
    #[error("trusted keys are set, and the bundle compiled into this binary carries no signature: serve signed bundles with --models-dir")]
    EmbeddedUnsigned,
}
