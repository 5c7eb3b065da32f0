//! Shared by the deploy tests: paths under deploy/, programs on PATH, commands that must succeed.

use std::path::PathBuf;
use std::process::Command;

use super::repo;

pub fn deploy(rel: &str) -> PathBuf {
    repo().join("deploy").join(rel)
}

/// A program on PATH; prometheus and promtool come from Debian's package.
pub fn on_path(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|f| f.is_file()))
        .unwrap_or_else(|| panic!("`{name}` is not on PATH: run scripts/test.sh, which installs Debian's prometheus package (prometheus and promtool)"))
}

/// Runs a command and returns its output; panics with that output when it fails.
pub fn run_ok(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{shown} failed ({}):\n{text}", out.status);
    text
}
