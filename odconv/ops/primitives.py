"""The primitives every strategy of the dynamic conv is built from (one copy each): conv
geometry, per-example kernel aggregation, the shared-kernel conv, the filter attention and
mixed bias on the output (:func:`finish`), and im2col / col2im.

Notation: batch B, input channels C, output channels O, groups g, Cg = C/g, kernel taps
kk = kh*kw, n kernels; ``weight`` is (n, O, Cg, kh, kw).
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

IntPair = Union[int, tuple[int, int], list[int]]


def pair(v: IntPair) -> tuple[int, int]:
    """``v`` as a pair of ints (an int is repeated)."""
    if isinstance(v, int):
        return (v, v)
    a, b = v
    return (int(a), int(b))


def conv_output_hw(in_hw: tuple[int, int], kernel_size: IntPair, stride: IntPair, padding: IntPair,
                   dilation: IntPair) -> tuple[int, int]:
    """Spatial size (H', W') of a conv's output on an input of spatial size ``in_hw``."""
    k, s, p, d = pair(kernel_size), pair(stride), pair(padding), pair(dilation)
    return tuple((in_hw[i] + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(2))  # type: ignore[return-value]


class ConvGeometry(NamedTuple):
    """Integer geometry of one conv call: kernel (kh, kw), stride, padding, dilation (pairs)
    and the output size (ho, wo)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    out_hw: tuple[int, int]

    @property
    def positions(self) -> int:
        """Output positions per example, L = ho * wo."""
        return self.out_hw[0] * self.out_hw[1]


def conv_geometry(x: Tensor, weight: Tensor, stride: IntPair, padding: IntPair, dilation: IntPair) -> ConvGeometry:
    """Geometry of a dynamic conv of ``x`` (B, C, H, W) with ``weight`` (n, O, Cg, kh, kw).
    String padding ("same"/"valid") is only run by the ``grouped`` strategy: ValueError here."""
    if isinstance(padding, str):
        raise ValueError(f"string padding {padding!r} is only supported by the 'grouped' strategy; pass integers")
    kernel = (int(weight.shape[-2]), int(weight.shape[-1]))
    s, p, d = pair(stride), pair(padding), pair(dilation)
    return ConvGeometry(kernel, s, p, d, conv_output_hw((x.shape[-2], x.shape[-1]), kernel, s, p, d))


def aggregate_kernels(weight: Tensor, spatial: Optional[Tensor], kernel: Optional[Tensor],
                      batch: int) -> tuple[Tensor, Tensor]:
    """Per-example kernels ``sum_i kernel[b, i] * weight[i] * spatial[b]`` as (B, O*Cg, kk),
    and the kernel-attention mix before the spatial attention (B, O*Cg, kk) (the same tensor
    when ``spatial`` is None). ``kernel`` (B, n) or None (n = 1); ``spatial`` (B, kh, kw) or None."""
    n = weight.shape[0]
    kk = weight.shape[-1] * weight.shape[-2]
    flat = weight.reshape(n, -1)
    mixed = (kernel @ flat) if kernel is not None else flat[0].expand(batch, -1)
    mixed = mixed.reshape(batch, -1, kk)
    if spatial is None:
        return mixed, mixed
    return mixed * spatial.reshape(batch, 1, kk), mixed


def fold_attentions(kernels: Tensor, channel: Optional[Tensor], filter: Optional[Tensor], groups: int) -> Tensor:
    """Per-example kernels (B, O*Cg, kk) times the channel attention (B, C) on their input
    channels and the filter attention (B, O) on their output channels: the kernels of
    ``filter * conv(channel * x, kernels)`` as one conv of ``x``. Returns (B, O*Cg, kk)."""
    if channel is None and filter is None:
        return kernels
    batch, rows, kk = kernels.shape
    out_ch = rows // (channel.shape[1] // groups) if channel is not None else filter.shape[1]
    k = kernels.view(batch, groups, out_ch // groups, rows // out_ch, kk)
    if channel is not None:
        k = k * channel.reshape(batch, groups, 1, -1, 1)
    if filter is not None:
        k = k * filter.reshape(batch, groups, -1, 1, 1)
    return k.reshape(batch, rows, kk)


def per_example_kernels(weight: Tensor, spatial: Optional[Tensor], kernel: Optional[Tensor], batch: int) -> Tensor:
    """The aggregated kernel of every example, (B, O, Cg, kh, kw). For tests and inspection."""
    return aggregate_kernels(weight, spatial, kernel, batch)[0].reshape(batch, *weight.shape[1:])


def mixed_bias(bias: Optional[Tensor], kernel: Optional[Tensor], batch: int) -> Optional[Tensor]:
    """(n, O) bias mixed per example by ``kernel`` (B, n) -> (B, O); None when there is no bias."""
    if bias is None:
        return None
    if kernel is None:
        return bias[0].expand(batch, -1)
    return kernel @ bias


def finish(out: Tensor, filter: Optional[Tensor], bias: Optional[Tensor], kernel: Optional[Tensor]) -> Tensor:
    """Filter attention (B, O) and the mixed bias on a (B, O, H', W') conv output (every strategy)."""
    batch, out_ch = out.shape[:2]
    mixed = mixed_bias(bias, kernel, batch)
    if filter is not None and mixed is not None:
        return torch.addcmul(mixed.reshape(batch, out_ch, 1, 1), out, filter.reshape(batch, out_ch, 1, 1))
    if filter is not None:
        return out * filter.reshape(batch, out_ch, 1, 1)
    if mixed is not None:
        return out + mixed.reshape(batch, out_ch, 1, 1)
    return out


def scale_channels(x: Tensor, channel: Optional[Tensor]) -> Tensor:
    """Channel attention (B, C) on an input (B, C, H, W); ``x`` itself when None."""
    if channel is None:
        return x
    return x * channel.reshape(x.shape[0], x.shape[1], 1, 1)


def plain_conv2d(x: Tensor, weight: Tensor, stride, padding, dilation, groups: int) -> Tensor:
    """``F.conv2d(x, weight, None, stride, padding, dilation, groups)``; a 1x1 conv of one
    example (one group, stride 1, no padding, contiguous) runs as one matmul, (O, C) @ (C, H*W).
    Why: on CPU the 1x1 ``F.conv2d`` of a single example took 3x a matmul's time where the
    outputs are few (32->16 at 32x32, 144->32 at 16x16; torch 2.13, oneDNN) and 0.92-0.98x
    elsewhere; batched input keeps ``F.conv2d``, and so do traced and exported graphs (their
    batch may vary)."""
    traced = torch.compiler.is_compiling() or torch.jit.is_tracing()
    if (x.shape[0] == 1 and groups == 1 and not traced and weight.shape[-2:] == (1, 1)
            and not isinstance(padding, str) and pair(stride) == (1, 1) and pair(padding) == (0, 0)
            and x.is_contiguous()):
        out = torch.mm(weight.reshape(weight.shape[0], -1), x.view(x.shape[1], -1))
        return out.view(1, weight.shape[0], x.shape[-2], x.shape[-1])
    return F.conv2d(x, weight, None, stride, padding, dilation, groups)


def shared_kernel_conv(x: Tensor, weight: Tensor, channel: Optional[Tensor], filter: Optional[Tensor],
                       bias: Optional[Tensor], stride, padding, dilation, groups: int) -> Tensor:
    """The dynamic conv when no attention varies the kernel (n = 1, no spatial attention):
    one plain conv with ``weight[0]``, channel and filter attention around it."""
    out = plain_conv2d(scale_channels(x, channel), weight[0], stride, padding, dilation, groups)
    return finish(out, filter, bias, None)


def patches(x: Tensor, g: ConvGeometry) -> Tensor:
    """im2col: (B, C, H, W) -> (B, C, kh*kw, ho, wo) (channel-major, then tap).

    Without autograd by strided slicing (as fast as ``F.unfold`` forward on CPU, faster on
    large maps); with autograd ``F.unfold``, whose native backward is 3-6x faster than the
    slices' (measured fwd+bwd, batch 128: 32 channels at 32x32 800 ms -> 190 ms)."""
    (kh, kw), s, p, d, (ho, wo) = g
    if torch.is_grad_enabled() and x.requires_grad:
        return F.unfold(x, (kh, kw), d, p, s).view(x.shape[0], x.shape[1], kh * kw, ho, wo)
    if p[0] or p[1]:
        x = F.pad(x, (p[1], p[1], p[0], p[0]))
    cols = x.new_empty(x.shape[0], x.shape[1], kh * kw, ho, wo)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i * kw + j] = x[:, :, i * d[0]: i * d[0] + s[0] * (ho - 1) + 1: s[0],
                                       j * d[1]: j * d[1] + s[1] * (wo - 1) + 1: s[1]]
    return cols


def unpatch(cols: Tensor, in_hw: tuple[int, int], g: ConvGeometry) -> Tensor:
    """The adjoint of :func:`patches` (col2im): (B, C, kh*kw, ho, wo) -> (B, C, H, W)."""
    (kh, kw), s, p, d, (ho, wo) = g
    h, w = in_hw
    out = cols.new_zeros(cols.shape[0], cols.shape[1], h + 2 * p[0], w + 2 * p[1])
    for i in range(kh):
        for j in range(kw):
            out[:, :, i * d[0]: i * d[0] + s[0] * (ho - 1) + 1: s[0],
                j * d[1]: j * d[1] + s[1] * (wo - 1) + 1: s[1]] += cols[:, :, i * kw + j]
    return out[:, :, p[0]: p[0] + h, p[1]: p[1] + w]
