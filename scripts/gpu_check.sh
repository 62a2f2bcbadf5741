#!/usr/bin/env bash
# `make gpu-check`: the CUDA tests and a short CUDA benchmark, in a few minutes on one GPU.
# Skips cleanly (exit 0) where no CUDA device is visible. Needs a CUDA build of torch in
# the venv (e.g. `make setup TORCH_INDEX=https://download.pytorch.org/whl/cu126`).
set -euo pipefail
PY="${PY:-.venv/bin/python}"
OUT="${OUT:-results/bench-gpu}"
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu-check: no CUDA device visible to torch ($("$PY" -c 'import torch; print(torch.__version__)')); skipping."
    exit 0
fi
"$PY" -c 'import torch; print("gpu-check on", torch.cuda.get_device_name(0), "torch", torch.__version__, "cuda", torch.version.cuda)'
# 1. the GPU-marked tests, then the strategy/export tests (CPU reference inside)
"$PY" -m pytest -q -m gpu tests/test_gpu.py
"$PY" -m pytest -q tests/test_strategies.py tests/test_export.py
# 2. the benchmark on CUDA (same tables as `make bench`, marked with the GPU's name)
"$PY" -m odconv.bench --device cuda --out "$OUT" --repeats 5 --max-seconds 2 "$@"
# 3. the full ablation's expected wall time on this GPU, from its measured throughput
"$PY" -m sweeps estimate ablation --device cuda --repeats 5 | tee "$OUT/ablation_estimate.md"
echo "gpu-check: tables in $OUT (layers.md, models.md, ablation_estimate.md)"
