//! `medsentry audit` against the real server on real chest X-rays: the report's counts are
//! the server's own (/metrics moves by exactly the queries the audit sent and the flags it
//! saw), every query is logged, a reject policy shows up as refused rather than fooled,
//! and non-loopback targets are refused without --allow-remote.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use medsentry::cli::audit::{audit, AuditArgs, Protocol};

const MODEL: &str = "chest-xray-pneumonia";

fn images(dir: &Path) -> PathBuf {
    let out = dir.join("images");
    std::fs::create_dir_all(&out).unwrap();
    for (class, n) in [
        ("NORMAL", "IM-0001-0001.jpeg"),
        ("NORMAL", "IM-0003-0001.jpeg"),
        ("PNEUMONIA", "person100_bacteria_475.jpeg"),
        ("PNEUMONIA", "person101_bacteria_483.jpeg"),
    ] {
        std::fs::copy(data("chest_xray_kermany").join("images/test").join(class).join(n), out.join(n)).unwrap();
    }
    out
}

fn args(target: String, dir: &Path, eps: u8) -> AuditArgs {
    AuditArgs {
        target,
        protocol: Protocol::Sentry,
        model: MODEL.into(),
        images: images(dir),
        out: dir.join("out"),
        attacks: vec!["square".into(), "boundary".into()],
        eps,
        queries: 20,
        max_images: 4,
        uap: vec![repo().join("tests/fixtures/campaign").join(format!("{MODEL}__uap__linf_z4.npy"))],
        transfer: vec![],
        rate: 0.0,
        max_seconds: 600.0,
        allow_remote: false,
        fail_above: None,
        seed: 1,
        pixels: 3,
    }
}

fn outcome(r: &medsentry::cli::audit::AuditReport, key: &str) -> f64 {
    *r.outcomes.get(key).unwrap_or(&0) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_counts_are_the_servers_own() {
    let _serial = serial().await;
    let server = TestServer::ready(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let (_, before) = server.admin_get("/metrics");
    let report = audit(&args(server.grpc.to_string(), dir.path(), 8)).await.unwrap();
    let (_, after) = server.admin_get("/metrics");

    let sent = delta(&before, &after, "medsentry_requests_total", &[("model", MODEL), ("api", "screen")]);
    assert_eq!(sent, report.total_queries as f64, "every query the audit sent reached the server, and no other");
    let per_attack: usize = report.attacks.iter().map(|a| a.queries).sum::<usize>() + report.images.len();
    assert_eq!(per_attack, report.total_queries, "the per-attack query counts add up");
    for verdict in ["clean", "suspicious", "adversarial", "out_of_distribution"] {
        let server = delta(&before, &after, "medsentry_requests_total", &[("model", MODEL), ("api", "screen"), ("verdict", verdict)]);
        assert_eq!(server, outcome(&report, verdict), "{verdict}: the audit saw each verdict as often as the server counted it");
    }
    // The policy acts on ADVERSARIAL (annotate): the server's flag counter matches too.
    let flagged = delta(&before, &after, "medsentry_flagged_total", &[("model", MODEL), ("verdict", "adversarial")]);
    assert_eq!(flagged, outcome(&report, "adversarial"));
    assert_eq!(outcome(&report, "refused"), 0.0, "the default policy annotates");
    let names: Vec<&str> = report.attacks.iter().map(|a| a.attack.as_str()).collect();
    assert_eq!(names, ["square", "boundary", "replay"]);
    for a in &report.attacks {
        assert_eq!(a.images, 4, "{}", a.attack);
        assert!(a.fooled_and_passed <= a.fooled && a.flagged <= a.images);
    }
    let square = &report.attacks[0];
    assert!(square.per_image.iter().all(|r| r.linf <= 8), "Square stays within its Linf budget");
    let log = std::fs::read_to_string(dir.path().join("out/queries.jsonl")).unwrap();
    assert_eq!(log.lines().count(), report.total_queries, "every query is recorded");
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(first["sent_sha256"].as_str().unwrap().len(), 64);
    let md = std::fs::read_to_string(dir.path().join("out/REPORT.md")).unwrap();
    assert!(md.contains("| square | linf_8 | 20 | 4 |"), "{md}");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("out/report.json")).unwrap()).unwrap();
    assert_eq!(json["total_queries"].as_u64().unwrap() as usize, report.total_queries);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reject_endpoint_shows_up_as_refused_not_fooled() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(dir.path(), "[default]\naction = \"reject\"\n");
    let server = TestServer::ready(&["--policy", &policy]).await;
    let (_, before) = server.admin_get("/metrics");
    // A large budget: Square's +-32/255 stripes are what the detectors flag.
    let report = audit(&args(server.grpc.to_string(), dir.path(), 32)).await.unwrap();
    let (_, after) = server.admin_get("/metrics");
    let refused = outcome(&report, "refused");
    assert!(refused > 0.0, "the policy refused some attack inputs: {:?}", report.outcomes);
    let rejected = delta(&before, &after, "medsentry_policy_actions_total", &[("action", "reject"), ("shadow", "false")]);
    assert_eq!(rejected, refused, "each refusal the audit saw is one reject action of the server");
    for a in &report.attacks {
        for r in &a.per_image {
            if r.outcome == Some(medsentry::cli::audit::Outcome::Refused) {
                assert!(!(r.fooled && r.outcome.is_some_and(|o| o.passed())), "{} {}: a refused input never counts as passed", a.attack, r.image);
            }
        }
        assert!(a.fooled_and_passed <= a.images - a.refused, "{}", a.attack);
    }
    server.stop().await.unwrap();
}

/// The few-pixel attack on tensors at the model's size (where single pixels are not
/// averaged away): every candidate changes at most 3 pixels, within the query budget, and
/// each query is one ModelInfer the server counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_few_pixel_attack_changes_at_most_its_pixels() {
    let _serial = serial().await;
    let server = TestServer::ready(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut a = args(server.grpc.to_string(), dir.path(), 8);
    a.protocol = Protocol::OipFp32;
    a.attacks = vec!["pixels".into()];
    a.uap.clear();
    let (_, before) = server.admin_get("/metrics");
    let report = audit(&a).await.unwrap();
    let (_, after) = server.admin_get("/metrics");
    assert_eq!(delta(&before, &after, "medsentry_requests_total", &[("model", MODEL), ("api", "oip")]), report.total_queries as f64);
    let pixels = &report.attacks[0];
    assert_eq!((pixels.attack.as_str(), pixels.setting.as_str(), pixels.images), ("pixels", "l0_3", 4));
    for r in &pixels.per_image {
        assert!(r.queries <= 20, "{}: {} queries", r.image, r.queries);
        // RMS over 64x64 grey pixels with at most 3 changed by at most 255 each.
        assert!(r.rms <= (3.0f64 * 255.0 * 255.0 / 4096.0).sqrt() + 1e-9, "{}: rms {}", r.image, r.rms);
    }
    server.stop().await.unwrap();
}

/// The same audit over the Open Inference Protocol, with PNG bytes and with FP32 tensors
/// at the model's size (a Triton model's input; what medsentry's proxy mode screens).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_inference_protocol_is_audited_with_bytes_and_tensors() {
    let _serial = serial().await;
    let server = TestServer::ready(&[]).await;
    for protocol in [Protocol::OipBytes, Protocol::OipFp32] {
        let dir = tempfile::tempdir().unwrap();
        let (_, before) = server.admin_get("/metrics");
        let mut a = args(server.grpc.to_string(), dir.path(), 8);
        a.protocol = protocol;
        a.attacks = vec!["square".into()];
        let report = audit(&a).await.unwrap();
        let (_, after) = server.admin_get("/metrics");
        let sent = delta(&before, &after, "medsentry_requests_total", &[("model", MODEL), ("api", "oip")]);
        assert_eq!(sent, report.total_queries as f64, "{protocol:?}: every query reached ModelInfer");
        for verdict in ["clean", "suspicious", "adversarial"] {
            let server = delta(&before, &after, "medsentry_requests_total", &[("model", MODEL), ("api", "oip"), ("verdict", verdict)]);
            assert_eq!(server, outcome(&report, verdict), "{protocol:?} {verdict}: read from medsentry.verdict");
        }
        assert_eq!(outcome(&report, "error"), 0.0, "{protocol:?}: {:?}", report.outcomes);
        assert!(report.attacks.iter().all(|a| a.images == 4), "{protocol:?}: a top label for every clean image");
        if protocol == Protocol::OipFp32 {
            let square = &report.attacks[0];
            assert!(square.per_image.iter().all(|r| r.linf <= 8), "Square stays within its budget at the model's size");
            let md = std::fs::read_to_string(dir.path().join("out/REPORT.md")).unwrap();
            assert!(md.contains("(oip-fp32)"), "{md}");
        }
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_remote_target_needs_allow_remote() {
    let dir = tempfile::tempdir().unwrap();
    let err = audit(&args("192.0.2.7:50051".into(), dir.path(), 8)).await.unwrap_err().to_string();
    assert!(err.contains("--allow-remote"), "{err}");
    assert!(!dir.path().join("out/queries.jsonl").exists(), "nothing was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_set_is_replayed_once_per_matching_image() {
    let _serial = serial().await;
    let server = TestServer::ready(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut a = args(server.grpc.to_string(), dir.path(), 8);
    a.attacks = vec![];
    a.uap = vec![];
    // A "surrogate" set for three of the four images: one unchanged copy, two inverted
    // (a change no budget allows, so the accounting is what is checked, not the attack).
    let set = dir.path().join("surrogate-pgd");
    std::fs::create_dir_all(&set).unwrap();
    let clean = images(dir.path());
    for (i, n) in ["IM-0001-0001.jpeg", "IM-0003-0001.jpeg", "person100_bacteria_475.jpeg"].iter().enumerate() {
        let mut img = image::open(clean.join(n)).unwrap().to_luma8();
        if i > 0 {
            image::imageops::invert(&mut img);
        }
        img.save_with_format(set.join(n), image::ImageFormat::Png).unwrap();
    }
    a.transfer = vec![set];
    let (_, before) = server.admin_get("/metrics");
    let report = audit(&a).await.unwrap();
    let (_, after) = server.admin_get("/metrics");
    assert_eq!(delta(&before, &after, "medsentry_requests_total", &[("model", MODEL), ("api", "screen")]), report.total_queries as f64);
    assert_eq!(report.total_queries, 4 + 3, "the clean pass, then one query per matching file");
    let t = &report.attacks[0];
    assert_eq!((t.attack.as_str(), t.images, t.queries), ("transfer", 3, 3));
    assert!(!t.per_image[0].fooled, "the unchanged copy moves nothing");
    assert!(t.fooled_and_passed <= t.fooled && t.flagged <= t.images);
    let md = std::fs::read_to_string(dir.path().join("out/REPORT.md")).unwrap();
    assert!(md.contains("| transfer | surrogate-pgd | 1 | 3 | 3 |"), "{md}");
    server.stop().await.unwrap();
}
