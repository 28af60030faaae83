#!/usr/bin/env bash
# Bounded fuzzing of moai's input parsers: builds the cargo-fuzz targets once, then runs each for SECONDS
# (default 60) starting from the seed corpus in fuzz/corpus/<target>/ (read only; new inputs go to
# fuzz/target/work-corpus/<target>/). Exits non-zero if any target crashes; the crashing input is saved in
# fuzz/artifacts/<target>/ and can be replayed with `cargo fuzz run <target> fuzz/artifacts/<target>/<file>`
# (with the same toolchain choice as below). CI (.ci/run) runs `bash fuzz/run.sh 60` after the tests.
#
# Usage: fuzz/run.sh [SECONDS] [TARGET...]      targets: spec_parser hf_config onnx_import
#
# Needs cargo-fuzz: installed (pinned, --locked, about 50 s on 2 cores) into $CARGO_HOME/bin when missing.
# Uses an installed nightly toolchain with the address sanitizer when there is one; never downloads one.
# Without nightly it builds with the default (stable) toolchain, RUSTC_BOOTSTRAP=1 and no sanitizer: the
# coverage-guided search and Rust's panic/overflow checks still run, only memory-error detection of unsafe
# code is lost. Set MOAI_FUZZ_STABLE=1 to force that mode. Build artifacts go to fuzz/target (or
# $CARGO_TARGET_DIR): every crate is rebuilt with coverage instrumentation, so the workspace's target/ would
# not save the build (about 3.5 minutes on 2 cores from a clean clone).
#
# Measured from a clean clone on the 2-core dev box, without nightly and without cargo-fuzz (PATH holding only
# stable cargo/rustc, a fresh CARGO_HOME): install 74 s, build 216 s, then SECONDS per target, so about
# 8 minutes for `run.sh 60`.
set -euo pipefail
cd "$(dirname "$0")"

secs="${1:-60}"
[ $# -gt 0 ] && shift
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(spec_parser hf_config onnx_import)
case "$secs" in
'' | *[!0-9]*)
    echo "run.sh: SECONDS must be a whole number, got '$secs'" >&2
    exit 2
    ;;
esac

cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    t0=$SECONDS
    cargo install cargo-fuzz --version 0.13.2 --locked
    export PATH="$cargo_bin:$PATH"
    echo "run.sh: installed cargo-fuzz in $((SECONDS - t0)) s" >&2
fi

# `rustup toolchain list` only reads what is installed (unlike `rustup run`, which may try to install).
if [ -z "${MOAI_FUZZ_STABLE:-}" ] && command -v rustup >/dev/null 2>&1 &&
    rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    fuzz=(cargo +nightly fuzz)
    sanitizer=(--sanitizer address)
else
    echo "run.sh: no nightly toolchain; fuzzing with the default toolchain, RUSTC_BOOTSTRAP=1 and no sanitizer" >&2
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
    sanitizer=(--sanitizer none)
fi

mkdir -p target
t0=$SECONDS
# With no target named, `cargo fuzz build` builds every target in one cargo invocation.
if [ $# -eq 0 ]; then build_args=(""); else build_args=("${targets[@]}"); fi
: >target/fuzz-build.log
for t in "${build_args[@]}"; do
    if ! "${fuzz[@]}" build "${sanitizer[@]}" $t >>target/fuzz-build.log 2>&1; then
        echo "run.sh: building ${t:-the targets} failed (log: fuzz/target/fuzz-build.log)" >&2
        tail -30 target/fuzz-build.log >&2
        exit 1
    fi
done
echo "run.sh: built ${targets[*]} in $((SECONDS - t0)) s" >&2

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
