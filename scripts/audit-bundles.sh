#!/usr/bin/env bash
# The measured audits of the README ("Red-teaming a deployment: measured on every bundle"):
# `medsentry audit` against the release binary serving the committed bundles, on 20 official
# test images per bundle (chest bundles: every 31st file of the Kermany test set in path
# order; dermoscopy: every 75th ISIC 2018 test image), Linf 8/255, 100 queries per image and
# attack, no rate limit:
#   - medsentry.v1 with PNG queries: Square, Boundary, and the bundle's committed UAPs;
#   - the Open Inference Protocol with FP32 tensors at the model's size: the 3-pixel attack;
#   - proxy mode: a second medsentry in front of the first, audited over OIP FP32 (Square).
# Reports: target/audit/<run>/REPORT.md and report.json. Needs ../shared/data (or
# MEDSENTRY_DATA). About an hour on 2 cores, most of it the 224 px bundle.
#   scripts/audit-bundles.sh [MODEL...]   only these bundles (default: all four), then the proxy
set -euo pipefail
MODELS=("$@")
[[ ${#MODELS[@]} -gt 0 ]] || MODELS=(chest-xray-pneumonia pneumoniamnist-28 dermoscopy-isic2018 chest-xray-resnet18-224)
cd "$(dirname "$0")/.."
DATA="${MEDSENTRY_DATA:-../shared/data}"
OUT=target/audit
BIN=target/release/medsentry
cargo build --release --locked
mkdir -p "$OUT"

# pick FOLDER EVERY DEST: 20 files, every EVERY-th in path order, linked into DEST.
pick() {
  rm -rf "$3" && mkdir -p "$3"
  find "$1" -type f \( -name '*.jpeg' -o -name '*.jpg' -o -name '*.png' \) | sort | awk -v n="$2" 'NR % n == 1' | head -20 |
    while read -r f; do ln -s "$(realpath "$f")" "$3/$(basename "$f")"; done
}
pick "$DATA/chest_xray_kermany/images/test" 31 "$OUT/images-chest"
pick "$DATA/dermoscopy_isic2018/images/test" 75 "$OUT/images-dermoscopy"

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
wait_ready() { for _ in $(seq 600); do curl -sf "http://$1/readyz" >/dev/null && return 0; sleep 0.5; done; echo "server on $1 not ready" >&2; exit 1; }

MEDSENTRY_LOG=warn "$BIN" serve --models-dir models --listen 127.0.0.1:50151 --admin-listen 127.0.0.1:9564 --intra-threads 2 &
PIDS+=($!)
wait_ready 127.0.0.1:9564

audit() { # RUN MODEL IMAGES ARGS...
  local run=$1 model=$2 images=$3; shift 3
  echo "== $run"
  "$BIN" audit --target 127.0.0.1:50151 --model "$model" --images "$images" --out "$OUT/$run" --eps 8 --queries 100 --rate 0 "$@"
}
for model in "${MODELS[@]}"; do
  images="$OUT/images-chest"
  [[ $model == dermoscopy-isic2018 ]] && images="$OUT/images-dermoscopy"
  uaps=()
  for f in tests/fixtures/campaign/"$model"__uap__*.npy tests/fixtures/campaign/"$model"__uap_to0__*.npy; do
    [[ -e $f ]] && uaps+=(--uap "$f")
  done
  audit "$model-sentry" "$model" "$images" --attacks square,boundary "${uaps[@]}"
  audit "$model-oip-fp32" "$model" "$images" --protocol oip-fp32 --attacks pixels
done

# Proxy mode: medsentry (chest bundle) in front of an upstream medsentry serving the same.
MEDSENTRY_LOG=warn "$BIN" serve --models-dir models --listen 127.0.0.1:50152 --admin-listen 127.0.0.1:9565 --intra-threads 2 \
  --upstream 127.0.0.1:50151 --upstream-screen-model chest-xray-pneumonia &
PIDS+=($!)
wait_ready 127.0.0.1:9565
echo "== proxy-oip-fp32"
"$BIN" audit --target 127.0.0.1:50152 --model chest-xray-pneumonia --images "$OUT/images-chest" --out "$OUT/proxy-oip-fp32" \
  --protocol oip-fp32 --attacks square --eps 8 --queries 100 --rate 0
echo "reports in $OUT/*/REPORT.md"
