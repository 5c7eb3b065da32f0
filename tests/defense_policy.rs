//! Policies over real gRPC: reject, quarantine (with DICOM de-identification checked tag
//! by tag), shadow mode, and fail_open / fail_closed when the quarantine cannot write or a
//! detector cannot score. Inputs are the pipeline's AdvTest examples and real DICOM files.

mod common;

use common::*;
use medsentry::proto::Verdict;
use tonic::Code;
use tonic_types::StatusExt;

const MODEL: &str = "chest-xray-pneumonia";
/// Scored ADVERSARIAL by the Mahalanobis detector (11.1 against 7.77): an adult chest CR,
/// out of the pediatric training distribution. It carries patient tags to de-identify.
/// An adult PA chest CR: the pediatric chest bundle answers it OUT_OF_DISTRIBUTION (its
/// image statistics), which the quarantine test's policy quarantines.
const FLAGGED_DICOM: &str = "dicom/RG1_UNCR.dcm";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_refuses_flagged_inputs_with_what_fired_and_serves_clean_ones() {
    let _serial = serial().await;
    let before = metrics_now();
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(dir.path(), "[default]\naction = \"reject\"\n");
    let server = TestServer::ready(&["--policy", &policy]).await;
    let mut client = server.client().await;
    let (clean, flagged) = sample_pair();

    let ok = client.screen(tensor_request("clean", vec![1, 64, 64], clean)).await.expect("clean input answered").into_inner();
    let s = ok.screening.unwrap();
    assert_eq!(s.verdict, Verdict::Clean as i32);
    assert_eq!(s.action, "", "a clean input is not acted on");

    let err = client.screen(tensor_request("adv", vec![1, 64, 64], flagged)).await.expect_err("flagged input refused");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(err.metadata().get("medsentry-reason").unwrap(), "rejected_by_policy");
    assert!(err.message().contains("VERDICT ADVERSARIAL") || err.message().contains("verdict ADVERSARIAL"), "{}", err.message());
    assert!(err.message().contains("> threshold"), "{}", err.message());
    let info = err.get_details_error_info().expect("google.rpc.ErrorInfo attached");
    assert_eq!(info.reason, "REJECTED_BY_POLICY");
    assert_eq!(info.metadata["verdict"], "adversarial");
    let fired: Vec<&String> = info.metadata.iter().filter(|(k, v)| k.ends_with(".fired") && *v == "true").map(|(k, _)| k).collect();
    assert!(!fired.is_empty(), "{:?}", info.metadata);

    // The server keeps serving after a refusal.
    assert!(client.screen(tensor_request("again", vec![1, 64, 64], sample_pair().0)).await.is_ok());
    let (_, m) = server.admin_get("/metrics");
    assert_eq!(delta(&before, &m, "medsentry_policy_actions_total", &[("action", "reject"), ("shadow", "false")]), 1.0);
    assert_eq!(delta(&before, &m, "medsentry_flagged_total", &[("verdict", "adversarial")]), 1.0);
    assert_eq!(delta(&before, &m, "medsentry_errors_total", &[("reason", "rejected_by_policy")]), 1.0);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_records_the_rejection_and_answers_anyway() {
    let _serial = serial().await;
    let before = metrics_now();
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(dir.path(), &format!("[models.\"{MODEL}\"]\naction = \"reject\"\nshadow = true\n"));
    let server = TestServer::ready(&["--policy", &policy]).await;
    let mut client = server.client().await;
    let resp = client.screen(tensor_request("adv", vec![1, 64, 64], sample_pair().1)).await.expect("shadow mode answers").into_inner();
    let s = resp.screening.unwrap();
    assert_eq!(s.verdict, Verdict::Adversarial as i32);
    assert_eq!(s.action, "shadow:reject");
    assert!(s.note.contains("would have rejected"), "{}", s.note);
    let (_, m) = server.admin_get("/metrics");
    assert_eq!(delta(&before, &m, "medsentry_policy_actions_total", &[("action", "reject"), ("shadow", "true")]), 1.0);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_keeps_the_flagged_dicom_without_patient_identifiers() {
    let _serial = serial().await;
    let before = metrics_now();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("quarantine");
    let policy = write_policy(
        dir.path(),
        &format!(
            "[default]\naction = \"quarantine\"\nout_of_distribution = \"quarantine\"\nafter_quarantine = \"reject\"\n[quarantine]\ndir = \"{}\"\n",
            store.display()
        ),
    );
    let server = TestServer::ready(&["--policy", &policy]).await;
    let mut client = server.client().await;
    let original = std::fs::read(data(FLAGGED_DICOM)).unwrap();
    let err = client.screen(dicom_request("1.2.840.99999.1", original.clone())).await.expect_err("flagged and rejected");
    assert_eq!(err.code(), Code::PermissionDenied);
    let id = err.get_details_error_info().unwrap().metadata["quarantine_id"].clone();
    assert!(err.message().contains(&id));

    // Written (and fsynced) before the answer: the entry is there now.
    let records = medsentry::quarantine::list_records(&store).unwrap();
    assert_eq!(records.len(), 1);
    let rec = &records[0];
    assert_eq!((rec.id.as_str(), rec.input_kind.as_str(), rec.verdict.as_str(), rec.policy.as_str()), (id.as_str(), "dicom", "out_of_distribution", "reject"));
    assert!(rec.deidentified && rec.model == MODEL && !rec.classifier_sha256.is_empty());
    assert!(rec.detectors.len() >= 3, "the detectors' scores are recorded too");
    assert_ne!(rec.request_id_sha256, "1.2.840.99999.1");
    let kept = std::fs::read(store.join(&rec.object)).unwrap();
    assert_eq!(hex_sha256(&kept), id, "content-addressed");
    assert_no_identifiers(&original, &kept);

    // Same pixels: the stored file is still the screened image.
    let limits = medsentry::decode::DecodeLimits::default();
    let (a, b) = (medsentry::decode::decode_dicom(&original, &limits).unwrap(), medsentry::decode::decode_dicom(&kept, &limits).unwrap());
    assert_eq!((a.width, a.height, a.channels), (b.width, b.height, b.channels));
    assert!(a.data == b.data, "de-identification must not touch the pixels");

    let (_, m) = server.admin_get("/metrics");
    assert_eq!(delta(&before, &m, "medsentry_quarantine_writes_total", &[("result", "written")]), 1.0);
    assert!(metric(&m, "medsentry_quarantine_bytes", &[]) >= kept.len() as f64);
    server.stop().await.unwrap();
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Every tag of the de-identification profile is gone, emptied or a dummy, no private tag
/// is left, and no original identifying value appears anywhere in the stored bytes.
fn assert_no_identifiers(original: &[u8], kept: &[u8]) {
    use dicom_object::from_reader;
    let open = |b: &[u8]| from_reader(std::io::Cursor::new(&b[128..])).unwrap();
    let (before, after) = (open(original), open(kept));
    let mut checked = 0;
    for &(group, element, keyword) in medsentry::quarantine::deid::profile_tags() {
        let tag = dicom_core::Tag(group, element);
        let old = before.element(tag).ok().and_then(|e| e.to_str().ok()).map(|s| s.trim().to_string()).unwrap_or_default();
        if let Ok(new) = after.element(tag) {
            let new = new.to_str().map(|s| s.trim().to_string()).unwrap_or_default();
            assert!(old.is_empty() || new != old, "{keyword} {tag} kept its value {old:?}");
        }
        if old.len() >= 4 {
            checked += 1;
            let found = kept.windows(old.len()).any(|w| w == old.as_bytes());
            assert!(!found, "{keyword} value {old:?} still appears in the stored bytes");
        }
    }
    assert!(checked >= 3, "the fixture should carry identifying values to remove (checked {checked})");
    assert!(after.iter().all(|e| e.header().tag.0 % 2 == 0), "a private tag survived");
    assert_eq!(after.element(dicom_core::Tag(0x0012, 0x0062)).unwrap().to_str().unwrap().trim(), "YES");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_quarantine_follows_fail_closed_and_fail_open() {
    let _serial = serial().await;
    let before = metrics_now();
    for (mode, expect_ok) in [("fail_closed", false), ("fail_open", true)] {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("q");
        let policy =
            write_policy(dir.path(), &format!("[default]\naction = \"quarantine\"\non_failure = \"{mode}\"\n[quarantine]\ndir = \"{}\"\n", store.display()));
        let server = TestServer::ready(&["--policy", &policy]).await;
        // The disk goes bad after start-up (works as root too, unlike permission bits).
        std::fs::remove_dir_all(store.join("objects")).unwrap();
        std::fs::write(store.join("objects"), b"not a folder").unwrap();
        let mut client = server.client().await;
        let result = client.screen(tensor_request("adv", vec![1, 64, 64], sample_pair().1)).await;
        if expect_ok {
            let s = result.expect("fail_open answers").into_inner().screening.unwrap();
            assert_eq!(s.verdict, Verdict::Adversarial as i32);
            assert!(s.note.contains("quarantine failed"), "{}", s.note);
            assert_eq!(s.quarantine_id, "");
        } else {
            let err = result.expect_err("fail_closed refuses");
            assert_eq!(err.code(), Code::Unavailable, "{err:?}");
            assert_eq!(err.metadata().get("medsentry-reason").unwrap(), "quarantine_failed");
        }
        // Still serving: a clean input is answered.
        assert!(client.screen(tensor_request("clean", vec![1, 64, 64], sample_pair().0)).await.is_ok(), "{mode}");
        let (_, m) = server.admin_get("/metrics");
        assert!(delta(&before, &m, "medsentry_quarantine_write_failures_total", &[("reason", "io")]) >= 1.0);
        assert!(delta(&before, &m, "medsentry_policy_actions_total", &[("action", mode)]) >= 1.0);
        server.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detector_that_cannot_score_follows_the_failure_mode() {
    let _serial = serial().await;
    let before = metrics_now();
    // A copy of the bundle whose Mahalanobis precision overflows to infinity on any input.
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let bundle = copy_bundle(&models, MODEL);
    let det_path = bundle.join("detector_mahalanobis.json");
    let mut det: serde_json::Value = serde_json::from_slice(&std::fs::read(&det_path).unwrap()).unwrap();
    for row in det["precision"].as_array_mut().unwrap() {
        row.as_array_mut().unwrap().iter_mut().for_each(|v| *v = serde_json::json!(1.7e308));
    }
    let bytes = serde_json::to_vec(&det).unwrap();
    let toml = std::fs::read_to_string(bundle.join("bundle.toml")).unwrap();
    let old = toml.lines().find(|l| l.starts_with("\"detector_mahalanobis.json\"")).unwrap().to_string();
    std::fs::write(bundle.join("bundle.toml"), toml.replace(&old, &format!("\"detector_mahalanobis.json\" = \"{}\"", hex_sha256(&bytes)))).unwrap();
    std::fs::write(&det_path, bytes).unwrap();

    for (mode, expect_ok) in [("fail_closed", false), ("fail_open", true)] {
        let policy = write_policy(dir.path(), &format!("[default]\non_failure = \"{mode}\"\n"));
        let server = TestServer::ready(&["--models-dir", &models.display().to_string(), "--policy", &policy]).await;
        let mut client = server.client().await;
        let result = client.screen(tensor_request("x", vec![1, 64, 64], sample_pair().0)).await;
        if expect_ok {
            let s = result.expect("fail_open answers").into_inner().screening.unwrap();
            assert!(s.note.contains("mahalanobis") && s.note.contains("could not score"), "{}", s.note);
            // The fused detector reads Mahalanobis, so it could not score either; the other
            // detectors still ran and gave the verdict.
            assert_eq!(s.verdict, Verdict::Clean as i32);
        } else {
            let err = result.expect_err("fail_closed refuses");
            assert_eq!(err.code(), Code::Internal);
            assert_eq!(err.metadata().get("medsentry-reason").unwrap(), "detector_failed");
        }
        let (_, m) = server.admin_get("/metrics");
        assert!(delta(&before, &m, "medsentry_detector_failures_total", &[("detector", "mahalanobis")]) >= 1.0);
        server.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_detector_does_not_run_and_an_unknown_one_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(dir.path(), &format!("[models.\"{MODEL}\"]\ndisable_detectors = [\"feature-squeezing\"]\n"));
    let server = TestServer::ready(&["--policy", &policy]).await;
    let mut client = server.client().await;
    let s = client.screen(tensor_request("x", vec![1, 64, 64], sample_pair().0)).await.unwrap().into_inner().screening.unwrap();
    let names: Vec<&str> = s.detectors.iter().map(|d| d.name.as_str()).collect();
    // The fused detector reads feature squeezing: it does not run either (README, "Verdicts").
    assert_eq!(names, ["mahalanobis", "learned-logistic", "residual-statistics"]);
    server.stop().await.unwrap();

    let policy = write_policy(dir.path(), &format!("[models.\"{MODEL}\"]\ndisable_detectors = [\"squeezing\"]\n"));
    let server = TestServer::start(&["--policy", &policy]).await;
    let err = server.task.await.unwrap().expect_err("start-up refused");
    assert!(format!("{err:#}").contains("\"squeezing\"") && format!("{err:#}").contains("feature-squeezing"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_naming_an_unknown_model_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(dir.path(), "[models.\"no-such-model\"]\naction = \"reject\"\n");
    let server = TestServer::start(&["--policy", &policy]).await;
    let err = server.task.await.unwrap().expect_err("start-up refused");
    assert!(format!("{err:#}").contains("no-such-model"), "{err:#}");
}

fn metrics_now() -> String {
    medsentry::metrics::render()
}
