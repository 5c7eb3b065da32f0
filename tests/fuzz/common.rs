#![allow(dead_code)]
//! Shared by the fuzz targets (built only with `--features fuzz` through cargo-afl; see
//! scripts/fuzz.sh and the README's "Fuzzing"): the limits they decode under, and the
//! seed-writing mode (`MEDSENTRY_FUZZ_SEEDS=DIR target`) for inputs the repository does
//! not hold as files.

use medsentry::decode::{DecodeBudget, DecodeLimits};

/// 4 M pixels and a 256 MiB budget: anything a decoder allocates past what these allow is
/// a bug, and afl-fuzz's memory limit (scripts/fuzz.sh) turns it into a crash.
pub fn limits() -> DecodeLimits {
    DecodeLimits { max_pixels: 4_000_000 }
}

pub fn budget() -> DecodeBudget {
    DecodeBudget::new(256 << 20, std::time::Duration::ZERO)
}

/// Writes `seeds` into $MEDSENTRY_FUZZ_SEEDS and exits, when that is set.
pub fn write_seeds_if_asked(seeds: &[(&str, Vec<u8>)]) {
    let Some(dir) = std::env::var_os("MEDSENTRY_FUZZ_SEEDS") else { return };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("creating the seed folder");
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes).expect("writing a seed");
    }
    std::process::exit(0);
}
