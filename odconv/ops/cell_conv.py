"""Convolution with per-example kernels assembled from kernel cells (KernelWarehouse).

Every example b's kernel (O, Cg, kh, kw) is cut into m = gs * go * gi cells ("mixtures"):
``go = O / co`` output blocks, ``gi = Cg / ci`` input blocks, ``gs = (kh / ckh) * (kw / ckw)``
spatial blocks; mixture j is ``sum_c mix[b, j, c] * cells[c]`` with ``cells`` (n, co, ci, ckh, ckw).
Mixture j = ((s * go) + o) * gi + i sits at output block o, input block i, spatial block s
(row-major over the taps).

Three exact algorithms, the same arithmetic in another order:

* ``grouped``: every example's kernel at once, one conv with ``groups = g * B``, plain
  autograd (the official code's algorithm). Autograd keeps the B kernels for backward:
  B x the static kernels' memory.
* ``chunked``: the kernels assembled at once and kept for backward as ``grouped``, the convs
  run a chunk of examples at a time (chunks of at most :data:`CELL_CHUNK_ELEMENTS` kernel
  elements), the kernel gradients reduced into the gradients of ``mix`` and ``cells`` with
  two whole-batch matmuls. A grouped conv over a large batch of large kernels is slow on CPUs;
  this is what ``auto`` trains with (:func:`auto_cell_strategy`).
* ``fused``: as ``chunked``, but backward rebuilds each chunk's kernels, so only the inputs are
  saved (the memory floor); the rebuild costs one more assembly, which is dear where the
  warehouse has many cells (kw4x) and cheap where it has few.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .primitives import pair

CELL_STRATEGIES = ("grouped", "chunked", "fused")
#: Largest number of elements one chunk's per-example kernels may take in ``fused`` (as
#: :data:`odconv.strategies.FUSED_CHUNK_ELEMENTS`, for the same cache reason).
CELL_CHUNK_ELEMENTS = 1 << 19
# (B, gs, go, gi, co, ci, ckh, ckw) -> (B, go, co, gi, ci, gs, ckh, ckw): output channel
# o*co + r, input channel i*ci + s, spatial block gs.
#: ``auto`` chunks a training step whose batch of kernels holds more elements than this. On the
#: 2-core Xeon (train step x static; grouped / chunked / fused): cifar_resnet18 kw1x, batch 128,
#: width 0.125: 2.51 / 2.55 / 2.34, width 0.5: 6.61 / 4.51 / 4.11; ImageNet resnet18 kw4x, batch
#: 32 at 112 x 112: 11.40 / 8.71 / 17.15.
CHUNK_ABOVE_ELEMENTS = 1 << 21
_TO_KERNEL = (0, 2, 4, 3, 5, 1, 6, 7)
_FROM_KERNEL = (0, 5, 1, 3, 2, 4, 6, 7)


def assemble_kernels(mix: Tensor, cells: Tensor, grid: Sequence[int], kernel_shape: Sequence[int]) -> Tensor:
    """Per-example kernels (B, O, Cg, kh, kw) from ``mix`` (B, m, n) and ``cells``
    (n, co, ci, ckh, ckw); ``grid`` = (gs, go, gi), ``kernel_shape`` = (O, Cg, kh, kw)."""
    batch, n = mix.shape[0], cells.shape[0]
    mixed = torch.mm(mix.reshape(-1, n), cells.reshape(n, -1))
    mixed = mixed.view(batch, *grid, *cells.shape[1:])
    return mixed.permute(*_TO_KERNEL).reshape(batch, *kernel_shape)


def kernel_grad_to_cells(grad_kernels: Tensor, cells: Tensor, grid: Sequence[int]) -> Tensor:
    """Per-example kernel gradients (B, O, Cg, kh, kw) as per-mixture gradients (B * m, co*ci*ckh*ckw)."""
    batch = grad_kernels.shape[0]
    gs, go, gi = grid
    co, ci, ckh, ckw = cells.shape[1:]
    blocks = grad_kernels.reshape(batch, go, co, gi, ci, gs, ckh, ckw)   # the inverse of the reshape above
    return blocks.permute(*_FROM_KERNEL).reshape(batch * gs * go * gi, -1)


def _reduce_kernel_grad(grad_kernels: Tensor, mix: Tensor, cells: Tensor, grid: Sequence[int],
                       gmix: Optional[Tensor], gcells: Optional[Tensor]) -> None:
    """Kernel gradients (b, O, Cg, kh, kw) into ``gmix`` (b, m, n) (written) and ``gcells``
    (n, cell elements) (accumulated), either None when not needed."""
    n = cells.shape[0]
    gmixed = kernel_grad_to_cells(grad_kernels, cells, grid)                  # (b * m, cell elements)
    if gmix is not None:
        gmix.copy_((gmixed @ cells.reshape(n, -1).t()).view_as(gmix))
    if gcells is not None:
        gcells.addmm_(mix.reshape(-1, n).t(), gmixed)


class _ChunkedCellConv(torch.autograd.Function):
    """y_b = conv(x_b, assemble(mix_b, cells)), one conv per chunk of examples. With
    ``keep_kernels`` the kernels are assembled once and saved for backward; else backward
    rebuilds each chunk's kernels (only the inputs are saved)."""

    @staticmethod
    def forward(ctx, x, mix, cells, grid, kernel_shape, stride, padding, dilation, groups, step, keep_kernels):
        batch, in_ch, h, w = x.shape
        out_ch = kernel_shape[0]
        kernels = assemble_kernels(mix, cells, grid, kernel_shape) if keep_kernels else None
        outs = []
        for b0 in range(0, batch, step):
            cb = min(batch, b0 + step) - b0
            k = kernels[b0:b0 + cb] if keep_kernels else assemble_kernels(mix[b0:b0 + cb], cells, grid, kernel_shape)
            y = F.conv2d(x[b0:b0 + cb].reshape(1, cb * in_ch, h, w), k.reshape(cb * out_ch, *kernel_shape[1:]),
                         None, stride, padding, dilation, groups * cb)
            outs.append(y.view(cb, out_ch, *y.shape[-2:]))
        ctx.conv = (grid, tuple(kernel_shape), stride, padding, dilation, groups, step, keep_kernels)
        ctx.save_for_backward(x, mix, cells, kernels)
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    @staticmethod
    def backward(ctx, grad_out):
        x, mix, cells, kernels = ctx.saved_tensors
        grid, kernel_shape, stride, padding, dilation, groups, step, keep_kernels = ctx.conv
        need_x, need_mix, need_cells = ctx.needs_input_grad[:3]
        batch, in_ch, h, w = x.shape
        out_ch, n = kernel_shape[0], cells.shape[0]
        grad_out = grad_out.contiguous()
        gx = torch.empty_like(x) if need_x else None
        gmix = torch.empty_like(mix) if need_mix else None
        gcells = torch.zeros(n, cells[0].numel(), dtype=cells.dtype, device=cells.device) if need_cells else None
        need_kernel = need_mix or need_cells
        # Kept kernels: their gradients are kept too, then reduced with two whole-batch matmuls.
        gkernels = torch.empty_like(kernels) if keep_kernels and need_kernel else None
        for b0 in range(0, batch, step):
            cb = min(batch, b0 + step) - b0
            k = kernels[b0:b0 + cb] if keep_kernels else assemble_kernels(mix[b0:b0 + cb], cells, grid, kernel_shape)
            gxc, gk, _ = torch.ops.aten.convolution_backward(
                grad_out[b0:b0 + cb].reshape(1, cb * out_ch, *grad_out.shape[-2:]),
                x[b0:b0 + cb].reshape(1, cb * in_ch, h, w), k.reshape(cb * out_ch, *kernel_shape[1:]), None,
                list(stride), list(padding), list(dilation), False, [0, 0], groups * cb,
                [need_x, need_kernel, False])
            if need_x:
                gx[b0:b0 + cb] = gxc.view(cb, in_ch, h, w)
            if gkernels is not None:
                gkernels[b0:b0 + cb] = gk.view(cb, *kernel_shape)
            elif need_kernel:
                _reduce_kernel_grad(gk.view(cb, *kernel_shape), mix[b0:b0 + cb], cells, grid,
                                    None if gmix is None else gmix[b0:b0 + cb], gcells)
        if gkernels is not None:
            _reduce_kernel_grad(gkernels, mix, cells, grid, gmix, gcells)
        return (gx, gmix, None if gcells is None else gcells.view_as(cells),
                None, None, None, None, None, None, None, None)


def auto_cell_strategy(batch: int, kernel_shape: Sequence[int], training: bool) -> str:
    """``chunked`` for a training step whose batch of kernels exceeds :data:`CHUNK_ABOVE_ELEMENTS`,
    else ``grouped``."""
    per_example = 1
    for s in kernel_shape:
        per_example *= s
    return "chunked" if training and batch * per_example > CHUNK_ABOVE_ELEMENTS else "grouped"


def cell_conv2d(x: Tensor, mix: Tensor, cells: Tensor, grid: Sequence[int], kernel_shape: Sequence[int],
                stride=1, padding=0, dilation=1, groups: int = 1, strategy: str = "grouped") -> Tensor:
    """x (B, I, H, W) convolved with every example's kernel assembled from ``cells``
    (:func:`assemble_kernels`): (B, O, H', W'). ``strategy``: one of :data:`CELL_STRATEGIES`."""
    batch, in_ch, h, w = x.shape
    stride, padding, dilation = pair(stride), pair(padding), pair(dilation)
    if strategy == "grouped":
        k = assemble_kernels(mix, cells, grid, kernel_shape).reshape(batch * kernel_shape[0], *kernel_shape[1:])
        y = F.conv2d(x.reshape(1, batch * in_ch, h, w), k, None, stride, padding, dilation, groups * batch)
        return y.view(batch, kernel_shape[0], *y.shape[-2:])
    if strategy in ("chunked", "fused"):
        per_example = 1
        for s in kernel_shape:
            per_example *= s
        step = max(1, min(batch, CELL_CHUNK_ELEMENTS // per_example))
        args = (tuple(grid), tuple(kernel_shape), stride, padding, dilation, groups, step, strategy == "chunked")
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):
            # As odconv.strategies' fused: the Function runs in the autocast dtype on inputs
            # cast to it; the casts' backward restores the parameters' dtypes.
            dtype = torch.get_autocast_dtype(device_type)
            with torch.autocast(device_type, enabled=False):
                return _ChunkedCellConv.apply(x.to(dtype).contiguous(), mix.to(dtype), cells.to(dtype), *args)
        return _ChunkedCellConv.apply(x.contiguous(), mix, cells, *args)
    raise ValueError(f"cell conv strategy {strategy!r}; valid: {', '.join(CELL_STRATEGIES)}")
