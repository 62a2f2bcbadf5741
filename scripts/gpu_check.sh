#!/usr/bin/env bash
# `make gpu-check`: on a CUDA machine, the CUDA tests, the benchmark's tables on CUDA and the
# full ablation's expected wall time, in a few minutes on one GPU. Skips cleanly (exit 0)
# where torch sees no CUDA device.
#
# Runs with any Python that has torch, lightning, torchmetrics and pytest (no `make setup`):
# the project's other dependencies, if that Python lacks them, are installed from the wheels
# in .whl/ (fetch them beforehand with scripts/gpu_wheels.sh) into a scratch folder on
# PYTHONPATH; nothing is downloaded. Environment:
#   PY               the interpreter (default: .venv/bin/python if present, else python3)
#   GPU_CHECK_OUT    where the tables go (default results/bench-gpu)
#   GPU_CHECK_DEVICE cuda (default), or cpu to rehearse the same steps on a CPU: the quick
#                    benchmark and the smoke sweep's estimate, into a scratch folder
#   GPU_CHECK_SITE   the scratch folder for the installed wheels (default /tmp/odconv-gpu-site)
# Extra arguments go to `python -m odconv.bench`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
SITE="${GPU_CHECK_SITE:-/tmp/odconv-gpu-site}"
export PYTHONUNBUFFERED=1
case "$DEVICE" in
    cuda)
        OUT="${GPU_CHECK_OUT:-results/bench-gpu}"
        if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
            echo "gpu-check: no CUDA device visible to torch $("$PY" -c 'import torch; print(torch.__version__)'); skipping."
            exit 0
        fi ;;
    cpu) OUT="${GPU_CHECK_OUT:-$(mktemp -d /tmp/gpu-check-rehearsal.XXXXXX)}" ;;
    *) echo "error: GPU_CHECK_DEVICE=$DEVICE; valid: cuda, cpu (rehearsal)" >&2; exit 2 ;;
esac
mkdir -p "$OUT"
step() { echo; echo "== gpu-check [$(date -u +%H:%M:%S)] $*"; }

step "dependencies ($PY)"
# Distributions (import name) the steps below need beyond torch, lightning and torchmetrics.
missing=$("$PY" - <<'EOF'
import importlib.util
need = {"pytest": "pytest", "yaml": "pyyaml", "optuna": "optuna", "alembic": "alembic", "sqlalchemy": "sqlalchemy",
        "colorlog": "colorlog", "mako": "mako", "jsonargparse": "jsonargparse", "docstring_parser": "docstring-parser",
        "typeshed_client": "typeshed-client", "pydantic": "pydantic", "pydantic_core": "pydantic-core",
        "annotated_types": "annotated-types", "typing_inspection": "typing-inspection"}
print(" ".join(dist for mod, dist in need.items() if importlib.util.find_spec(mod) is None))
EOF
)
if [ -n "$missing" ]; then
    echo "installing from .whl/ into $SITE: $missing"
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "error: missing $missing and no wheels in .whl/ (run scripts/gpu_wheels.sh where PyPI is reachable)" >&2
        exit 1
    fi
    # shellcheck disable=SC2086
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
        --find-links .whl --target "$SITE" $missing
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" - <<'EOF'
import torch, lightning, torchmetrics, optuna, jsonargparse
import odconv, sweeps.estimate, lightning_modules.cli  # noqa: F401  (the steps' imports, all of them)
line = f"torch {torch.__version__}, lightning {lightning.__version__}, torchmetrics {torchmetrics.__version__}, " \
       f"optuna {optuna.__version__}, jsonargparse {jsonargparse.__version__}"
if torch.cuda.is_available():
    line += f"; {torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}"
print(line)
EOF

if [ "$DEVICE" = cuda ]; then
    step "CUDA tests: every strategy against the CPU reference, train step and export on CUDA"
    "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
    step "benchmark on CUDA into $OUT"
    "$PY" -m odconv.bench --device cuda --out "$OUT" --batches 1,64,128 --all-shapes --repeats 20 \
        --recheck-repeats 50 --train-repeats 10 --reference-models "$@"
    step "the ablation sweep's expected wall time on this GPU"
    "$PY" -m sweeps estimate ablation --device cuda --repeats 5 | tee "$OUT/ablation_estimate.md"
    step "strategy and export tests (CPU) under this torch"
    "$PY" -m pytest -q -p no:cacheprovider tests/test_strategies.py tests/test_export.py
else
    step "rehearsal on CPU: CUDA tests (collected; they skip without CUDA)"
    "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py -rs | tail -3
    step "rehearsal: quick benchmark on CPU into $OUT"
    "$PY" -m odconv.bench --quick --device cpu --sections layers,models --out "$OUT" "$@"
    step "rehearsal: the smoke sweep's expected wall time on CPU"
    "$PY" -m sweeps estimate smoke --device cpu --repeats 1 | tee "$OUT/ablation_estimate.md"
fi
step "done: tables in $OUT"
ls "$OUT"
