"""Wall-clock time and peak memory of a callable, on CPU or CUDA.

Used by the benchmark (`make bench`) and by sweep records (latency, throughput, memory).
Times are medians over repeats after warm-up; compare them only as ratios measured in the
same run on the same machine.
"""

from __future__ import annotations

import contextlib
import math
import platform
import statistics
import time
from typing import Callable, Optional, Sequence

import torch
from torch import nn


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


def time_callable(fn: Callable[[], object], device: torch.device | str = "cpu", *, warmup: int = 2,
                  repeats: int = 5, min_time: float = 0.0) -> float:
    """Median seconds per call of ``fn`` over ``repeats`` timed calls after ``warmup`` calls.
    With ``min_time`` > 0, keeps repeating until that many seconds have been spent timing."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    _sync(device)
    times: list[float] = []
    spent = 0.0
    while len(times) < repeats or spent < min_time:
        start = time.perf_counter()
        fn()
        _sync(device)
        dt = time.perf_counter() - start
        times.append(dt)
        spent += dt
    return statistics.median(times)


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
    from torch.profiler import ProfilerActivity, profile

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


def measure_latency(model: nn.Module, batch_size: int, input_size: tuple[int, int, int] = (3, 32, 32),
                    device: torch.device | str = "cpu", *, warmup: int = 2, repeats: int = 5) -> float:
    """Median seconds of one eval-mode forward pass at ``batch_size`` (no grad)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    x = torch.randn(batch_size, *input_size, device=device)
    try:
        with torch.inference_mode():
            return time_callable(lambda: model(x), device, warmup=warmup, repeats=repeats)
    finally:
        model.train(was_training)


def measure_train_throughput(model: nn.Module, batch_size: int, input_size: tuple[int, int, int] = (3, 32, 32),
                             num_classes: int = 10, device: torch.device | str = "cpu", *, warmup: int = 2,
                             repeats: int = 5) -> float:
    """Images per second of a train-mode forward + backward + optimiser step at ``batch_size``."""
    device = torch.device(device)
    was_training = model.training
    model.train()
    x = torch.randn(batch_size, *input_size, device=device)
    y = torch.randint(0, num_classes, (batch_size,), device=device)
    try:
        seconds = time_callable(make_train_step(model, x, y), device, warmup=warmup, repeats=repeats)
    finally:
        model.train(was_training)
    return batch_size / seconds


def time_interleaved(fns: dict[str, Callable[[], object]], device: torch.device | str = "cpu", *, warmup: int = 1,
                     repeats: int = 3, max_seconds: float = float("inf")) -> dict[str, float]:
    """Median seconds per call of every callable in ``fns``, timed round-robin (one call of
    each per round) so that load changes on a shared machine hit all of them alike.

    A callable whose warm-up call took longer than ``max_seconds / repeats`` is timed
    fewer times, bounding each entry's cost near ``max_seconds``; one whose warm-up call
    alone took longer than ``max_seconds`` is not called again (its warm-up time is used).
    """
    device = torch.device(device)
    first: dict[str, float] = {}
    for name, fn in fns.items():
        start = time.perf_counter()
        for _ in range(max(1, warmup)):
            fn()
        _sync(device)
        first[name] = (time.perf_counter() - start) / max(1, warmup)
    # (inf // x is nan in Python: without a bound every entry gets all its repeats)
    wanted = {name: repeats if math.isinf(max_seconds) else min(repeats, int(max_seconds // max(first[name], 1e-9)))
              for name in fns}
    times: dict[str, list[float]] = {name: ([] if wanted[name] else [first[name]]) for name in fns}
    for r in range(max(wanted.values())):
        for name, fn in fns.items():
            if r >= wanted[name]:
                continue
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def time_rounds(fns: dict[str, Callable[[], object]], device: torch.device | str = "cpu", *, rounds: int = 3,
                warmup: int = 0, keep_within: float = float("inf"), keep: Sequence[str] = ()) -> dict[str, list[float]]:
    """Seconds of every call of every callable in ``fns``, timed in interleaved rounds.

    Each round calls every entry once; the order alternates (forward, then reversed) from
    round to round, so a load change or a cache effect of the previous entry hits all alike.
    Round 0 times every entry; from round 1 on only the *contenders* are timed: the entries
    named in ``keep`` and those whose round-0 time is within ``keep_within`` times the
    fastest round-0 time. So a contender has ``rounds`` samples, index ``r`` taken in round
    ``r`` (samples of two contenders with the same index are paired); any other entry has one.
    ``warmup`` untimed calls of every entry come first.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    unknown = sorted(set(keep) - set(fns))
    if unknown:
        raise ValueError(f"keep names {unknown} that are not among the timed entries {sorted(fns)}")
    device = torch.device(device)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    for r in range(rounds):
        if r == 1:
            fastest = min(s[0] for s in samples.values())
            order = [n for n in order if n in keep or samples[n][0] <= keep_within * fastest]
        for name in (order if r % 2 == 0 else order[::-1]):
            start = time.perf_counter()
            fns[name]()
            _sync(device)
            samples[name].append(time.perf_counter() - start)
    return samples


def median_ratio(samples: dict[str, list[float]], num: str, den: str) -> float:
    """Median over rounds of the per-round ratio ``num / den`` of :func:`time_rounds` samples
    (the rounds both were timed in): a drift in load between rounds cancels in each ratio."""
    n = min(len(samples[num]), len(samples[den]))
    return statistics.median(samples[num][i] / samples[den][i] for i in range(n))
