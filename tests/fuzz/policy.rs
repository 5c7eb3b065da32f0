//! Fuzz target: policy file text through parsing and validation. Seeds: the deployment's
//! policy files and the seed mode's (every table and key).

#[path = "common.rs"]
mod common;

const FULL: &str = r#"[default]
action = "quarantine"
flag_on = "suspicious"
on_failure = "fail_open"
shadow = true
after_quarantine = "reject"
disable_detectors = ["feature-squeezing"]

[models."chest-xray-pneumonia"]
action = "reject"

[quarantine]
dir = "/tmp/q"
max_bytes = 1048576
uid_salt_file = "/tmp/salt"

[disclosure]
scores = "hidden"
score_token_sha256 = ["1c8bfe8f801d79745c4631d09fff36c82aa37fc4cce4fc946683d7b336b63032"]
"#;

fn main() {
    common::write_seeds_if_asked(&[("full.toml", FULL.as_bytes().to_vec())]);
    let served = vec!["chest-xray-pneumonia".to_string(), "dermoscopy-isic2018".to_string()];
    afl::fuzz!(|data: &[u8]| {
        if let Ok(text) = std::str::from_utf8(data) {
            if let Ok(policy) = medsentry::policy::Policy::parse(text, &served) {
                let _ = policy.for_model("chest-xray-pneumonia");
            }
        }
    });
}
