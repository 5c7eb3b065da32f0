//! `medsentry screen` on folders, as for a whole study: nested folders walked in name
//! order, hidden entries skipped, one JSON line per file on stdout.

mod common;

use std::process::Command;

use common::*;

#[test]
fn screen_walks_folders_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    let study = dir.path().join("study");
    std::fs::create_dir_all(study.join("series-2")).unwrap();
    std::fs::create_dir_all(study.join("series-1")).unwrap();
    let src = data("chest_xray_kermany").join("images/test");
    std::fs::copy(src.join("NORMAL/IM-0001-0001.jpeg"), study.join("series-2/b.jpeg")).unwrap();
    std::fs::copy(src.join("NORMAL/IM-0003-0001.jpeg"), study.join("series-1/z.jpeg")).unwrap();
    std::fs::copy(src.join("PNEUMONIA/person100_bacteria_475.jpeg"), study.join("series-1/a.jpeg")).unwrap();
    std::fs::write(study.join(".DS_Store"), b"finder metadata").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_medsentry")).args(["screen", "--json", "--models-dir"]).arg(models_dir()).arg(&study).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let files: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["file"].as_str().unwrap().to_string())
        .collect();
    let names: Vec<&str> = files.iter().map(|f| f.strip_prefix(study.to_str().unwrap()).unwrap()).collect();
    assert_eq!(names, ["/series-1/a.jpeg", "/series-1/z.jpeg", "/series-2/b.jpeg"]);
}
