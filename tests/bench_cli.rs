//! `medsentry bench` end to end: it starts the real server in-process with the flags'
//! defaults, screens through gRPC, runs the bare ONNX Runtime baseline and prints the
//! ratios. (A default that failed the server's own validation once made it exit with a
//! bare "connection reset".)

mod common;

use common::*;

#[test]
fn bench_runs_the_server_and_the_baseline_and_prints_ratios() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_medsentry"))
        .args(["bench", "--model", "pneumoniamnist-28", "--requests", "16", "--concurrency", "1,2", "--repeats", "3", "--intra-threads", "2", "--models-dir"])
        .arg(models_dir())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("pneumoniamnist-28"), "{text}");
    assert!(text.to_lowercase().contains("ratio"), "the comparison with bare ONNX Runtime is printed: {text}");
    assert!(text.contains("median of 3 repeat(s)"), "{text}");
    // Each level's row carries the range of its repeats: [lowest-highest].
    let rows: Vec<&str> = text.lines().filter(|l| l.trim_start().starts_with(['1', '2']) && l.contains('|')).collect();
    assert_eq!(rows.len(), 2, "{text}");
    for row in rows {
        let ranges: Vec<(f64, f64)> = row
            .split('[')
            .skip(1)
            .filter_map(|r| r.split_once(']')?.0.split_once('-').map(|(a, b)| (a.trim().parse().unwrap(), b.trim().parse().unwrap())))
            .collect();
        assert_eq!(ranges.len(), 2, "{row}");
        assert!(ranges.iter().all(|(lo, hi)| lo <= hi), "{row}");
    }
}
