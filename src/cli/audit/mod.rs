//! `medsentry audit`: red-team a deployed endpoint the way an outside attacker would, with
//! only what the endpoint answers. Clean pass first (the false-alarm rate on the same
//! images), then per attack and image: Square (scores), Boundary (top label only), and
//! replay of given perturbations (a bundle's UAPs). Writes report.json, REPORT.md and
//! queries.jsonl into --out; exits non-zero when fooled-and-passed exceeds --fail-above.

mod boundary;
mod image;
mod oip;
mod pixels;
mod report;
mod square;
mod target;

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use image::{Image, Rng};
pub use report::{AttackSummary, AuditReport};
use target::{Answer, Target};
pub use target::{Outcome, Protocol};

#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    /// Endpoint HOST:PORT. Loopback only unless --allow-remote.
    #[arg(long)]
    pub target: String,
    /// API of the endpoint: medsentry.v1 Screen (sentry), or the Open Inference Protocol
    /// with PNG bytes (oip-bytes) or FP32 tensors at the model's size (oip-fp32: what a
    /// Triton model takes, so it audits medsentry in proxy mode too; needs --model).
    #[arg(long, value_enum, default_value_t = Protocol::Sentry)]
    pub protocol: Protocol,
    /// Model to audit (default: the endpoint's default model).
    #[arg(long, default_value = "")]
    pub model: String,
    /// Folder of PNG/JPEG images (the first --max-images in name order).
    #[arg(long)]
    pub images: PathBuf,
    /// Folder for report.json, REPORT.md and queries.jsonl.
    #[arg(long)]
    pub out: PathBuf,
    /// Attacks to run: square, boundary, pixels (replay runs when --uap is given).
    #[arg(long, value_delimiter = ',', default_value = "square,boundary")]
    pub attacks: Vec<String>,
    /// Linf budget in 1/255 (grey levels).
    #[arg(long, default_value_t = 8)]
    pub eps: u8,
    /// Query budget per image and attack.
    #[arg(long, default_value_t = 200)]
    pub queries: usize,
    #[arg(long, default_value_t = 20)]
    pub max_images: usize,
    /// Perturbations to replay (.npy, C x H x W in [0, 1] units, e.g. a bundle's UAP).
    #[arg(long)]
    pub uap: Vec<PathBuf>,
    /// Transfer sets to replay: folders of adversarial images made offline against a
    /// stolen or surrogate model, each named like its clean image in --images and of the
    /// same size; each is sent once.
    #[arg(long)]
    pub transfer: Vec<PathBuf>,
    /// Queries per second at most (0: unbounded).
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// The whole run stops after this many seconds; the report says it stopped early.
    #[arg(long, default_value_t = 1800.0)]
    pub max_seconds: f64,
    /// Allow a target that is not on this machine.
    #[arg(long)]
    pub allow_remote: bool,
    /// Exit non-zero when an attack's fooled-and-passed rate exceeds this share (0..1).
    #[arg(long)]
    pub fail_above: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Pixels the few-pixel attack (`pixels`) may change.
    #[arg(long, default_value_t = 3)]
    pub pixels: usize,
}

/// One image under one attack.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImageResult {
    pub image: String,
    pub queries: usize,
    /// The top label moved away from the clean answer (within eps for Boundary).
    pub fooled: bool,
    /// How the endpoint treated the attack's final (best) input.
    pub outcome: Option<Outcome>,
    /// Linf of that input against the original, in grey levels, and its RMS.
    pub linf: u8,
    pub rms: f64,
    /// Candidates the policy refused along the way.
    pub refused_queries: usize,
}

impl ImageResult {
    fn new(image: &str) -> ImageResult {
        ImageResult { image: image.into(), queries: 0, fooled: false, outcome: None, linf: 0, rms: 0.0, refused_queries: 0 }
    }

    /// The attack keeps `img`, answered `a`.
    fn record(&mut self, a: &Answer, y: usize, img: &Image, x: &Image) {
        self.fooled = a.top.is_some_and(|t| t != y);
        self.outcome = Some(a.verdict);
        self.linf = img.linf(x);
        self.rms = img.rms(x);
        self.note_refusal(a);
    }

    fn note_refusal(&mut self, a: &Answer) {
        if a.verdict == Outcome::Refused {
            self.refused_queries += 1;
            if self.outcome.is_none() {
                self.outcome = Some(Outcome::Refused);
            }
        }
    }
}

fn load_images(dir: &std::path::Path, max: usize) -> anyhow::Result<Vec<(String, Image)>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("--images {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| ["png", "jpg", "jpeg"].contains(&x.to_string_lossy().to_lowercase().as_str())))
        .collect();
    paths.sort();
    anyhow::ensure!(!paths.is_empty(), "--images {}: no PNG or JPEG files", dir.display());
    paths.truncate(max);
    paths.into_iter().map(|p| Ok((p.file_name().unwrap_or_default().to_string_lossy().into_owned(), Image::load(&p)?))).collect()
}

/// A transfer set: each clean image's same-named adversarial copy from `dir`, sent once.
async fn transfer(t: &mut Target, dir: &std::path::Path, images: &[(String, Image)], clean: &[Answer]) -> anyhow::Result<AttackSummary> {
    let mut results = Vec::new();
    for ((name, img), answer) in images.iter().zip(clean) {
        let path = dir.join(name);
        let Some(y) = answer.top.filter(|_| path.is_file()) else { continue };
        if t.out_of_time() {
            break;
        }
        let mut adv = Image::load(&path).map_err(|e| anyhow::anyhow!("--transfer: {e}"))?;
        if let Some((c, h, w)) = t.model_size() {
            adv = adv.resized(c, h, w);
        }
        anyhow::ensure!(
            (adv.width, adv.height, adv.channels) == (img.width, img.height, img.channels),
            "--transfer {}: {name} is {}x{}x{}, its clean image {}x{}x{}",
            path.display(),
            adv.channels,
            adv.height,
            adv.width,
            img.channels,
            img.height,
            img.width
        );
        let a = t.query(&adv, "transfer", name).await?;
        let mut r = ImageResult::new(name);
        r.queries = 1;
        r.record(&a, y, &adv, img);
        results.push(r);
    }
    anyhow::ensure!(!results.is_empty(), "--transfer {}: no file named like an image of --images", dir.display());
    let set = dir.file_name().unwrap_or_default().to_string_lossy().into_owned();
    Ok(AttackSummary::new("transfer", &set, 1, results))
}

pub async fn run(args: AuditArgs) -> anyhow::Result<()> {
    let report = audit(&args).await?;
    if let Some(limit) = args.fail_above {
        let worst = report.attacks.iter().map(|a| (a.fooled_and_passed_rate(), a.attack.as_str())).fold((0.0, ""), |m, v| if v.0 > m.0 { v } else { m });
        if worst.0 > limit {
            anyhow::bail!("{}: fooled and passed on {:.1} % of images, above --fail-above {:.1} %", worst.1, 100.0 * worst.0, 100.0 * limit);
        }
    }
    Ok(())
}

/// Runs the audit and writes its files; the report for callers (and tests).
pub async fn audit(args: &AuditArgs) -> anyhow::Result<AuditReport> {
    target::check_target(&args.target, args.allow_remote)?;
    for a in &args.attacks {
        anyhow::ensure!(["square", "boundary", "pixels"].contains(&a.as_str()), "unknown attack {a:?} (square, boundary, pixels; replay runs with --uap)");
    }
    anyhow::ensure!(args.eps > 0 && args.queries > 0, "--eps and --queries must be positive");
    std::fs::create_dir_all(&args.out)?;
    let mut images = load_images(&args.images, args.max_images)?;
    let uaps: Vec<(String, crate::eval::npy::NpyArray)> = args
        .uap
        .iter()
        .map(|p| {
            let bytes = std::fs::read(p).map_err(|e| anyhow::anyhow!("--uap {}: {e}", p.display()))?;
            Ok((
                p.file_name().unwrap_or_default().to_string_lossy().into_owned(),
                crate::eval::npy::read_npy(&bytes).map_err(|e| anyhow::anyhow!("--uap {}: {e}", p.display()))?,
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    let started = Instant::now();
    let mut t = Target::connect(&args.target, args.protocol, &args.model, args.rate, args.max_seconds, &args.out.join("queries.jsonl")).await?;
    if let Some((c, h, w)) = t.model_size() {
        // Tensors go at the model's size: the attacks perturb those pixels.
        images = images.into_iter().map(|(n, img)| (n, img.resized(c, h, w))).collect();
    }
    let total = images.len() * (1 + args.attacks.len() + uaps.len() + args.transfer.len());
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}").expect("static template"));

    // Clean pass: the answers the attacks move away from, and the false-alarm rate.
    let mut clean = Vec::new();
    for (name, img) in &images {
        bar.set_message(format!("clean {name}"));
        clean.push(t.query(img, "clean", name).await?);
        bar.inc(1);
    }
    let mut rng = Rng::new(args.seed);
    let mut attacks = Vec::new();
    for attack in &args.attacks {
        let mut results = Vec::new();
        for (i, (name, img)) in images.iter().enumerate() {
            bar.set_message(format!("{attack} {name}"));
            let Some(y) = clean[i].top else {
                bar.inc(1);
                continue; // refused or failed when clean: nothing to move away from
            };
            if t.out_of_time() {
                break;
            }
            let r = match attack.as_str() {
                "square" => square::Square { eps: args.eps, queries: args.queries }.run(&mut t, img, y, name, &mut rng).await?,
                "pixels" => pixels::Pixels { pixels: args.pixels, queries: args.queries }.run(&mut t, img, y, name, &mut rng).await?,
                _ => {
                    let starts: Vec<&Image> = images.iter().zip(&clean).filter(|(_, a)| a.top.is_some_and(|top| top != y)).map(|((_, im), _)| im).collect();
                    boundary::Boundary { eps: args.eps, queries: args.queries }.run(&mut t, img, y, name, &starts, &mut rng).await?
                }
            };
            results.push(r);
            bar.inc(1);
        }
        let setting = if attack == "pixels" { format!("l0_{}", args.pixels) } else { format!("linf_{}", args.eps) };
        attacks.push(AttackSummary::new(attack, &setting, args.queries, results));
    }
    for (file, uap) in &uaps {
        let mut results = Vec::new();
        for (i, (name, img)) in images.iter().enumerate() {
            let Some(y) = clean[i].top else { continue };
            if t.out_of_time() {
                break;
            }
            let adv = img.add(&image::resize_perturbation(&uap.data, &uap.shape, img)?);
            let a = t.query(&adv, "replay", name).await?;
            let mut r = ImageResult::new(name);
            r.queries = 1;
            r.record(&a, y, &adv, img);
            results.push(r);
            bar.inc(1);
        }
        attacks.push(AttackSummary::new("replay", file, 1, results));
    }
    for dir in &args.transfer {
        bar.set_message(format!("transfer {}", dir.display()));
        attacks.push(transfer(&mut t, dir, &images, &clean).await?);
        bar.inc(images.len() as u64);
    }
    bar.finish_and_clear();
    let report = AuditReport::new(args, &images.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(), &clean, attacks, &t, started.elapsed().as_secs_f64());
    t.finish()?;
    report.write(&args.out)?;
    Ok(report)
}
