"""The dynamic convolution shared by ODConv, CondConv and DyConv.

Every dynamic layer in this package reduces to one operation: per example ``b``,

    kernel_b = sum_i kernel_attn[b, i] * spatial_attn[b] * weight[i]          (n, O, I/g, k, k) -> (O, I/g, k, k)
    y_b      = filter_attn[b] * conv2d(channel_attn[b] * x_b, kernel_b) (+ sum_i kernel_attn[b, i] * bias[i])

with any of the four attentions absent (acting as exactly 1). Layers compute their
attentions and call :func:`dynamic_conv2d`; *how* it is executed is a named strategy, so
that every layer shares the same exact formulations (see ``STRATEGIES``).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

# name -> function(x, weight, channel, filter, spatial, kernel, bias, stride, padding, dilation, groups) -> Tensor
STRATEGIES: dict[str, Callable[..., Tensor]] = {}


def register_strategy(name: str) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Decorator: register an exact execution strategy of :func:`dynamic_conv2d` under ``name``."""

    def wrap(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        STRATEGIES[name] = fn
        return fn

    return wrap


def _mixed_bias(bias: Optional[Tensor], kernel: Optional[Tensor], batch: int) -> Optional[Tensor]:
    """(n, O) bias mixed per example -> (B, O); None when there is no bias."""
    if bias is None:
        return None
    if kernel is None:
        return bias[0].expand(batch, -1)
    return kernel @ bias


def _finish(out: Tensor, filter: Optional[Tensor], bias: Optional[Tensor], kernel: Optional[Tensor]) -> Tensor:
    """Filter attention and the mixed bias on a (B, O, H', W') conv output (every strategy)."""
    batch, out_ch = out.shape[:2]
    if filter is not None:
        out = out * filter.view(batch, out_ch, 1, 1)
    mixed = _mixed_bias(bias, kernel, batch)
    if mixed is not None:
        out = out + mixed.reshape(batch, out_ch, 1, 1)
    return out


@register_strategy("grouped")
def grouped_conv(x: Tensor, weight: Tensor, channel: Optional[Tensor], filter: Optional[Tensor],
                 spatial: Optional[Tensor], kernel: Optional[Tensor], bias: Optional[Tensor],
                 stride, padding, dilation, groups: int) -> Tensor:
    """The reference algorithm: one aggregated kernel per example, then one conv with
    ``groups = groups * batch``. When no attention varies the kernel (n = 1, no spatial
    attention) the kernel is shared and a plain conv runs instead, as the reference's own
    point-wise path does."""
    batch, in_ch, height, width = x.shape
    n, out_ch = weight.shape[0], weight.shape[1]
    if channel is not None:
        x = x * channel.view(batch, in_ch, 1, 1)
    if kernel is None and spatial is None:
        out = F.conv2d(x, weight[0], None, stride, padding, dilation, groups)
    else:
        k_h, k_w = weight.shape[-2:]
        w = weight.unsqueeze(0)  # (1, n, O, I/g, k, k)
        if spatial is not None and kernel is not None:
            # Same operation order as the reference: (spatial * kernel) * weight.
            coeff = spatial.view(batch, 1, 1, 1, k_h, k_w) * kernel.view(batch, n, 1, 1, 1, 1)
            w = coeff * w
        elif spatial is not None:
            w = spatial.view(batch, 1, 1, 1, k_h, k_w) * w
        else:
            w = kernel.view(batch, n, 1, 1, 1, 1) * w
        w = w.sum(dim=1).reshape(batch * out_ch, in_ch // groups, k_h, k_w)
        out = F.conv2d(x.reshape(1, batch * in_ch, height, width), w, None, stride, padding, dilation,
                       groups * batch)
        out = out.view(batch, out_ch, out.shape[-2], out.shape[-1])
    return _finish(out, filter, bias, kernel)


def per_example_kernels(weight: Tensor, spatial: Optional[Tensor], kernel: Optional[Tensor], batch: int) -> Tensor:
    """The aggregated kernel of every example, (B, O, I/g, k, k). For tests and inspection."""
    w = weight.unsqueeze(0).expand(batch, *weight.shape)
    if kernel is not None:
        w = w * kernel.view(batch, -1, 1, 1, 1, 1)
    if spatial is not None:
        w = w * spatial.view(batch, 1, 1, 1, *weight.shape[-2:])
    return w.sum(dim=1)


def dynamic_conv2d(x: Tensor, weight: Tensor, *, channel: Optional[Tensor] = None, filter: Optional[Tensor] = None,
                   spatial: Optional[Tensor] = None, kernel: Optional[Tensor] = None, bias: Optional[Tensor] = None,
                   stride=1, padding=0, dilation=1, groups: int = 1, strategy: str = "auto") -> Tensor:
    """Dynamic convolution of ``x`` (B, I, H, W) with ``weight`` (n, O, I/groups, k, k).

    Attentions (each optional, absent = exactly 1): ``channel`` (B, I), ``filter`` (B, O),
    ``spatial`` (B, k, k), ``kernel`` (B, n) (required when n > 1); ``bias`` (n, O) is mixed by
    ``kernel`` like the weight. Returns (B, O, H', W').

    ``strategy``: a name in ``STRATEGIES`` (all exact, see :mod:`odconv.strategies`) or
    ``"auto"`` (chosen per call from shape, batch, dtype, device and grad mode by
    :func:`odconv.autotune.choose_strategy`). Inside ``odconv.autotune.use_strategy(name)``
    that name replaces ``strategy``.
    """
    n = weight.shape[0]
    if weight.dim() != 5:
        raise ValueError(f"weight must be (n, out, in/groups, k, k), got shape {tuple(weight.shape)}")
    if n > 1 and kernel is None:
        raise ValueError(f"{n} kernels need kernel attention (B, {n}) to mix them")
    from .autotune import choose_strategy, forced_strategy

    strategy = forced_strategy() or strategy
    if strategy == "auto":
        strategy = choose_strategy(x, weight, channel=channel, filter=filter, spatial=spatial, kernel=kernel,
                                   bias=bias, stride=stride, padding=padding, dilation=dilation, groups=groups)
    try:
        fn = STRATEGIES[strategy]
    except KeyError:
        raise ValueError(f"unknown strategy {strategy!r}; valid: {', '.join(valid_strategies())}") from None
    return fn(x, weight, channel, filter, spatial, kernel, bias, stride, padding, dilation, groups)


def valid_strategies() -> list[str]:
    """Every name ``strategy=`` accepts: ``"auto"`` and the registered strategies."""
    return ["auto", *sorted(STRATEGIES)]


def check_strategy(name: str) -> str:
    """``name`` if it is a valid strategy (or ``"auto"``), else ValueError listing the valid ones."""
    if name != "auto" and name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; valid: {', '.join(valid_strategies())}")
    return name


def conv_output_hw(in_hw: tuple[int, int], kernel_size: int, stride: int, padding: int, dilation: int) -> tuple[int, int]:
    """Spatial size of a conv's output."""
    return tuple((s + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1 for s in in_hw)  # type: ignore[return-value]


from . import strategies as _strategies  # noqa: E402,F401  (registers bmm, mix, mix_cl, fused, compiled)
