"""What a trial process runs, as the worker writes it down: the LightningCLI arguments of a grid
point (the sweep's base config and overrides, the point's values, the defaults of a sweep
trial) and the code's commit. Standard library only: the worker imports this, and loads neither
Lightning nor torch.

The spec file itself (``<run_dir>/trial_spec.json``, read by :mod:`sweeps.running.trial`) is a
JSON object: ``sweep``, ``grid_key``, ``variant``, ``params``, ``seed``, ``attempt``,
``trial_number``, ``run_dir``, ``record_path``, ``cli_args``, ``measure``, ``metric``,
``git_commit``, ``results_root``; from the worker running it ``threads`` (torch threads, or
None for the library's default) and ``outage_limit_s`` (for the study a tuning trial reports
to); a tuning trial adds ``test: false``, ``prune_storage``, ``prune_study``,
``prune_trial_number`` and ``pruner``.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

from ..definition import SweepDef


def cli_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return str(v)


def build_cli_args(base_config: str, overrides: dict[str, Any], run_dir: str | os.PathLike) -> list[str]:
    args = ["--config", str(base_config)]
    for k, v in overrides.items():
        args.append(f"--{k}={cli_value(v)}")
    args.append(f"--trainer.default_root_dir={run_dir}")
    return args


def trial_overrides(sweep: SweepDef, devices_per_trial: int, *layers: dict[str, Any]) -> dict[str, Any]:
    """The CLI overrides of a trial: the sweep's, then ``layers`` in order, then the defaults of
    a sweep trial (no progress bar; DDP on ``devices_per_trial`` devices)."""
    out = dict(sweep.overrides)
    for layer in layers:
        out.update(layer)
    out.setdefault("trainer.enable_progress_bar", False)
    if devices_per_trial > 1:
        out.setdefault("trainer.devices", devices_per_trial)
        out.setdefault("trainer.strategy", "ddp")
    return out


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """The checkout's HEAD commit, with ``-dirty`` when a tracked file outside ``results/``
    differs from it (a study's journal and trial records there change while it runs: output,
    not code); None outside a git checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        if not sha:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                                ":(top,exclude)results"], cwd=cwd, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None
