#!/usr/bin/env bash
# Download, into .whl/ (git-ignored), the wheels `scripts/gpu_check.sh` installs on a machine
# without network whose Python has only torch, lightning, torchmetrics and pytest (and the
# usual scientific stack): the project's other runtime dependencies, at the versions of this
# checkout's .venv. Run here, where PyPI is reachable; then carry .whl/ to the GPU machine.
#
#   bash scripts/gpu_wheels.sh [PYTHON_VERSION ...]     (default: 3.12 and this .venv's version)
#
# Wheels are fetched without their dependencies (the target has torch's and lightning's);
# gpu_check.sh installs only those of these distributions that the target lacks.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_PY="${VENV_PY:-.venv/bin/python}"
DEST="${DEST:-.whl}"
# The project's runtime dependencies beyond torch/lightning/torchmetrics, with their own
# dependencies that such an image lacks (optuna: alembic, sqlalchemy, colorlog, mako;
# jsonargparse[signatures]: docstring-parser, typeshed-client; pydantic: pydantic-core,
# annotated-types, typing-inspection).
DISTS="${DISTS:-optuna alembic sqlalchemy colorlog mako jsonargparse docstring-parser typeshed-client pydantic pydantic-core annotated-types typing-inspection}"
versions=("$@")
if [ ${#versions[@]} -eq 0 ]; then
    versions=(3.12 "$("$VENV_PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')")
fi
mkdir -p "$DEST"
pins=$("$VENV_PY" - $DISTS <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
for name in sys.argv[1:]:
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        print(name)
EOF
)
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
for v in $(printf '%s\n' "${versions[@]}" | sort -u); do
    echo "gpu_wheels: Python $v: $pins" | tr '\n' ' '; echo
    # shellcheck disable=SC2086
    "$VENV_PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$v" --implementation cp \
        "${platforms[@]}" -d "$DEST" $pins
done
du -sh "$DEST"
