//! The binary's logs as a log collector sees them (stderr piped, not a terminal): plain text
//! without colour escape codes by default, one JSON object per line with --log-format json
//! or MEDSENTRY_LOG_FORMAT=json, and an unknown format refused.

mod common;

use std::process::Command;

use common::*;

fn screen(format: Option<&str>) -> std::process::Output {
    let file = data("chest_xray_kermany").join("images/test/NORMAL/IM-0001-0001.jpeg");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_medsentry"));
    cmd.args(["screen", "--json", "--models-dir"]).arg(models_dir()).arg(file).env("MEDSENTRY_LOG", "info");
    if let Some(f) = format {
        cmd.env("MEDSENTRY_LOG_FORMAT", f);
    }
    cmd.output().unwrap()
}

#[test]
fn logs_are_plain_text_off_a_terminal_and_json_on_request() {
    let text = screen(None);
    assert!(text.status.success(), "{}", String::from_utf8_lossy(&text.stderr));
    let err = String::from_utf8(text.stderr).unwrap();
    assert!(err.contains("INFO"), "{err}");
    assert!(!err.contains('\x1b'), "no colour codes when stderr is not a terminal: {err:?}");

    let json = screen(Some("json"));
    assert!(json.status.success());
    let err = String::from_utf8(json.stderr).unwrap();
    let lines: Vec<serde_json::Value> = err.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    assert!(!lines.is_empty());
    assert!(lines.iter().all(|l| l["level"].is_string() && l["fields"].is_object()), "{err}");
    // stdout keeps the answer, apart from the logs.
    let out: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert!(out["verdict"].is_string());

    let bad = screen(Some("xml"));
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--log-format"), "{}", String::from_utf8_lossy(&bad.stderr));

    // The flag does what the variable does.
    let file = data("chest_xray_kermany").join("images/test/NORMAL/IM-0001-0001.jpeg");
    let flag = Command::new(env!("CARGO_BIN_EXE_medsentry"))
        .args(["--log-format", "json", "screen", "--json", "--models-dir"])
        .arg(models_dir())
        .arg(file)
        .env("MEDSENTRY_LOG", "info")
        .output()
        .unwrap();
    assert!(flag.status.success());
    let err = String::from_utf8(flag.stderr).unwrap();
    assert!(err.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()), "{err}");
}
