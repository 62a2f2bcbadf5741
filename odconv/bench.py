"""Benchmark of dynamic convolution against static convolution (``make bench``).

    python -m odconv.bench [--quick] [--device cpu|cuda] [--out results/bench] [--sections ...]

Sections (``--sections``, default all that apply to the device), each writing ``NAME.csv``
and ``NAME.md`` under ``--out``:

* ``layers``: the dynamic-conv shapes of CIFAR ResNet-18 and CIFAR MobileNetV2 (as ODConv-4x
  places them), forward (no grad) and forward+backward: time and peak memory of the static
  conv, of every strategy and of the ``auto`` choice, as ratios to the static conv, to the
  reference strategy (``grouped``) and to the fastest strategy of the same row. A recheck
  pass re-times, with more rounds, any row where ``auto`` looks slower than the reference
  or than the fastest strategy beyond the tolerances; the table marks those rows.
* ``models``: ``cifar_resnet18`` at widths 0.125, 0.5 and 1 with static, odconv1x, odconv4x,
  dyconv4x and condconv8x convs: training step time (batch 128), batch-1 inference latency
  and training peak memory, as ratios to the static model of the same run, in fp32 and under
  bf16 autocast (``bf16-mixed``; the static model in bf16 is then the reference).
* ``strategies``: the same model measurement for ODConv-1x, ODConv-4x and CondConv-8x at widths
  0.125 and 0.5 under several strategies (default ``auto`` and ``fused``): what each execution strategy
  costs in time and peak memory against the static model, i.e. the memory floor (``fused``
  saves only each layer's inputs) and its price in time.
* ``floors``: the models of the strategies section (static, ODConv-1x, ODConv-4x, DyConv-4x),
  each dynamic model also with its attention branches replaced by the constants they computed
  (:func:`freeze_attentions`): how much of its training step and batch-1 latency over static
  is the attention branch, and what is left for the dynamic conv itself.
* ``workers`` (CPU only): training throughput of the sweeps' small CPU model with P worker
  processes of one thread each against one process of P threads (P = the CPU cores).

``targets.md|csv`` then states every target of the project (model time, memory and latency
ratios, the default strategy against the reference and the fastest strategy), what this run
measured and whether it is met. Timings are medians of interleaved rounds
(:func:`odconv.timing.time_rounds`); compare ratios within one run only.
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime as _dt
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from queue import Empty
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

import odconv

from .spec import parse_conv_spec
from .timing import autocast, cpu_name, make_train_step, median_ratio, peak_memory, time_rounds

REFERENCE = "grouped"
# torch.compile: minutes of compilation per shape, and not an eager strategy to choose.
NOT_TIMED_BY_DEFAULT = ("compiled",)
MODEL_CONVS = ("static", "odconv1x", "odconv4x", "dyconv4x", "condconv8x")
MODELS = (("cifar_resnet18", 0.125), ("cifar_resnet18", 0.5), ("cifar_resnet18", 1.0))
PRECISIONS: dict[str, Optional[torch.dtype]] = {"fp32": None, "bf16": torch.bfloat16}
SECTIONS = ("layers", "models", "strategies", "floors", "workers")
# The strategies section: the models and convs it runs by default, and the strategies it compares.
STRATEGY_MODELS = (("cifar_resnet18", 0.125), ("cifar_resnet18", 0.5))
STRATEGY_CONVS = ("static", "odconv1x", "odconv4x", "condconv8x")
MODEL_STRATEGIES = ("auto", "fused")
# The floors section: the models of the strategies section, the convs with an attention branch.
FLOOR_CONVS = ("static", "odconv1x", "odconv4x", "dyconv4x")

# The project's targets (model training step of cifar_resnet18, batch 128): time of each
# variant's step over the static model's, peak training memory over static's, batch-1
# latency of ODConv-4x over static's, and the default strategy per layer row.
TIME_TARGETS = {"odconv4x": 2.0, "odconv1x": 1.5, "dyconv4x": 1.8, "condconv8x": 1.8}
MEMORY_TARGET = 1.5
LATENCY_TARGETS = {"odconv4x": 1.5}
BEST_TOLERANCE = 0.10        # auto at most 10% slower than the fastest single strategy
REFERENCE_TOLERANCE = 0.05   # "at or below the reference within noise"


def default_strategies() -> list[str]:
    """Every registered strategy except those in ``NOT_TIMED_BY_DEFAULT``, reference first."""
    names = [s for s in odconv.STRATEGIES if s not in NOT_TIMED_BY_DEFAULT]
    return sorted(names, key=lambda s: s != REFERENCE)


# ----------------------------------------------------------------------------- machine
def machine_info(device: torch.device) -> dict[str, str]:
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


def _warm_then_measure_memory(fns: dict[str, Callable[[], object]], device: torch.device) -> dict[str, int]:
    """Peak memory of one call of each entry. On CPU that call (under the profiler) is also the
    entry's warm-up; on CUDA one plain call comes first, so that one-time allocations (library
    handles, workspaces) stay out of the peak."""
    if device.type == "cuda":
        for fn in fns.values():
            fn()
    return {name: peak_memory(fn, device) for name, fn in fns.items()}


# ------------------------------------------------------------------------------ layers
@dataclass(frozen=True)
class LayerShape:
    model: str
    name: str
    in_ch: int
    out_ch: int
    k: int
    stride: int
    padding: int
    dilation: int
    groups: int
    hw: int
    attentions: str  # active ODConv attentions, letters of "cfsk"
    n: int

    @property
    def geometry(self):
        return (self.in_ch, self.out_ch, self.k, self.stride, self.padding, self.dilation, self.groups, self.hw,
                self.attentions, self.n)

    def label(self) -> str:
        dw = " dw" if self.groups == self.in_ch == self.out_ch and self.groups > 1 else (
            f" g{self.groups}" if self.groups > 1 else "")
        return f"{self.in_ch}->{self.out_ch} k{self.k} s{self.stride}{dw} @{self.hw}x{self.hw}"


def layer_shapes(model_names=("cifar_resnet18", "cifar_mobilenetv2"), conv: str = "odconv4x",
                 all_shapes: bool = False) -> list[LayerShape]:
    """Dynamic-conv shapes (first occurrence) of the models built with ``conv``. By default,
    per model, the first layer of each kind (depthwise, pointwise, other), input resolution
    and stride: one of each per stage. ``all_shapes=True``: every distinct shape."""
    shapes: dict[tuple, LayerShape] = {}
    for model_name in model_names:
        model = odconv.build_model(model_name, num_classes=10, conv=conv).eval()
        seen: list[tuple[str, odconv.DynamicConvBase, int]] = []
        hooks = [m.register_forward_pre_hook(lambda m, a, name=name, seen=seen: seen.append((name, m, a[0].shape[-1])))
                 for name, m in model.named_modules() if isinstance(m, odconv.DynamicConvBase)]
        with torch.no_grad():
            model(torch.randn(1, 3, 32, 32))
        for h in hooks:
            h.remove()
        for name, m, hw in seen:
            atts = getattr(m, "active_attentions", frozenset({"kernel"}))
            letters = "".join(a[0] for a in ("channel", "filter", "spatial", "kernel") if a in atts)
            s = LayerShape(model_name, name, m.in_planes, m.out_planes, m.kernel_size, m.stride, m.padding,
                           m.dilation, m.groups, hw, letters, m.kernel_num)
            kind = "dw" if m.groups > 1 and m.groups == m.in_planes else ("pw" if m.kernel_size == 1 else "conv")
            key = s.geometry if all_shapes or kind == "conv" else (model_name, kind, hw, m.stride,
                                                                   m.in_planes < m.out_planes)
            shapes.setdefault(key, s)
    return list(shapes.values())


def _layer_inputs(s: LayerShape, batch: int, device, grad: bool):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, s.in_ch, s.hw, s.hw, generator=g).to(device).requires_grad_(grad)
    w = (torch.randn(s.n, s.out_ch, s.in_ch // s.groups, s.k, s.k, generator=g) * 0.1).to(device).requires_grad_(grad)
    att = {}
    sizes = {"c": ("channel", (batch, s.in_ch)), "f": ("filter", (batch, s.out_ch)),
             "s": ("spatial", (batch, s.k, s.k)), "k": ("kernel", (batch, s.n))}
    for letter in s.attentions:
        name, shape = sizes[letter]
        att[name] = torch.rand(*shape, generator=g).to(device).requires_grad_(grad)
    static_w = w[0].detach().clone().requires_grad_(grad)
    return x, w, att, static_w


def layer_callables(s: LayerShape, batch: int, device: torch.device, grad: bool,
                    names: Sequence[str]) -> tuple[dict[str, Callable[[], None]], str]:
    """One call each of the static conv (``"static"``) and of the strategies ``names`` on the
    shape ``s`` at ``batch`` (inputs (B, I, hw, hw), fixed seed), with ``grad`` a backward of
    ones too; and the strategy ``auto`` chooses for that call."""
    x, w, att, static_w = _layer_inputs(s, batch, device, grad)
    geo = dict(stride=s.stride, padding=s.padding, dilation=s.dilation, groups=s.groups)

    def make(name):
        def call():
            with torch.set_grad_enabled(grad):
                if name == "static":
                    out = F.conv2d(x, static_w, None, s.stride, s.padding, s.dilation, s.groups)
                else:
                    out = odconv.dynamic_conv2d(x, w, **att, **geo, strategy=name)
                if grad:
                    out.backward(torch.ones_like(out))
        return call

    with torch.set_grad_enabled(grad):
        chosen = odconv.choose_strategy(x, w, **att, **geo)
    return {name: make(name) for name in names}, chosen


def _fmt_samples(samples: list[float]) -> str:
    return ";".join(f"{t * 1e3:.4g}" for t in samples)


def bench_layers(shapes: Sequence[LayerShape], batches: Sequence[int], strategies: Sequence[str], device: torch.device,
                 rounds: int, keep_within: float, log=print) -> list[dict]:
    """First pass over every (shape, batch, mode): one row per timed entry (static, each
    strategy) plus an ``auto`` row (the chosen strategy's figures, and its ratio to the
    fastest strategy). Entries slower than ``keep_within`` x the fastest after the first
    round are timed once (see :func:`odconv.timing.time_rounds`); ``samples`` says how often."""
    rows: list[dict] = []
    for s in shapes:
        for batch in batches:
            for mode, grad in (("fwd", False), ("fwd+bwd", True)):
                fns, chosen = layer_callables(s, batch, device, grad, ("static", *strategies))
                if chosen not in fns:  # --strategies left out the one auto runs: time it too
                    fns[chosen] = layer_callables(s, batch, device, grad, (chosen,))[0][chosen]
                mems = _warm_then_measure_memory(fns, device)
                samples = time_rounds(fns, device, rounds=rounds, keep_within=keep_within,
                                      keep=("static", REFERENCE, chosen))
                times = {name: statistics.median(t) for name, t in samples.items()}
                best = min((n for n in fns if n != "static"), key=lambda n: times[n])
                t_static, t_ref = times["static"], times[REFERENCE]
                m_static, m_ref = max(mems["static"], 1), max(mems[REFERENCE], 1)
                base = dict(model=s.model, layer=s.name, shape=s.label(), in_ch=s.in_ch, out_ch=s.out_ch, k=s.k,
                            stride=s.stride, groups=s.groups, hw=s.hw, n=s.n, attentions=s.attentions, batch=batch,
                            mode=mode)
                for name in (*fns, "auto"):
                    src = chosen if name == "auto" else name
                    rows.append(dict(
                        base, strategy=name, runs=src, samples=len(samples[src]), time_ms=round(times[src] * 1e3, 4),
                        samples_ms=_fmt_samples(samples[src]), peak_mb=round(mems[src] / 2 ** 20, 3),
                        time_vs_static=round(times[src] / t_static, 3), time_vs_reference=round(times[src] / t_ref, 3),
                        mem_vs_static=round(mems[src] / m_static, 3), mem_vs_reference=round(mems[src] / m_ref, 3),
                        best=best if name == "auto" else "",
                        time_vs_best=round(times[src] / times[best], 3) if name == "auto" else "",
                        rechecked="", recheck_rounds="", recheck_vs_reference="", recheck_vs_best=""))
                log(f"  {s.label():28s} B={batch:<3d} {mode:7s} static {t_static * 1e3:8.2f} ms | "
                    + " ".join(f"{n} {times[n] / t_static:.2f}" for n in strategies)
                    + f" | auto={chosen} {times[chosen] / t_ref:.2f}x ref, {times[chosen] / times[best]:.2f}x best")
    return rows


def needs_recheck(row: dict, ref_tol: float = REFERENCE_TOLERANCE, best_tol: float = BEST_TOLERANCE) -> list[str]:
    """The contenders an ``auto`` row must be re-timed against: the reference if ``auto``
    looked slower than it beyond ``ref_tol``, the fastest strategy if beyond ``best_tol``."""
    against = []
    if row["runs"] != REFERENCE and float(row["time_vs_reference"]) > 1 + ref_tol:
        against.append(REFERENCE)
    if row["runs"] != row["best"] and float(row["time_vs_best"]) > 1 + best_tol and row["best"] not in against:
        against.append(row["best"])
    return against


def recheck_layers(rows: list[dict], make_fns: Callable[[dict, Sequence[str]], dict[str, Callable[[], object]]],
                   device: torch.device, rounds: int, ref_tol: float = REFERENCE_TOLERANCE,
                   best_tol: float = BEST_TOLERANCE, log=print) -> int:
    """The recheck pass: every ``auto`` row of ``rows`` that :func:`needs_recheck` flags is
    re-timed with only its contenders (the chosen strategy and the reference and/or the
    fastest strategy), ``rounds`` interleaved rounds after one warm-up, and the row gets the
    median per-round ratios (``recheck_vs_reference``/``recheck_vs_best``; unflagged
    comparisons keep the first pass's figure). ``make_fns(row, names)`` builds the callables
    of that row's shape. Updates ``rows`` in place; returns the number of rows rechecked."""
    count = 0
    for row in rows:
        if row["strategy"] != "auto":
            continue
        against = needs_recheck(row, ref_tol, best_tol)
        if not against:
            continue
        chosen = row["runs"]
        fns = make_fns(row, (chosen, *against))
        samples = time_rounds(fns, device, rounds=rounds, warmup=1)
        row["rechecked"] = "yes"
        row["recheck_rounds"] = rounds
        row["recheck_vs_reference"] = round(median_ratio(samples, chosen, REFERENCE), 3) if REFERENCE in against \
            else row["time_vs_reference"]
        row["recheck_vs_best"] = round(median_ratio(samples, chosen, row["best"]), 3) if row["best"] in against \
            else row["time_vs_best"]
        count += 1
        log(f"  recheck {row['shape']:28s} B={row['batch']:<3} {row['mode']:7s} auto={chosen}: "
            f"vs reference {float(row['time_vs_reference']):.2f} -> {float(row['recheck_vs_reference']):.2f}, "
            f"vs best ({row['best']}) {float(row['time_vs_best']):.2f} -> {float(row['recheck_vs_best']):.2f}")
    return count


def final_ratios(row: dict) -> tuple[float, float]:
    """An ``auto`` row's (time / reference, time / fastest strategy): the recheck's if rechecked."""
    if row["rechecked"]:
        return float(row["recheck_vs_reference"]), float(row["recheck_vs_best"])
    return float(row["time_vs_reference"]), float(row["time_vs_best"])


# ------------------------------------------------------------------------------ models
def bench_models(models: Sequence[tuple[str, float]], convs: Sequence[str], batch: int, device: torch.device,
                 precision: str, train_rounds: int, latency_rounds: int, strategies: Sequence[str] = ("auto",),
                 log=print, constant_attention: bool = False, num_classes: int = 10) -> list[dict]:
    """Per (model, width): every conv's training step (forward + backward + SGD step at
    ``batch``, inputs (batch, 3, 32, 32)), batch-1 eval latency and training peak memory under
    ``precision`` (``fp32``, or ``bf16`` autocast); ratios to the static model are medians of
    per-round ratios. Every dynamic model runs once per name in ``strategies`` (``auto``: the
    default choice) and, with ``constant_attention``, once more per strategy with its attention
    branches replaced by constants (:func:`freeze_attentions`), all interleaved in the same rounds.
    Each row's ``attention`` says which: ``computed`` or ``constant``."""
    dtype = PRECISIONS[precision]
    rows: list[dict] = []
    for model_name, width in models:
        entries = [(conv, s, a) for conv in convs for s in (("-",) if conv == "static" else strategies)
                   for a in (("computed", "constant") if constant_attention and conv != "static" else ("computed",))]
        train_fns, infer_fns, params = {}, {}, {}
        for conv, strategy, attention in entries:
            torch.manual_seed(0)
            model = odconv.build_model(model_name, num_classes=num_classes, conv=conv, width=width).to(device)
            if conv != "static":
                odconv.set_strategy(model, strategy)
            x = torch.randn(batch, 3, 32, 32, device=device)
            y = torch.randint(0, num_classes, (batch,), device=device)
            x1 = torch.randn(1, 3, 32, 32, device=device)
            infer_model = model
            if attention == "constant":
                infer_model = copy.deepcopy(model).eval()
                freeze_attentions(infer_model, x1)
                freeze_attentions(model.train(), x)
            key = f"{conv}|{strategy}|{attention}"
            params[key] = sum(p.numel() for p in model.parameters())
            train_fns[key] = _train_fn(model, x, y, dtype)
            infer_fns[key] = _infer_fn(infer_model, x1, dtype)
        base = "static|-|computed"
        mem = _warm_then_measure_memory(train_fns, device)
        t_train = time_rounds(train_fns, device, rounds=train_rounds)
        t_infer = time_rounds(infer_fns, device, rounds=latency_rounds, warmup=2)
        for conv, strategy, attention in entries:
            key = f"{conv}|{strategy}|{attention}"
            rows.append(dict(
                model=model_name, width=width, precision=precision, conv=conv, strategy=strategy,
                attention=attention, batch=batch,
                params_m=round(params[key] / 1e6, 3),
                train_step_ms=round(statistics.median(t_train[key]) * 1e3, 3),
                latency_b1_ms=round(statistics.median(t_infer[key]) * 1e3, 4),
                train_peak_mb=round(mem[key] / 2 ** 20, 2),
                train_vs_static=round(median_ratio(t_train, key, base), 3),
                latency_vs_static=round(median_ratio(t_infer, key, base), 3),
                mem_vs_static=round(mem[key] / max(mem[base], 1), 3),
                train_samples_ms=_fmt_samples(t_train[key]), latency_samples_ms=_fmt_samples(t_infer[key])))
            r = rows[-1]
            log(f"  {model_name} w{width} {precision} {conv:10s} {strategy:8s} {attention:8s} "
                f"train {r['train_step_ms']:9.1f} ms "
                f"({r['train_vs_static']:.2f}x)  latency {r['latency_b1_ms']:7.2f} ms ({r['latency_vs_static']:.2f}x)  "
                f"mem {r['train_peak_mb']:8.1f} MB ({r['mem_vs_static']:.2f}x)")
        del train_fns, infer_fns
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


class ConstantAttention(nn.Module):
    """Stands in for a dynamic layer's attention branch: returns the attentions recorded from
    one forward pass (leaf tensors that take gradients), so the layer's conv and its backward
    do the same work as with the branch, and the branch's own work is gone."""

    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor):
        return self.value


def freeze_attentions(model: nn.Module, x: torch.Tensor) -> int:
    """Replace the attention branch (``layer.attention``: ODConv, DyConv) of every dynamic layer
    of ``model`` by a :class:`ConstantAttention` holding what it computed for ``x`` (B, 3, H, W)
    in the model's current mode; the model then only runs on inputs of ``x``'s batch size.
    Returns how many branches it replaced (CondConv's routers are left as they are)."""
    layers = [m for m in model.modules()
              if isinstance(m, odconv.DynamicConvBase) and isinstance(getattr(m, "attention", None), nn.Module)]
    recorded: dict[nn.Module, object] = {}
    hooks = [m.attention.register_forward_hook(lambda mod, inp, out, m=m: recorded.__setitem__(m, out))
             for m in layers]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    for m in layers:
        out = recorded[m]
        leaf = lambda t: t.detach().clone().requires_grad_()  # noqa: E731
        m.attention = ConstantAttention({k: leaf(v) for k, v in out.items()} if isinstance(out, dict) else leaf(out))
    return len(layers)


def _train_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: Optional[torch.dtype]):
    model.train()
    return make_train_step(model, x, y, autocast_dtype=dtype)


def _infer_fn(model: nn.Module, x: torch.Tensor, dtype: Optional[torch.dtype]):
    def call():
        was = model.training
        model.eval()
        with torch.inference_mode(), autocast(x.device.type, dtype):
            model(x)
        model.train(was)
    return call


# ----------------------------------------------------------------------------- workers
def _layout_worker(model_name: str, width: float, convs: Sequence[str], batch: int, threads: int, seconds: float,
                   barrier, queue) -> None:
    """One worker process of the layout measurement: for each conv, build the model, warm up,
    wait for the other workers, then train for ``seconds`` and report the steps it made."""
    torch.set_num_threads(threads)
    for conv in convs:
        torch.manual_seed(0)
        model = odconv.build_model(model_name, num_classes=10, conv=conv, width=width).train()
        step = make_train_step(model, torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,)))
        for _ in range(2):
            step()
        barrier.wait()
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            step()
            steps += 1
        queue.put(dict(conv=conv, pid=os.getpid(), threads=torch.get_num_threads(), steps=steps,
                       seconds=time.perf_counter() - start))


def run_layout(procs: int, threads: int, model_name: str, width: float, convs: Sequence[str], batch: int,
               seconds: float) -> dict[str, list[dict]]:
    """``procs`` fresh processes of ``threads`` threads each, training side by side (each its
    own model, as sweep workers do); per conv, every process's report."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=_layout_worker, args=(model_name, width, tuple(convs), batch, threads, seconds,
                                                        barrier, queue)) for _ in range(procs)]
    for w in workers:
        w.start()
    reports: list[dict] = []
    while len(reports) < procs * len(convs):
        try:
            reports.append(queue.get(timeout=5))
        except Empty:
            failed = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
            if failed:
                for w in workers:
                    w.terminate()
                raise RuntimeError(f"a layout worker process exited with code {failed[0]}") from None
    for w in workers:
        w.join(timeout=60)
    return {conv: [r for r in reports if r["conv"] == conv] for conv in convs}


def bench_workers(cores: int, model_name: str, width: float, convs: Sequence[str], batch: int, seconds: float,
                  repeats: int, log=print) -> list[dict]:
    """Training throughput (images/s, all processes together) of ``cores`` processes x 1
    thread against 1 process x ``cores`` threads; the layouts alternate over ``repeats``
    (A B, B A, ...) and each row is the median over repeats."""
    layouts = [(cores, 1), (1, cores)]
    per: dict[tuple[str, int, int], list[float]] = {}
    seen_threads: dict[tuple[str, int, int], set[int]] = {}
    for rep in range(repeats):
        for procs, threads in (layouts if rep % 2 == 0 else layouts[::-1]):
            reports = run_layout(procs, threads, model_name, width, convs, batch, seconds)
            for conv, rs in reports.items():
                ips = sum(r["steps"] * batch / r["seconds"] for r in rs)
                per.setdefault((conv, procs, threads), []).append(ips)
                seen_threads.setdefault((conv, procs, threads), set()).update(r["threads"] for r in rs)
                log(f"  {conv:10s} {procs} proc x {threads} thread(s): {ips:8.1f} images/s "
                    f"({', '.join(str(r['steps']) for r in rs)} steps in {seconds:g} s)")
    rows = []
    for conv in convs:
        one = statistics.median(per[(conv, 1, cores)])
        for procs, threads in layouts:
            ips = statistics.median(per[(conv, procs, threads)])
            rows.append(dict(model=model_name, width=width, conv=conv, batch=batch, processes=procs,
                             threads_per_process=threads,
                             threads_seen=",".join(str(t) for t in sorted(seen_threads[(conv, procs, threads)])),
                             images_per_s=round(ips, 1), vs_one_process=round(ips / one, 3),
                             samples=";".join(f"{v:.1f}" for v in per[(conv, procs, threads)])))
    return rows


def preferred_cpu_workers(path: str = "results/bench/workers.csv") -> Optional[int]:
    """The worker layout a CPU sweep should use on the machine that wrote ``path`` (the
    ``workers`` section's CSV): P when P single-thread processes trained more images/s than
    one P-thread process for every conv measured, 1 when one process won for every conv, and
    None when the file is missing or the result is mixed (within noise)."""
    try:
        with open(path, newline="") as f:
            multi = [r for r in csv.DictReader(f) if int(r["processes"]) > 1]
    except FileNotFoundError:
        return None
    if not multi:
        return None
    gains = [float(r["vs_one_process"]) for r in multi]
    if all(g > 1 for g in gains):
        return int(multi[0]["processes"])
    if all(g < 1 for g in gains):
        return 1
    return None


# ----------------------------------------------------------------------------- targets
def evaluate_targets(model_rows: Sequence[dict], layer_rows: Sequence[dict], ref_tol: float = REFERENCE_TOLERANCE,
                     best_tol: float = BEST_TOLERANCE) -> list[dict]:
    """The project's targets against this run: one row per (target, precision, model, width)
    for the model targets (``auto`` strategy rows), and one per layer target over all rows."""
    out: list[dict] = []
    static = {(r["model"], r["width"], r["precision"]): r for r in model_rows if r["conv"] == "static"}
    auto = [r for r in model_rows if r["conv"] != "static" and r["strategy"] == "auto"]
    for r in auto:
        where = dict(precision=r["precision"], model=r["model"], width=r["width"])
        if (r["model"], r["width"], r["precision"]) not in static:
            continue
        if r["conv"] in TIME_TARGETS:
            out.append(dict(where, target=f"{r['conv']} train step / static", limit=TIME_TARGETS[r["conv"]],
                            measured=float(r["train_vs_static"])))
        out.append(dict(where, target=f"{r['conv']} train peak memory / static", limit=MEMORY_TARGET,
                        measured=float(r["mem_vs_static"])))
        if r["conv"] in LATENCY_TARGETS:
            out.append(dict(where, target=f"{r['conv']} batch-1 latency / static", limit=LATENCY_TARGETS[r["conv"]],
                            measured=float(r["latency_vs_static"])))
    auto_layers = [r for r in layer_rows if r["strategy"] == "auto"]
    if auto_layers:
        ratios = [(final_ratios(r), r) for r in auto_layers]
        for i, (name, tol) in enumerate((("layer rows: auto / reference (worst row)", ref_tol),
                                         ("layer rows: auto / fastest strategy (worst row)", best_tol))):
            worst, row = max(ratios, key=lambda p: p[0][i])
            over = sum(1 for p, _ in ratios if p[i] > 1 + tol)
            out.append(dict(precision="fp32", model="layers", width="", target=name, limit=round(1 + tol, 3),
                            measured=worst[i],
                            note=f"{len(ratios) - over}/{len(ratios)} rows within; worst {row['shape']} "
                                 f"B={row['batch']} {row['mode']} ({row['runs']})"))
    for t in out:
        t["met"] = t["measured"] <= t["limit"]
        t.setdefault("note", "")
    return out


# ------------------------------------------------------------------------------ output
def write_csv(path: str, rows: Sequence[dict]) -> None:
    if not rows:
        return
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _md_table(header: list[str], lines: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(v) for v in line) + " |" for line in lines]
    return "\n".join(out)


def _md_header(title: str, info: dict[str, str], argv: Sequence[str], command: str = "python -m odconv.bench") -> str:
    lines = [f"# {title}", "", f"Command: `{command} {' '.join(argv)}`".rstrip(), ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    if hasattr(os, "getloadavg"):  # the load while it ran: high figures mean noisier timings
        lines.append("- load_average_at_end: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    return "\n".join(lines) + "\n"


def layers_markdown(rows: list[dict], strategies: Sequence[str], info, argv, rounds: int, keep_within: float,
                    ref_tol: float, best_tol: float, recheck_rounds: int) -> str:
    keyed: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        key = (r["model"], r["shape"], r["attentions"], r["n"], r["batch"], r["mode"])
        keyed.setdefault(key, {})[r["strategy"]] = r
    md = [_md_header("Dynamic conv layers: strategies against the static conv, the reference and each other",
                     info, argv)]
    md.append(
        "Each row: one dynamic-conv shape (ODConv-4x attentions as the model builds them: c=channel, f=filter, "
        "s=spatial, k=kernel; n kernels), batch B, forward (no grad) or forward+backward. Strategy columns: time "
        "(then peak memory) as a multiple of the static conv of the same shape. `auto` is the strategy the default "
        "chooses; `/ ref` its time over the reference (`grouped`), `/ best` over the fastest strategy of the row. "
        f"Times are medians of {rounds} interleaved rounds; strategies slower than {keep_within:g}x the fastest after "
        f"the first round are timed once. Rows where `auto` looked slower than the reference by more than "
        f"{ref_tol:.0%} or than the fastest strategy by more than {best_tol:.0%} were re-timed with only those "
        f"contenders ({recheck_rounds} rounds, median of per-round ratios): `recheck` shows the first pass's "
        "ratios, and the `/ ref`, `/ best` columns the rechecked ones.\n")
    header = ["model", "shape", "att", "B", "mode", "static ms", *strategies, "auto", "/ ref", "/ best", "recheck"]
    lines = []
    for (model, shape, att, n, batch, mode), d in keyed.items():
        a = d["auto"]
        vs_ref, vs_best = final_ratios(a)
        first = (f"yes (was {float(a['time_vs_reference']):.2f} / {float(a['time_vs_best']):.2f})"
                 if a["rechecked"] else "")
        lines.append([model.replace("cifar_", ""), shape, f"{att} n{n}", batch, mode, d["static"]["time_ms"],
                      *[f"{d[s]['time_vs_static']:.2f}" for s in strategies], a["runs"], f"{vs_ref:.2f}",
                      f"{vs_best:.2f}", first])
    md.append("## Time (x static)\n\n" + _md_table(header, lines) + "\n")
    autos = [d["auto"] for d in keyed.values()]
    finals = [final_ratios(a) for a in autos]
    md.append(f"`auto` over {len(autos)} rows ({sum(bool(a['rechecked']) for a in autos)} rechecked): "
              f"{sum(r <= 1 + ref_tol for r, _ in finals)} at or below the reference within {ref_tol:.0%}, "
              f"{sum(b <= 1 + best_tol for _, b in finals)} within {best_tol:.0%} of the fastest strategy.\n")
    header = ["model", "shape", "att", "B", "mode", "static MB", *strategies, "auto", "auto / ref"]
    lines = [[model.replace("cifar_", ""), shape, f"{att} n{n}", batch, mode, d["static"]["peak_mb"],
              *[f"{d[s]['mem_vs_static']:.2f}" for s in strategies], d["auto"]["runs"],
              f"{d['auto']['mem_vs_reference']:.2f}"] for (model, shape, att, n, batch, mode), d in keyed.items()]
    md.append("## Peak memory (x static)\n\n" + _md_table(header, lines) + "\n")
    return "\n".join(md)


def models_markdown(rows: list[dict], info, argv, train_rounds: int, latency_rounds: int,
                    command: str = "python -m odconv.bench") -> str:
    md = [_md_header("Whole models: dynamic convs against the static model", info, argv, command)]
    md.append("Training step (forward + backward + SGD step, batch B, train mode), batch-1 inference latency "
              "(eval, inference mode) and training peak memory, each also as a multiple of the static model of the "
              "same precision in the same run (times: median of the per-round ratios over "
              f"{train_rounds} interleaved rounds for training, {latency_rounds} for latency). `auto` is the "
              "default strategy choice; `grouped` the reference algorithm. bf16: the forward pass under "
              "`torch.autocast(dtype=torch.bfloat16)` (Lightning's `bf16-mixed`), fp32 weights and optimizer.\n")
    header = ["model", "width", "conv", "strategy", "B", "params (M)", "train step ms", "x static",
              "latency ms", "x static", "train peak MB", "x static"]
    for precision in dict.fromkeys(r["precision"] for r in rows):
        lines = [[r["model"], r["width"], r["conv"], r["strategy"], r["batch"], r["params_m"], r["train_step_ms"],
                  f"{r['train_vs_static']:.2f}", r["latency_b1_ms"], f"{r['latency_vs_static']:.2f}",
                  r["train_peak_mb"], f"{r['mem_vs_static']:.2f}"] for r in rows if r["precision"] == precision]
        md.append(f"## {precision}\n\n" + _md_table(header, lines) + "\n")
    return "\n".join(md)


def strategies_markdown(rows: list[dict], info, argv, train_rounds: int) -> str:
    md = [_md_header("Execution strategies in whole models: time against memory", info, argv)]
    md.append("The models table's training step (batch B) with each dynamic model run under each strategy named "
              "(`auto`: the default choice; every strategy computes the same function), as multiples of the static "
              f"model of the same width and precision in the same run (time: median of per-round ratios over "
              f"{train_rounds} interleaved rounds; peak memory of one step). The memory target is "
              f"<= {MEMORY_TARGET:g}x static.\n")
    header = ["model", "width", "conv", "strategy", "B", "train step ms", "x static", "train peak MB", "x static"]
    for precision in dict.fromkeys(r["precision"] for r in rows):
        lines = [[r["model"], r["width"], r["conv"], r["strategy"], r["batch"], r["train_step_ms"],
                  f"{r['train_vs_static']:.2f}", r["train_peak_mb"], f"{r['mem_vs_static']:.2f}"]
                 for r in rows if r["precision"] == precision]
        md.append(f"## {precision}\n\n" + _md_table(header, lines) + "\n")
    md.append(memory_floor_summary(rows) + "\n")
    return "\n".join(md)


def floors_markdown(rows: list[dict], info, argv, train_rounds: int, latency_rounds: int) -> str:
    md = [_md_header("Floors: the attention branch against the dynamic conv", info, argv)]
    md.append("Each dynamic model as in the models table (`computed`), and again with every attention branch "
              "replaced by the attentions it computed for the same input, kept as constants (`constant`: the same "
              "kernels and the same dynamic conv with its backward; no pooling, FCs, BatchNorm, sigmoid/softmax, "
              "nor their backward and parameters). Times as multiples of the static model of the same width and "
              f"precision in the same run (medians of per-round ratios over {train_rounds} interleaved rounds for "
              f"training, {latency_rounds} for latency). `branch` = computed - constant: the attention branch's "
              "share of a static step; `constant` is what the dynamic conv costs without it, the floor no faster "
              "branch can go below.\n")
    header = ["model", "width", "conv", "B", "train x static", "constant", "branch", "latency x static", "constant",
              "branch"]
    for precision in dict.fromkeys(r["precision"] for r in rows):
        by = {(r["model"], r["width"], r["conv"], r["attention"]): r for r in rows if r["precision"] == precision}
        lines = []
        for (model, width, conv, attention), r in by.items():
            if attention != "computed" or conv == "static":
                continue
            c = by[(model, width, conv, "constant")]
            lines.append([model, width, conv, r["batch"], f"{r['train_vs_static']:.2f}", f"{c['train_vs_static']:.2f}",
                          f"{r['train_vs_static'] - c['train_vs_static']:.2f}", f"{r['latency_vs_static']:.2f}",
                          f"{c['latency_vs_static']:.2f}", f"{r['latency_vs_static'] - c['latency_vs_static']:.2f}"])
        md.append(f"## {precision}\n\n" + _md_table(header, lines) + "\n")
    return "\n".join(md)


def memory_floor_summary(rows: Sequence[dict], limit: float = MEMORY_TARGET) -> str:
    """One line per (precision, model, width, conv): the strategy of least peak memory, its
    memory and time against static, and whether it meets ``limit``."""
    best: dict[tuple, dict] = {}
    for r in rows:
        if r["conv"] == "static":
            continue
        key = (r["precision"], r["model"], r["width"], r["conv"])
        if key not in best or r["mem_vs_static"] < best[key]["mem_vs_static"]:
            best[key] = r
    lines = ["Least memory per model (the strategy, its memory and time against static):", ""]
    for (precision, model, width, conv), r in best.items():
        verdict = "within" if r["mem_vs_static"] <= limit else "above"
        lines.append(f"- {precision} {model.replace('cifar_', '')} w{width:g} {conv}: `{r['strategy']}`, "
                     f"{r['mem_vs_static']:.2f}x memory ({verdict} {limit:g}x), {r['train_vs_static']:.2f}x time")
    return "\n".join(lines)


def workers_markdown(rows: list[dict], info, argv, seconds: float, repeats: int) -> str:
    md = [_md_header("Worker layout: P processes x 1 thread against 1 process x P threads", info, argv)]
    md.append("Training throughput (forward + backward + SGD step, images/s of all processes together) of the "
              "sweeps' small CPU model, each process training its own model side by side as sweep workers do: "
              f"{seconds:g} s windows started together, median over {repeats} alternating repeats. `threads seen` "
              "is what each worker's torch reported.\n")
    header = ["model", "width", "conv", "B", "processes", "threads each", "threads seen", "images/s",
              "x 1 process"]
    lines = [[r["model"], r["width"], r["conv"], r["batch"], r["processes"], r["threads_per_process"],
              r["threads_seen"], r["images_per_s"], f"{r['vs_one_process']:.2f}"] for r in rows]
    md.append(_md_table(header, lines) + "\n")
    md.append(workers_advice(rows) + "\n")
    return "\n".join(md)


def workers_advice(rows: list[dict]) -> str:
    """One sentence: which layout trained more images/s for every conv measured."""
    multi = [r for r in rows if r["processes"] > 1]
    if not multi:
        return ""
    gains = ", ".join(f"{r['conv']} {r['vs_one_process']:.2f}x" for r in multi)
    p = multi[0]["processes"]
    if all(r["vs_one_process"] > 1 for r in multi):
        return (f"{p} single-thread processes trained more images/s than one {p}-thread process ({gains}): "
                f"on this machine a CPU sweep finishes sooner with `WORKERS={p}`.")
    if all(r["vs_one_process"] < 1 for r in multi):
        return (f"One {p}-thread process trained more images/s than {p} single-thread processes ({gains}): "
                f"on this machine a CPU sweep finishes sooner with one worker.")
    return f"Mixed result ({p} processes against one: {gains}): the layouts are within noise of each other."


def targets_markdown(targets: list[dict], info, argv) -> str:
    md = [_md_header("Targets: measured against the project's limits", info, argv)]
    md.append("Model targets: the training step of each model at the models table's batch, the default strategy, "
              "as multiples of the static model of the same width and precision in the same run (`models.md`); one "
              "column per model and width. Layer targets: over every row of `layers.md`, the default strategy's "
              "time against the reference and against the fastest single strategy, after the recheck pass. A "
              "target is met when measured <= limit, for every model and width.\n")
    model_targets = [t for t in targets if t["model"] != "layers"]
    if model_targets:
        columns = list(dict.fromkeys((t["model"], t["width"]) for t in model_targets))
        grouped: dict[tuple[str, str], dict[tuple, dict]] = {}
        for t in model_targets:
            grouped.setdefault((t["target"], t["precision"]), {})[(t["model"], t["width"])] = t
        header = ["target", "precision", "limit",
                  *[f"{m.replace('cifar_', '')} w{w:g}" for m, w in columns], "met"]
        lines = []
        for (name, precision), cells in grouped.items():
            limit = next(iter(cells.values()))["limit"]
            lines.append([name, precision, f"<= {limit:g}",
                          *[("-" if c not in cells else f"{cells[c]['measured']:.2f}" if cells[c]["met"]
                             else f"**{cells[c]['measured']:.2f}**") for c in columns],
                          "met" if all(t["met"] for t in cells.values()) else "**not met**"])
        md.append("## Models\n\n" + _md_table(header, lines) + "\n")
    layer_targets = [t for t in targets if t["model"] == "layers"]
    if layer_targets:
        lines = [[t["target"], f"<= {t['limit']:g}", f"{t['measured']:.2f}",
                  "met" if t["met"] else "**not met**", t["note"]] for t in layer_targets]
        md.append("## Layers\n\n" + _md_table(["target", "limit", "worst row", "met", "rows"], lines) + "\n")
    met = sum(t["met"] for t in targets)
    md.append(f"{met} of {len(targets)} (target, model, width, precision) checks met; figures over a limit in bold.\n")
    return "\n".join(md)


# -------------------------------------------------------------------------------- main
def _parse_list(p: argparse.ArgumentParser, option: str, text: str, valid: Sequence[str]) -> list[str]:
    items = [s for s in text.split(",") if s]
    bad = [s for s in items if s not in valid]
    if bad or not items:
        p.error(f"{option}: {', '.join(map(repr, bad)) or 'nothing given'}; valid: {', '.join(valid)}")
    return items


def _parse_models(p: argparse.ArgumentParser, text: str) -> tuple[tuple[str, float], ...]:
    known = odconv.list_models()
    out = []
    for item in (s for s in text.split(",") if s):
        name, _, width = item.partition(":")
        if name not in known:
            p.error(f"--models: unknown model {name!r}; valid: {', '.join(sorted(known))}")
        try:
            out.append((name, float(width) if width else 1.0))
        except ValueError:
            p.error(f"--models: width {width!r} of {name} is not a number (name:width, e.g. cifar_resnet18:0.5)")
    return tuple(out)


def _parse_convs(p: argparse.ArgumentParser, option: str, text: str, add_static: bool = True) -> tuple[str, ...]:
    """Comma-separated conv specs, each checked by :func:`odconv.spec.parse_conv_spec`;
    ``static`` first unless there or ``add_static`` is False."""
    convs = tuple(c for c in text.split(",") if c)
    if not convs:
        p.error(f"{option}: nothing given")
    for c in convs:
        try:
            parse_conv_spec(c)
        except ValueError as e:
            p.error(f"{option}: {e}")
    return convs if "static" in convs or not add_static else ("static", *convs)


def _int_list(p: argparse.ArgumentParser, option: str, text: str) -> list[int]:
    try:
        values = [int(b) for b in text.split(",") if b]
    except ValueError:
        p.error(f"{option}: {text!r} is not a comma-separated list of positive integers")
    if not values or min(values) < 1:
        p.error(f"{option}: {text!r} is not a comma-separated list of positive integers")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m odconv.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run in seconds: two tiny layer shapes, the smallest model at batch 8, 1 s workers")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--out", default="results/bench", help="output directory")
    p.add_argument("--sections", default=None,
                   help=f"comma-separated, of {', '.join(SECTIONS)} (default: all; workers on CPU only)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    g = p.add_argument_group("layers")
    g.add_argument("--batches", default=None, help="layer batch sizes, comma-separated (default 1,64)")
    g.add_argument("--strategies", default=None,
                   help="strategies to time, comma-separated (the reference is always timed; default: every "
                        f"registered one except {', '.join(NOT_TIMED_BY_DEFAULT)})")
    g.add_argument("--all-shapes", action="store_true",
                   help="every distinct layer shape (36) instead of one per kind, resolution and stride (22)")
    g.add_argument("--repeats", type=int, default=5, help="timed rounds per layer row and for latency (x2)")
    g.add_argument("--keep-within", type=float, default=2.0,
                   help="after the first round, time further only strategies within this multiple of the fastest")
    g.add_argument("--recheck-repeats", type=int, default=15, help="rounds of the recheck pass")
    g.add_argument("--tolerance", type=float, default=REFERENCE_TOLERANCE,
                   help="auto may exceed the reference by this fraction before a row is rechecked / not met")
    g = p.add_argument_group("models")
    g.add_argument("--models", default=None,
                   help="models as name:width, comma-separated (default "
                        + ",".join(f"{m}:{w:g}" for m, w in MODELS) + ")")
    g.add_argument("--convs", default=None, help=f"model conv specs, comma-separated (default {','.join(MODEL_CONVS)}; "
                                                 "static is always added)")
    g.add_argument("--model-batch", type=int, default=None, help="training batch of the model benchmark (128)")
    g.add_argument("--precisions", default=None, help=f"of {', '.join(PRECISIONS)} (default both)")
    g.add_argument("--train-repeats", type=int, default=3, help="timed rounds of the training steps")
    g.add_argument("--reference-models", action="store_true",
                   help="also time each dynamic model with the reference strategy (slow at width 1)")
    g = p.add_argument_group("strategies")
    g.add_argument("--strategy-models", default=None,
                   help="model:width pairs of the strategies section (default "
                        f"{','.join(f'{m}:{w:g}' for m, w in STRATEGY_MODELS)})")
    g.add_argument("--strategy-convs", default=None,
                   help=f"convs of the strategies section (default {','.join(STRATEGY_CONVS)}; static is always added)")
    g.add_argument("--model-strategies", default=None,
                   help=f"strategies each dynamic model runs under there (default {','.join(MODEL_STRATEGIES)})")
    g = p.add_argument_group("floors")
    g.add_argument("--floor-convs", default=None,
                   help=f"convs of the floors section (default {','.join(FLOOR_CONVS)}; static is always added; its "
                        "models are the strategies section's)")
    g = p.add_argument_group("workers")
    g.add_argument("--workers-model", default="cifar_resnet18:0.125", help="model:width of the layout measurement")
    g.add_argument("--workers-convs", default=None, help="convs of the layout measurement (default static,odconv4x)")
    g.add_argument("--workers-batch", type=int, default=None, help="training batch (128)")
    g.add_argument("--workers-seconds", type=float, default=None, help="length of each timed window (6)")
    g.add_argument("--workers-repeats", type=int, default=None, help="repeats of each layout (2)")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = build_parser()
    args = p.parse_args(argv)

    try:
        device = torch.device(args.device)
    except RuntimeError:
        p.error(f"--device: {args.device!r} is not a device; valid: cpu, cuda, cuda:N")
    if device.type not in ("cpu", "cuda"):
        p.error(f"--device: {args.device!r}; valid: cpu, cuda, cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"error: CUDA is not available to torch {torch.__version__}: nothing to benchmark on {device}",
              file=sys.stderr)
        return 2
    for option in ("repeats", "recheck_repeats", "train_repeats"):
        if getattr(args, option) < 1:
            p.error(f"--{option.replace('_', '-')}: must be >= 1, got {getattr(args, option)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    sections = _parse_list(p, "--sections", args.sections or ",".join(SECTIONS), SECTIONS)
    if device.type != "cpu" and "workers" in sections:
        if args.sections:
            p.error("--sections: workers measures CPU worker processes; it runs with --device cpu only")
        sections.remove("workers")
    strategies = _parse_list(p, "--strategies", args.strategies or ",".join(default_strategies()),
                             sorted(odconv.STRATEGIES))
    if REFERENCE not in strategies:
        strategies.insert(0, REFERENCE)
    precisions = _parse_list(p, "--precisions", args.precisions or ",".join(PRECISIONS), list(PRECISIONS))
    convs = _parse_convs(p, "--convs", args.convs or ",".join(MODEL_CONVS))
    w_model = _parse_models(p, args.workers_model)
    if len(w_model) != 1:
        p.error(f"--workers-model: one model:width, got {args.workers_model!r}")
    model_strategies = _parse_list(p, "--model-strategies", args.model_strategies or ",".join(MODEL_STRATEGIES),
                                   ["auto", *sorted(odconv.STRATEGIES)])
    s_convs = _parse_convs(p, "--strategy-convs", args.strategy_convs or ",".join(STRATEGY_CONVS))
    f_convs = _parse_convs(p, "--floor-convs", args.floor_convs or ",".join(FLOOR_CONVS))
    w_default = "static" if args.quick else "static,odconv4x"
    w_convs = list(_parse_convs(p, "--workers-convs", args.workers_convs or w_default, add_static=False))

    if args.quick:
        batches = _int_list(p, "--batches", args.batches or "2")
        model_batch = args.model_batch or 8
        models = _parse_models(p, args.models) if args.models else (("cifar_resnet18", 0.125),)
        if not args.convs:
            convs = ("static", "odconv4x")
        s_models = _parse_models(p, args.strategy_models) if args.strategy_models else (("cifar_resnet18", 0.125),)
        if not args.strategy_convs:
            s_convs = ("static", "odconv4x")
        if not args.floor_convs:
            f_convs = ("static", "odconv4x")
        rounds, train_rounds, recheck_rounds = 2, 2, 3
        w_batch, w_seconds, w_repeats = args.workers_batch or 8, args.workers_seconds or 1.0, args.workers_repeats or 1
    else:
        batches = _int_list(p, "--batches", args.batches or "1,64")
        model_batch = args.model_batch or 128
        models = _parse_models(p, args.models) if args.models else MODELS
        s_models = _parse_models(p, args.strategy_models) if args.strategy_models else STRATEGY_MODELS
        rounds, train_rounds, recheck_rounds = args.repeats, args.train_repeats, args.recheck_repeats
        w_batch, w_seconds = args.workers_batch or 128, args.workers_seconds or 6.0
        w_repeats = args.workers_repeats or 2
    latency_rounds = 2 * rounds

    os.makedirs(args.out, exist_ok=True)
    info = machine_info(device)
    started = time.perf_counter()
    say = lambda m: print(m, flush=True)  # noqa: E731
    layer_rows: list[dict] = []
    model_rows: list[dict] = []

    if "layers" in sections:
        shapes = layer_shapes(all_shapes=args.all_shapes)
        if args.quick:
            shapes = [shapes[0], next(s for s in shapes if s.groups > 1)]
            shapes = [LayerShape(s.model, s.name, min(s.in_ch, 16), min(s.out_ch, 16), s.k, s.stride, s.padding,
                                 s.dilation, min(s.groups, 16), 8, s.attentions, s.n) for s in shapes]
        say(f"layers: {len(shapes)} shapes x batches {batches} x (fwd, fwd+bwd) x {strategies}")
        layer_rows = bench_layers(shapes, batches, strategies, device, rounds, args.keep_within, log=say)
        by_key = {(s.model, s.name): s for s in shapes}

        def make_fns(row, names):
            s = by_key[(row["model"], row["layer"])]
            return layer_callables(s, int(row["batch"]), device, row["mode"] == "fwd+bwd", names)[0]

        n = recheck_layers(layer_rows, make_fns, device, recheck_rounds, args.tolerance, BEST_TOLERANCE, log=say)
        say(f"layers: {n} row(s) rechecked")
        write_csv(os.path.join(args.out, "layers.csv"), layer_rows)
        with open(os.path.join(args.out, "layers.md"), "w") as f:
            f.write(layers_markdown(layer_rows, strategies, info, argv, rounds, args.keep_within, args.tolerance,
                                    BEST_TOLERANCE, recheck_rounds))
    if "models" in sections:
        for precision in precisions:
            say(f"models ({precision}): {models} x {convs}, train batch {model_batch}")
            model_rows += bench_models(models, convs, model_batch, device, precision, train_rounds, latency_rounds,
                                       ("auto", REFERENCE) if args.reference_models else ("auto",), log=say)
        write_csv(os.path.join(args.out, "models.csv"), model_rows)
        with open(os.path.join(args.out, "models.md"), "w") as f:
            f.write(models_markdown(model_rows, info, argv, train_rounds, latency_rounds))
    if "strategies" in sections:
        strategy_rows: list[dict] = []
        for precision in precisions:
            say(f"strategies ({precision}): {s_models} x {s_convs} x {model_strategies}, train batch {model_batch}")
            strategy_rows += bench_models(s_models, s_convs, model_batch, device, precision, train_rounds,
                                          latency_rounds, model_strategies, log=say)
        write_csv(os.path.join(args.out, "strategies.csv"), strategy_rows)
        with open(os.path.join(args.out, "strategies.md"), "w") as f:
            f.write(strategies_markdown(strategy_rows, info, argv, train_rounds))
        say("strategies: " + memory_floor_summary(strategy_rows).replace("\n", "\n  "))
    if "floors" in sections:
        floor_rows: list[dict] = []
        for precision in precisions:
            say(f"floors ({precision}): {s_models} x {f_convs}, attention computed and constant, train batch "
                f"{model_batch}")
            floor_rows += bench_models(s_models, f_convs, model_batch, device, precision, train_rounds, latency_rounds,
                                       log=say, constant_attention=True)
        write_csv(os.path.join(args.out, "floors.csv"), floor_rows)
        with open(os.path.join(args.out, "floors.md"), "w") as f:
            f.write(floors_markdown(floor_rows, info, argv, train_rounds, latency_rounds))
    if "workers" in sections:
        cores = os.cpu_count() or 1
        if cores < 2:
            say("workers: one CPU core: no layout to compare")
        else:
            say(f"workers: {cores} processes x 1 thread against 1 process x {cores} threads, {w_model[0]}, {w_convs}")
            rows = bench_workers(cores, w_model[0][0], w_model[0][1], w_convs, w_batch, w_seconds, w_repeats, log=say)
            write_csv(os.path.join(args.out, "workers.csv"), rows)
            with open(os.path.join(args.out, "workers.md"), "w") as f:
                f.write(workers_markdown(rows, info, argv, w_seconds, w_repeats))
            say("workers: " + workers_advice(rows))
    if layer_rows or model_rows:
        targets = evaluate_targets(model_rows, layer_rows, args.tolerance, BEST_TOLERANCE)
        write_csv(os.path.join(args.out, "targets.csv"), targets)
        with open(os.path.join(args.out, "targets.md"), "w") as f:
            f.write(targets_markdown(targets, info, argv))
        say(f"targets: {sum(t['met'] for t in targets)} of {len(targets)} met")
    say(f"done in {time.perf_counter() - started:.0f} s; results in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
