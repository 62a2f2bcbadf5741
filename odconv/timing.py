"""The project's one timer, peak memory, autocast and the training step that is timed.

Every timing of the project goes through :func:`time_rounds` (the benchmark, sweep records,
sweep estimates, the ``tune`` strategy); a model's costs are measured by
:func:`odconv.bench.measurement.measure_model_costs` on top of it. Compare times only as
ratios measured in the same run on the same machine.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from typing import Callable, Optional, Sequence

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

Clock = Callable[[], float]


def cpu_name() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``; elsewhere ``platform.processor()``): which
    machine a timing, or a trial, ran on."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_rounds(fns: dict[str, Callable[[], object]], device: torch.device | str = "cpu", *, rounds: int = 3,
                warmup: int = 0, keep_within: float = float("inf"), keep: Sequence[str] = (),
                among: Sequence[str] | None = None, clock: Clock = time.perf_counter) -> dict[str, list[float]]:
    """Seconds of every call of every callable in ``fns``, timed in interleaved rounds.

    Each round calls every entry once; the order alternates (forward, then reversed) from
    round to round, so a load change or a cache effect of the previous entry hits all alike.
    Round 0 times every entry; from round 1 on only the *contenders* are timed: the entries
    named in ``keep`` and those whose round-0 time is within ``keep_within`` times the
    fastest round-0 time among the entries named in ``among`` (default: all; a baseline far
    faster than the candidates, such as a static conv beside dynamic ones, is left out of
    ``among`` so that it does not drop every candidate). So a contender has ``rounds``
    samples, index ``r`` taken in round ``r`` (samples of two contenders with the same index
    are paired); any other entry has one.
    ``warmup`` untimed calls of every entry come first. ``clock``: seconds, read before and
    after each call (CUDA work is synchronized before the second read).
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    for arg, names in (("keep", keep), ("among", among or ())):
        unknown = sorted(set(names) - set(fns))
        if unknown:
            raise ValueError(f"{arg} names {unknown} that are not among the timed entries {sorted(fns)}")
    pool = list(fns) if not among else list(among)
    device = torch.device(device)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    for r in range(rounds):
        if r == 1:
            fastest = min(samples[n][0] for n in pool)
            order = [n for n in order if n in keep or samples[n][0] <= keep_within * fastest]
        for name in (order if r % 2 == 0 else order[::-1]):
            start = clock()
            fns[name]()
            _sync(device)
            samples[name].append(clock() - start)
    return samples


def time_callable(fn: Callable[[], object], device: torch.device | str = "cpu", *, warmup: int = 2,
                  repeats: int = 5, clock: Clock = time.perf_counter) -> float:
    """Median seconds per call of ``fn`` over ``repeats`` timed calls after ``warmup`` calls
    (:func:`time_rounds` with one entry)."""
    return statistics.median(time_rounds({"fn": fn}, device, rounds=repeats, warmup=warmup, clock=clock)["fn"])


def median_ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """Median over rounds of the per-round ratio ``num[r] / den[r]`` of two entries' paired
    :func:`time_rounds` samples (the rounds both were timed in): a drift in load between
    rounds cancels in each ratio."""
    n = min(len(num), len(den))
    if n == 0:
        raise ValueError("no round in which both entries were timed")
    return statistics.median(num[i] / den[i] for i in range(n))


def peak_memory(fn: Callable[[], object], device: torch.device | str = "cpu") -> int:
    """Peak bytes allocated by torch during one call of ``fn``, above what was allocated before.

    CUDA: the caching allocator's peak. CPU: replays the per-operator allocations recorded by
    the torch profiler (tensors alive at the start are not counted, as on CUDA).
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    # Kineto (seen with torch 2.13) logs "USDT ... profiler_start/stop" to stderr at every profile, at
    # a severity above ERROR; 6 silences it. Kineto reads this once, at its first profile;
    # setdefault keeps a level the user chose.
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # Each event's *self* memory is what that operator kept allocated (frees show up as
    # "[memory]" events); replaying them in time order gives the running total. Transient
    # workspace that a single kernel allocates and frees inside itself is not seen.
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage != 0), key=lambda e: e.time_range.start)
    current = peak = 0
    for e in events:
        current += e.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


def precision_dtype(precision: str, device_type: str = "cpu") -> Optional[torch.dtype]:
    """The autocast dtype of a precision name: the benchmark's ``fp32``/``bf16`` or Lightning's
    ``trainer.precision`` (``32-true``, ``bf16-mixed``, ``16-mixed``...). fp16 only on CUDA
    (Lightning runs ``16-mixed`` there only); None: no autocast (fp32)."""
    name = str(precision)
    if name.startswith("bf16"):
        return torch.bfloat16
    if (name.startswith("16") or name == "fp16") and device_type == "cuda":
        return torch.float16
    return None


def autocast(device_type: str, dtype: Optional[torch.dtype]) -> contextlib.AbstractContextManager:
    """``torch.autocast(device_type, dtype)``, or a no-op context for ``dtype=None`` (fp32)."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type, dtype=dtype)


def make_train_step(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                    autocast_dtype: Optional[torch.dtype] = None) -> Callable[[], None]:
    """A closure running one forward + backward + SGD step (lr 0 keeps the weights fixed).

    ``inputs``: (B, C, H, W) on the model's device; ``targets``: (B,) class indices. With
    ``autocast_dtype`` (e.g. ``torch.bfloat16``) the forward pass and loss run under
    ``torch.autocast`` on the inputs' device type, as Lightning's ``bf16-mixed`` does.
    """
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    loss_fn = nn.CrossEntropyLoss()
    device_type = inputs.device.type

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(device_type, autocast_dtype):
            loss = loss_fn(model(inputs), targets)
        loss.backward()
        opt.step()

    return step
