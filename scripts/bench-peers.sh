#!/usr/bin/env bash
# medsentry side by side with KServe's ModelServer and MLServer (and bare ONNX Runtime):
# the same classifier.onnx served by each, 2 ONNX Runtime intra-op threads everywhere, driven
# by the same tritonclient.grpc load (C = 1, 8, 32 callers at batch 1; one caller at batch 8),
# on the 64 px chest bundle and the 224 px ResNet-18 bundle. Prints one markdown table per
# size and writes target/bench-peers/results-DATE.json. Not part of scripts/test.sh.
#
#   scripts/bench-peers.sh                 # full run: 3 repeats, both sizes (~25-35 min on 2 cores)
#   scripts/bench-peers.sh --quick --sizes 64   # a check of the script (a few minutes)
#   scripts/bench-peers.sh --help          # every flag (--repeats, --requests, --sizes, --cascade, ...)
#
# Installs, only when missing or when the pins in scripts/bench_peers/requirements-*.txt
# change, three git-ignored venvs under target/bench-peers/: driver (tritonclient, numpy,
# onnxruntime), kserve, mlserver. Uses target/release/medsentry (built when missing; --build
# runs `cargo build --release` first). Servers listen on 127.0.0.1 free ports only (KServe's
# ModelServer binds its ports on every interface; nothing but this script calls it). Each
# level is bounded by a request count and --max-seconds; every process the run started is
# stopped on exit, Ctrl-C and SIGTERM included. Server logs: target/bench-peers/run-*/.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=target/bench-peers
reqs=scripts/bench_peers
mkdir -p "$dir"

build=0
args=()
for a in "$@"; do
    case "$a" in
        --build) build=1 ;;
        -h|--help) args+=("$a"); build=-1 ;;
        *) args+=("$a") ;;
    esac
done

need_python() {
    command -v python3 >/dev/null || { echo "bench-peers: python3 (3.11+) is needed" >&2; exit 1; }
}

# venv NAME: target/bench-peers/NAME with the pins of requirements-NAME.txt, (re)installed only
# when the venv is missing or the pins changed since it was installed.
venv() {
    local name=$1 req="$reqs/requirements-$1.txt" stamp="$dir/$1/.pins"
    if [ -x "$dir/$name/bin/python" ] && cmp -s "$req" "$stamp"; then return 0; fi
    need_python
    echo "bench-peers: installing $name into $dir/$name (once)" >&2
    [ -x "$dir/$name/bin/python" ] || python3 -m venv "$dir/$name"
    "$dir/$name/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
    cp "$req" "$stamp"
}

if [ "$build" -ge 0 ]; then
    peers="kserve,mlserver"
    for ((i = 0; i < ${#args[@]}; i++)); do
        case "${args[$i]}" in
            --peers) peers="${args[$((i + 1))]:-}" ;;
            --peers=*) peers="${args[$i]#--peers=}" ;;
        esac
    done
    venv driver
    case ",$peers," in *,kserve,*) venv kserve ;; esac
    case ",$peers," in *,mlserver,*) venv mlserver ;; esac
    if [ "$build" = 1 ] || [ ! -x target/release/medsentry ]; then
        cargo build --release
    elif [ -n "$(find src Cargo.toml Cargo.lock build.rs -newer target/release/medsentry -print -quit 2>/dev/null)" ]; then
        echo "bench-peers: warning: sources are newer than target/release/medsentry (--build rebuilds it)" >&2
    fi
else
    venv driver
fi

# The driver starts every server in its own process group and stops them on exit, SIGINT,
# SIGTERM and SIGHUP; this trap is the second line: whatever it recorded and is still alive
# (the driver killed with SIGKILL, say) is stopped here.
pidfile=$(mktemp "$dir/pids.XXXXXX")
driver_pid=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    if [ -n "$driver_pid" ] && kill -0 "$driver_pid" 2>/dev/null; then
        kill -TERM "$driver_pid" 2>/dev/null || true
        wait "$driver_pid" 2>/dev/null || true
    fi
    if [ -s "$pidfile" ]; then
        while read -r pid; do
            [ -n "$pid" ] && kill -KILL -- "-$pid" 2>/dev/null || true
        done < "$pidfile"
    fi
    rm -f "$pidfile"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

BENCH_PEERS_PIDFILE="$pidfile" "$dir/driver/bin/python" scripts/bench_peers/bench.py "${args[@]}" &
driver_pid=$!
wait "$driver_pid"
