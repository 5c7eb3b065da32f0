//! The bundle contract's detector table (`models/detector_kinds.toml`), compiled into the
//! binary: the one list, shared with the offline pipeline, of the detectors it fits (name,
//! kind, file). The sidecar loads any bundle detector whose `kind` is listed here; names
//! are the bundle's own, and the standard ones are these.

use serde::Deserialize;
use std::sync::OnceLock;

/// The contract file's text: the pipeline reads the same file (medsentry_training.contract).
const CONTRACT: &str = include_str!("../../models/detector_kinds.toml");

/// One row of the contract: a detector the pipeline fits and the sidecar scores.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorKind {
    /// Its name in bundle.toml, the policy, a fused detector's inputs, metric labels and
    /// advtest_sample.json scores.
    pub name: String,
    /// The scoring rule (`defense::Detector::load` dispatches on it).
    pub kind: String,
    /// Its fitted parameters in the bundle directory.
    pub file: String,
    /// A bundle may lack it.
    pub optional: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Contract {
    detector: Vec<DetectorKind>,
}

/// The contract's rows, in bundle.toml order (parsed once; the file is compiled in, so a
/// malformed one fails the first test that reads it, never a deployment).
pub fn detector_kinds() -> &'static [DetectorKind] {
    static ROWS: OnceLock<Vec<DetectorKind>> = OnceLock::new();
    ROWS.get_or_init(|| toml::from_str::<Contract>(CONTRACT).expect("models/detector_kinds.toml is the bundle contract and must parse").detector)
}

/// Whether the sidecar can score detectors of this kind.
pub fn is_known_kind(kind: &str) -> bool {
    detector_kinds().iter().any(|d| d.kind == kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_lists_each_name_kind_and_file_once() {
        let rows = detector_kinds();
        assert!(rows.len() >= 5, "{rows:?}");
        for (i, r) in rows.iter().enumerate() {
            for other in &rows[i + 1..] {
                assert!(r.name != other.name && r.kind != other.kind && r.file != other.file, "{r:?} / {other:?}");
            }
        }
        assert!(is_known_kind("feature_squeezing") && !is_known_kind("feature-squeezing"));
        // The fused detector reads the others' scores, so it comes last.
        assert_eq!(rows.last().map(|r| r.kind.as_str()), Some("fused"));
    }
}
