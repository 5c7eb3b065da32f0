//! `medsentry screen FILE|DIR...`: the serving pipeline in-process, no server, one line per
//! file; folders (a study, a series) are walked recursively in name order. Files run
//! through the pipeline several at a time (they batch together) and are printed in order,
//! then a summary: counts by verdict and by predicted label.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Args;
use futures::StreamExt;

use crate::decode::looks_like_dicom;
use crate::decode::Input;
use crate::pipeline;
use crate::policy::Origin;
use crate::trace::CallTrace;

#[derive(Debug, Clone, Args)]
pub struct ScreenArgs {
    /// DICOM, PNG or JPEG files, or folders of them (recursive, hidden entries skipped).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Bundle to use (default: the default model).
    #[arg(long, default_value = "")]
    pub model: String,
    /// One JSON object per file instead of a table (the summary then goes to the log).
    #[arg(long)]
    pub json: bool,
    /// Files in the pipeline at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
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
    let (registry, warmups) = crate::registry::start_models(&args.models)?;
    registry.warm_up(warmups, args.models.device()).await?;
    let model = registry.get(&args.model).cloned().ok_or_else(|| anyhow::anyhow!("unknown model {:?}; available: {:?}", args.model, registry.names()))?;
    let labels = &model.bundle.manifest.labels;
    let mut failures = 0;
    let decoding = args.models.decoding();
    if !args.json {
        println!("{:<19} {:<12} {:>7} {:>7}  {:<30}  file", "verdict", "label", "prob", "fused", "probabilities");
    }
    let mut answers = futures::stream::iter(args.files.iter().cloned())
        .map(|path| {
            let (model, decoding) = (model.clone(), decoding.clone());
            async move {
                let result = match std::fs::read(&path) {
                    Ok(bytes) => {
                        let input = if looks_like_dicom(&bytes) { Input::Dicom(bytes) } else { Input::Image(bytes) };
                        let id = path.display().to_string();
                        pipeline::run(&model, input, &decoding, None, Origin { request_id: &id, caller: "medsentry-screen" }, &CallTrace::default())
                            .await
                            .map_err(|e| e.to_string())
                    }
                    Err(e) => Err(format!("reading: {e}")),
                };
                (path, result)
            }
        })
        .buffered(args.concurrency.max(1));
    let (mut by_verdict, mut by_label) = (BTreeMap::<String, usize>::new(), BTreeMap::<String, usize>::new());
    while let Some((path, result)) = answers.next().await {
        bar.inc(1);
        // Verdicts as the APIs spell them (ADVERSARIAL); lower case stays for metric labels.
        let verdict = |o: &pipeline::Outcome| o.screening.verdict.as_str().to_uppercase();
        if let Ok(o) = &result {
            *by_verdict.entry(verdict(o)).or_default() += 1;
            *by_label.entry(labels[o.top_index].clone()).or_default() += 1;
        }
        let line = match (result, args.json) {
            (Ok(o), true) => serde_json::json!({
                "file": path.display().to_string(), "model": model.name(), "label": labels[o.top_index],
                "probabilities": labels.iter().zip(&o.probabilities).map(|(l, p)| (l.clone(), *p)).collect::<BTreeMap<_, _>>(),
                "verdict": verdict(&o), "note": o.screening.note, "fused_score": o.screening.fused_score,
                "out_of_distribution": o.screening.ood.as_ref().map(|c| serde_json::json!({"reason": c.reason, "score": c.score, "threshold": c.threshold})),
                "detectors": o.screening.detectors.iter().map(|d| serde_json::json!({
                    "name": d.name, "score": d.score, "threshold": d.threshold, "fired": d.fired})).collect::<Vec<_>>(),
                "seconds": {"decode": o.timings.decode, "preprocess": o.timings.preprocess, "infer": o.timings.infer, "total": o.timings.total},
            })
            .to_string(),
            (Ok(o), false) => {
                let probs: Vec<String> = labels.iter().zip(&o.probabilities).map(|(l, p)| format!("{l}={p:.4}")).collect();
                let (verdict, label) = (verdict(&o), &labels[o.top_index]);
                format!(
                    "{verdict:<19} {label:<12} {:>7.4} {:>7.4}  {:<30}  {}",
                    o.probabilities[o.top_index],
                    o.screening.fused_score,
                    probs.join(" "),
                    path.display()
                )
            }
            (Err(e), true) => {
                failures += 1;
                serde_json::json!({"file": path.display().to_string(), "error": e}).to_string()
            }
            (Err(e), false) => {
                failures += 1;
                format!("{:<19} {:<12} {:>7} {:>7}  {:<30}  {}: {e}", "ERROR", "", "", "", "", path.display())
            }
        };
        bar.suspend(|| println!("{line}"));
    }
    let count = |m: &BTreeMap<String, usize>| m.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ");
    let summary = format!(
        "{} files, model {}: {}; predicted {}{}",
        args.files.len(),
        model.name(),
        count(&by_verdict),
        count(&by_label),
        if failures > 0 { format!("; {failures} could not be screened") } else { String::new() }
    );
    bar.finish_and_clear();
    if args.json {
        // Off stdout (JSON lines only), in the log format chosen (a JSON object with --log-format json).
        tracing::info!(files = args.files.len(), failures, "{summary}");
    } else {
        println!("{summary}");
    }
    if failures > 0 {
        anyhow::bail!("{failures} of {} files could not be screened", args.files.len());
    }
    Ok(())
}
