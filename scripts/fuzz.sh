#!/usr/bin/env bash
# Coverage-guided fuzzing with AFL++ through cargo-afl (stable toolchain) of the inputs a
# caller controls: tests/fuzz/{dicom,raster,oip,bundle_toml,policy}.rs.
#
#   scripts/fuzz.sh SECONDS [TARGET...]     fuzz each target (default: all) for SECONDS
#
# Installs cargo-afl and builds AFL++ when missing, builds the instrumented targets in
# target/afl, seeds each corpus (../shared/data, models/, deploy/, and what the target's seed
# mode writes), then runs afl-fuzz with a 2 GiB memory limit (RLIMIT_AS), so that an
# allocation bomb counts as a crash. Campaigns resume from target/fuzz/<target>/out when it
# exists (MEDSENTRY_FUZZ_DIR replaces target/fuzz). Prints executions, corpus size and crashes per target; exits non-zero on any crash
# or hang (inputs under target/fuzz/<target>/out/default/{crashes,hangs}).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:?usage: scripts/fuzz.sh SECONDS [TARGET...]}"
shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(dicom raster oip bundle_toml policy)
data=../shared/data
dir="${MEDSENTRY_FUZZ_DIR:-target/fuzz}"

if ! cargo afl --version >/dev/null 2>&1; then
    # The version matches the afl crate in Cargo.lock.
    cargo install cargo-afl --locked --version 0.18.2
fi
cargo afl config --build >/dev/null 2>&1 || true   # AFL++ itself; a no-op once built

bins=()
for t in "${targets[@]}"; do bins+=(--bin "fuzz_$t"); done
CARGO_TARGET_DIR=target/afl cargo afl build --release --locked --features fuzz "${bins[@]}"

# Seeds: small real files (afl-fuzz wants each under 1 MB; the larger JPEG 2000 radiographs
# take a second each to decode, so DICOM seeds stay under 250 KB).
seed() {
    local t=$1 in=$dir/$1/in
    mkdir -p "$in"
    case $t in
        dicom)
            for f in "$data"/dicom/*.dcm; do
                [ "$(stat -c %s "$f")" -lt 250000 ] && cp "$f" "$in/"
            done ;;
        raster)
            # (Arrays, not `ls | head`: under pipefail a closed pipe would end the script.)
            local chest=("$data"/chest_xray_kermany/images/test/NORMAL/*.jpeg) derm
            cp "${chest[@]:0:3}" "$in/"
            mapfile -t derm < <(find "$data"/dermoscopy_isic2018 -name '*.jpg' -size -60k | sort)
            cp "${derm[@]:0:2}" "$in/" ;;
        bundle_toml)
            for d in models/*/; do [ -f "$d/bundle.toml" ] && cp "$d/bundle.toml" "$in/$(basename "$d").toml"; done ;;
        policy)
            cp deploy/compose/policy.toml "$in/compose.toml" ;;
    esac
    MEDSENTRY_FUZZ_SEEDS="$in" "target/afl/release/fuzz_$t"
}

# AFL_NO_AFFINITY: afl-fuzz otherwise refuses to start when other fuzzers hold every core
# (the test suite's smoke run failed so beside two long campaigns on this 2-core machine).
export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_QUIET=1 AFL_NO_AFFINITY=1
failed=0
for t in "${targets[@]}"; do
    out=$dir/$t/out
    if [ -d "$out/default/queue" ]; then
        input=-   # resume the campaign
    else
        seed "$t"
        input=$dir/$t/in
    fi
    cargo afl fuzz -V "$seconds" -m 2048 -t 5000 -i "$input" -o "$out" "target/afl/release/fuzz_$t" >"$dir/$t/afl.log" 2>&1 || {
        echo "fuzz $t: afl-fuzz failed, see $dir/$t/afl.log" >&2
        tail -20 "$dir/$t/afl.log" >&2
        failed=1
        continue
    }
    stats=$out/default/fuzzer_stats
    get() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$stats"; }
    crashes=$(find "$out/default/crashes" -type f ! -name README.txt 2>/dev/null | wc -l)
    hangs=$(find "$out/default/hangs" -type f 2>/dev/null | wc -l)
    echo "fuzz $t: $(get execs_done) executions in $(get run_time) s ($(get execs_per_sec)/s), corpus $(get corpus_count), crashes $crashes, hangs $hangs"
    if [ "$crashes" -gt 0 ] || [ "$hangs" -gt 0 ]; then
        failed=1
    fi
done
exit $failed
