# odconv-bench: every target runs from the project's own .venv.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
# e.g. https://download.pytorch.org/whl/cu126 for a CUDA build (make setup TORCH_INDEX=...)
TORCH_INDEX ?=
# The tested versions of every other dependency (docs/setup.md; `make lock` refreshes it;
# CONSTRAINTS= installs the newest versions pyproject.toml allows instead)
CONSTRAINTS ?= constraints.txt
LOCK_VENV   ?= build/lock-venv
PY     := $(VENV)/bin/python
SWEEP  ?= ablation

STORAGE           ?=
WORKERS           ?=
GPUS              ?=
DEVICES_PER_TRIAL ?= 1
LAUNCHER          ?= local
SLURM_JOBS        ?=

.PHONY: setup lock test test-integration lint test-slow bench ablation plan results quote drain estimate sweep-bench gpu-check clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	# everything else at the tested versions (constraints.txt has no torch line: TORCH stays free)
	$(PY) -m pip install $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[test]"
	touch $@

# Refresh constraints.txt (docs/setup.md): a fresh venv in $(LOCK_VENV) resolves this project
# and its test extras anew (torch as TORCH); its `pip freeze`, minus the project, torch and
# torch's CUDA wheels (nvidia-*, triton), becomes the file. Then `make setup` installs it.
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(LOCK_VENV)/bin/python -m pip install -e ".[test]"
	{ echo "# Tested versions of every dependency but torch: pip install -c constraints.txt -e \".[test]\""; \
	  echo "# Written by \`make lock\` (docs/setup.md) with $$($(LOCK_VENV)/bin/python -V) and $(TORCH); do not edit."; \
	  $(LOCK_VENV)/bin/python -m pip freeze --exclude-editable | grep -viE '^(torch|triton|pytorch-triton)==|^nvidia-'; \
	} > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt
	rm -rf $(LOCK_VENV)

# Test tiers (docs/tests.md): `test` the fast tier (no slow, gpu or integration test);
# `test-integration` the end-to-end tier (subprocess sweeps, SLURM, PostgreSQL, DDP, outages);
# `test-slow` the slow tests (of either tier). CI (.ci/run) runs lint, test and test-integration.
test: setup
	$(PY) -m pytest -q

test-integration: setup
	$(PY) -m pytest -q -m "integration and not slow and not gpu"

lint: setup
	$(VENV)/bin/ruff check .

test-slow: setup
	$(PY) -m pytest -q -m slow

# Benchmark (docs/benchmark.md): writes results/bench/{layers,models,strategies,floors,workers,targets}.{csv,md};
# KW_OFFICIAL=<checkout of github.com/OSVAI/KernelWarehouse> adds kw_official.{csv,md}
BENCH_ARGS ?=
KW_OFFICIAL ?=
bench: setup
	$(PY) -m odconv.bench --out results/bench $(if $(KW_OFFICIAL),--kw-official $(KW_OFFICIAL)) $(BENCH_ARGS)

# On a machine with CUDA: GPU tests + the benchmark's tables on CUDA into results/bench-gpu/
# (skips without CUDA). No `make setup` needed: any python with torch, lightning, torchmetrics
# and pytest; other dependencies come from the wheels in .whl/ (scripts/gpu_wheels.sh).
gpu-check:
	PY="$(if $(wildcard $(PY)),$(PY),$(PYTHON))" bash scripts/gpu_check.sh

# Sweeps (docs/sweeps.md):
#   make ablation [SWEEP=smoke] [WORKERS=2] [GPUS=0,1,2,3] [DEVICES_PER_TRIAL=2] [STORAGE=postgresql://...]
#   make ablation SWEEP=ablation LAUNCHER=slurm [SLURM_JOBS=8] STORAGE=postgresql://...   (docs/slurm.md)
ablation: setup
	STORAGE="$(STORAGE)" WORKERS="$(WORKERS)" GPUS="$(GPUS)" DEVICES_PER_TRIAL="$(DEVICES_PER_TRIAL)" \
		LAUNCHER="$(LAUNCHER)" SLURM_JOBS="$(SLURM_JOBS)" $(PY) -m sweeps run sweeps/$(SWEEP).yaml

# Record a sweep file's analysis plan (results/<sweep>/analysis_plans.json) before its first
# trial, without running one; commit the file with the sweep file (docs/sweep-files.md)
plan: setup
	$(PY) -m sweeps plan sweeps/$(SWEEP).yaml

results: setup
	STORAGE="$(STORAGE)" $(PY) -m sweeps results $(SWEEP)

# Rewrite the claims blocks a document quotes (README.md) from results/<sweep>/claims.md
DOC ?= README.md
quote: setup
	$(PY) -m sweeps quote $(DOC)

# Stop a running sweep between trials (every machine): running trials finish, no new one
# starts, the drivers exit with 4; `make ablation` again goes on
drain: setup
	STORAGE="$(STORAGE)" $(PY) -m sweeps drain $(SWEEP)

# Expected wall time of a sweep on this machine (measures each variant's throughput here)
estimate: setup
	WORKERS="$(WORKERS)" $(PY) -m sweeps estimate $(SWEEP) $(if $(DEVICE),--device $(DEVICE))

# One benchmark run of a sweep's variants against static: the cost columns of its tables
# (results/<sweep>/bench/models.csv; docs/results.md)
sweep-bench: setup
	$(PY) -m sweeps bench $(SWEEP) $(if $(DEVICE),--device $(DEVICE))

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
