//! `medsentry screen` on folders, as for a whole study: nested folders walked in name
//! order, hidden entries skipped, one JSON line per file on stdout (several files in the
//! pipeline at once, printed in order), a table with the path last, and a summary.

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
    assert!(String::from_utf8_lossy(&out.stderr).contains("3 files, model chest-xray-pneumonia"), "the summary goes to stderr with --json");
    let files: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["file"].as_str().unwrap().to_string())
        .collect();
    let names: Vec<&str> = files.iter().map(|f| f.strip_prefix(study.to_str().unwrap()).unwrap()).collect();
    assert_eq!(names, ["/series-1/a.jpeg", "/series-1/z.jpeg", "/series-2/b.jpeg"]);
}

#[test]
fn the_table_ends_each_line_with_the_path_and_a_summary_counts_the_verdicts() {
    let dir = tempfile::tempdir().unwrap();
    let src = data("chest_xray_kermany").join("images/test");
    let deep = dir.path().join("a-rather-long-folder-name-as-pacs-exports-make-them/1.2.840.113619.2.55.3.604688119.868.1249");
    std::fs::create_dir_all(&deep).unwrap();
    for (i, f) in ["NORMAL/IM-0001-0001.jpeg", "NORMAL/IM-0003-0001.jpeg", "PNEUMONIA/person100_bacteria_475.jpeg", "PNEUMONIA/person101_bacteria_483.jpeg"]
        .iter()
        .enumerate()
    {
        std::fs::copy(src.join(f), deep.join(format!("{i}.jpeg"))).unwrap();
    }
    std::fs::write(deep.join("9-notes.txt"), b"not an image").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_medsentry"))
        .args(["screen", "--concurrency", "3", "--models-dir"])
        .arg(models_dir())
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!out.status.success(), "a file that could not be screened fails the command");
    let rows: Vec<&str> = text.lines().skip(1).take(5).collect();
    for (i, row) in rows.iter().enumerate().take(4) {
        assert!(row.ends_with(&format!("{i}.jpeg")), "the path ends the line, in file order: {row}");
        let verdict = row.split_whitespace().next().unwrap();
        assert!(["CLEAN", "SUSPICIOUS", "ADVERSARIAL", "OUT_OF_DISTRIBUTION"].contains(&verdict), "{row}");
    }
    assert!(rows[4].starts_with("ERROR") && rows[4].contains("9-notes.txt"), "{}", rows[4]);
    let summary = text.lines().last().unwrap();
    assert!(summary.starts_with("5 files, model chest-xray-pneumonia:") && summary.ends_with("1 could not be screened"), "{summary}");
    let counted: usize =
        summary.split(": ").nth(1).unwrap().split(';').next().unwrap().split(", ").map(|c| c.rsplit(' ').next().unwrap().parse::<usize>().unwrap()).sum();
    assert_eq!(counted, 4, "the verdict counts add up to the screened files: {summary}");
}
