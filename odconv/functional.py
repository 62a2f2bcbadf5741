"""The dynamic convolution shared by ODConv, CondConv and DyConv: :func:`dynamic_conv2d`.

Every dynamic layer in this package reduces to one operation: per example ``b``,

    kernel_b = sum_i kernel_attn[b, i] * spatial_attn[b] * weight[i]          (n, O, I/g, k, k) -> (O, I/g, k, k)
    y_b      = filter_attn[b] * conv2d(channel_attn[b] * x_b, kernel_b) (+ sum_i kernel_attn[b, i] * bias[i])

with any of the four attentions absent (acting as exactly 1). Layers compute their
attentions and call :func:`dynamic_conv2d`; *how* it is executed is a named strategy
(:mod:`odconv.strategies`, all exact), chosen by :mod:`odconv.autotune`.

The names below the op (``STRATEGIES``, ``valid_strategies``, ``check_strategy``,
``conv_output_hw``, ``per_example_kernels``, ``register_strategy``) are re-exported here
from :mod:`odconv.ops`, where they live.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from .autotune import choose_strategy, forced_strategy
from .ops.primitives import conv_output_hw, per_example_kernels, shared_kernel_conv
from .ops.registry import STRATEGIES, check_strategy, register_strategy, valid_strategies

__all__ = ["dynamic_conv2d", "STRATEGIES", "valid_strategies", "check_strategy", "conv_output_hw",
           "per_example_kernels", "register_strategy"]


def dynamic_conv2d(x: Tensor, weight: Tensor, *, channel: Optional[Tensor] = None, filter: Optional[Tensor] = None,
                   spatial: Optional[Tensor] = None, kernel: Optional[Tensor] = None, bias: Optional[Tensor] = None,
                   stride=1, padding=0, dilation=1, groups: int = 1, strategy: str = "auto") -> Tensor:
    """Dynamic convolution of ``x`` (B, I, H, W) with ``weight`` (n, O, I/groups, k, k).

    Attentions (each optional, absent = exactly 1): ``channel`` (B, I), ``filter`` (B, O),
    ``spatial`` (B, k, k), ``kernel`` (B, n) (required when n > 1); ``bias`` (n, O) is mixed by
    ``kernel`` like the weight. Returns (B, O, H', W').

    ``strategy``: a name in ``STRATEGIES`` (all exact, see :mod:`odconv.strategies`) or
    ``"auto"`` (chosen per call from shape, batch, dtype, device and grad mode by
    :func:`odconv.autotune.choose_strategy`). Inside ``odconv.use_strategy(name)`` that name
    replaces ``strategy``. When no attention varies the kernel (n = 1, no spatial attention)
    every strategy is the same plain conv, which runs directly.
    """
    if weight.dim() != 5:
        raise ValueError(f"weight must be (n, out, in/groups, k, k), got shape {tuple(weight.shape)}")
    n = weight.shape[0]
    if n > 1 and kernel is None:
        raise ValueError(f"{n} kernels need kernel attention (B, {n}) to mix them")
    strategy = check_strategy(forced_strategy() or strategy)
    if kernel is None and spatial is None:
        return shared_kernel_conv(x, weight, channel, filter, bias, stride, padding, dilation, groups)
    if strategy == "auto":
        strategy = choose_strategy(x, weight, channel=channel, filter=filter, spatial=spatial, kernel=kernel,
                                   bias=bias, stride=stride, padding=padding, dilation=dilation, groups=groups)
    return STRATEGIES[strategy](x, weight, channel, filter, spatial, kernel, bias, stride, padding, dilation, groups)
