//! `medsentry bundle keygen | sign | verify`: the operator's side of signed bundles. The
//! private key stays with whoever releases bundles; the sidecar gets only the public key
//! (`serve --trusted-key`) and refuses bundles it does not verify.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use crate::bundle::{self, Bundle, TrustedKey, SIGNATURE_FILE};

#[derive(Debug, Args)]
pub struct BundleArgs {
    #[command(subcommand)]
    pub command: BundleCommand,
}

#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Write a new ed25519 key pair: PREFIX.key (PKCS#8 PEM, owner-only) and PREFIX.pub
    /// (the public key to give the sidecar). Refuses to overwrite either.
    Keygen {
        /// Path prefix of the two files.
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign bundle folders: checks each bundle's files against its bundle.toml, then writes
    /// bundle.toml.sig (64 raw bytes over bundle.toml, as `openssl pkeyutl -sign -rawin`).
    Sign {
        /// PEM PKCS#8 ed25519 private key (from `keygen` or `openssl genpkey -algorithm ed25519`).
        #[arg(long)]
        key: PathBuf,
        /// Bundle folders (each holding bundle.toml).
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
    },
    /// Check bundle folders as `serve --trusted-key` would; exits non-zero naming the first
    /// bundle that fails.
    Verify {
        /// PEM ed25519 public key (repeatable).
        #[arg(long = "trusted-key", required = true)]
        trusted_keys: Vec<PathBuf>,
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
    },
}

pub fn run(args: BundleArgs) -> anyhow::Result<()> {
    match args.command {
        BundleCommand::Keygen { out } => keygen(&out),
        BundleCommand::Sign { key, dirs } => {
            for dir in &dirs {
                // Sign only what loads: a signature over a manifest whose files do not match
                // would vouch for a bundle the sidecar refuses anyway.
                let b = Bundle::load_dir(dir, &[]).with_context(|| format!("{} is not a loadable bundle", dir.display()))?;
                let manifest = std::fs::read(dir.join("bundle.toml")).with_context(|| format!("reading {}/bundle.toml", dir.display()))?;
                let signature = bundle::sign(&key, &manifest).map_err(anyhow::Error::msg)?;
                let path = dir.join(SIGNATURE_FILE);
                std::fs::write(&path, signature).with_context(|| format!("writing {}", path.display()))?;
                println!("signed {} ({} files) -> {}", b.name(), b.files.len(), path.display());
            }
            Ok(())
        }
        BundleCommand::Verify { trusted_keys, dirs } => {
            let trusted: Vec<TrustedKey> = trusted_keys.iter().map(|p| TrustedKey::load(p)).collect::<Result<_, _>>().map_err(anyhow::Error::msg)?;
            for dir in &dirs {
                let b = Bundle::load_dir(dir, &trusted)?;
                println!("{}: signature verified, key {}, {} files match bundle.toml", b.name(), b.signed_by.as_deref().unwrap_or("?"), b.files.len());
            }
            Ok(())
        }
    }
}

fn keygen(prefix: &Path) -> anyhow::Result<()> {
    let (private, public) = bundle::generate_key().map_err(anyhow::Error::msg)?;
    let key_path = with_suffix(prefix, "key");
    let pub_path = with_suffix(prefix, "pub");
    for p in [&key_path, &pub_path] {
        if p.exists() {
            bail!("{} exists; not overwriting a key", p.display());
        }
    }
    write_new(&key_path, private.as_bytes(), true)?;
    write_new(&pub_path, public.as_bytes(), false)?;
    println!("private key {} (keep it off the serving hosts)\npublic key  {} (give it to `serve --trusted-key`)", key_path.display(), pub_path.display());
    Ok(())
}

fn with_suffix(prefix: &Path, ext: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

/// Creates `path` (never replacing a file), readable by the owner only when `secret`.
fn write_new(path: &Path, bytes: &[u8], secret: bool) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let _ = secret;
    let mut f = opts.open(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
