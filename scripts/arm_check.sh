#!/usr/bin/env bash
# The ClientApp on aarch64 under qemu user-mode emulation, joined to a native TLS SuperLink (benchmarks/arm.py).
# Installs what the host needs (Debian: qemu-user-static, mmdebstrap, openssl) when missing, then builds or
# reuses the arm64 userland under ${EDGEFLEET_ARM_CACHE:-~/.cache/edgefleet/arm64} and runs the 2-round check.
#   bash scripts/arm_check.sh [--out DIR]     # writes docs/benchmarks/arm.{md,json}; exit 0 when every device
#                                             # finished both rounds with its replies aggregated
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v qemu-aarch64-static >/dev/null 2>&1 || missing+=(qemu-user-static)
command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if (( ${#missing[@]} )); then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: install ${missing[*]} (Debian/Ubuntu package names) and rerun" >&2; exit 2
  fi
  SUDO=""; [[ "$(id -u)" != 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
exec "${PYTHON:-python}" -m benchmarks.arm "$@"
