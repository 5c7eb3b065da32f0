//! `medsentry screen FILE|DIR...`: the serving pipeline in-process, no server, one line per
//! file; folders (a study, a series) are walked recursively in name order.

use std::path::PathBuf;

use clap::Args;

use crate::decode::looks_like_dicom;
use crate::pipeline::{self, Input, Origin};

#[derive(Debug, Clone, Args)]
pub struct ScreenArgs {
    /// DICOM, PNG or JPEG files, or folders of them (recursive, hidden entries skipped).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Bundle to use (default: the default model).
    #[arg(long, default_value = "")]
    pub model: String,
    /// One JSON object per file instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub models: super::Models,
}

/// The files named, folders expanded (sorted, recursive, hidden entries skipped).
fn expand(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|e| !e.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
                .collect();
            entries.sort();
            out.extend(expand(&entries)?);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

pub async fn run(mut args: ScreenArgs) -> anyhow::Result<()> {
    args.files = expand(&args.files)?;
    anyhow::ensure!(!args.files.is_empty(), "no files to screen in the folders given");
    // Drawn on stderr only when it is a terminal: the table or JSON on stdout stays clean.
    let bar = indicatif::ProgressBar::new(args.files.len() as u64);
    let (registry, warmups) = crate::server::start_models(&args.models)?;
    registry.warm_up(warmups, args.models.device()).await?;
    let model = registry.get(&args.model).cloned().ok_or_else(|| anyhow::anyhow!("unknown model {:?}; available: {:?}", args.model, registry.names()))?;
    let labels = &model.bundle.manifest.labels;
    let mut failures = 0;
    let decoding = args.models.decoding();
    if !args.json {
        println!("{:<48} {:<12} {:>8} {:<19} probabilities", "file", "label", "prob", "verdict");
    }
    for path in &args.files {
        bar.inc(1);
        let result = match std::fs::read(path) {
            Ok(bytes) => {
                let input = if looks_like_dicom(&bytes) { Input::Dicom(bytes) } else { Input::Image(bytes) };
                pipeline::run(&model, input, &decoding, None, Origin { request_id: &path.display().to_string(), caller: "medsentry-screen" })
                    .await
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(format!("reading: {e}")),
        };
        match (result, args.json) {
            (Ok(o), true) => println!(
                "{}",
                serde_json::json!({
                    "file": path.display().to_string(), "model": model.name(), "label": labels[o.top_index],
                    "probabilities": labels.iter().zip(&o.probabilities).map(|(l, p)| (l.clone(), *p)).collect::<std::collections::BTreeMap<_, _>>(),
                    "verdict": o.screening.verdict.as_str(), "note": o.screening.note, "fused_score": o.screening.fused_score,
                    "out_of_distribution": o.screening.ood.as_ref().map(|c| serde_json::json!({"reason": c.reason, "score": c.score, "threshold": c.threshold})),
                    "detectors": o.screening.detectors.iter().map(|d| serde_json::json!({
                        "name": d.name, "score": d.score, "threshold": d.threshold, "fired": d.fired})).collect::<Vec<_>>(),
                    "seconds": {"decode": o.timings.decode, "preprocess": o.timings.preprocess, "infer": o.timings.infer, "total": o.timings.total},
                })
            ),
            (Ok(o), false) => {
                let probs: Vec<String> = labels.iter().zip(&o.probabilities).map(|(l, p)| format!("{l}={p:.4}")).collect();
                println!(
                    "{:<48} {:<12} {:>8.4} {:<19} {}",
                    path.display(),
                    labels[o.top_index],
                    o.probabilities[o.top_index],
                    o.screening.verdict.as_str(),
                    probs.join(" ")
                );
            }
            (Err(e), true) => {
                failures += 1;
                println!("{}", serde_json::json!({"file": path.display().to_string(), "error": e}));
            }
            (Err(e), false) => {
                failures += 1;
                println!("{:<48} error: {e}", path.display());
            }
        }
    }
    bar.finish_and_clear();
    if failures > 0 {
        anyhow::bail!("{failures} of {} files could not be screened", args.files.len());
    }
    Ok(())
}
