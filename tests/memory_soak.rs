//! Memory under ordinary load: 64 callers send real chest X-rays (JPEG), radiographs as
//! DICOM (uncompressed and JPEG 2000) and tensors to the real binary for a bounded time;
//! resident memory after warm-up must stay flat: the median within 10 %, the peak within 25 %.
//!
//! The suite runs it for 120 s (debug build). `scripts/soak.sh` runs the same test for 10
//! minutes on the release build (MEDSENTRY_SOAK_SECS, MEDSENTRY_SOAK_CALLERS).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::capped::CappedServer;
use common::*;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn requests() -> Vec<medsentry::proto::ScreenRequest> {
    let mut out = Vec::new();
    for dir in ["NORMAL", "PNEUMONIA"] {
        let folder = data(&format!("chest_xray_kermany/images/test/{dir}"));
        let mut files: Vec<_> = std::fs::read_dir(&folder).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for f in files.into_iter().take(24) {
            out.push(image_request("jpeg", std::fs::read(f).unwrap()));
        }
    }
    for f in ["RG1_UNCR.dcm", "RG3_J2KR.dcm", "MR2_UNCR.dcm", "CT_small.dcm"] {
        out.push(dicom_request(f, std::fs::read(data(&format!("dicom/{f}"))).unwrap()));
    }
    out.push(tensor_request("tensor", vec![1, 1, 64, 64], vec![0.25; 4096]));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resident_memory_stays_flat_under_64_callers() {
    let secs = env_or("MEDSENTRY_SOAK_SECS", 120);
    let callers = env_or("MEDSENTRY_SOAK_CALLERS", 64);
    let mut server = CappedServer::start(4 << 30, &[]).await;
    let pid = server.pid();
    let reqs = Arc::new(requests());
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let end = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for c in 0..callers {
        let (reqs, done, failed) = (reqs.clone(), done.clone(), failed.clone());
        let mut client = server.client().await;
        tasks.push(tokio::spawn(async move {
            let mut i = c as usize * 7;
            while Instant::now() < end {
                let req = reqs[i % reqs.len()].clone();
                i += 1;
                match client.screen(req).await {
                    Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{}", e.message());
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    // Resident memory once a second. Warm-up is the first quarter of the run; what is in
    // flight moves resident memory up and down (within the decode budget: one more 7 MB
    // DICOM decode in flight at the sampling instant is +20 MiB), so a leak is judged on
    // the median of the last half of the rest against the median of its first half, and
    // the peaks are held to a looser bound.
    let rss = || {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = s.lines().find(|l| l.starts_with("VmRSS")).unwrap().to_string();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() << 10
    };
    let started = Instant::now();
    let mut samples: Vec<(f64, u64)> = Vec::new();
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(1)).await;
        samples.push((started.elapsed().as_secs_f64(), rss()));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(server.alive(), "the server died under load");
    let warm = samples.len() / 4;
    let mid = warm + (samples.len() - warm) / 2;
    let peak = |s: &[(f64, u64)]| s.iter().map(|x| x.1).max().unwrap();
    let median = |s: &[(f64, u64)]| {
        let mut v: Vec<u64> = s.iter().map(|x| x.1).collect();
        v.sort_unstable();
        v[v.len() / 2]
    };
    let (first, second) = (peak(&samples[warm..mid]), peak(&samples[mid..]));
    let (first_median, second_median) = (median(&samples[warm..mid]), median(&samples[mid..]));
    let (n, shed) = (done.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("{callers} callers, {secs} s: {n} calls answered ({:.0}/s), {shed} shed", n as f64 / secs as f64);
    eprintln!(
        "resident median / peak {:.0}-{:.0} s: {} / {} MiB; {:.0}-{:.0} s: {} / {} MiB",
        samples[warm].0,
        samples[mid].0,
        first_median >> 20,
        first >> 20,
        samples[mid].0,
        samples.last().unwrap().0,
        second_median >> 20,
        second >> 20
    );
    let curve: Vec<String> = samples.iter().step_by((samples.len() / 12).max(1)).map(|(t, r)| format!("{t:.0}s:{}", r >> 20)).collect();
    eprintln!("curve (MiB): {}", curve.join(" "));
    assert!(n > 0, "no call answered");
    assert!(second_median as f64 <= first_median as f64 * 1.10, "resident memory grew: median {} MiB, then {} MiB", first_median >> 20, second_median >> 20);
    assert!(second as f64 <= first as f64 * 1.25, "resident peaks grew: {} MiB, then {} MiB", first >> 20, second >> 20);
    assert!(second < 1 << 30, "peak resident memory {} MiB is over the Deployment's 1 GiB", second >> 20);
}
