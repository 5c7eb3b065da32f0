//! OUT_OF_DISTRIBUTION through the real server: the image-statistics score matches the
//! pipeline's (tests/fixtures/ood, written by `python -m medsentry_training.ood`); real
//! images that are not pediatric chest X-rays (MR, CT, NM, US, adult CR and RGB DICOMs,
//! dermoscopy photographs, retinal OCT scans) sent to the chest bundle are answered
//! OUT_OF_DISTRIBUTION and never ADVERSARIAL, and so are radiographs and OCT scans sent to
//! the dermoscopy bundle; the clean official chest test set rarely is;
//! the policy's `out_of_distribution` action and the counter work.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use medsentry::proto::sentry_client::SentryClient;
use medsentry::proto::Verdict;
use tonic::transport::Channel;
use tonic::Code;

const BUNDLES: &[&str] = &[CHEST, "pneumoniamnist-28", "dermoscopy-isic2018"];

fn files_under(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, ext, out);
        } else if p.extension().is_some_and(|x| x.eq_ignore_ascii_case(ext)) {
            out.push(p);
        }
    }
}

/// `n` files spread evenly over the sorted files of a data set.
fn spread(set: &str, ext: &str, n: usize) -> Vec<PathBuf> {
    let mut all = Vec::new();
    files_under(&data(set), ext, &mut all);
    all.sort();
    if n >= all.len() {
        return all;
    }
    let step = all.len() as f64 / n as f64;
    (0..n.min(all.len())).map(|i| all[(i as f64 * step) as usize].clone()).collect()
}

fn request(model: &str, path: &Path) -> medsentry::proto::ScreenRequest {
    let bytes = std::fs::read(path).unwrap();
    let mut r = if path.extension().is_some_and(|x| x == "dcm") { dicom_request("ood", bytes) } else { image_request("ood", bytes) };
    r.model = model.into();
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_out_of_distribution_score_matches_the_pipeline() {
    // Every test here screens through a server and moves the process-wide counters the
    // policy test compares (the clean test set has a few ADVERSARIAL answers of its own).
    let _serial = serial().await;
    let server = TestServer::ready(&[]).await;
    let mut client = server.client().await;
    for bundle in BUNDLES {
        let fixture: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(repo().join(format!("tests/fixtures/ood/{bundle}.json"))).unwrap()).unwrap();
        let b = repo_bundle(bundle);
        let i = &b.manifest.input;
        for case in fixture["cases"].as_array().unwrap() {
            let tensor: Vec<f32> = case["tensor"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
            let mut req = tensor_request("parity", vec![i.channels as i64, i.height as i64, i.width as i64], tensor);
            req.model = bundle.to_string();
            let s = client.screen(req).await.unwrap().into_inner().screening.unwrap();
            let ood = s.out_of_distribution.expect("the bundle has an [ood] model");
            let want = case["score"].as_f64().unwrap();
            eprintln!("{bundle} {}: sidecar {} pipeline {want:.3}", case["file"], ood.score);
            // The fixture's tensors are rounded to 7 decimals and the features come from
            // another build of ONNX Runtime: scores agree to 0.1 %.
            assert!((ood.score as f64 - want).abs() <= 1e-3 * want.max(1.0), "{bundle}: {} vs {want}", ood.score);
            assert_eq!(ood.threshold as f64, b.manifest.ood.as_ref().unwrap().threshold as f64);
        }
    }
    server.stop().await.unwrap();
}

/// Screens `files` on `model`; asserts none is ADVERSARIAL and at least 95 % are
/// OUT_OF_DISTRIBUTION (files decode refuses are skipped, at most all but 10).
async fn assert_out_of_distribution(client: &mut SentryClient<Channel>, model: &str, set: &str, files: &[PathBuf]) {
    let (mut screened, mut ood, mut adversarial) = (0, 0, Vec::new());
    for f in files {
        let s = match client.screen(request(model, f)).await {
            Ok(r) => r.into_inner().screening.unwrap(),
            Err(e) if e.code() == Code::InvalidArgument => {
                eprintln!("{}: refused by decode ({})", f.display(), e.message());
                continue;
            }
            Err(e) => panic!("{}: {e}", f.display()),
        };
        screened += 1;
        ood += (s.verdict == Verdict::OutOfDistribution as i32) as usize;
        if s.verdict == Verdict::Adversarial as i32 {
            adversarial.push(f.display().to_string());
        }
        if set == "dicom" {
            let reason = s.out_of_distribution.map(|o| o.reason).unwrap_or_default();
            eprintln!("{}: {:?} {reason}", f.file_name().unwrap().to_string_lossy(), Verdict::try_from(s.verdict).unwrap());
        }
    }
    let rate = ood as f64 / screened.max(1) as f64;
    eprintln!("{set} sent to {model}: {ood}/{screened} OUT_OF_DISTRIBUTION ({:.1} %), {} ADVERSARIAL", 100.0 * rate, adversarial.len());
    assert!(screened >= files.len().min(10), "{set}: only {screened} of {} screened", files.len());
    assert!(adversarial.is_empty(), "{set}: unfamiliar images called attacks: {adversarial:?}");
    assert!(rate >= 0.95, "{set} sent to {model}: only {:.1} % out of distribution", 100.0 * rate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_that_are_not_pediatric_chest_x_rays_are_out_of_distribution_not_adversarial() {
    let _serial = serial().await;
    let server = TestServer::ready(&[]).await;
    let mut client = server.client().await;
    let mut dicoms = Vec::new();
    files_under(&data("dicom"), "dcm", &mut dicoms);
    dicoms.sort();
    assert_out_of_distribution(&mut client, CHEST, "dicom", &dicoms).await;
    assert_out_of_distribution(&mut client, CHEST, "dermoscopy", &spread("dermoscopy_isic2018", "jpg", 200)).await;
    assert_out_of_distribution(&mut client, CHEST, "oct", &spread("oct_kermany", "jpeg", 200)).await;
    server.stop().await.unwrap();
}

/// Grayscale images sent to the colour dermoscopy bundle: its [accepts] min_chroma (every
/// dermoscopy training photograph is above 0.036; a radiograph or OCT scan is 0) decides
/// where the image statistics alone left 7.5 % of chest X-rays in distribution.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn radiographs_and_oct_scans_sent_to_the_dermoscopy_model_are_out_of_distribution() {
    let _serial = serial().await;
    let server = TestServer::ready(&[]).await;
    let mut client = server.client().await;
    let derm = "dermoscopy-isic2018";
    let xrays = spread("chest_xray_kermany/images/test", "jpeg", 200);
    assert_out_of_distribution(&mut client, derm, "chest X-rays", &xrays).await;
    assert_out_of_distribution(&mut client, derm, "oct", &spread("oct_kermany", "jpeg", 200)).await;
    let s = client.screen(request(derm, &xrays[0])).await.unwrap().into_inner().screening.unwrap();
    let reason = s.out_of_distribution.unwrap().reason;
    assert!(reason.contains("grayscale image") && reason.contains("colour model"), "{reason}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clean_official_chest_test_set_is_rarely_out_of_distribution() {
    let _serial = serial().await;
    let server = TestServer::ready(&[]).await;
    let mut client = server.client().await;
    let files = spread("chest_xray_kermany/images/test", "jpeg", usize::MAX);
    let mut ood = Vec::new();
    for f in &files {
        let s = client.screen(request(CHEST, f)).await.unwrap().into_inner().screening.unwrap();
        if s.verdict == Verdict::OutOfDistribution as i32 {
            ood.push(f.file_name().unwrap().to_string_lossy().to_string());
        }
    }
    let rate = ood.len() as f64 / files.len() as f64;
    eprintln!("clean official test: {}/{} OUT_OF_DISTRIBUTION ({:.2} %): {ood:?}", ood.len(), files.len(), 100.0 * rate);
    assert_eq!(files.len(), 624);
    // Target 1 %; calibrated at 0.5 % on the training set (out-of-fold), the test set's
    // rate is 1.1 % in the pipeline (README, "Out of distribution"): a regression guard.
    assert!(rate <= 0.015, "{:.2} % of clean chest X-rays called out of distribution", 100.0 * rate);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_decides_what_happens_to_out_of_distribution_inputs() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let mr = data("dicom/MR_small.dcm");
    // Default: annotate, counted by evidence, no attack counters.
    let server = TestServer::ready(&[]).await;
    let mut client = server.client().await;
    let (_, before) = server.admin_get("/metrics");
    let s = client.screen(request(CHEST, &mr)).await.unwrap().into_inner().screening.unwrap();
    assert_eq!(s.verdict, Verdict::OutOfDistribution as i32);
    assert_eq!(s.action, "annotate");
    assert!(s.note.contains("Modality \"MR\""), "{}", s.note);
    let (_, after) = server.admin_get("/metrics");
    assert_eq!(delta(&before, &after, "medsentry_out_of_distribution_total", &[("model", CHEST), ("evidence", "dicom_header")]), 1.0);
    assert_eq!(delta(&before, &after, "medsentry_flagged_total", &[("model", CHEST), ("verdict", "adversarial")]), 0.0);
    server.stop().await.unwrap();

    // `out_of_distribution = "reject"`: refused with the reason, attack verdicts untouched.
    let policy = write_policy(dir.path(), &format!("[models.\"{CHEST}\"]\nout_of_distribution = \"reject\"\n"));
    let server = TestServer::ready(&["--policy", &policy]).await;
    let mut client = server.client().await;
    let err = client.screen(request(CHEST, &mr)).await.expect_err("rejected");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("OUT_OF_DISTRIBUTION") && err.message().contains("Modality"), "{}", err.message());
    let (clean, _) = sample_pair();
    let ok = client.screen(tensor_request("clean", vec![1, 64, 64], clean)).await.expect("in-distribution inputs pass");
    assert_eq!(ok.into_inner().screening.unwrap().verdict, Verdict::Clean as i32);
    server.stop().await.unwrap();
}
