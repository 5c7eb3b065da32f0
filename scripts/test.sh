#!/usr/bin/env bash
# The test command of the README: installs what the suite needs beyond cargo (each step is
# skipped when already done), then runs every test. Arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --locked "$@" 2>&1
