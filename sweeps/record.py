"""The one record format of a sweep trial: written as ``results/<sweep>/trials/<slug>.json``
and (its scalar fields) as the Optuna trial's user attributes.

Bump :data:`RECORD_VERSION` when a field changes meaning; readers reject newer versions.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from lightning_modules.contract import write_json_atomic
from odconv.models import model_options

RECORD_VERSION = 1
STATUSES = ("complete", "failed", "pruned")


@dataclass
class TrialRecord:
    sweep: str
    grid_key: str
    variant: str
    params: dict[str, Any]                 # the grid point (canonical CLI keys -> values)
    seed: int | None
    status: str                            # complete | failed | pruned
    reason: str | None = None              # why it failed / was pruned
    metric: str | None = None              # the headline metric name ...
    value: float | None = None             # ... and its value (what Optuna is told)
    final_val_top1: float | None = None
    final_val_top5: float | None = None
    final_val_loss: float | None = None
    best_val_top1: float | None = None
    best_val_top5: float | None = None
    best_epoch: int | None = None
    test_top1: float | None = None
    test_top5: float | None = None
    test_loss: float | None = None
    epochs: int | None = None
    val_history: list[dict[str, float]] = field(default_factory=list)
    params_count: int | None = None
    macs: int | None = None
    train_throughput: float | None = None  # img/s, fwd+bwd+step at throughput_batch_size
    fit_throughput: float | None = None    # img/s seen during the real fit (includes data, val)
    latency_b1_ms: float | None = None
    latency_b64_ms: float | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)  # batch size -> ms, every measured size
    peak_memory_mb: float | None = None    # one train step at throughput_batch_size
    measure_device: str | None = None
    wall_time_s: float | None = None       # the whole trial process
    fit_time_s: float | None = None
    resumed_from: str | None = None        # checkpoint the fit resumed from, if any
    attempt: int = 0                       # 0 = first try; n = n-th retry
    trial_number: int | None = None
    synthetic: bool = False                # synthetic data: not a real benchmark result
    placement: str | None = None           # where the conv spec goes: matched | paper (odconv.build_model)
    data: dict[str, Any] = field(default_factory=dict)      # the DataModule's describe()
    config: dict[str, Any] = field(default_factory=dict)    # full resolved LightningCLI config
    cli_args: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    git_commit: str | None = None
    analysis_plan: str | None = None       # the hash of the sweep's analysis plan when the trial started
    host: str | None = None
    slurm_job_id: str | None = None        # the SLURM job it ran in (None outside SLURM)
    slurm_node: str | None = None          # that job's node
    devices: str | None = None             # CUDA_VISIBLE_DEVICES or "cpu"
    started_at: str | None = None
    finished_at: str | None = None
    version: int = RECORD_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrialRecord":
        v = d.get("version")
        if v is None or v > RECORD_VERSION:
            raise ValueError(f"trial record version {v!r} is not supported (this code reads <= {RECORD_VERSION})")
        names = {f.name for f in fields(cls)}
        return cls(**{k: val for k, val in d.items() if k in names})

    def user_attrs(self) -> dict[str, Any]:
        """The fields stored as Optuna user attributes (everything but the bulky config)."""
        d = self.to_dict()
        d.pop("config", None)
        d.pop("val_history", None)
        d.pop("cli_args", None)
        d.pop("data", None)
        return {f"r.{k}": v for k, v in d.items()}


#: How records and other study files are written (one document, one key a line).
JSON_STYLE: dict[str, Any] = {"indent": 1, "default": str}


def write_record(path: str | os.PathLike, record: TrialRecord) -> None:
    write_json_atomic(path, record.to_dict(), **JSON_STYLE)


def read_record(path: str | os.PathLike) -> TrialRecord:
    return TrialRecord.from_dict(json.loads(Path(path).read_text()))


def read_records(trials_dir: str | os.PathLike) -> list[TrialRecord]:
    out = []
    for p in sorted(Path(trials_dir).glob("*.json")):
        try:
            out.append(read_record(p))
        except (ValueError, json.JSONDecodeError, TypeError) as e:
            warnings.warn(f"skipping unreadable trial record {p}: {e}", stacklevel=2)
    return out


def model_of(config: dict[str, Any]) -> tuple[str | None, float | None, str]:
    """(model name, width, precision ``fp32`` | ``bf16``) of a record's resolved config; width
    None when the model has none."""
    m = (config or {}).get("model") or {}
    name = m.get("model") if isinstance(m, dict) else None
    trainer = (config or {}).get("trainer") or {}
    precision = "bf16" if "bf16" in str(trainer.get("precision", "") if isinstance(trainer, dict) else "") else "fp32"
    if not isinstance(name, str):
        return None, None, precision
    opts = m.get("model_options") or {}
    width = opts.get("width") if isinstance(opts, dict) else None
    if width is None:
        try:
            width = model_options(name).get("width")
        except ValueError:
            width = None
    return name, (float(width) if width is not None else None), precision
