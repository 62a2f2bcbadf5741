"""Which exact strategy runs a dynamic conv: the ``"auto"`` rule, tune mode and the overrides.

Precedence (highest first):

1. ``with use_strategy(name):`` -- forces ``name`` on every dynamic conv called inside
   (including layers built with an explicit ``strategy=``); ``use_strategy(None)`` lifts it.
2. the layer's ``strategy`` attribute (``strategy=`` at construction, the ``strategy``
   option of :func:`odconv.make_conv`, or :func:`odconv.set_strategy` for a whole model);
3. ``"auto"`` (the default) -> :func:`choose_strategy`, a rule derived from layer timings
   (``results/bench/layers.md``; see ``docs/layers.md``).

``choose_strategy`` may also be switched to a one-time measured choice per layer shape
(``set_auto_mode("tune")`` or ``ODCONV_AUTO=tune``), kept by a :class:`TuningCache`: in memory
and, with ``ODCONV_TUNE_CACHE`` set, in that JSON file (:func:`default_tuning_cache`).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from typing import Iterator, Optional

import torch
from torch import Tensor

from . import strategies as _strategies  # noqa: F401  (registers the strategies)
from .atomic_files import write_json_atomic
from .ops.primitives import conv_geometry
from .ops.registry import STRATEGIES, check_strategy
from .timing import time_callable

_state = threading.local()


def forced_strategy() -> Optional[str]:
    """The strategy forced by the innermost :func:`use_strategy`, or None."""
    return getattr(_state, "forced", None)


@contextlib.contextmanager
def use_strategy(name: Optional[str]) -> Iterator[None]:
    """Force strategy ``name`` (or ``"auto"``) on every dynamic conv run inside the block
    (this thread); ``None`` lifts an outer one. ValueError for an unknown name."""
    if name is not None:
        check_strategy(name)
    previous = forced_strategy()
    _state.forced = name
    try:
        yield
    finally:
        _state.forced = previous


def is_exporting() -> bool:
    """True under torch.export / torch.jit.trace, whose graphs must not depend on the batch.
    (torch.compile is not included: it guards on shapes, and every strategy compiles.)"""
    return torch.compiler.is_exporting() or torch.jit.is_tracing()


def choose_strategy(x: Tensor, weight: Tensor, *, channel: Optional[Tensor] = None, filter: Optional[Tensor] = None,
                    spatial: Optional[Tensor] = None, kernel: Optional[Tensor] = None, bias: Optional[Tensor] = None,
                    stride=1, padding=0, dilation=1, groups: int = 1) -> str:
    """The strategy ``"auto"`` runs for this call of :func:`odconv.functional.dynamic_conv2d`
    (same arguments): see the module doc and :func:`rule`."""
    if isinstance(padding, str):
        return "grouped"  # the only strategy that takes string padding
    if kernel is None and spatial is None:
        return "grouped"  # the kernel is shared: dynamic_conv2d runs one plain conv whatever the name
    exporting = is_exporting()
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, channel, filter, spatial, kernel, bias))
    if _auto_mode() == "tune" and not exporting:
        return _tuned(x, weight, channel, filter, spatial, kernel, bias, stride, padding, dilation, groups, needs_grad)
    positions = conv_geometry(x, weight, stride, padding, dilation).positions
    return rule(weight.shape, positions, groups, needs_grad, exporting, batch=x.shape[0],
                input_elements=x[0].numel())


# Measured on the 2-core CPU (results/bench/layers.md): mixing outputs costs about n static
# convs whatever the shape; per-example kernels (the fused strategy) cost about one static
# conv plus traffic over B*X kernel elements, which weighs like ~150/L static convs. Hence
# mix when n * L < MIX_MAX_NL, else fused. The reference grouped conv is never faster than
# fused for B > 1 except on depthwise convs (per-example kernels are tiny; the grouped conv
# is one depthwise conv over B*C channels). There ``folded`` is faster still on maps larger
# than 4x4 (it multiplies the channel attention into the 9 taps instead of the map:
# results/bench/layers.md, batch 64, 0.74-0.89x the reference's time fwd+bwd and 0.74-0.97x
# fwd), and the reference on 4x4 maps (folded 1.01-1.13x). Input maps: a stride-2 conv of
# an 8x8 map folds too (576 channels, batch 64, x static, fwd / fwd+bwd: folded 1.46 / 1.40,
# reference 1.61 / 1.66; an earlier run 1.63 / 1.43 against 1.80 / 1.63).
# Pointwise convs (MobileNetV2's 1x1s; results/bench/layers.md, batch 64, x static, fwd /
# fwd+bwd): on maps of 16x16 and more ``folded`` wins while the batch's kernels are few
# (32->16 at 32x32: folded 1.39 / 1.18, bmm 1.94 / 2.20, reference 1.72 / 1.61; 144->32 at
# 16x16: 1.43 / 1.43 against bmm 2.01 / 2.71), then ``bmm``; on maps of at most
# POINTWISE_GROUPED_MAX_L positions the per-example kernels weigh as much as the compute and
# the reference is fastest (192->64 at 8x8: 2.19 / 2.11 against folded 2.64 / 2.26, bmm
# 2.53 / 3.06, fused_bmm 2.61 / 3.03; 64->384 at 8x8 likewise).
# Otherwise per-example kernels: ``folded`` (channel and filter attention multiplied into the
# kernels, one grouped conv of the whole batch) while all the batch's kernels are few
# (B * X <= FOLDED_MAX_ELEMENTS) -- measured fwd+bwd at batch 128, 1 thread, x static:
# 8->8 at 32x32 folded 0.97, fused 1.79; 32->32 at 32x32 1.17 against 1.34; but 64->64 at
# 32x32 (B * X = 4.7M) 1.62 against 1.34 -- else ``fused`` (cache-sized chunks).
# mix also needs a small map: with one kernel (ODConv-1x) at 8x8, n * L = 64, mix measured
# 3.2-6.0x static against fused's 2.4-2.6x (fwd+bwd, batch 128, 32..128 channels); at 4x4
# mix 1.1-2.4x against fused's 2.2-7.4x.
MIX_MAX_NL = 150
MIX_MAX_POSITIONS = 16
POINTWISE_GROUPED_MAX_L = 64
# At batch 1 a kernel element costs about two map elements to scale (two broadcast products
# on a 5-d view against one each on the maps): measured on the 2-core EPYC, all 36 layer
# shapes at batch 1, inference and training (`--batches 1 --all-shapes`), x static
# (grouped / folded): 32->16 at 32x32 0.92 / 0.65, 192->64 at 8x8 1.92 / 2.08 (kernel 12288
# elements, maps 16384), 576->160 at 4x4 3.76 / 4.14.
BATCH1_FOLD_COST = 2
FOLDED_MAX_ELEMENTS = 1 << 21


def batch1_rule(weight_shape: tuple[int, ...], input_elements: int, positions: int) -> str:
    """The rule at batch 1: one aggregated kernel and one plain conv, with the channel and
    filter attentions multiplied into the kernel (``folded``) when it is small against the
    maps they would otherwise scale, ``BATCH1_FOLD_COST * O*Cg*kh*kw < C*H*W + O*L``, else
    applied to the input and output maps (``grouped``). ``weight_shape`` (n, O, Cg, kh, kw),
    ``input_elements`` C*H*W, ``positions`` L = H'*W'."""
    n, out_ch, cg, kh, kw = weight_shape
    if BATCH1_FOLD_COST * out_ch * cg * kh * kw < input_elements + out_ch * positions:
        return "folded"
    return "grouped"


def rule(weight_shape: tuple[int, ...], positions: int, groups: int, needs_grad: bool, exporting: bool,
         batch: int = 2, input_elements: int = 0) -> str:
    """The measured rule for a per-example kernel: ``weight_shape`` (n, O, Cg, kh, kw),
    ``positions`` L = H'*W', ``input_elements`` C*H*W of one example. Under export, only
    exportable strategies."""
    n, out_ch, cg, kh, kw = weight_shape
    if exporting:
        return "mix" if n * positions < MIX_MAX_NL else "bmm"
    few_kernels = batch * out_ch * cg * kh * kw <= FOLDED_MAX_ELEMENTS
    if cg == 1 and out_ch == groups:  # depthwise: by the input map (stride-2 8x8 -> 4x4 folds too)
        return "folded" if few_kernels and input_elements > MIX_MAX_POSITIONS * groups else "grouped"
    if batch == 1:
        return batch1_rule(weight_shape, input_elements, positions)
    if n * positions < MIX_MAX_NL and positions <= MIX_MAX_POSITIONS:
        return "mix"
    if kh == 1 and kw == 1:
        if positions <= POINTWISE_GROUPED_MAX_L:
            return "grouped"
        return "folded" if few_kernels else "bmm"
    return "folded" if few_kernels else "fused"



# ------------------------------------------------------------------------- auto modes
AUTO_MODES = ("rule", "tune")


def _auto_mode() -> str:
    return getattr(_state, "mode", None) or os.environ.get("ODCONV_AUTO", "rule")


def set_auto_mode(mode: str) -> None:
    """``"rule"`` (default): the measured rule. ``"tune"``: time the candidate strategies once
    per (shape, batch, dtype, device, grad mode) on first use and keep the fastest."""
    if mode not in AUTO_MODES:
        raise ValueError(f"auto mode must be one of {', '.join(AUTO_MODES)}; got {mode!r}")
    _state.mode = mode


TUNE_CANDIDATES = ("grouped", "folded", "bmm", "mix", "fused")
#: The environment variable naming the default cache's file (unset or empty: memory only).
TUNE_CACHE_ENV = "ODCONV_TUNE_CACHE"


class TuningCache:
    """The tune mode's measured choices: the fastest strategy per call key (shape, batch,
    dtype, device, grad mode: :func:`_tune_key`), in memory (``table``) and, when ``path`` is
    set, in a JSON file ``{key: strategy}``.

    The file is merged into the table on first use (:meth:`lookup`) and rewritten atomically
    after every new entry (:meth:`store`), so another process, or a later run, finds every
    choice made so far; names that are not registered strategies are ignored on loading.
    Thread-safe."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path: Optional[str] = os.fspath(path) if path is not None else None
        self.table: dict[str, str] = {}
        self._loaded_from: Optional[str] = None
        self._lock = threading.RLock()

    def load(self) -> int:
        """Merge the entries of the file at ``path`` into the table (entries already in
        memory are overwritten); returns how many were merged, 0 without a file."""
        with self._lock:
            if not self.path or not os.path.exists(self.path):
                return 0
            with open(self.path) as f:
                entries = {k: v for k, v in json.load(f).items() if v in STRATEGIES}
            self.table.update(entries)
            self._loaded_from = self.path
            return len(entries)

    def save(self) -> None:
        """Write the whole table to ``path`` (atomically: a reader sees the previous file or
        this one, never part of it). ValueError without a path."""
        with self._lock:
            if not self.path:
                raise ValueError("this TuningCache has no file (path=None): nothing to save to")
            write_json_atomic(self.path, self.table, indent=1, sort_keys=True)

    def lookup(self, key: str) -> Optional[str]:
        """The strategy stored for ``key`` (the file is loaded first, once per path), or None."""
        with self._lock:
            if self.path and self._loaded_from != self.path:
                self.load()
            return self.table.get(key)

    def store(self, key: str, strategy: str) -> None:
        """Record ``strategy`` for ``key``; with a path, save the table."""
        with self._lock:
            self.table[key] = strategy
            if self.path:
                self.save()

    def clear(self) -> None:
        """Forget every entry in memory (the file is untouched and is read again on next use)."""
        with self._lock:
            self.table.clear()
            self._loaded_from = None

    def __len__(self) -> int:
        return len(self.table)


_default_cache = TuningCache()


def default_tuning_cache() -> TuningCache:
    """The cache tune mode uses: one per process, its file ``$ODCONV_TUNE_CACHE`` (read at each
    call, so setting the variable later takes effect; unset or empty: memory only)."""
    _default_cache.path = os.environ.get(TUNE_CACHE_ENV) or None
    return _default_cache


def _tune_key(x, weight, channel, filter, spatial, kernel, bias, stride, padding, dilation, groups, needs_grad) -> str:
    present = "".join(c for c, t in zip("cfskb", (channel, filter, spatial, kernel, bias)) if t is not None)
    return (f"{tuple(x.shape)}|{tuple(weight.shape)}|{present}|s{stride}p{padding}d{dilation}g{groups}|"
            f"{x.dtype}|{x.device.type}|{'train' if needs_grad else 'infer'}")


def _tuned(x, weight, channel, filter, spatial, kernel, bias, stride, padding, dilation, groups, needs_grad) -> str:
    cache = default_tuning_cache()
    key = _tune_key(x, weight, channel, filter, spatial, kernel, bias, stride, padding, dilation, groups, needs_grad)
    known = cache.lookup(key)
    if known is not None:
        return known
    args = [t.detach().requires_grad_(t.requires_grad) if t is not None else None
            for t in (x, weight, channel, filter, spatial, kernel, bias)]

    def run(name):
        def call():
            with torch.set_grad_enabled(needs_grad):
                out = STRATEGIES[name](*args, stride, padding, dilation, groups)
                if needs_grad:
                    out.sum().backward()
        return call

    times = {name: time_callable(run(name), x.device, warmup=1, repeats=3) for name in TUNE_CANDIDATES}
    best = min(times, key=times.get)
    cache.store(key, best)
    return best

