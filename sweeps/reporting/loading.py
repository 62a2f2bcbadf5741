"""Loading for ``odconv-sweep results``: a sweep's trial records and benchmark tables, as pandas
frames (nothing is computed here but which record stands for a grid point).

- :func:`load_sweep_data`: everything the analysis reads, in one :class:`SweepData`: the
  records of the grid's points (and, for the reruns, of every point), the metric's name, and
  the benchmark table that gives the cost columns.
- :func:`records_frame`: one row per grid point from ``results/<sweep>/trials/*.json`` (the
  :class:`sweeps.layout.SweepLayout`'s ``trials``; and records kept in an Optuna study);
  :func:`seed_values`: variant -> seed -> top-1 (%).
- :func:`load_bench` / :func:`bench_row` / :func:`bench_machine`: the ``models.csv`` of
  ``make bench`` or ``odconv-sweep bench`` and what its ``models.md`` says about the machine.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from odconv.spec import parse_conv_spec

from ..definition import SweepDef, find_sweep_file, load_sweep
from ..layout import DEFAULT_ROOT, SweepLayout
from ..record import TrialRecord, model_of, read_records

# the columns of a records frame without any record, so that the tables still build
EMPTY_RECORDS_COLUMNS = ["variant", "status", "seed", "value", "grid_key", "host", "reason"]


def load_sweep_for_results(sweep: str, results_root: str | os.PathLike = DEFAULT_ROOT) -> SweepDef:
    """The sweep definition of a results folder (``sweep.json`` written by the run), else the YAML."""
    snap = SweepLayout(sweep, results_root).snapshot
    if snap.exists():
        return SweepDef.from_dict(json.loads(snap.read_text()))
    return load_sweep(find_sweep_file(sweep), check_files=False)


def records_from_study(study) -> list[TrialRecord]:
    """Records kept in the study's user attributes (for points run on other machines, whose
    JSON files are on their disks)."""
    out = []
    for t in study.get_trials(deepcopy=False):
        rec = t.user_attrs.get("record")
        if isinstance(rec, dict) and t.state.is_finished():
            try:
                out.append(TrialRecord.from_dict(rec))
            except (ValueError, TypeError):
                pass
    return out


def records_frame(sweep_name: str, results_root: str | os.PathLike = DEFAULT_ROOT,
                  extra: list[TrialRecord] | None = None) -> pd.DataFrame:
    """One row per grid point (its record's scalar fields and ``val_history``, plus
    ``model_name``, ``model_width`` and ``model_precision`` from the resolved config); a
    complete record wins over a failed one."""
    by_key = {r.grid_key: r for r in read_records(SweepLayout(sweep_name, results_root).trials)}
    # a point's record from the study when its file is not here (or only a failed one is)
    for r in extra or []:
        cur = by_key.get(r.grid_key)
        if cur is None or (cur.status != "complete" and r.status == "complete"):
            by_key[r.grid_key] = r
    rows = []
    for r in by_key.values():
        d = r.to_dict()
        d["model_name"], d["model_width"], d["model_precision"] = model_of(d.pop("config", None) or {})
        d.pop("cli_args", None)
        d.pop("data", None)
        d["key_params"] = json.dumps(r.params, sort_keys=True)
        d["machine"] = machine_label(r)
        rows.append(d)
    return pd.DataFrame(rows)


def machine_label(rec: TrialRecord) -> str | None:
    """Which machine a trial ran on: its host name, with the CPU model the record names (or,
    in records written before the CPU was recorded, the platform string), since host names
    alone (e.g. a VM's) do not tell two machines apart."""
    what = (rec.versions or {}).get("cpu") or (rec.versions or {}).get("platform")
    if rec.host is None and what is None:
        return None
    return f"{rec.host or '?'} ({what})" if what else str(rec.host)


def complete_records(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``df`` (a records frame) whose trial completed."""
    return df[df["status"] == "complete"] if len(df) and "status" in df.columns else df.iloc[0:0]


def seed_values(df: pd.DataFrame, col: str = "value", scale: float = 100.0) -> dict[str, dict[Any, float]]:
    """variant -> {seed: scale * col} over the complete records with a finite value."""
    out: dict[str, dict[Any, float]] = {}
    c = complete_records(df)
    for _, r in c.iterrows():
        x = pd.to_numeric(r.get(col), errors="coerce")
        if pd.notna(x) and math.isfinite(float(x)):
            out.setdefault(r["variant"], {})[r["seed"]] = scale * float(x)
    return out


def bench_header(path: str | os.PathLike | None, key: str) -> str:
    """The value of the ``- <key>:`` line of the ``.md`` table beside a bench CSV (the run's
    machine, device, date...); empty when the file or the line is missing."""
    md = Path(path).with_suffix(".md") if path is not None else None
    lines = md.read_text().splitlines() if md is not None and md.exists() else []
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(f"- {key}:")), "")


def bench_machine(path: str | os.PathLike | None) -> str:
    """The machine a bench CSV's times were taken on: its ``cpu`` header line, else its
    ``device``; empty when unknown."""
    return bench_header(path, "cpu") or bench_header(path, "device")


def load_bench(path: str | os.PathLike | None) -> pd.DataFrame | None:
    """``results/bench/models.csv`` (``make bench``), or None when it is absent or lacks the
    columns used here (model, width, conv, strategy, train_vs_static, latency_vs_static,
    mem_vs_static). Without a ``precision`` column its rows are fp32; without a ``device``
    column the device is the ``- device:`` line of ``models.md`` beside it (else unknown)."""
    if path is None or not Path(path).exists():
        return None
    b = pd.read_csv(path)
    need = {"model", "width", "conv", "strategy", "train_vs_static", "latency_vs_static", "mem_vs_static"}
    if not need <= set(b.columns):
        return None
    if "precision" not in b.columns:
        b["precision"] = "fp32"
    if "device" not in b.columns:
        b["device"] = bench_header(path, "device")
    return b


def _device_kind(device: Any) -> str:
    return str(device or "").split(":")[0].strip().lower()


def bench_row(bench: pd.DataFrame | None, model: Any, width: Any, conv: Any, precision: Any = "fp32",
              device: Any = None) -> pd.Series | None:
    """The bench row of (model, width, conv, precision) with the default strategy (``auto``;
    ``-`` for static), on the same kind of device as the trials (cpu / cuda) when both are known."""
    if bench is None or not isinstance(model, str) or width is None or pd.isna(width) or conv is None:
        return None
    try:
        conv = str(parse_conv_spec(str(conv)))
    except ValueError:
        return None
    m = bench[(bench["model"] == model) & np.isclose(bench["width"].astype(float), float(width))
              & (bench["conv"].astype(str) == conv) & bench["strategy"].astype(str).isin(["auto", "-"])
              & (bench["precision"].astype(str) == str(precision or "fp32"))]
    kind = _device_kind(device)
    if kind:
        m = m[[_device_kind(d) in ("", kind) for d in m["device"].fillna("")]]
    return m.iloc[0] if len(m) else None


@dataclass(frozen=True)
class SweepData:
    """What the analysis of a sweep reads. ``records``: :func:`records_frame` of the grid's
    points; ``point_records``: the same for every point the sweep runs, reruns included;
    ``metric``: the name of the metric the records hold; ``bench``: :func:`load_bench` of
    ``bench_csv`` (None when that file is absent or unusable)."""

    records: pd.DataFrame
    point_records: pd.DataFrame
    metric: str
    bench: pd.DataFrame | None
    bench_csv: Path


def default_bench_csv(sweep_name: str, results_root: str | os.PathLike = DEFAULT_ROOT) -> Path:
    """The benchmark table for a sweep's cost columns: its own (``odconv-sweep bench``:
    :attr:`sweeps.layout.SweepLayout.bench_table`) when it exists, else the general one of
    ``make bench`` (:attr:`sweeps.layout.SweepLayout.general_bench_table`)."""
    layout = SweepLayout(sweep_name, results_root)
    return layout.bench_table if layout.bench_table.exists() else layout.general_bench_table


def load_sweep_data(sweep: SweepDef, results_root: str | os.PathLike = DEFAULT_ROOT, study=None,
                    bench_csv: str | os.PathLike | None = None) -> SweepData:
    """The records of ``sweep`` under ``results_root`` (with ``study``: also those kept in the
    Optuna study), restricted to the sweep's points, and the benchmark table ``bench_csv``
    (default: :func:`default_bench_csv`)."""
    df = records_frame(sweep.name, results_root, records_from_study(study) if study is not None else None)
    if len(df):
        df = df[df["grid_key"].isin({p.key for p in sweep.points()})].copy()
    else:
        df = pd.DataFrame(columns=EMPTY_RECORDS_COLUMNS)
    grid = df[df["grid_key"].isin({p.key for p in sweep.grid_points()})].copy()  # the tables: grid points only
    done = grid["status"] == "complete"
    metric = grid[done]["metric"].dropna().iloc[0] if len(grid) and done.any() else (sweep.metric or "top-1")
    csv = Path(bench_csv) if bench_csv is not None else default_bench_csv(sweep.name, results_root)
    return SweepData(grid, df, metric, load_bench(csv), csv)


__all__ = ["SweepData", "load_sweep_data", "load_sweep_for_results", "records_from_study", "records_frame",
           "machine_label", "complete_records", "seed_values", "bench_header", "bench_machine", "load_bench",
           "bench_row", "default_bench_csv", "EMPTY_RECORDS_COLUMNS"]
