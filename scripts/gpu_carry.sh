#!/usr/bin/env bash
# Make .gpu_pkgs/ (git-ignored): the pure-Python packages the lent GPU machine lacks or has at another version
# (omegaconf 2.3.1 + antlr4-python3-runtime 4.9.3 for runconfig.schema; peft 0.21.2, the version the project
# pins; Opacus and opt_einsum when present), copied with their dist-info from this machine's site-packages.
# Carry it with the run:
#   run(command="bash scripts/gpu_check.sh", carry=[".gpu_pkgs"])
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
SITE=$("$PY" -c "import omegaconf, os; print(os.path.dirname(os.path.dirname(omegaconf.__file__)))")
rm -rf .gpu_pkgs && mkdir -p .gpu_pkgs
for pattern in omegaconf "omegaconf-*.dist-info" antlr4 "antlr4_python3_runtime-*.dist-info" peft "peft-*.dist-info"; do
  found=0
  for path in "$SITE"/$pattern; do
    [ -e "$path" ] || continue
    cp -r "$path" .gpu_pkgs/ && found=1
  done
  [ "$found" = 1 ] || { echo "gpu_carry: $pattern not found in $SITE" >&2; exit 2; }
done
# Optional: Opacus (pure Python) for the DP-SGD accelerator test; it also needs scipy there, else that test skips
for pattern in opacus "opacus-*.dist-info" opt_einsum "opt_einsum-*.dist-info"; do
  for path in "$SITE"/$pattern; do [ -e "$path" ] && cp -r "$path" .gpu_pkgs/; done
done
"$PY" - <<'PY'
import pathlib
v = [p.name for p in pathlib.Path(".gpu_pkgs").glob("peft-*.dist-info")]
assert v == ["peft-0.21.2.dist-info"], f"expected peft 0.21.2, found {v}"
PY
find .gpu_pkgs -name __pycache__ -type d -prune -exec rm -rf {} +
du -sh .gpu_pkgs
