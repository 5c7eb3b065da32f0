//! Fuzz target: bundle.toml text through parsing and validation (what a bundle folder or a
//! hot reload would hand the sidecar). Seeds: every models/*/bundle.toml.

#[path = "common.rs"]
mod common;

fn main() {
    common::write_seeds_if_asked(&[]);
    afl::fuzz!(|data: &[u8]| {
        let _ = medsentry::bundle::parse_manifest(data, std::path::Path::new("fuzz/bundle.toml"));
    });
}
