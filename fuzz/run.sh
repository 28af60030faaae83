#!/usr/bin/env bash
# Bounded fuzzing of moai's input parsers: runs each cargo-fuzz target for SECONDS (default 60) starting from
# the seed corpus in fuzz/corpus/<target>/ (read only; new inputs go to fuzz/target/work-corpus/<target>/).
# Exits non-zero if any target crashes; the crashing input is saved in fuzz/artifacts/<target>/ and can be
# replayed with `cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>`.
#
# Usage: fuzz/run.sh [SECONDS] [TARGET...]      targets: spec_parser hf_config onnx_import
# Needs cargo-fuzz (installed here if missing) and a nightly toolchain for the address sanitizer; without
# nightly it falls back to stable with RUSTC_BOOTSTRAP=1 and no sanitizer.
set -euo pipefail
cd "$(dirname "$0")"

secs="${1:-60}"
[ $# -gt 0 ] && shift
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(spec_parser hf_config onnx_import)

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
if rustup run nightly rustc --version >/dev/null 2>&1; then
    fuzz=(cargo +nightly fuzz)
    sanitizer=(--sanitizer address)
else
    echo "run.sh: no nightly toolchain; fuzzing on stable with RUSTC_BOOTSTRAP=1 and no sanitizer" >&2
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
    sanitizer=(--sanitizer none)
fi

status=0
for t in "${targets[@]}"; do
    mkdir -p "target/work-corpus/$t" "artifacts/$t"
    log="target/fuzz-$t.log"
    echo "=== $t: ${secs}s ===" >&2
    if "${fuzz[@]}" run "${sanitizer[@]}" "$t" "target/work-corpus/$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1; then
        execs=$(grep -E "^stat::number_of_executed_units" "$log" | awk '{print $2}' | tail -1)
        cov=$(grep -oE "cov: [0-9]+" "$log" | tail -1)
        echo "$t: ok, ${execs:-?} executions in ${secs}s (${cov:-cov: ?})" >&2
    else
        status=1
        echo "$t: FAILED (log: fuzz/$log)" >&2
        grep -E "panicked|ERROR|SUMMARY|Test unit written" "$log" | head -20 >&2 || tail -30 "$log" >&2
    fi
done
exit $status
