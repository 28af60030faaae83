#!/usr/bin/env bash
# Installs the system packages moai's tests need: LLVM/MLIR 22 (runtime crate, `mlir` feature) and
# Chromium (report screenshot test), and g++ (libFuzzer, for the bounded fuzzing CI runs after the tests).
# Idempotent; skips what is already installed.
set -euo pipefail
pkgs=(libmlir-22-dev mlir-22-tools llvm-22-dev libclang-22-dev lld-22 libpolly-22-dev
      libzstd-dev libz3-dev libxml2-dev zlib1g-dev chromium g++)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
fi
