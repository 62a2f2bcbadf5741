"""Exact execution strategies of :func:`odconv.functional.dynamic_conv2d`, registered in
:data:`odconv.ops.registry.STRATEGIES` on import.

All compute the same function (see :mod:`odconv.functional`) for a kernel that varies per
example (``dynamic_conv2d`` runs the shared-kernel case itself); they differ in how the
work is laid out. Notation: batch B, input channels C, output channels O, groups g,
Cg = C/g, Og = O/g, kernel taps kk = kh*kw, output positions L = H'*W', n kernels,
per-example kernel size X = O*Cg*kk.

``grouped`` (the reference algorithm)
    aggregate one kernel per example, then one conv with ``groups = g*B``. Not exportable:
    ``torch.export`` keeps the batch symbolic in ``groups``, but ONNX needs a constant group
    count.
``folded``
    ``grouped`` with the channel and filter attentions multiplied into the per-example
    kernels (X elements per example) instead of into the input and output (C*H*W and O*L):
    cheaper when the kernels are small against the maps. Not exportable.
``bmm``
    aggregate per-example kernels, unfold the input (im2col) and run one batched matmul
    ``(B, g, Og, Cg*kk) @ (B, g, Cg*kk, L)``. Plain autograd; exportable.
``mix``
    never builds a per-example kernel: run the n stacked static kernels as one conv with
    n*O output channels on the channel-attended input, then mix the n outputs of every
    example with its kernel attention. Spatial attention multiplies kernel taps, so it is
    applied per example to the unfolded input patches, which then go through a 1x1 conv
    with the stacked kernels. n times the conv FLOPs, but one large GEMM with a shared
    weight (its gradient is one reduction over the batch). Best on small maps (n * L
    small), where per-example kernels are large against the work done with them. Exportable.
``mix_cl``
    ``mix`` with the input in channels-last memory format. Exportable.
``fused``
    a custom autograd Function over per-example kernels that stores only its inputs (x, the
    n kernels, the attentions): per-example kernels, unfolded input and the per-example
    kernel gradients are rebuilt chunk by chunk of the batch in the backward pass and
    reduced at once into the gradients of the n kernels and of the attentions, so neither
    they nor their gradients are ever materialised for the whole batch. Memory of a static
    conv; the per-example-kernel FLOPs of the reference. Each chunk (sized to stay in cache,
    FUSED_CHUNK_ELEMENTS) runs as one grouped conv (groups = g * chunk). Loops over batch
    chunks in Python: not exportable (``torch.export`` specialises the batch).
``fused_bmm``
    ``fused`` with patches + batched matmul as the inner kernel. Not exportable.
``compiled``
    ``bmm`` through ``torch.compile`` (compiled lazily on first use). Exportable (tracing
    goes through to ``bmm``).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .ops.primitives import (
    ConvGeometry,
    aggregate_kernels,
    conv_geometry,
    finish,
    fold_attentions,
    patches,
    plain_conv2d,
    scale_channels,
    unpatch,
)
from .ops.registry import register_strategy

# Largest number of elements one batch chunk's per-example kernels (and, with patches, its
# unfolded input) may take in the fused strategies (chunks are at least one example). Small
# enough for the chunk's kernels and their gradients to stay in cache between being built
# and used: measured on the 2-core EPYC, fwd+bwd at batch 128, 1 thread, ODConv-4x shapes
# (x static): 128->128 at 8x8: 7.8 with 2^23 elements, 3.1 with 2^19; 64->64 at 32x32:
# 1.64 -> 1.04; 256->256 at 4x4: 23.8 -> 11.3.
FUSED_CHUNK_ELEMENTS = 1 << 19


# ----------------------------------------------------------------------------- grouped
@register_strategy("grouped", exportable=False)
def grouped_conv(x: Tensor, weight: Tensor, channel: Optional[Tensor], filter: Optional[Tensor],
                 spatial: Optional[Tensor], kernel: Optional[Tensor], bias: Optional[Tensor],
                 stride, padding, dilation, groups: int) -> Tensor:
    """The reference algorithm: one aggregated kernel per example, then one conv with
    ``groups = groups * batch`` (accepts string padding, as ``F.conv2d``)."""
    batch, in_ch, height, width = x.shape
    out_ch = weight.shape[1]
    k, _ = aggregate_kernels(weight, spatial, kernel, batch)
    k = k.reshape(batch * out_ch, *weight.shape[2:])
    out = plain_conv2d(scale_channels(x, channel).reshape(1, batch * in_ch, height, width), k, stride, padding,
                       dilation, groups * batch)
    return finish(out.view(batch, out_ch, out.shape[-2], out.shape[-1]), filter, bias, kernel)


@register_strategy("folded", exportable=False)
def folded_conv(x: Tensor, weight: Tensor, channel: Optional[Tensor], filter: Optional[Tensor],
                spatial: Optional[Tensor], kernel: Optional[Tensor], bias: Optional[Tensor],
                stride, padding, dilation, groups: int) -> Tensor:
    """``grouped`` with the channel and filter attentions folded into the per-example kernels:
    one conv of the raw input, no pass over the input or output for the attentions."""
    batch, in_ch, height, width = x.shape
    out_ch = weight.shape[1]
    k, _ = aggregate_kernels(weight, spatial, kernel, batch)
    k = fold_attentions(k, channel, filter, groups).reshape(batch * out_ch, *weight.shape[2:])
    out = plain_conv2d(x.reshape(1, batch * in_ch, height, width), k, stride, padding, dilation, groups * batch)
    return finish(out.view(batch, out_ch, out.shape[-2], out.shape[-1]), None, bias, kernel)


# --------------------------------------------------------------------------------- bmm
@register_strategy("bmm", exportable=True)
def bmm_conv(x, weight, channel, filter, spatial, kernel, bias, stride, padding, dilation, groups) -> Tensor:
    """Per-example kernels times the unfolded input, one batched matmul (plain autograd)."""
    batch = x.shape[0]
    out_ch, cg = weight.shape[1:3]
    g = conv_geometry(x, weight, stride, padding, dilation)
    kk = g.kernel[0] * g.kernel[1]
    k, _ = aggregate_kernels(weight, spatial, kernel, batch)
    cols = patches(scale_channels(x, channel), g).view(batch, groups, cg * kk, g.positions)
    out = torch.matmul(k.reshape(batch, groups, out_ch // groups, cg * kk), cols)
    return finish(out.view(batch, out_ch, *g.out_hw), filter, bias, kernel)


# --------------------------------------------------------------------------------- mix
def _stacked(weight: Tensor, groups: int) -> Tensor:
    """(n, O, Cg, kh, kw) -> (g*n*Og, Cg, kh, kw): output channels ordered (group, kernel, filter)
    so that a conv with ``groups`` gives every group its n*Og stacked outputs."""
    n, out_ch = weight.shape[:2]
    return weight.reshape(n, groups, out_ch // groups, *weight.shape[2:]).transpose(0, 1).reshape(
        groups * n * (out_ch // groups), *weight.shape[2:])


def _mix(x, weight, channel, filter, spatial, kernel, bias, stride, padding, dilation, groups,
         channels_last: bool = False) -> Tensor:
    batch, in_ch = x.shape[:2]
    n, out_ch, cg = weight.shape[:3]
    g = conv_geometry(x, weight, stride, padding, dilation)
    kk = g.kernel[0] * g.kernel[1]
    if channels_last and kk == 1 and max(g.stride) > 1:
        # torch 2.13 CPU: the backward of a channels-last 1x1 stride-2 conv corrupted the heap
        # in our test suite (a later allocation aborted with "corrupted size vs. prev_size");
        # that one case stays in the default layout.
        channels_last = False
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x = scale_channels(x, channel)
    w = _stacked(weight, groups)
    if spatial is None:
        y = F.conv2d(x, w, None, g.stride, g.padding, g.dilation, groups)
    else:
        cols = patches(x, g)
        cols = (cols * spatial.reshape(batch, 1, kk, 1, 1)).reshape(batch, in_ch * kk, *g.out_hw)
        if channels_last:
            cols = cols.contiguous(memory_format=torch.channels_last)
        # The unfolded patches of group j are channels [j*Cg*kk, (j+1)*Cg*kk): a grouped 1x1 conv.
        y = F.conv2d(cols, w.reshape(w.shape[0], cg * kk, 1, 1), None, 1, 0, 1, groups)
    if kernel is None:  # n == 1 with spatial attention only
        out = y
    else:
        y = y.reshape(batch, groups, n, (out_ch // groups) * g.positions)
        out = torch.matmul(kernel.view(batch, 1, 1, n), y).view(batch, out_ch, *g.out_hw)
    return finish(out, filter, bias, kernel)


@register_strategy("mix", exportable=True)
def mix_outputs(x, weight, channel, filter, spatial, kernel, bias, stride, padding, dilation, groups) -> Tensor:
    """Outputs of the n stacked kernels, mixed per example by the kernel attention."""
    return _mix(x, weight, channel, filter, spatial, kernel, bias, stride, padding, dilation, groups)


@register_strategy("mix_cl", exportable=True)
def mix_outputs_channels_last(x, weight, channel, filter, spatial, kernel, bias, stride, padding, dilation,
                              groups) -> Tensor:
    """``mix`` in channels-last memory format."""
    return _mix(x, weight, channel, filter, spatial, kernel, bias, stride, padding, dilation, groups,
                channels_last=True)


# ------------------------------------------------------------------------------- fused
def _chunk_size(batch: int, *sizes: int) -> int:
    return max(1, min(batch, FUSED_CHUNK_ELEMENTS // max(1, *sizes)))


def _fused_chunk(batch: int, x: Tensor, weight: Tensor, g: ConvGeometry, use_conv: bool) -> int:
    """Examples per chunk: the chunk's per-example kernels (and, with patches, its unfolded
    input) stay under FUSED_CHUNK_ELEMENTS elements."""
    kernel_elements = weight[0].numel()
    if use_conv:
        return _chunk_size(batch, kernel_elements)
    return _chunk_size(batch, kernel_elements, x.shape[1] * g.kernel[0] * g.kernel[1] * g.positions)


def _put(dst: Optional[Tensor], b0: int, b1: int, value: Tensor) -> Tensor:
    """``value`` as rows b0:b1 of ``dst``; ``dst`` None means one chunk: ``value`` is the result."""
    if dst is None:
        return value
    dst[b0:b1] = value
    return dst


class _PerExampleConv(torch.autograd.Function):
    """y_b = conv(channel_b * x_b, (sum_i kernel_b,i W_i) * spatial_b), per-example kernels
    built and consumed chunk by chunk; only the inputs are saved for backward, which
    rebuilds the chunk's kernels and reduces the per-example kernel gradients at once."""

    @staticmethod
    def forward(ctx, x, weight, channel, spatial, kernel, g: ConvGeometry, groups: int, use_conv: bool):
        batch, in_ch, h, w = x.shape
        n, out_ch, cg = weight.shape[:3]
        (kh, kw), s, p, d, (ho, wo) = g
        og, kk, L = out_ch // groups, kh * kw, g.positions
        step = _fused_chunk(batch, x, weight, g, use_conv)
        out = x.new_empty(batch, out_ch, ho, wo) if step < batch else None
        for b0 in range(0, batch, step):
            b1 = min(batch, b0 + step)
            cb = b1 - b0
            xc = scale_channels(x[b0:b1], None if channel is None else channel[b0:b1])
            k, _ = aggregate_kernels(weight, None if spatial is None else spatial[b0:b1],
                                     None if kernel is None else kernel[b0:b1], cb)
            if use_conv:
                y = F.conv2d(xc.reshape(1, cb * in_ch, h, w), k.reshape(cb * out_ch, cg, kh, kw), None,
                             s, p, d, groups * cb)
            else:
                cols = patches(xc, g).view(cb, groups, cg * kk, L)
                y = torch.matmul(k.view(cb, groups, og, cg * kk), cols)
            out = _put(out, b0, b1, y.view(cb, out_ch, ho, wo))
        ctx.geometry, ctx.groups, ctx.use_conv = g, groups, use_conv
        ctx.save_for_backward(x, weight, channel, spatial, kernel)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, channel, spatial, kernel = ctx.saved_tensors
        g, groups, use_conv = ctx.geometry, ctx.groups, ctx.use_conv
        batch, in_ch, h, w = x.shape
        n, out_ch, cg = weight.shape[:3]
        (kh, kw), s, p, d, (ho, wo) = g
        og, kk, L = out_ch // groups, kh * kw, g.positions
        need_x, need_w, need_c, need_s, need_k = ctx.needs_input_grad[:5]
        need_cols = need_x or need_c
        need_kgrad = need_w or need_s or need_k
        step = _fused_chunk(batch, x, weight, g, use_conv)
        chunked = step < batch  # else every gradient is computed whole, without copies
        gx = torch.empty_like(x) if need_x and chunked else None
        gc = torch.empty_like(channel) if need_c and chunked else None
        gs = torch.empty_like(spatial) if need_s and chunked else None
        gk = torch.empty_like(kernel) if need_k and chunked else None
        gw = torch.zeros(n, out_ch * cg * kk, dtype=weight.dtype, device=weight.device) if need_w else None
        grad_out = grad_out.contiguous()
        for b0 in range(0, batch, step):
            b1 = min(batch, b0 + step)
            cb = b1 - b0
            xb = x[b0:b1]
            xc = scale_channels(xb, None if channel is None else channel[b0:b1])
            sb = None if spatial is None else spatial[b0:b1]
            kb = None if kernel is None else kernel[b0:b1]
            k, a = aggregate_kernels(weight, sb, kb, cb)
            gxc = gkern = None
            if use_conv:
                gxc, gkern, _ = torch.ops.aten.convolution_backward(
                    grad_out[b0:b1].reshape(1, cb * out_ch, ho, wo), xc.reshape(1, cb * in_ch, h, w),
                    k.reshape(cb * out_ch, cg, kh, kw), None, list(s), list(p), list(d), False, [0, 0],
                    groups * cb, [need_cols, need_kgrad, False])
                if gxc is not None:
                    gxc = gxc.view(cb, in_ch, h, w)
                if gkern is not None:
                    gkern = gkern.view(cb, out_ch * cg, kk)
            else:
                gy = grad_out[b0:b1].view(cb, groups, og, L)
                if need_cols:
                    gcols = torch.matmul(k.view(cb, groups, og, cg * kk).transpose(-1, -2), gy)
                    gxc = unpatch(gcols.view(cb, in_ch, kk, ho, wo), (h, w), g)
                    del gcols
                if need_kgrad:
                    cols = patches(xc, g).view(cb, groups, cg * kk, L)
                    gkern = torch.matmul(gy, cols.transpose(-1, -2)).view(cb, out_ch * cg, kk)  # per-example dL/dK
                    del cols
            if need_x:
                gx = _put(gx, b0, b1, scale_channels(gxc, None if channel is None else channel[b0:b1]))
            if need_c:
                gc = _put(gc, b0, b1, (gxc * xb).sum(dim=(2, 3)))
            if need_kgrad:
                if spatial is not None:
                    if need_s:
                        gs = _put(gs, b0, b1, (gkern * a).sum(dim=1).view(cb, kh, kw))
                    gkern = gkern * sb.reshape(cb, 1, kk)
                ga = gkern.reshape(cb, -1)
                if need_k:
                    gk = _put(gk, b0, b1, ga @ weight.reshape(n, -1).t())
                if need_w:
                    if kernel is not None:
                        gw.addmm_(kb.t(), ga)
                    else:
                        gw[0] += ga.sum(dim=0)
        return gx, None if gw is None else gw.view_as(weight), gc, gs, gk, None, None, None


def _fused(x, weight, channel, filter, spatial, kernel, bias, stride, padding, dilation, groups,
           use_conv: bool) -> Tensor:
    g = conv_geometry(x, weight, stride, padding, dilation)
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        # The Function writes into preallocated outputs (no autocasting there): run it in the
        # autocast dtype on inputs cast to it; the casts' backward restores parameter dtypes.
        dtype = torch.get_autocast_dtype(device_type)
        cast = [None if t is None else t.to(dtype) for t in (x, weight, channel, spatial, kernel)]
        with torch.autocast(device_type, enabled=False):
            out = _PerExampleConv.apply(cast[0].contiguous(), *cast[1:], g, groups, use_conv)
    else:
        out = _PerExampleConv.apply(x.contiguous(), weight, channel, spatial, kernel, g, groups, use_conv)
    return finish(out, filter, bias, kernel)


@register_strategy("fused", exportable=False)
def fused_conv(x, weight, channel, filter, spatial, kernel, bias, stride, padding, dilation, groups) -> Tensor:
    """Custom autograd Function; inner kernel: one grouped conv per chunk."""
    return _fused(x, weight, channel, filter, spatial, kernel, bias, stride, padding, dilation, groups, True)


@register_strategy("fused_bmm", exportable=False)
def fused_bmm_conv(x, weight, channel, filter, spatial, kernel, bias, stride, padding, dilation, groups) -> Tensor:
    """``fused`` always with the patches + batched-matmul inner kernel."""
    return _fused(x, weight, channel, filter, spatial, kernel, bias, stride, padding, dilation, groups, False)


# ---------------------------------------------------------------------------- compiled
_COMPILED: dict[str, object] = {}


@register_strategy("compiled", exportable=True)
def compiled_conv(x, weight, channel, filter, spatial, kernel, bias, stride, padding, dilation, groups) -> Tensor:
    """``bmm`` through ``torch.compile`` (compiled lazily; recompiles per shape)."""
    fn = _COMPILED.get("bmm")
    if fn is None:
        fn = _COMPILED["bmm"] = torch.compile(bmm_conv, dynamic=False)
    return fn(x, weight, channel, filter, spatial, kernel, bias, stride, padding, dilation, groups)
