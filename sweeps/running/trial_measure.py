"""What a trial's record says about its network and its machine besides accuracy: the cost
measurements of the trained network and the library versions (trial process only)."""

from __future__ import annotations

import copy
import importlib.metadata
import os
import platform
from typing import Any

import torch

from odconv.bench.measurement import measure_model_costs
from odconv.timing import cpu_name


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform(), "cpu": cpu_name(),
           # a CPU fit's numerics and times depend on its thread count (the worker's share of the cores)
           "cpu_cores": str(os.cpu_count()), "torch_threads": str(torch.get_num_threads())}
    for dist in ("torch", "lightning", "torchmetrics", "optuna", "numpy", "jsonargparse", "pandas"):
        out[dist] = importlib.metadata.version(dist)  # all required dependencies
    out["cuda"] = str(torch.version.cuda)
    if torch.cuda.is_available():
        try:
            out["gpu"] = torch.cuda.get_device_name(0)
            out["cudnn"] = str(torch.backends.cudnn.version())
        except RuntimeError:  # a broken CUDA driver: these fields are informational
            pass
    return out


def measure_costs(lm, datamodule, device, opts: dict[str, Any]) -> dict[str, Any]:
    """The record's cost fields of the trained network ``lm.model`` (measured on a copy, in fp32):
    ``params_count``, ``macs`` (per image), ``measure_device`` and, unless ``opts["enabled"]`` is
    false, ``train_throughput`` (img/s of the training step at ``throughput_batch_size``, default the
    data's batch size), ``latency_ms`` per batch of ``latency_batch_sizes`` (default 1 and 64; also
    ``latency_b1_ms``, ``latency_b64_ms``) and ``peak_memory_mb`` of one training step
    (:func:`odconv.bench.measurement.measure_model_costs`, ``repeats`` rounds, default 5)."""
    size = int(datamodule.image_size)
    timed = bool(opts.get("enabled", True))
    batch = int(opts.get("throughput_batch_size") or datamodule.batch_size)
    latency_batches = [int(b) for b in opts.get("latency_batch_sizes", [1, 64])]
    repeats = int(opts.get("repeats", 5))
    net = copy.deepcopy(lm.model).to(device)  # the training steps move BatchNorm statistics
    costs = measure_model_costs({"net": net}, device, batch=batch, input_size=(3, size, size),
                                num_classes=int(datamodule.num_classes), timed=timed, train_rounds=repeats,
                                train_warmup=1, latency_batches=latency_batches, latency_rounds=repeats)["net"]
    out: dict[str, Any] = {"params_count": costs.params, "macs": costs.macs, "measure_device": str(device)}
    if not timed:
        return out
    out["train_throughput"] = costs.train_images_per_s
    out["latency_ms"] = {str(b): 1000.0 * costs.latency_s(b) for b in latency_batches}
    for b in (1, 64):
        if b in latency_batches:
            out[f"latency_b{b}_ms"] = 1000.0 * costs.latency_s(b)
    out["peak_memory_mb"] = costs.peak_memory_bytes / 2**20
    return out
