"""The layers section of the benchmark: each dynamic-conv layer shape under every strategy.

The shapes of CIFAR ResNet-18 and CIFAR MobileNetV2 as ODConv-4x places them; per shape, batch
and mode (forward, forward+backward): the static conv of the same shape, every strategy and
the one ``auto`` chooses, timed in interleaved rounds (:func:`odconv.timing.time_rounds`), then
a recheck pass (:func:`recheck_layers`) for rows where ``auto`` looks slower than the
reference or the fastest strategy beyond the tolerances.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

import odconv

from ..timing import Clock, median_ratio, time_rounds
from .measurement import format_samples, warm_then_measure_memory
from .report import BEST_TOLERANCE, REFERENCE_TOLERANCE

REFERENCE = "grouped"  # the strategy every other is compared with
# torch.compile: minutes of compilation per shape, and not an eager strategy to choose.
NOT_TIMED_BY_DEFAULT = ("compiled",)


def default_strategies() -> list[str]:
    """Every registered strategy except those in ``NOT_TIMED_BY_DEFAULT``, reference first."""
    names = [s for s in odconv.STRATEGIES if s not in NOT_TIMED_BY_DEFAULT]
    return sorted(names, key=lambda s: s != REFERENCE)


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



def layer_rows(base: Mapping[str, object], samples: Mapping[str, Sequence[float]], mems: Mapping[str, int],
               chosen: str) -> list[dict]:
    """The rows of one (shape, batch, mode): one per timed entry (``static``, each strategy; times
    in seconds, ``samples`` from :func:`odconv.timing.time_rounds`, ``mems`` peak bytes) plus an
    ``auto`` row with the figures of ``chosen`` and its ratio to the fastest strategy. Each
    figure is the median of its samples; ratios are of those medians. ``base``: the shape's columns."""
    times = {name: statistics.median(t) for name, t in samples.items()}
    best = min((n for n in samples if n != "static"), key=lambda n: times[n])
    t_static, t_ref = times["static"], times[REFERENCE]
    m_static, m_ref = max(mems["static"], 1), max(mems[REFERENCE], 1)
    rows = []
    for name in (*samples, "auto"):
        src = chosen if name == "auto" else name
        rows.append(dict(
            base, strategy=name, runs=src, samples=len(samples[src]), time_ms=round(times[src] * 1e3, 4),
            samples_ms=format_samples(samples[src]), peak_mb=round(mems[src] / 2 ** 20, 3),
            time_vs_static=round(times[src] / t_static, 3), time_vs_reference=round(times[src] / t_ref, 3),
            mem_vs_static=round(mems[src] / m_static, 3), mem_vs_reference=round(mems[src] / m_ref, 3),
            best=best if name == "auto" else "",
            time_vs_best=round(times[src] / times[best], 3) if name == "auto" else "",
            rechecked="", recheck_rounds="", recheck_vs_reference="", recheck_vs_best=""))
    return rows


def bench_layers(shapes: Sequence[LayerShape], batches: Sequence[int], strategies: Sequence[str], device: torch.device,
                 rounds: int, keep_within: float, log: Callable[[str], None] = print) -> list[dict]:
    """First pass over every (shape, batch, mode): :func:`layer_rows` of the static conv, each
    strategy and ``auto``. Strategies slower than ``keep_within`` x the fastest strategy (not
    the static conv) in the first round are timed once (see :func:`odconv.timing.time_rounds`);
    ``samples`` says how often."""
    rows: list[dict] = []
    for s in shapes:
        for batch in batches:
            for mode, grad in (("fwd", False), ("fwd+bwd", True)):
                fns, chosen = layer_callables(s, batch, device, grad, ("static", *strategies))
                if chosen not in fns:  # --strategies left out the one auto runs: time it too
                    fns[chosen] = layer_callables(s, batch, device, grad, (chosen,))[0][chosen]
                mems = warm_then_measure_memory(fns, device)
                samples = time_rounds(fns, device, rounds=rounds, keep_within=keep_within,
                                      keep=("static", REFERENCE, chosen), among=[n for n in fns if n != "static"])
                base = dict(model=s.model, layer=s.name, shape=s.label(), in_ch=s.in_ch, out_ch=s.out_ch, k=s.k,
                            stride=s.stride, groups=s.groups, hw=s.hw, n=s.n, attentions=s.attentions, batch=batch,
                            mode=mode)
                new = layer_rows(base, samples, mems, chosen)
                rows += new
                by = {r["strategy"]: r for r in new}
                log(f"  {s.label():28s} B={batch:<3d} {mode:7s} static {by['static']['time_ms']:8.2f} ms | "
                    + " ".join(f"{n} {by[n]['time_vs_static']:.2f}" for n in strategies)
                    + f" | auto={chosen} {by['auto']['time_vs_reference']:.2f}x ref, "
                      f"{by['auto']['time_vs_best']:.2f}x best")
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
                   device: torch.device | str, rounds: int, ref_tol: float = REFERENCE_TOLERANCE,
                   best_tol: float = BEST_TOLERANCE, log: Callable[[str], None] = print,
                   clock: Clock = time.perf_counter) -> int:
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
        samples = time_rounds(fns, device, rounds=rounds, warmup=1, clock=clock)
        row["rechecked"] = "yes"
        row["recheck_rounds"] = rounds
        row["recheck_vs_reference"] = round(median_ratio(samples[chosen], samples[REFERENCE]), 3) \
            if REFERENCE in against else row["time_vs_reference"]
        row["recheck_vs_best"] = round(median_ratio(samples[chosen], samples[row["best"]]), 3) \
            if row["best"] in against else row["time_vs_best"]
        count += 1
        log(f"  recheck {row['shape']:28s} B={row['batch']:<3} {row['mode']:7s} auto={chosen}: "
            f"vs reference {float(row['time_vs_reference']):.2f} -> {float(row['recheck_vs_reference']):.2f}, "
            f"vs best ({row['best']}) {float(row['time_vs_best']):.2f} -> {float(row['recheck_vs_best']):.2f}")
    return count
