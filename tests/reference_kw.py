"""KernelWarehouse (Li & Yao, ICML 2024; github.com/OSVAI/KernelWarehouse) restated plainly for
the tests of ``odconv.layers.kernelwarehouse``.

Deliberately naive, from the official semantics: the warehouse plan (cell shape, cell count,
each layer's cells and initial one-hot assignment) computed with loops over layers and
mixtures; the attention with explicit batch statistics; every example's kernel assembled
mixture by mixture, each mixture a Python sum over the warehouse's cells, placed at its
output block, input block and tap; one ``F.conv2d`` per example. It reads the layer's
parameters (cells, attention weights, running statistics) but none of its derived state.
Test-only; nothing in the package imports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class LayerPlan:
    """One layer's share of its warehouse: grid (go, gi, gs), cells [start, end), and for each
    mixture the cell its initial assignment picks (n: the zero cell)."""

    out_blocks: int
    in_blocks: int
    spatial_blocks: int
    start: int
    end: int
    assigned: list[int]

    @property
    def mixtures(self) -> int:
        return self.out_blocks * self.in_blocks * self.spatial_blocks


@dataclass
class WarehousePlan:
    cell_shape: tuple[int, int, int, int, int]      # (n, co, ci, ckh, ckw)
    layers: list[LayerPlan]


def plan_warehouse(kernel_shapes: list[tuple[int, int, int, int]], cell_num_ratio: float = 1.0,
                   cell_inplane_ratio: float = 1.0, cell_outplane_ratio: float = 1.0,
                   spatial_partition: bool = True) -> WarehousePlan:
    """The plan of one warehouse from its layers' kernel shapes (O, I/g, kh, kw), in the order the
    layers are allocated (the model's module order)."""
    out_gcd, in_gcd = kernel_shapes[0][0], kernel_shapes[0][1]
    for shape in kernel_shapes:
        out_gcd, in_gcd = math.gcd(out_gcd, shape[0]), math.gcd(in_gcd, shape[1])
    co = max(int(out_gcd * cell_outplane_ratio), 1)
    ci = max(int(in_gcd * cell_inplane_ratio), 1)
    ck = (1, 1) if spatial_partition else kernel_shapes[0][2:]
    grids = []
    for o, i, kh, kw in kernel_shapes:
        grids.append((o // co, i // ci, (kh // ck[0]) * (kw // ck[1])))
    total = sum(go * gi * gs for go, gi, gs in grids)
    n = max(int(total * cell_num_ratio), 1)
    layers, start = [], 0
    for go, gi, gs in grids:
        assigned, cell = [], start
        for j in range(go * gi * gs):
            if cell_num_ratio >= 1:
                assigned.append(cell)
                cell += int(cell_num_ratio)
            else:
                k = int(1 / cell_num_ratio)
                if j % k == (j // k) % k:
                    assigned.append(cell)
                    cell += 1
                else:
                    assigned.append(n)
        layers.append(LayerPlan(go, gi, gs, start, cell, assigned))
        start = cell
    assert start == n, f"the layers claim {start} of {n} cells"
    return WarehousePlan((n, co, ci, *ck), layers)


def reference_attention(x: Tensor, p: dict[str, Tensor], running_mean: Tensor, running_var: Tensor, n: int,
                        plan: LayerPlan, temperature: float, training: bool, eps: float = 1e-5) -> Tensor:
    """a[b, j, c] (B, m, n): the weight of cell c in mixture j of example b, row by row.

    ``p``: the attention's parameters by their official names (``fc1.weight``, ``norm1.weight``,
    ``norm1.bias``, ``fc2.weight``, ``fc2.bias`` or ``fc3.weight`` + ``basis_bias``)."""
    batch, m = x.shape[0], plan.mixtures
    pooled = x.mean(dim=(2, 3))
    z = pooled @ p["fc1.weight"].t()
    if training and batch > 1:
        mean, var = z.mean(dim=0), z.var(dim=0, unbiased=False)
    else:                                   # eval mode, and batch 1 in training (the documented rule)
        mean, var = running_mean, running_var
    z = torch.relu((z - mean) / torch.sqrt(var + eps) * p["norm1.weight"] + p["norm1.bias"])
    logits = z @ p["fc2.weight"].t()
    if "fc2.bias" in p:
        logits = logits + p["fc2.bias"]
    examples = []
    for b in range(batch):
        rows = []
        for j in range(m):
            if "fc3.weight" in p:
                row = _cells_from_basis(logits[b], p, n, m, j, plan.start)
            else:
                row = logits[b, j * (n + 1):(j + 1) * (n + 1)]
            onehot = torch.zeros(n + 1, dtype=row.dtype)
            onehot[plan.assigned[j]] = 1.0
            row = (1 - temperature) * row / (row.abs().sum() + 1e-3) + temperature * onehot
            rows.append(row[:n])                                        # the zero cell dropped
        examples.append(torch.stack(rows))
    return torch.stack(examples)


def _cells_from_basis(logits: Tensor, p: dict[str, Tensor], n: int, m: int, j: int, start: int) -> Tensor:
    """Mixture j's n + 1 cell logits when fc2 gives its own cells, a basis and the zero cell."""
    nonlocal_cells, basis = p["fc3.weight"].shape
    local = n - nonlocal_cells
    width = local + basis + 1
    row = logits[j * width:(j + 1) * width]
    mapped = p["fc3.weight"] @ row[local:local + basis]               # the other layers' cells
    cells = []
    for c in range(n + 1):
        if c < start:
            v = mapped[c]
        elif c < start + local:
            v = row[c - start]
        elif c < n:
            v = mapped[c - local]
        else:
            v = row[-1]
        cells.append(v + p["basis_bias"][j * (n + 1) + c])
    return torch.stack(cells)


def reference_kernels(attention: Tensor, cells: Tensor, plan: LayerPlan,
                      weight_shape: tuple[int, int, int, int]) -> list[Tensor]:
    """Every example's kernel (O, I/g, kh, kw), mixture by mixture, each a sum over the cells."""
    n, co, ci, ckh, ckw = cells.shape
    kh, kw = weight_shape[2:]
    kernels = []
    for rows in attention:
        pieces = {}
        for j in range(plan.mixtures):
            s = j // (plan.out_blocks * plan.in_blocks)
            o = (j // plan.in_blocks) % plan.out_blocks
            i = j % plan.in_blocks
            mixed = rows[j][0] * cells[0]
            for c in range(1, n):
                mixed = mixed + rows[j][c] * cells[c]
            pieces[(o, i, s)] = mixed                                   # (co, ci, ckh, ckw)
        kernel_rows = []
        for o in range(plan.out_blocks):
            in_blocks = []
            for i in range(plan.in_blocks):
                if ckh == kh and ckw == kw:                             # one cell holds all the taps
                    in_blocks.append(pieces[(o, i, 0)])
                else:                                                   # one tap per cell, row-major
                    taps = [torch.cat([pieces[(o, i, r * kw + q)] for q in range(kw)], dim=3) for r in range(kh)]
                    in_blocks.append(torch.cat(taps, dim=2))
            kernel_rows.append(torch.cat(in_blocks, dim=1))
        kernels.append(torch.cat(kernel_rows, dim=0))
    return kernels


def reference_kw_conv(x: Tensor, cells: Tensor, attention_params: dict[str, Tensor], running_mean: Tensor,
                      running_var: Tensor, plan: LayerPlan, weight_shape: tuple[int, int, int, int],
                      temperature: float, training: bool, stride=1, padding=0, dilation=1, groups: int = 1,
                      bias: Tensor | None = None) -> Tensor:
    """The KW conv of ``x`` (B, I, H, W): one plain conv per example with its assembled kernel."""
    att = reference_attention(x, attention_params, running_mean, running_var, cells.shape[0], plan, temperature,
                              training)
    kernels = reference_kernels(att, cells, plan, weight_shape)
    outs = [F.conv2d(x[b:b + 1], kernels[b], bias, stride, padding, dilation, groups) for b in range(x.shape[0])]
    return torch.cat(outs, dim=0)
