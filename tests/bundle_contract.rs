//! The bundle contract: a bundle whose files do not match their sha256, whose input spec
//! does not match the graph, or whose detectors cannot run is refused at start-up with a
//! message naming the problem; the embedded default bundle is the one in models/.

mod common;

use std::path::Path;

use common::*;
use medsentry::bundle::{self, Bundle, BundleError};

const MODEL: &str = "chest-xray-pneumonia";

fn edit_toml(dir: &Path, from: &str, to: &str) {
    let p = dir.join("bundle.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains(from), "bundle.toml has no {from:?}");
    std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
}

async fn start_error(models_dir: &Path) -> String {
    let server = TestServer::start(&["--models-dir", models_dir.to_str().unwrap()]).await;
    let err = tokio::time::timeout(std::time::Duration::from_secs(30), server.task).await.unwrap().unwrap().unwrap_err();
    format!("{err:#}")
}

#[test]
fn the_embedded_bundle_is_the_default_bundle_in_models() {
    let on_disk = Bundle::load_dir(&repo().join("models").join(MODEL), &[]).unwrap();
    let embedded = Bundle::embedded().expect("the build embeds the default bundle").unwrap();
    assert_eq!(embedded.classifier_sha256(), on_disk.classifier_sha256());
    let missing = tempfile::tempdir().unwrap().path().join("no-such-folder");
    let served = bundle::load_all(&missing, &[]).unwrap();
    assert_eq!(served.len(), 1);
    assert!(served[0].dir.is_none(), "falls back to the embedded bundle");
}

#[tokio::test]
async fn a_models_dir_that_does_not_exist_is_refused_not_replaced_by_the_embedded_bundle() {
    let missing = tempfile::tempdir().unwrap().path().join("typo-in-the-path");
    let err = start_error(&missing).await;
    assert!(err.contains("does not exist") && err.contains("typo-in-the-path"), "{err}");
}

#[test]
fn a_modified_classifier_is_refused_by_checksum() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_bundle(tmp.path(), MODEL);
    let mut onnx = std::fs::read(dir.join("classifier.onnx")).unwrap();
    let last = onnx.len() - 1;
    onnx[last] ^= 0x01;
    std::fs::write(dir.join("classifier.onnx"), onnx).unwrap();
    let err = Bundle::load_dir(&dir, &[]).unwrap_err();
    assert!(matches!(err, BundleError::Checksum { .. }), "{err}");
    assert!(err.to_string().contains("classifier.onnx"), "{err}");
}

#[test]
fn a_detector_without_threshold_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_bundle(tmp.path(), MODEL);
    let text = std::fs::read_to_string(dir.join("bundle.toml")).unwrap();
    let with_detector =
        text.replacen("[files]", "[[detectors]]\nname = \"maha\"\nkind = \"mahalanobis\"\nfile = \"classifier.onnx\"\ncalibrated_fpr = 0.01\n\n[files]", 1);
    std::fs::write(dir.join("bundle.toml"), with_detector).unwrap();
    let err = Bundle::load_dir(&dir, &[]).unwrap_err();
    assert!(err.to_string().contains("threshold"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_spec_that_does_not_match_the_graph_stops_start_up() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_bundle(tmp.path(), MODEL);
    edit_toml(&dir, "height = 64", "height = 96");
    let msg = start_error(tmp.path()).await;
    assert!(msg.contains("does not match bundle.toml") && msg.contains("input"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detector_this_build_cannot_run_stops_start_up() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_bundle(tmp.path(), MODEL);
    edit_toml(
        &dir,
        "[files]",
        "[[detectors]]\nname = \"future\"\nkind = \"quantum\"\nfile = \"classifier.onnx\"\nthreshold = 1.0\ncalibrated_fpr = 0.01\n\n[files]",
    );
    let msg = start_error(tmp.path()).await;
    assert!(msg.contains("cannot run") && msg.contains("quantum"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detector_file_that_does_not_load_stops_start_up() {
    // Right checksum, unusable content: the detector is named, nothing is served unscreened.
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_bundle(tmp.path(), MODEL);
    let bad = br#"{"kind":"feature_squeezing","bit_depth":99,"median_size":3}"#;
    let old_sha = {
        let text = std::fs::read_to_string(dir.join("bundle.toml")).unwrap();
        text.lines().find(|l| l.starts_with("\"detector_squeeze.json\"")).unwrap().to_string()
    };
    std::fs::write(dir.join("detector_squeeze.json"), bad).unwrap();
    use sha2::Digest;
    edit_toml(&dir, &old_sha, &format!("\"detector_squeeze.json\" = \"{}\"", hex::encode(sha2::Sha256::digest(bad))));
    let msg = start_error(tmp.path()).await;
    assert!(msg.contains("feature-squeezing") && msg.contains("cannot be loaded") && msg.contains("bit_depth 99"), "{msg}");
}
