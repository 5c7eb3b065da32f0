//! `medsentry bench`: Screen through gRPC (real server on loopback, real client) at several
//! concurrency levels beside a bare ONNX Runtime session on the same bundle at the same
//! batch sizes, with tensor inputs so the ratio is the sidecar's own overhead; plus the
//! cost of decoding a JPEG and a DICOM file. Prints figures, asserts nothing.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;

use crate::config::ServeArgs;
use crate::decode::Input;
use crate::decode::{looks_like_dicom, DecodeLimits};
use crate::engine::ModelSession;
use crate::pipeline;
use crate::proto::{self, sentry_client::SentryClient};

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Images per measurement.
    #[arg(long, default_value_t = 512)]
    pub requests: usize,
    /// Concurrent gRPC callers (and bare ONNX Runtime batch sizes) to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub concurrency: Vec<usize>,
    /// Times each level is measured (sidecar and bare alike); the run with the median
    /// images/s is reported, with the lowest and highest beside it.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Bundle to measure (default: the default model).
    #[arg(long, default_value = "")]
    pub model: String,
    /// Files whose decode + preprocess cost is reported (JPEG/PNG/DICOM).
    #[arg(long)]
    pub decode_file: Vec<PathBuf>,
    /// Send these images (PNG/JPEG/DICOM files in the folder, at the model's size) as the
    /// tensors, in turn, instead of pseudo-random pixels: with `cascade = true` in the
    /// policy the cost depends on what the images are.
    #[arg(long)]
    pub images: Option<PathBuf>,
    #[command(flatten)]
    pub models: super::Models,
}

struct Stats {
    images_per_s: f64,
    /// Lowest and highest images/s over the repeats of this level.
    range: (f64, f64),
    p50_ms: f64,
    p99_ms: f64,
    /// Median over answers of detect_seconds / (infer_seconds / batch share): the
    /// detectors' cost relative to the forward pass, from the sidecar's own stage timings.
    detect_over_infer: Option<f64>,
    /// Median ms per call of each part of a call (see [`PARTS`]), from the answers' own
    /// stage timings and the client's clock.
    parts: Vec<f64>,
}

/// The parts of a call's time: decode + preprocess, waiting for a batch, the forward pass
/// (the whole batch's), the detectors, the rest of the server's work (campaign monitor,
/// policy, answer), and what the client saw beyond the server's total (gRPC and transport
/// both ways).
const PARTS: [&str; 6] = ["prepare", "queue", "infer", "detect", "other", "transport"];

/// The [`PARTS`] of one call, in seconds.
fn parts_of(t: &proto::StageTimings, client: Duration) -> [f64; 6] {
    let prepare = t.decode_seconds + t.preprocess_seconds;
    let other = (t.total_seconds - prepare - t.queue_seconds - t.infer_seconds - t.detect_seconds).max(0.0);
    [prepare, t.queue_seconds, t.infer_seconds, t.detect_seconds, other, (client.as_secs_f64() - t.total_seconds).max(0.0)]
}

/// Per part, the median of `calls` in ms.
fn median_parts(calls: &[[f64; 6]]) -> Vec<f64> {
    (0..PARTS.len())
        .map(|k| {
            let mut v: Vec<f64> = calls.iter().map(|c| c[k]).collect();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).map_or(0.0, |m| m * 1e3)
        })
        .collect()
}

fn stats(mut latencies: Vec<Duration>, images: usize, wall: Duration) -> Stats {
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    let ips = images as f64 / wall.as_secs_f64();
    Stats { images_per_s: ips, range: (ips, ips), p50_ms: pick(0.5), p99_ms: pick(0.99), detect_over_infer: None, parts: Vec::new() }
}

/// The repeat with the median images/s, carrying the range of all repeats.
fn median_run(mut runs: Vec<Stats>) -> Stats {
    runs.sort_by(|a, b| a.images_per_s.total_cmp(&b.images_per_s));
    let range = (runs[0].images_per_s, runs[runs.len() - 1].images_per_s);
    let mut m = runs.swap_remove(runs.len() / 2);
    m.range = range;
    m
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = grpc.local_addr()?;
    let serve = ServeArgs {
        listen: addr,
        admin_listen: admin.local_addr()?,
        http_listen: None,
        max_message_bytes: 64 << 20,
        shutdown_grace_secs: 5,
        max_streams_per_connection: crate::config::DEFAULT_MAX_STREAMS_PER_CONNECTION,
        model: args.models.clone(),
        upstream: Default::default(),
        tls: Default::default(),
        trace: Default::default(),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::server::run(serve, grpc, admin, async move {
        let _ = stop_rx.await;
    }));
    let mut client = match connect_when_ready(&format!("http://{addr}")).await {
        Ok(c) => c,
        // A server that stopped during start-up says why; the connection error does not.
        Err(e) if server.is_finished() => return Err(server.await?.err().unwrap_or(e)),
        Err(e) => return Err(e),
    };
    let info = client.get_model(proto::GetModelRequest { name: args.model.clone() }).await?.into_inner();
    let spec = info.input.clone().unwrap_or_default();
    let len = (spec.channels * spec.height * spec.width) as usize;
    println!(
        "bundle {} {}: input {}x{}x{}, max_batch {}, {} images per measurement",
        info.name, info.version, spec.channels, spec.height, spec.width, info.max_batch, args.requests
    );

    anyhow::ensure!(args.repeats >= 1, "--repeats must be at least 1");
    let images = match &args.images {
        Some(dir) => Some(std::sync::Arc::new(model_space_images(dir, &args.models, &info.name)?)),
        None => None,
    };
    let cascade_before = cascade_counts(&info.name);
    let mut sidecar = Vec::new();
    let mut batch_rows = Vec::new();
    for &c in &args.concurrency {
        let mut runs = Vec::new();
        // (No series yet before the model's first batch.)
        let before = batch_totals(&info.name).or(Some((0.0, 0.0)));
        for _ in 0..args.repeats {
            runs.push(grpc_run(&client, &info.name, len, &spec, c, args.requests, images.clone()).await?);
        }
        batch_rows.push(batch_totals(&info.name).zip(before).map(|((rows, n), (rows0, n0))| (rows - rows0) / (n - n0).max(1.0)));
        sidecar.push(median_run(runs));
    }
    let cascade = cascade_counts(&info.name).zip(cascade_before).map(|((s, f), (s0, f0))| (s - s0, f - f0));
    let _ = stop_tx.send(());
    server.await??;

    let (registry, warmups) = crate::registry::start_models(&args.models)?;
    drop(warmups);
    let bundle = registry.get(&info.name).ok_or_else(|| anyhow::anyhow!("model vanished"))?.bundle.clone();
    let cfg = args.models.serving().workers;
    let (requests, repeats) = (args.requests, args.repeats);
    let concurrency = args.concurrency.clone();
    // Feature squeezing adds its squeezed copies to every input's batch entry.
    let rows = 1 + registry.get(&info.name).and_then(|m| m.screener.squeeze()).map_or(0, |_| crate::defense::squeeze::COPIES);
    let bare = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<(Stats, Stats)>> {
        let mut session = ModelSession::open(&bundle, cfg.intra_threads, cfg.device)?;
        let mut out = Vec::new();
        for &b in &concurrency {
            // (the bare classifier: b rows per b images; the same forward work: b * rows rows)
            let mut pair = Vec::new();
            for r in [1, rows] {
                session.run(vec![0.5; b * r * len], b * r)?;
                let mut runs = Vec::new();
                for _ in 0..repeats {
                    let mut latencies = Vec::new();
                    let started = Instant::now();
                    let mut done = 0;
                    while done < requests {
                        let t = Instant::now();
                        session.run(random_pixels(b * r * len, done as u64), b * r)?;
                        latencies.push(t.elapsed());
                        done += b;
                    }
                    runs.push(stats(latencies, done, started.elapsed()));
                }
                pair.push(median_run(runs));
            }
            let same_work = pair.pop().expect("two runs");
            out.push((pair.pop().expect("two runs"), same_work));
        }
        Ok(out)
    })
    .await??;

    println!("\nrows per input: {rows} (1 = the input{})", if rows > 1 { ", + feature squeezing's copies, run in the same batch" } else { "" });
    if let Some((skipped, full)) = cascade {
        let n = (skipped + full).max(1.0);
        println!(
            "cascade: {skipped} inputs answered from the first pass, {full} given feature squeezing: {:.2} rows per input on average (the \"same rows\" ratio below assumes {rows})",
            1.0 + (rows as f64 - 1.0) * full / n
        );
    }
    println!("\nmedian of {} repeat(s) per level, [lowest-highest images/s] beside it", args.repeats);
    println!(
        "\n{:>11} | {:>40} | {:>40} | {:>11} | {:>15}",
        "concurrency", "Screen via gRPC img/s [range] p50 p99", "bare ORT (batch=c) img/s [range] p50 p99", "ratio", "ratio same work"
    );
    let range = |s: &Stats| format!("[{:.0}-{:.0}]", s.range.0, s.range.1);
    for ((c, s), (b, w)) in args.concurrency.iter().zip(&sidecar).zip(&bare) {
        println!(
            "{c:>11} | {:>9.1} {:>13} {:>7.2}ms {:>7.2}ms | {:>9.1} {:>13} {:>7.2}ms {:>7.2}ms | {:>11.3} | {:>15.3}",
            s.images_per_s,
            range(s),
            s.p50_ms,
            s.p99_ms,
            b.images_per_s,
            range(b),
            b.p50_ms,
            b.p99_ms,
            s.images_per_s / b.images_per_s,
            s.images_per_s / w.images_per_s
        );
    }
    println!(
        "(ratio: against the bare classifier; ratio same work: against bare ORT running the same {rows} row(s) per image, i.e. the sidecar's own overhead)"
    );
    println!("\ndetect stage / infer stage (median per answer; infer is the whole batch's time):");
    for (c, s) in args.concurrency.iter().zip(&sidecar) {
        println!("  concurrency {c:>3}: {}", s.detect_over_infer.map_or("n/a".into(), |r| format!("{:.4}", r)));
    }
    println!(
        "where a call's time goes (median ms per call; infer is the whole batch's forward pass, transport what the client saw beyond the server's total):"
    );
    println!("                  | {} rows/batch", PARTS.map(|p| format!("{p:>9}")).join(" "));
    for ((c, s), rows) in args.concurrency.iter().zip(&sidecar).zip(&batch_rows) {
        let parts = s.parts.iter().map(|v| format!("{v:>9.3}")).collect::<Vec<_>>().join(" ");
        println!("  concurrency {c:>4} | {parts} {}", rows.map_or("n/a".into(), |r| format!("{r:>10.1}")));
    }
    decode_costs(&args.decode_file, registry.get(&info.name).map(|m| m.bundle.manifest.input.clone()))?;
    Ok(())
}

async fn connect_when_ready(url: &str) -> anyhow::Result<SentryClient<tonic::transport::Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())?.connect().await?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for _ in 0..600 {
        let r = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await;
        if r.map(|r| r.into_inner().status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32).unwrap_or(false) {
            return Ok(SentryClient::new(channel).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("server did not become ready within 60 s")
}

async fn grpc_run(
    client: &SentryClient<tonic::transport::Channel>,
    model: &str,
    len: usize,
    spec: &proto::InputSpec,
    concurrency: usize,
    requests: usize,
    images: Option<std::sync::Arc<Vec<Vec<f32>>>>,
) -> anyhow::Result<Stats> {
    let shape = vec![1, spec.channels as i64, spec.height as i64, spec.width as i64];
    let per_caller = requests.div_ceil(concurrency);
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|k| {
            let (mut client, model, shape, images) = (client.clone(), model.to_string(), shape.clone(), images.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_caller);
                let mut ratios = Vec::with_capacity(per_caller);
                let mut parts = Vec::with_capacity(per_caller);
                for i in 0..per_caller {
                    let n = k * per_caller + i;
                    let data = match &images {
                        Some(set) => set[n % set.len()].clone(),
                        None => random_pixels(len, n as u64),
                    };
                    let tensor = proto::Tensor { shape: shape.clone(), data };
                    let req = proto::ScreenRequest {
                        request_id: format!("{k}-{i}"),
                        model: model.clone(),
                        input: Some(proto::screen_request::Input::Tensor(tensor)),
                    };
                    let t = Instant::now();
                    let resp = client.screen(req).await?.into_inner();
                    let elapsed = t.elapsed();
                    latencies.push(elapsed);
                    if let Some(t) = resp.timings.filter(|t| t.infer_seconds > 0.0) {
                        ratios.push(t.detect_seconds / t.infer_seconds);
                        parts.push(parts_of(&t, elapsed));
                    }
                }
                anyhow::Ok((latencies, ratios, parts))
            })
        })
        .collect();
    let (mut all, mut ratios, mut parts) = (Vec::new(), Vec::new(), Vec::new());
    for t in tasks {
        let (l, r, p) = t.await??;
        all.extend(l);
        ratios.extend(r);
        parts.extend(p);
    }
    let n = all.len();
    let mut s = stats(all, n, started.elapsed());
    ratios.sort_by(f64::total_cmp);
    s.detect_over_infer = ratios.get(ratios.len() / 2).copied();
    s.parts = median_parts(&parts);
    Ok(s)
}

/// The images of `dir` (files that decode; others skipped) in [0, 1] at the size of bundle
/// `model`, as a Screen tensor carries them.
fn model_space_images(dir: &std::path::Path, models: &super::Models, model: &str) -> anyhow::Result<Vec<Vec<f32>>> {
    let (bundles, _) = crate::registry::load_models(models)?;
    let spec = bundles.iter().find(|b| b.name() == model).map(|b| b.manifest.input.clone()).ok_or_else(|| anyhow::anyhow!("no bundle {model}"))?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
    files.sort();
    let limits = DecodeLimits::default();
    let mut out = Vec::new();
    for f in files {
        let bytes = std::fs::read(&f)?;
        let image = if looks_like_dicom(&bytes) { crate::decode::decode_dicom(&bytes, &limits) } else { crate::decode::decode_raster(&bytes, &limits) };
        if let Ok(image) = image {
            out.push(crate::preprocess::to_model_space(&image, &spec));
        }
    }
    anyhow::ensure!(!out.is_empty(), "--images {}: no file there decodes as an image", dir.display());
    println!("{} images from {} sent in turn", out.len(), dir.display());
    Ok(out)
}

/// (skipped, full) of `medsentry_cascade_total` for `model` in this process, when it cascades.
fn cascade_counts(model: &str) -> Option<(f64, f64)> {
    let text = crate::metrics::render();
    let count = |decision| metric_value(&text, crate::metrics::CASCADE, &[("model", model), ("decision", decision)]);
    Some((count("skipped")?, count("full")?))
}

/// (rows, batches) the engine has run for `model` in this process (medsentry_batch_size).
fn batch_totals(model: &str) -> Option<(f64, f64)> {
    let text = crate::metrics::render();
    let value = |suffix| metric_value(&text, &format!("{}_{suffix}", crate::metrics::BATCH_SIZE), &[("model", model)]);
    Some((value("sum")?, value("count")?))
}

/// The value of the first sample of `name` in the rendered metrics `text` whose labels
/// include every `(key, value)` of `labels`.
fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .find_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
}

/// Deterministic pseudo-random pixels in [0, 1].
fn random_pixels(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

fn decode_costs(files: &[PathBuf], spec: Option<crate::bundle::InputSpec>) -> anyhow::Result<()> {
    let Some(spec) = spec else { return Ok(()) };
    if files.is_empty() {
        return Ok(());
    }
    println!("\n{:<40} {:>10} {:>14} {:>16}", "decode cost", "bytes", "decode ms", "preprocess ms");
    for f in files {
        let bytes = std::fs::read(f)?;
        let runs = 20;
        let (mut d, mut p) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let input = if looks_like_dicom(&bytes) { Input::Dicom(bytes.clone()) } else { Input::Image(bytes.clone()) };
            let prepared = pipeline::prepare(&input, &spec, &DecodeLimits::default(), pipeline::Extras::default())?;
            let (ds, ps) = (prepared.decode_s, prepared.preprocess_s);
            d.push(ds);
            p.push(ps);
        }
        d.sort_by(f64::total_cmp);
        p.sort_by(f64::total_cmp);
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        println!("{:<40} {:>10} {:>11.2} ms {:>13.2} ms", name, bytes.len(), d[runs / 2] * 1e3, p[runs / 2] * 1e3);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn metric_values_are_read_by_name_and_labels() {
        let text = "medsentry_x_total{model=\"a\",decision=\"full\"} 3\nmedsentry_x_total{model=\"b\",decision=\"full\"} 5\nmedsentry_x_total_more{model=\"b\"} 9\nmedsentry_y_sum{model=\"b\"} 7.5\n";
        assert_eq!(super::metric_value(text, "medsentry_x_total", &[("model", "b"), ("decision", "full")]), Some(5.0));
        assert_eq!(super::metric_value(text, "medsentry_x_total", &[("model", "c")]), None);
        assert_eq!(super::metric_value(text, "medsentry_y_sum", &[("model", "b")]), Some(7.5));
    }
}
