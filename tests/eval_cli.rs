//! `medsentry eval` (the real binary) on AdvTest images rebuilt from ../shared/data plus the
//! bundle's own targeted UAP: it must reproduce the pipeline's detector AUROC on exactly
//! these sets within 0.005 and draw the ROC plot.

mod common;

use common::*;
use std::process::Command;

#[test]
fn eval_reproduces_the_python_auroc_and_draws_the_roc() {
    let fixture = eval_fixture();
    let dir = tempfile::tempdir().unwrap();
    let clean_dir = dir.path().join("clean");
    std::fs::create_dir_all(&clean_dir).unwrap();
    // Negatives as the JPEG files themselves: eval decodes them like the sidecar does.
    for (i, f) in fixture["clean_files"].as_array().unwrap().iter().enumerate() {
        let src = data("chest_xray_kermany").join(f.as_str().unwrap());
        std::fs::copy(&src, clean_dir.join(format!("{i:04}.jpeg"))).unwrap();
    }
    // Positives: clip(x + uap) as one [N, 1, 64, 64] .npy batch.
    let set = fixture["set"].as_str().unwrap();
    let uap_name = std::path::Path::new(fixture["uap"].as_str().unwrap()).file_stem().unwrap().to_string_lossy().into_owned();
    let uap = perturbation(&uap_name);
    let spec = chest_spec();
    let positives: Vec<f32> =
        fixture["positive_files"].as_array().unwrap().iter().flat_map(|f| add_clipped(&model_pixels(f.as_str().unwrap(), &spec), &uap)).collect();
    let n = positives.len() / 4096;
    std::fs::create_dir_all(dir.path().join(set)).unwrap();
    std::fs::write(dir.path().join(set).join("x.npy"), medsentry::eval::npy::write_npy_f32(&[n, 1, 64, 64], &positives)).unwrap();

    let out = dir.path().join("out");
    let status = Command::new(env!("CARGO_BIN_EXE_medsentry"))
        .args(["eval", "--model", "chest-xray-pneumonia", "--intra-threads", "2"])
        .arg("--data")
        .arg(dir.path())
        .arg("--out")
        .arg(&out)
        .arg("--models-dir")
        .arg(models_dir())
        .status()
        .unwrap();
    assert!(status.success());

    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("eval.json")).unwrap()).unwrap();
    assert_eq!(report["n_clean"].as_u64().unwrap() as usize, fixture["clean_files"].as_array().unwrap().len());
    let row = &report["sets"][set];
    assert_eq!(row["n"].as_u64().unwrap() as usize, n);
    for (det, py) in fixture["python_auroc"].as_object().unwrap() {
        let rust = row[det]["auroc"].as_f64().unwrap();
        let py = py.as_f64().unwrap();
        assert!((rust - py).abs() <= 0.005, "{det}: Rust AUROC {rust} vs Python {py}");
    }
    let svg = std::fs::read_to_string(out.join(format!("roc_{}.svg", set.split("__").next().unwrap()))).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("width=\"800\"") && svg.contains("height=\"600\""), "{}", &svg[..svg.len().min(200)]);
    // One legend entry per detector, with the AUROC eval.json reports for it.
    for det in fixture["python_auroc"].as_object().unwrap().keys() {
        assert!(svg.contains(&format!("{det} ")), "{det} missing from the legend");
    }
}

#[test]
fn eval_names_and_skips_bad_files_refuses_an_empty_clean_set_and_writes_beside_the_caller() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let (clean, attack) = (data_dir.join("clean"), data_dir.join("pgd20__linf_8"));
    std::fs::create_dir_all(&clean).unwrap();
    std::fs::create_dir_all(&attack).unwrap();
    let eval = |cwd: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_medsentry"))
            .args(["eval", "--model", "chest-xray-pneumonia", "--intra-threads", "2", "--models-dir"])
            .arg(models_dir())
            .arg("--data")
            .arg(&data_dir)
            .current_dir(cwd)
            .output()
            .unwrap()
    };
    let empty = eval(dir.path());
    assert!(!empty.status.success(), "an empty clean/ is an error");
    assert!(String::from_utf8_lossy(&empty.stderr).contains("clean/ holds no readable inputs"), "{}", String::from_utf8_lossy(&empty.stderr));

    let test = data("chest_xray_kermany/images/test/NORMAL");
    let mut jpegs: Vec<_> = std::fs::read_dir(&test).unwrap().map(|e| e.unwrap().path()).collect();
    jpegs.sort();
    for (i, f) in jpegs.iter().take(6).enumerate() {
        std::fs::copy(f, if i < 4 { clean.join(format!("{i}.jpeg")) } else { attack.join(format!("{i}.jpeg")) }).unwrap();
    }
    std::fs::write(clean.join("README.txt"), b"notes about this set").unwrap();
    let half = std::fs::read(&jpegs[0]).unwrap();
    std::fs::write(attack.join("cut.jpeg"), &half[..half.len() / 2]).unwrap();
    let out = eval(dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("README.txt") && stderr.contains("cut.jpeg"), "each skipped file is named: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("medsentry-eval-chest-xray-pneumonia/eval.json")).unwrap()).unwrap();
    let skipped: Vec<&str> = report["skipped"].as_array().unwrap().iter().map(|s| s["file"].as_str().unwrap()).collect();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(skipped.iter().any(|f| f.ends_with("README.txt")) && skipped.iter().any(|f| f.ends_with("cut.jpeg")), "{skipped:?}");
    assert_eq!(report["n_clean"], 4);
    assert!(!data_dir.join("eval-rust").exists(), "nothing is written into the data folder");
}
