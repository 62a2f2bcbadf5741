"""Which exact strategy runs a dynamic conv: the ``"auto"`` rule and its overrides.

Precedence (highest first):

1. ``with use_strategy(name):`` -- forces ``name`` on every dynamic conv called inside
   (including layers built with an explicit ``strategy=``); ``use_strategy(None)`` lifts it.
2. the layer's ``strategy`` attribute (``strategy=`` at construction, the ``strategy``
   option of :func:`odconv.make_conv`, or :func:`set_strategy` for a whole model);
3. ``"auto"`` (the default) -> :func:`choose_strategy`, a rule derived from the
   measurements in ``results/bench/layers.md`` (see README, "Execution strategies").

``choose_strategy`` may also be switched to a one-time measured choice per layer shape
(``set_auto_mode("tune")``), cached in memory and optionally on disk (``ODCONV_TUNE_CACHE``).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from typing import Iterator, Optional

import torch
from torch import Tensor, nn

from .functional import STRATEGIES, check_strategy

_state = threading.local()

# Strategies whose graph does not depend on the batch size (safe for torch.export with a
# dynamic batch dimension). "grouped" bakes the batch into the conv's ``groups``.
BATCH_AGNOSTIC = ("mix", "mix_cl", "bmm", "fused")


def forced_strategy() -> Optional[str]:
    """The strategy forced by the innermost :func:`use_strategy`, or None."""
    return getattr(_state, "forced", None)


@contextlib.contextmanager
def use_strategy(name: Optional[str]) -> Iterator[None]:
    """Force strategy ``name`` (or ``"auto"``) on every dynamic conv run inside the block."""
    if name is not None:
        check_strategy(name)
    previous = forced_strategy()
    _state.forced = name
    try:
        yield
    finally:
        _state.forced = previous


def set_strategy(model: nn.Module, name: str) -> int:
    """Set ``strategy`` on every dynamic conv layer of ``model`` (``"auto"`` or a registered
    name; ValueError otherwise). Returns the number of layers changed."""
    from .layers import DynamicConvBase

    check_strategy(name)
    count = 0
    for m in model.modules():
        if isinstance(m, DynamicConvBase):
            m.strategy = name
            count += 1
    return count


def _is_tracing() -> bool:
    """True under torch.export / torch.jit.trace, whose graphs must not depend on the batch.
    (torch.compile is not included: it guards on shapes, and every strategy compiles.)"""
    try:
        if torch.compiler.is_exporting():
            return True
    except AttributeError:  # pragma: no cover - older torch
        pass
    return torch.jit.is_tracing()


def choose_strategy(x: Tensor, weight: Tensor, *, channel: Optional[Tensor] = None, filter: Optional[Tensor] = None,
                    spatial: Optional[Tensor] = None, kernel: Optional[Tensor] = None, bias: Optional[Tensor] = None,
                    stride=1, padding=0, dilation=1, groups: int = 1) -> str:
    """The strategy ``"auto"`` runs for this call (see module doc and README)."""
    if isinstance(padding, str):
        return "grouped"
    batch = x.shape[0]
    n, out_ch, cg, kh, kw = weight.shape
    tracing = _is_tracing()
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, channel, filter, spatial, kernel, bias))
    if kernel is None and spatial is None:
        return "grouped"  # the kernel is shared: every strategy runs the same plain conv
    if not tracing and batch == 1:
        return "grouped"  # one aggregated kernel + one plain conv: the cheapest path
    if _auto_mode() == "tune" and not tracing:
        return _tuned(x, weight, channel, filter, spatial, kernel, bias, stride, padding, dilation, groups, needs_grad)
    return _rule(x, weight, spatial, kernel, stride, padding, dilation, groups, needs_grad, tracing)


def _out_positions(x: Tensor, weight: Tensor, stride, padding, dilation) -> int:
    from torch.nn.modules.utils import _pair

    s, p, d = _pair(stride), _pair(padding), _pair(dilation)
    kh, kw = weight.shape[-2:]
    ho = (x.shape[-2] + 2 * p[0] - d[0] * (kh - 1) - 1) // s[0] + 1
    wo = (x.shape[-1] + 2 * p[1] - d[1] * (kw - 1) - 1) // s[1] + 1
    return int(ho) * int(wo)


# Measured on the 2-core CPU (results/bench/layers.md; README "Execution strategies"):
# mixing outputs costs about n static convs whatever the shape; per-example kernels (the
# fused strategy) cost about one static conv plus traffic over B*X kernel elements, which
# weighs like ~150/L static convs. Hence mix when n * L < MIX_MAX_NL, else fused. The
# reference grouped conv is never faster than fused for B > 1 except on depthwise convs
# (per-example kernels are tiny; the grouped conv is one depthwise conv over B*C channels).
# Pointwise convs: per-example kernels are small (O*C), and plain bmm beats both the
# reference and fused's chunked grouped conv -- except in inference on small maps
# (L <= POINTWISE_FUSED_MAX_L), where bmm's one big batch of per-example kernels outweighs the
# little compute and the chunked fused_bmm is faster (measured on two EPYC hosts: 192->64 at
# 8x8, batch 128: bmm 0.46x and 1.21x the reference, fused_bmm 0.44x and 0.93x).
MIX_MAX_NL = 150
POINTWISE_FUSED_MAX_L = 64


def _rule(x, weight, spatial, kernel, stride, padding, dilation, groups, needs_grad, tracing) -> str:
    """Measured rule (see MIX_MAX_NL)."""
    n, out_ch, cg = weight.shape[:3]
    positions = _out_positions(x, weight, stride, padding, dilation)
    if tracing:  # torch.export: batch-agnostic graphs only
        return "mix" if n * positions < MIX_MAX_NL else "bmm"
    if cg == 1 and out_ch == groups:
        return "grouped"
    if n * positions < MIX_MAX_NL:
        return "mix"
    if weight.shape[-1] == 1 and weight.shape[-2] == 1:
        return "fused_bmm" if not needs_grad and positions <= POINTWISE_FUSED_MAX_L else "bmm"
    return "fused"


# ------------------------------------------------------------------------- auto modes
def _auto_mode() -> str:
    return getattr(_state, "mode", None) or os.environ.get("ODCONV_AUTO", "rule")


def set_auto_mode(mode: str) -> None:
    """``"rule"`` (default): the measured rule. ``"tune"``: time the candidate strategies once
    per (shape, batch, dtype, device, grad mode) on first use and keep the fastest."""
    if mode not in ("rule", "tune"):
        raise ValueError(f"auto mode must be 'rule' or 'tune', got {mode!r}")
    _state.mode = mode


_TUNED: dict[str, str] = {}
TUNE_CANDIDATES = ("grouped", "bmm", "mix", "fused")


def _cache_path() -> Optional[str]:
    return os.environ.get("ODCONV_TUNE_CACHE") or None


def _load_disk_cache() -> None:
    path = _cache_path()
    if path and os.path.exists(path) and not getattr(_state, "disk_loaded", False):
        with open(path) as f:
            _TUNED.update({k: v for k, v in json.load(f).items() if v in STRATEGIES})
        _state.disk_loaded = True


def _tune_key(x, weight, channel, filter, spatial, kernel, bias, stride, padding, dilation, groups, needs_grad) -> str:
    present = "".join(c for c, t in zip("cfskb", (channel, filter, spatial, kernel, bias)) if t is not None)
    return (f"{tuple(x.shape)}|{tuple(weight.shape)}|{present}|s{stride}p{padding}d{dilation}g{groups}|"
            f"{x.dtype}|{x.device.type}|{'train' if needs_grad else 'infer'}")


def _tuned(x, weight, channel, filter, spatial, kernel, bias, stride, padding, dilation, groups, needs_grad) -> str:
    from .timing import time_callable

    _load_disk_cache()
    key = _tune_key(x, weight, channel, filter, spatial, kernel, bias, stride, padding, dilation, groups, needs_grad)
    if key in _TUNED:
        return _TUNED[key]
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
    _TUNED[key] = best
    path = _cache_path()
    if path:
        with open(path, "w") as f:
            json.dump(_TUNED, f, indent=1, sort_keys=True)
    return best
