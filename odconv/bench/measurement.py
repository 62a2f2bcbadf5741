"""The one way to measure what a model costs: :func:`measure_model_costs`.

Parameters, MACs per image, the training step's time (forward, cross-entropy, backward, SGD
step), eval latency at given batch sizes and the training step's peak memory, for one model
or several timed in interleaved rounds (:func:`odconv.timing.time_rounds`). The benchmark's
model tables (:mod:`odconv.bench.models`), the sweep trials' records
(:func:`sweeps.running.trial.measure_costs`), the sweep benchmark (:mod:`sweeps.running.bench`) and the sweep
estimate (:mod:`sweeps.running.estimate`) all measure through it.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

import torch
from torch import nn

from ..counting import count_macs, count_params
from ..timing import Clock, autocast, cpu_name, make_train_step, peak_memory, precision_dtype, time_rounds


def machine_info(device: torch.device) -> dict[str, str]:
    """What a table's figures were measured on: date, versions, CPU (and GPU), threads, load, commit."""
    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_cores": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "device": str(device),
        "load_average": " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a",
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = str(torch.version.cuda)
        info["cudnn"] = str(torch.backends.cudnn.version())
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                            timeout=5).stdout.strip() or "n/a"
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = "n/a"
    return info


def warm_then_measure_memory(fns: Mapping[str, Callable[[], object]], device: torch.device) -> dict[str, int]:
    """Peak memory of one call of each entry. On CPU that call (under the profiler) is also the
    entry's warm-up; on CUDA one plain call comes first, so that one-time allocations (library
    handles, workspaces) stay out of the peak."""
    if device.type == "cuda":
        for fn in fns.values():
            fn()
    return {name: peak_memory(fn, device) for name, fn in fns.items()}


def format_samples(samples: Sequence[float]) -> str:
    """Samples in seconds as the CSVs keep them: milliseconds, ``;``-separated."""
    return ";".join(f"{t * 1e3:.4g}" for t in samples)


def model_inputs(batch: int, input_size: Sequence[int] = (3, 32, 32), num_classes: int = 10,
                 device: torch.device | str = "cpu", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs :func:`measure_model_costs` feeds a model: images (batch, *input_size) and
    class targets (batch,), from a generator seeded with ``seed`` (the global RNG is left alone)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *input_size, generator=g)
    y = torch.randint(0, num_classes, (batch,), generator=g)
    return x.to(device), y.to(device)


@dataclass
class ModelCosts:
    """What :func:`measure_model_costs` measured of one model. Times in seconds, one sample
    per round (samples of two models with the same index were taken in the same round)."""

    params: int
    macs: Optional[int]              # per image; None when not counted
    batch: int                       # of the training step
    train_samples: list[float]       # seconds per training step
    latency_samples: dict[int, list[float]]  # batch size -> seconds per eval forward
    peak_memory_bytes: Optional[int]  # of one training step; None when not measured

    @property
    def train_step_s(self) -> float:
        """Median seconds of one training step."""
        return statistics.median(self.train_samples)

    @property
    def train_images_per_s(self) -> float:
        """Training throughput: ``batch`` over the median step time."""
        return self.batch / self.train_step_s

    def latency_s(self, batch: int) -> float:
        """Median seconds of one eval forward pass at ``batch``."""
        return statistics.median(self.latency_samples[batch])


def measure_model_costs(models: Mapping[str, nn.Module], device: torch.device | str = "cpu", *, batch: int,
                        input_size: Sequence[int] = (3, 32, 32), num_classes: int = 10, precision: str = "fp32",
                        timed: bool = True, train_rounds: int = 3, train_warmup: int = 0,
                        latency_batches: Sequence[int] = (1,), latency_rounds: int = 10, latency_warmup: int = 2,
                        memory: bool = True, macs: bool = True,
                        eval_models: Optional[Mapping[str, nn.Module]] = None,
                        clock: Clock = time.perf_counter) -> dict[str, ModelCosts]:
    """Costs of every model in ``models`` (already on ``device``), all timed in the same
    interleaved rounds, so per-round ratios between them cancel load changes
    (:func:`odconv.timing.median_ratio`).

    - ``params``: :func:`odconv.counting.count_params`; ``macs`` (if ``macs``): per image of
      ``input_size`` (C, H, W), :func:`odconv.counting.count_macs`.
    - With ``timed`` (else only the counts): the training step (:func:`odconv.timing.make_train_step`,
      inputs (batch, *input_size), targets (batch,) of ``num_classes``; :func:`model_inputs`),
      forward and loss under autocast of ``precision`` (``fp32``, ``bf16``, or a Lightning
      precision such as ``bf16-mixed``: :func:`odconv.timing.precision_dtype`).
      With ``memory``, each step's first call measures its peak memory (untimed, so also a
      warm-up; on CUDA after one plain call); ``train_warmup`` untimed calls follow, then
      ``train_rounds`` rounds. Then eval latency (eval mode, inference mode, same autocast) at
      each of ``latency_batches``: ``latency_warmup`` untimed calls, ``latency_rounds`` rounds.
      ``eval_models[name]``, where given, stands in for ``models[name]`` in the latency (a model
      that only runs at the training batch, e.g. :func:`odconv.bench.models.freeze_attentions`).

    The training steps update BatchNorm running statistics (weights stay: SGD with lr 0): pass
    a copy to keep a model as it is. Modes (train/eval) are restored. ``clock``: the timer's clock.
    """
    device = torch.device(device)
    eval_models = {**models, **(eval_models or {})}
    counted = {name: (count_params(m), count_macs(m, input_size) if macs else None) for name, m in models.items()}
    if not timed:
        return {name: ModelCosts(p, n, batch, [], {}, None) for name, (p, n) in counted.items()}
    modes = {id(m): m.training for m in (*models.values(), *eval_models.values())}
    dtype = precision_dtype(precision, device.type)
    x, y = model_inputs(batch, input_size, num_classes, device)
    try:
        for m in models.values():
            m.train()
        steps = {name: make_train_step(m, x, y, autocast_dtype=dtype) for name, m in models.items()}
        mems = warm_then_measure_memory(steps, device) if memory else {name: None for name in models}
        train = time_rounds(steps, device, rounds=train_rounds, warmup=train_warmup, clock=clock)
        for m in eval_models.values():
            m.eval()
        latency: dict[str, dict[int, list[float]]] = {name: {} for name in models}
        for b in latency_batches:
            xb = model_inputs(b, input_size, num_classes, device)[0]
            infer = {name: _eval_forward(eval_models[name], xb, dtype) for name in models}
            for name, samples in time_rounds(infer, device, rounds=latency_rounds, warmup=latency_warmup,
                                             clock=clock).items():
                latency[name][b] = samples
    finally:
        for m in (*models.values(), *eval_models.values()):
            m.train(modes[id(m)])
    return {name: ModelCosts(p, n, batch, train[name], latency[name], mems[name])
            for name, (p, n) in counted.items()}


def _eval_forward(model: nn.Module, x: torch.Tensor, dtype: Optional[torch.dtype]) -> Callable[[], None]:
    def call() -> None:
        with torch.inference_mode(), autocast(x.device.type, dtype):
            model(x)
    return call
