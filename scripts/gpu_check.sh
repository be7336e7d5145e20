#!/usr/bin/env bash
# On the lent GPU machine (python3.12, torch + CUDA, transformers, no flwr/hydra/mlflow/opacus), from the repo
# root, with .gpu_pkgs/ carried (scripts/gpu_carry.sh makes it here first):
#   (a) the accelerator tests (tests/test_accelerator.py; the CUDA cases run, nothing is skipped for want of a GPU)
#   (b) python -m benchmarks.gpu (a global time budget; every point in its own try/except)
# Results go to $OUT (the device tool brings it back): pytest.txt, benchmark.txt, gpu.md, gpu.json. ~5 min on
# an H200. Copy gpu.{md,json} into docs/benchmarks/ and commit them.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD:$PWD/.gpu_pkgs${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
[ -d .gpu_pkgs ] || echo "gpu_check: .gpu_pkgs/ is missing (run scripts/gpu_carry.sh and carry it); imports may fail" >&2
start=$(date +%s)
{
  "$PY" -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-', 'transformers', transformers.__version__, 'peft', peft.__version__)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
} 2>&1 | tee "$OUT/env.txt"
timeout 150 "$PY" -m pytest -q -m accelerator -p no:cacheprovider -o addopts="-ra --strict-markers" \
  tests/test_accelerator.py 2>&1 | tee "$OUT/pytest.txt"
tests_rc=${PIPESTATUS[0]}
echo "tests rc=$tests_rc after $(( $(date +%s) - start )) s" | tee -a "$OUT/pytest.txt"
timeout 210 "$PY" -m benchmarks.gpu --budget-s 170 --out "$OUT" ${GPU_BENCH_ARGS:-} 2>&1 | tee "$OUT/benchmark.txt"
bench_rc=${PIPESTATUS[0]}
echo "benchmark rc=$bench_rc; total $(( $(date +%s) - start )) s" | tee -a "$OUT/benchmark.txt"
[ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ]
