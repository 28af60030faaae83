#!/usr/bin/env bash
# Runs every test of the workspace, installing what the tests need first. This is the README's test command
# and what CI (.ci/run) runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
# the `mlir` features (MLIR emission, kernel lowering, the CPU JIT) need the LLVM/MLIR 22 packages installed above
cargo test --workspace --release --features moai-runtime/mlir,moai-compiler/mlir,moai-benches/mlir
