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
#   GPU_CHECK_WHEELS the folder of wheels (default .whl)
#   GPU_CHECK_SITE   the scratch folder for the installed wheels (default /tmp/odconv-gpu-site)
# Extra arguments go to `python -m odconv.bench`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
SITE="${GPU_CHECK_SITE:-/tmp/odconv-gpu-site}"
WHEELS="${GPU_CHECK_WHEELS:-.whl}"
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
failed=()
run() {  # run NAME CMD...: a failed step is reported at the end; the steps after it still run
    local name=$1
    shift
    "$@" || { echo "gpu-check: step failed: $name"; failed+=("$name"); }
}

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
    if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        echo "installing from $WHEELS into $SITE: $missing"
        # shellcheck disable=SC2086
        run "install wheels" "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
            --disable-pip-version-check --find-links "$WHEELS" --target "$SITE" $missing
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "gpu-check: missing $missing and no wheels in $WHEELS (run scripts/gpu_wheels.sh where PyPI is reachable)"
        failed+=("dependencies")
    fi
fi
# The sweep estimate needs the whole project; the tests and the benchmark need only torch,
# so a failed import here skips the estimate, not the measurements.
sweeps_ok=1
if ! "$PY" - <<'EOF'
import torch, lightning, torchmetrics, optuna, jsonargparse
import odconv, sweeps.running.estimate, lightning_modules.cli  # noqa: F401  (what the steps import)
line = (f"torch {torch.__version__}, lightning {lightning.__version__}, torchmetrics {torchmetrics.__version__}, "
        f"optuna {optuna.__version__}, jsonargparse {jsonargparse.__version__}")
if torch.cuda.is_available():
    line += f"; {torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}"
print(line)
EOF
then
    sweeps_ok=0
    failed+=("imports")
    echo "gpu-check: the project does not import with $PY: the sweep estimate is skipped"
fi

if [ "$DEVICE" = cuda ]; then
    step "CUDA tests: every strategy against the CPU reference, train step and export on CUDA"
    run "CUDA tests" "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
    step "benchmark on CUDA into $OUT"
    run "benchmark" "$PY" -m odconv.bench --device cuda --out "$OUT" --batches 1,64,128 --all-shapes \
        --repeats 20 --recheck-repeats 50 --train-repeats 10 --reference-models "$@"
    sweep=ablation
else
    step "rehearsal on CPU: CUDA tests (collected; they skip without CUDA)"
    run "CUDA tests" "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
    step "rehearsal: quick benchmark on CPU into $OUT"
    run "benchmark" "$PY" -m odconv.bench --quick --device cpu --sections layers,models,strategies,floors --out "$OUT" "$@"
    sweep=smoke
fi
if [ $sweeps_ok = 1 ]; then
    step "the $sweep sweep's expected wall time on $DEVICE"
    if "$PY" -m sweeps estimate "$sweep" --device "$DEVICE" --repeats "$([ "$DEVICE" = cuda ] && echo 5 || echo 1)" \
            > "$OUT/ablation_estimate.md"; then
        cat "$OUT/ablation_estimate.md"
    else
        echo "gpu-check: step failed: estimate"
        failed+=("estimate")
    fi
    step "the $sweep sweep's variants against static on $DEVICE (its cost columns)"
    run "sweep bench" "$PY" -m sweeps bench "$sweep" --device "$DEVICE" --results-root "$OUT" \
        --train-repeats "$([ "$DEVICE" = cuda ] && echo 5 || echo 1)"
fi
if [ "$DEVICE" = cuda ]; then
    step "strategy and export tests (CPU) under this torch"
    run "CPU tests" "$PY" -m pytest -q -p no:cacheprovider tests/test_strategies.py tests/test_export.py
fi
step "done: tables in $OUT"
ls "$OUT"
if [ ${#failed[@]} -gt 0 ]; then
    echo "gpu-check: FAILED steps: ${failed[*]}"
    exit 1
fi
