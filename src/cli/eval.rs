//! `medsentry eval --model NAME --data DIR`: runs a folder of clean and adversarial inputs
//! through the sidecar's own pipeline (decode, preprocess, batcher, ONNX Runtime,
//! detectors) and writes detection AUROC, TPR at the calibrated thresholds and ROC plots.
//!
//! DIR/clean/ holds the negatives; every other sub-folder of DIR is one set of positives
//! (named `attack__budget` by the training pipeline). Files: .npy ([C,H,W], [1,C,H,W] or a
//! batch [N,C,H,W] of [0, 1] intensities at the model's input size), PNG, JPEG or DICOM.
//! When DIR/manifest.json (written by the pipeline's `export_eval` stage) carries the
//! Python report's AUROC per set and detector, each row shows the difference. A file that
//! cannot be read or that the pipeline refuses is named, skipped and listed in eval.json;
//! an empty clean/ stops the run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Args;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::decode::looks_like_dicom;
use crate::decode::Input;
use crate::eval::{npy, plot, roc};
use crate::pipeline;
use crate::policy::Origin;
use crate::trace::CallTrace;

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Bundle to evaluate (default: the default model).
    #[arg(long, default_value = "")]
    pub model: String,
    /// Folder with clean/ and one sub-folder per attack set.
    #[arg(long)]
    pub data: PathBuf,
    /// Where eval.json and the ROC plots go (default ./medsentry-eval-MODEL, never inside
    /// the data folder).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Inputs in flight at once (they batch together).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    #[command(flatten)]
    pub models: super::Models,
}

/// Detector scores of one set: name -> one score per input.
type Scores = BTreeMap<String, Vec<f64>>;

pub async fn run(args: EvalArgs) -> anyhow::Result<()> {
    let (registry, warmups) = crate::registry::start_models(&args.models)?;
    registry.warm_up(warmups, args.models.device()).await?;
    let model = registry.get(&args.model).cloned().ok_or_else(|| anyhow::anyhow!("unknown model {:?}; available: {:?}", args.model, registry.names()))?;
    let (sets, mut skipped) = read_sets(&args.data)?;
    match sets.get("clean") {
        None => anyhow::bail!("{}: no clean/ sub-folder (the negatives)", args.data.display()),
        Some(c) if c.is_empty() => anyhow::bail!("{}: clean/ holds no readable inputs (the negatives)", args.data.display()),
        Some(_) => {}
    }
    let total: usize = sets.values().map(Vec::len).sum();
    let bar = ProgressBar::new(total as u64);
    bar.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} inputs {per_sec} eta {eta} {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()));

    let decoding = args.models.decoding();
    let mut scores: BTreeMap<String, Scores> = BTreeMap::new();
    for (name, inputs) in &sets {
        bar.set_message(name.clone());
        let results: Vec<_> = futures::stream::iter(inputs.iter().cloned())
            .map(|(file, input)| {
                let (model, decoding) = (model.clone(), decoding.clone());
                async move {
                    (file, pipeline::run(&model, input, &decoding, None, Origin { request_id: "eval", caller: "medsentry-eval" }, &CallTrace::default()).await)
                }
            })
            .buffered(args.concurrency.max(1))
            .inspect(|_| bar.inc(1))
            .collect()
            .await;
        let entry = scores.entry(name.clone()).or_default();
        for (file, r) in results {
            let o = match r {
                Ok(o) => o,
                Err(e) => {
                    bar.suspend(|| eprintln!("skipped {}: {e}", file.display()));
                    skipped.push((file, e.to_string()));
                    continue;
                }
            };
            for d in &o.screening.detectors {
                entry.entry(d.name.clone()).or_default().push(d.score as f64);
            }
            entry.entry("fused".into()).or_default().push(o.screening.fused_score as f64);
        }
    }
    bar.finish_and_clear();
    anyhow::ensure!(scores.get("clean").is_some_and(|c| !c.is_empty()), "every clean input was refused (see the skipped files above)");

    let out = args.out.clone().unwrap_or_else(|| PathBuf::from(format!("medsentry-eval-{}", model.name())));
    std::fs::create_dir_all(&out)?;
    let manifest = read_manifest(&args.data);
    let thresholds: BTreeMap<String, f64> = model.bundle.manifest.detectors.iter().map(|d| (d.name.clone(), d.threshold as f64)).collect();
    let mut report = summarise(&scores, &thresholds, manifest.as_ref());
    report["skipped"] = skipped.iter().map(|(f, why)| json!({"file": f.display().to_string(), "reason": why})).collect();
    std::fs::write(out.join("eval.json"), serde_json::to_vec_pretty(&report)?)?;
    write_plots(&out, &scores)?;
    print_table(&report);
    if !skipped.is_empty() {
        println!("skipped {} file(s) that could not be screened (listed in eval.json)", skipped.len());
    }
    println!("wrote {} and ROC plots to {}", out.join("eval.json").display(), out.display());
    Ok(())
}

/// An input and the file it came from.
type Named = (PathBuf, Input);

/// Every sub-folder of `dir` as a set of inputs, by name; files that cannot be read, with
/// the reason.
#[allow(clippy::type_complexity)]
fn read_sets(dir: &Path) -> anyhow::Result<(BTreeMap<String, Vec<Named>>, Vec<(PathBuf, String)>)> {
    let (mut sets, mut skipped) = (BTreeMap::new(), Vec::new());
    for entry in std::fs::read_dir(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // Hidden folders, and an earlier run's output written inside the data folder.
        if !path.is_dir() || name.starts_with('.') || path.join("eval.json").exists() {
            continue;
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&path)?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
        files.sort();
        let mut inputs = Vec::new();
        for f in files {
            match read_inputs(&f) {
                Ok(list) => inputs.extend(list.into_iter().map(|i| (f.clone(), i))),
                Err(e) => {
                    eprintln!("skipped {}: {e:#}", f.display());
                    skipped.push((f, format!("{e:#}")));
                }
            }
        }
        sets.insert(name, inputs);
    }
    Ok((sets, skipped))
}

fn read_inputs(path: &Path) -> anyhow::Result<Vec<Input>> {
    let bytes = std::fs::read(path)?;
    if path.extension().is_some_and(|e| e == "npy") {
        let a = npy::read_npy(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if a.shape.len() != 4 {
            // One tensor; the pipeline checks its shape against the model.
            return Ok(vec![Input::Tensor { shape: a.shape.iter().map(|&d| d as i64).collect(), data: a.data }]);
        }
        let per = a.shape[1..].iter().product::<usize>();
        let shape: Vec<i64> = a.shape[1..].iter().map(|&d| d as i64).collect();
        return Ok(a.data.chunks(per.max(1)).map(|c| Input::Tensor { shape: shape.clone(), data: c.to_vec() }).collect());
    }
    Ok(vec![if looks_like_dicom(&bytes) { Input::Dicom(bytes) } else { Input::Image(bytes) }])
}

fn read_manifest(dir: &Path) -> Option<Value> {
    let bytes = std::fs::read(dir.join("manifest.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn summarise(scores: &BTreeMap<String, Scores>, thresholds: &BTreeMap<String, f64>, manifest: Option<&Value>) -> Value {
    let empty = Scores::new();
    let clean = scores.get("clean").unwrap_or(&empty);
    let mut clean_fpr = serde_json::Map::new();
    for (det, s) in clean {
        if let Some(t) = thresholds.get(det) {
            clean_fpr.insert(det.clone(), json!(roc::rate_above(s, *t)));
        }
    }
    let mut sets = serde_json::Map::new();
    for (name, by_det) in scores.iter().filter(|(n, _)| n.as_str() != "clean") {
        let mut row = serde_json::Map::new();
        row.insert("n".into(), json!(by_det.values().next().map_or(0, Vec::len)));
        for (det, pos) in by_det {
            let auroc = clean.get(det).and_then(|neg| roc::auroc(neg, pos));
            let python = manifest.and_then(|m| m.pointer(&format!("/sets/{name}/python_auroc/{det}"))).and_then(Value::as_f64);
            let tpr = thresholds.get(det).map(|t| roc::rate_above(pos, *t));
            row.insert(
                det.clone(),
                json!({"auroc": auroc, "tpr_at_threshold": tpr, "python_auroc": python,
                "abs_diff": auroc.zip(python).map(|(a, p)| (a - p).abs())}),
            );
        }
        sets.insert(name.clone(), Value::Object(row));
    }
    json!({"n_clean": clean.values().next().map_or(0, Vec::len), "clean_fpr_at_threshold": clean_fpr, "thresholds": thresholds, "sets": sets})
}

fn print_table(report: &Value) {
    println!("{:<32} {:<18} {:>5} {:>8} {:>8} {:>9}", "set", "detector", "n", "AUROC", "TPR@thr", "|d| Py");
    let Some(sets) = report["sets"].as_object() else { return };
    for (name, row) in sets {
        let Some(row) = row.as_object() else { continue };
        for (det, v) in row.iter().filter(|(k, _)| k.as_str() != "n") {
            let f = |k: &str| v[k].as_f64().map_or("-".to_string(), |x| format!("{x:.4}"));
            println!("{:<32} {:<18} {:>5} {:>8} {:>8} {:>9}", name, det, row["n"], f("auroc"), f("tpr_at_threshold"), f("abs_diff"));
        }
    }
    println!("clean false-positive rate at the thresholds: {}", report["clean_fpr_at_threshold"]);
}

/// One PNG per attack (the set name before `__`), a curve per detector and budget.
fn write_plots(out: &Path, scores: &BTreeMap<String, Scores>) -> anyhow::Result<()> {
    let Some(clean) = scores.get("clean") else { return Ok(()) };
    let mut by_attack: BTreeMap<String, Vec<plot::RocCurve>> = BTreeMap::new();
    for (name, by_det) in scores.iter().filter(|(n, _)| n.as_str() != "clean") {
        let (attack, budget) = name.split_once("__").unwrap_or((name.as_str(), ""));
        for (det, pos) in by_det.iter().filter(|(d, _)| d.as_str() != "fused") {
            let Some(neg) = clean.get(det) else { continue };
            let auroc = roc::auroc(neg, pos).map_or("-".into(), |a| format!("{a:.3}"));
            by_attack
                .entry(attack.to_string())
                .or_default()
                .push(plot::RocCurve { label: format!("{det} {budget}  AUROC {auroc}"), points: roc::roc_curve(neg, pos) });
        }
    }
    for (attack, curves) in by_attack {
        std::fs::write(out.join(format!("roc_{attack}.svg")), plot::roc_svg(&format!("ROC: {attack} vs clean"), &curves))?;
    }
    Ok(())
}
