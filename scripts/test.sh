#!/usr/bin/env bash
# Runs every test of the workspace, installing what the tests need first. This is the README's test command
# and what CI (.ci/run) runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo test --workspace --release
