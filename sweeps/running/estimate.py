"""Expected wall time of a sweep on this machine, from throughput measured here.

``odconv-sweep estimate <sweep> [--device cuda] [--workers N]``: for every variant of the grid
(seeds share a variant's cost), build the model and the DataModule exactly as a trial does
(the sweep's base config + overrides + the grid point, through the CLI parser), measure a
training step and an eval forward at the configured batch size on the device, and multiply
by the images one trial processes:

    fit  = epochs x train images per epoch / train img/s
    eval = (epochs x val images + test images) / eval img/s
    trial = fit + eval + overhead  (start-up, checkpoints, the cost measurements)

The sweep's wall time is the sum over all grid points divided by the number of workers
(trials are independent; a worker takes the next free point). On a CPU each worker gets
cores / workers threads (as ``make ablation`` splits them), and the throughput is measured
with that many. The train images per epoch
come from the dataset's official size, ``val_split`` and ``trainer.limit_train_batches``;
nothing is read from disk, so it works before the data is downloaded. The default overhead
(25 s per trial) is what the CPU sweep `cifar10_cpu` measured (trial wall time minus fit and
test); pass ``--overhead`` for other machines. Mixed precision in the config
(``trainer.precision: bf16-mixed``/``16-mixed``) is measured under autocast.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from odconv.bench.measurement import measure_model_costs

from ..definition import SweepDef
from .point import build_point
from .process import plan_slots

DEFAULT_OVERHEAD_S = 25.0


@dataclass
class VariantEstimate:
    variant: str
    seeds: int
    train_images_per_epoch: int
    epochs: int
    eval_images: int
    train_img_s: float
    eval_img_s: float
    overhead_s: float

    @property
    def trial_s(self) -> float:
        return (self.epochs * self.train_images_per_epoch / self.train_img_s + self.eval_images / self.eval_img_s
                + self.overhead_s)


def limited_images(images: int, batch_size: int, limit: Any) -> int:
    """Images one pass takes under lightning's ``limit_*_batches`` (an int: batches; a float:
    a fraction of the batches)."""
    if limit is None:
        return images
    batches = math.ceil(images / batch_size)
    if isinstance(limit, int) or (isinstance(limit, float) and limit > 1.0):
        batches = min(batches, int(limit))
    else:
        batches = max(1, int(batches * float(limit))) if limit > 0 else 0
    return min(images, batches * batch_size)


def measure_point(base_config: str, overrides: dict[str, Any], device: torch.device, repeats: int = 5) -> dict:
    """Build one grid point as a trial would and measure it: train and eval img/s, image counts.

    Train: the training step at the configured batch size; eval: the eval forward pass at the
    eval batch size; both under the trainer's precision
    (:func:`odconv.bench.measurement.measure_model_costs`, ``repeats`` rounds each)."""
    cli = build_point(base_config, overrides)
    dm, trainer, module = cli.datamodule, cli.trainer, cli.model
    train, val, test = dm.split_sizes()
    epochs = int(trainer.max_epochs)
    ebs = dm.eval_batch_size
    costs = measure_model_costs(
        {"model": module.model.to(device)}, device, batch=dm.batch_size, input_size=(3, dm.image_size, dm.image_size),
        num_classes=dm.num_classes, precision=str(trainer.precision), train_rounds=repeats, train_warmup=2,
        latency_batches=(ebs,), latency_rounds=repeats, memory=False, macs=False)["model"]
    eval_images = (epochs * limited_images(val, ebs, trainer.limit_val_batches)
                   + (limited_images(test, ebs, trainer.limit_test_batches) if dm.has_test_set else 0))
    return {"train_images_per_epoch": limited_images(train, dm.batch_size, trainer.limit_train_batches),
            "epochs": epochs,
            "eval_images": eval_images, "train_img_s": costs.train_images_per_s,
            "eval_img_s": ebs / costs.latency_s(ebs)}


def worker_threads(workers: int, cpus: Optional[int] = None) -> int:
    """Threads each of ``workers`` CPU workers gets from ``make ablation`` on this machine (the
    runner's split, :func:`sweeps.running.process.plan_slots`)."""
    return plan_slots(gpus="cpu", workers=workers, cpus=cpus)[0].threads or 1


def estimate_sweep(sweep: SweepDef, device: str | torch.device = "cpu", overhead_s: float = DEFAULT_OVERHEAD_S,
                   repeats: int = 5, log: Callable[[str], None] = print,
                   threads: Optional[int] = None) -> list[VariantEstimate]:
    """One :class:`VariantEstimate` per variant of ``sweep`` (its first seed is measured). On
    CPU with ``threads``, measured with that many torch threads (a worker's share: see
    :func:`worker_threads`)."""
    device = torch.device(device)
    if sweep.tune:
        log("note: the tuning stage is not included in the estimate")
    by_variant: dict[str, list] = {}
    for p in sweep.points():
        by_variant.setdefault(p.variant, []).append(p)
    out = []
    before = torch.get_num_threads()
    if device.type == "cpu" and threads:
        torch.set_num_threads(threads)
    try:
        for variant, pts in by_variant.items():
            m = measure_point(sweep.base_config, {**sweep.overrides, **pts[0].params}, device, repeats)
            est = VariantEstimate(variant, len(pts), overhead_s=overhead_s, **m)
            log(f"  {variant:40s} train {est.train_img_s:8.0f} img/s  eval {est.eval_img_s:8.0f} img/s  "
                f"-> {est.trial_s / 60:6.1f} min per trial")
            out.append(est)
    finally:
        torch.set_num_threads(before)
    return out


def format_estimate(sweep: SweepDef, rows: list[VariantEstimate], device: str, workers: int,
                    threads: Optional[int] = None) -> str:
    total = sum(r.trial_s * r.seeds for r in rows)
    n = sum(r.seeds for r in rows)
    lines = [f"# Estimated wall time of sweep `{sweep.name}` on {device}", "",
             "| variant | seeds | train img/s | eval img/s | epochs x train images | min per trial |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.variant} | {r.seeds} | {r.train_img_s:.0f} | {r.eval_img_s:.0f} | "
                     f"{r.epochs} x {r.train_images_per_epoch} | {r.trial_s / 60:.1f} |")
    lines += ["", f"{n} trials, {total / 3600:.2f} h of trial time; with {workers} worker(s) "
              f"about {total / 3600 / max(1, workers):.2f} h (trials are independent; the last one may run alone)."]
    if threads:
        lines += ["", f"Measured with {threads} thread(s), each worker's share of this CPU with {workers} worker(s); "
                      "workers side by side also share memory bandwidth, so the wall time may be somewhat longer."]
    return "\n".join(lines) + "\n"


def main(sweep: SweepDef, device: str, workers: int, overhead_s: Optional[float], repeats: int) -> int:
    threads = worker_threads(workers) if torch.device(device).type == "cpu" else None
    rows = estimate_sweep(sweep, device, DEFAULT_OVERHEAD_S if overhead_s is None else overhead_s, repeats,
                          log=lambda line: print(line, file=sys.stderr, flush=True), threads=threads)
    print(format_estimate(sweep, rows, device, workers, threads))
    return 0
