#!/usr/bin/env bash
# Memory soak: tests/memory_soak.rs on the release build for 10 minutes at 64 callers
# (override with MEDSENTRY_SOAK_SECS / MEDSENTRY_SOAK_CALLERS). Prints the calls answered,
# the resident-memory curve and the medians and peaks of the two halves after warm-up;
# fails when the second median is more than 10 % above the first, the second peak more
# than 25 % above the first, or a peak above 1 GiB. Needs ../shared/data.
set -euo pipefail
cd "$(dirname "$0")/.."
export MEDSENTRY_SOAK_SECS="${MEDSENTRY_SOAK_SECS:-600}"
export MEDSENTRY_SOAK_CALLERS="${MEDSENTRY_SOAK_CALLERS:-64}"
cargo test --release --locked --test memory_soak -- --nocapture 2>&1 | grep -v ' WARN '
