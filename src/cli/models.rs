//! `medsentry models`: the bundles a models folder holds, verified, with their figures.

use std::path::PathBuf;

use clap::Args;

use crate::bundle;

#[derive(Debug, Clone, Args)]
pub struct ModelsArgs {
    /// Folder of model bundles (default `models`, falling back to the embedded default
    /// bundle when that is absent; a folder given explicitly must exist).
    #[arg(long, env = "MEDSENTRY_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// PEM ed25519 public key trusted to sign bundles (repeatable): every bundle listed
    /// must carry a signature one of them verifies.
    #[arg(long = "trusted-key", env = "MEDSENTRY_TRUSTED_KEYS", value_delimiter = ',')]
    pub trusted_keys: Vec<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ModelsArgs) -> anyhow::Result<()> {
    let trusted: Vec<bundle::TrustedKey> =
        args.trusted_keys.iter().map(|p| bundle::TrustedKey::load(p)).collect::<Result<_, _>>().map_err(anyhow::Error::msg)?;
    let bundles = bundle::load_all(&bundle::models_dir(args.models_dir.as_deref())?, &trusted)?;
    if args.json {
        let list: Vec<_> = bundles
            .iter()
            .map(|b| {
                serde_json::json!({
                    "source": b.dir.as_ref().map(|d| d.display().to_string()).unwrap_or_else(|| "embedded".into()),
                    "classifier_sha256": b.classifier_sha256(),
                    "signed_by": b.signed_by,
                    "manifest": b.manifest,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    for b in &bundles {
        let m = &b.manifest;
        let hardening = m.hardening.as_ref().map_or("none".to_string(), |h| format!("{} {} eps={:.4} steps={}", h.method, h.norm, h.epsilon, h.steps));
        println!("{} {} ({})", m.name, m.version, b.dir.as_ref().map_or("embedded".into(), |d| d.display().to_string()));
        println!("  task        {}", m.task);
        println!("  labels      {}", m.labels.join(", "));
        println!(
            "  input       {}x{}x{} {} resize={} mean={:?} std={:?}",
            m.input.channels,
            m.input.height,
            m.input.width,
            m.input.color.as_str(),
            m.input.resize,
            m.input.mean,
            m.input.std
        );
        println!("  hardening   {hardening}");
        println!(
            "  detectors   {}",
            if m.detectors.is_empty() {
                "none".to_string()
            } else {
                m.detectors.iter().map(|d| format!("{} (thr {:.4} @ fpr {})", d.name, d.threshold, d.calibrated_fpr)).collect::<Vec<_>>().join(", ")
            }
        );
        println!("  classifier  sha256 {}", b.classifier_sha256());
        if let Some(key) = &b.signed_by {
            println!("  signature   verified, key {key}");
        }
        for (k, v) in &m.figures {
            println!("  {k:<28} {v:.4}");
        }
    }
    Ok(())
}
