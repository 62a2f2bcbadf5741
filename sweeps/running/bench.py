"""Cost ratios of a sweep's variants from one benchmark run (``make sweep-bench SWEEP=...``).

``odconv-sweep bench <sweep>``: every grid variant's model as a trial builds it (the sweep's
base config, overrides and grid point, resolved by the CLI parser as in a trial: model, width,
conv spec, precision, batch size, classes) is timed by :func:`odconv.bench.models.bench_models`
(:func:`odconv.bench.measurement.measure_model_costs`) in one run on this machine, interleaved
with the static model of the same model and width: training
step, batch-1 latency and training peak memory, as ratios to static. The table goes to
``results/<sweep>/bench/models.csv|md``; ``make results`` takes the summary's cost columns from
it (``cost from: bench``) instead of from the trials' own timings, which may come from several
hosts and moments. Reruns are not benchmarked: they repeat grid points.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from odconv import parse_conv_spec
from odconv.bench.measurement import machine_info
from odconv.bench.models import bench_models
from odconv.bench.report import models_markdown, write_csv

from ..definition import SweepDef
from ..layout import DEFAULT_ROOT, SweepLayout
from ..record import model_of
from .point import build_point, resolved_config


@dataclass(frozen=True)
class VariantModel:
    """What the benchmark builds for one grid variant."""

    variant: str
    model: str
    width: float
    precision: str  # fp32 | bf16
    conv: str
    batch: int
    num_classes: int
    other_options: tuple[str, ...]  # model options the benchmark does not apply (names)


def variant_models(sweep: SweepDef) -> list[VariantModel]:
    """One :class:`VariantModel` per grid variant (its first point), resolved as a trial would."""
    first: dict[str, Any] = {}
    for p in sweep.grid_points():
        first.setdefault(p.variant, p)
    out = []
    # building a point's CLI logs Lightning's set-up lines (seed, accelerators) for every variant
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        clis = {v: build_point(sweep.base_config, {**sweep.overrides, **p.params}) for v, p in first.items()}
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    for variant, cli in clis.items():
        config = resolved_config(cli)
        name, width, precision = model_of(config)
        if name is None:
            raise ValueError(f"{variant}: no model name in the resolved config (model.model)")
        model_cfg = config.get("model") or {}
        options = model_cfg.get("model_options") or {}
        conv = str(parse_conv_spec(str(model_cfg.get("conv", "static"))))  # as the tables match it
        out.append(VariantModel(variant, name, float(width if width is not None else 1.0), precision, conv,
                                int(cli.datamodule.batch_size),
                                int(cli.datamodule.num_classes), tuple(sorted(k for k in options if k != "width"))))
    return out


def bench_sweep(sweep: SweepDef, results_root: str | os.PathLike = DEFAULT_ROOT, device: str = "cpu",
                train_rounds: int = 3, latency_rounds: int = 10, log: Callable[[str], None] = print) -> Path:
    """Benchmark every grid variant of ``sweep`` against its static model in one run; returns the
    path of the CSV written (:attr:`sweeps.layout.SweepLayout.bench_table`, with a ``.md`` beside it)."""
    dev = torch.device(device)
    variants = variant_models(sweep)
    groups: dict[tuple, list[str]] = {}
    for v in variants:
        if v.other_options:
            log(f"note: {v.variant}: model options {', '.join(v.other_options)} are not applied by the benchmark")
        convs = groups.setdefault((v.model, v.width, v.precision, v.batch, v.num_classes), ["static"])
        if v.conv not in convs:
            convs.append(v.conv)
    info = machine_info(dev)
    rows: list[dict] = []
    for (model, width, precision, batch, classes), convs in groups.items():
        log(f"{model} w{width:g} {precision}, batch {batch}: {', '.join(convs)}")
        rows += bench_models([(model, width)], convs, batch, dev, precision, train_rounds, latency_rounds,
                             log=log, num_classes=classes)
    path = SweepLayout(sweep.name, results_root).bench_table
    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv(str(path), rows)
    path.with_suffix(".md").write_text(models_markdown(rows, info, [sweep.name], train_rounds, latency_rounds,
                                                       command="odconv-sweep bench"))
    return path
