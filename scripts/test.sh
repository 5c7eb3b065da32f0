#!/usr/bin/env bash
# The test command of the README: installs what the suite needs beyond cargo (each step is
# skipped when already done), then runs every test. Arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

# NVIDIA's Python client for tests/oip_tritonclient.rs, in a git-ignored virtual environment.
pyenv=target/pyenv
if ! "$pyenv/bin/python" -c "import tritonclient.grpc" 2>/dev/null; then
    echo "scripts/test.sh: installing tritonclient[grpc] into $pyenv" >&2
    python3 -m venv "$pyenv"
    "$pyenv/bin/python" -m pip install --quiet --disable-pip-version-check "tritonclient[grpc]"
fi
MEDSENTRY_TEST_PYTHON="$(pwd)/$pyenv/bin/python"
export MEDSENTRY_TEST_PYTHON

cargo test --locked "$@" 2>&1
