"""The cell conv (odconv.ops.cell_conv): its two algorithms against each other and against
per-example ``F.conv2d`` with kernels placed cell by cell in Python; the ``auto`` choice; the
strategy setting of KW layers; a missing temperature in a state dict."""
# (the layer against the plain official restatement, with every algorithm: tests/test_kernelwarehouse.py)

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import odconv
from odconv.layers.kernelwarehouse import KernelWarehouseManager, warehouse_layers
from odconv.ops import cell_conv
from odconv.ops.cell_conv import assemble_kernels, auto_cell_strategy, cell_conv2d, kernel_grad_to_cells


def placed_kernel(mix_b, cells, grid, kernel_shape):
    """One example's kernel, every mixture written at its block by hand."""
    gs, go, gi = grid
    co, ci, ckh, ckw = cells.shape[1:]
    out_ch, cg, kh, kw = kernel_shape
    k = torch.zeros(kernel_shape, dtype=cells.dtype)
    for s in range(gs):
        for o in range(go):
            for i in range(gi):
                cell = sum(mix_b[(s * go + o) * gi + i, c] * cells[c] for c in range(cells.shape[0]))
                # spatial block s: elements s*ckh*ckw ... of the flattened taps
                taps = k[o * co:(o + 1) * co, i * ci:(i + 1) * ci].reshape(co, ci, kh * kw)
                taps[:, :, s * ckh * ckw:(s + 1) * ckh * ckw] = cell.reshape(co, ci, ckh * ckw)
    return k


CASES = {  # grid (gs, go, gi), cells (n, co, ci, ckh, ckw), kernel (O, Cg, kh, kw), groups
    "3x3 taps as cells": ((9, 2, 3), (5, 2, 2, 1, 1), (4, 6, 3, 3), 1),
    "whole taps": ((1, 2, 1), (3, 3, 4, 3, 3), (6, 4, 3, 3), 1),
    "grouped 1x1": ((1, 2, 1), (4, 2, 3, 1, 1), (4, 3, 1, 1), 2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_both_algorithms_equal_per_example_convs_with_gradients(case, monkeypatch):
    grid, cell_shape, kernel_shape, groups = CASES[case]
    gen = torch.Generator().manual_seed(0)
    batch, m = 3, grid[0] * grid[1] * grid[2]
    x = torch.randn(batch, kernel_shape[1] * groups, 5, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    mix = torch.randn(batch, m, cell_shape[0], generator=gen, dtype=torch.float64, requires_grad=True)
    cells = torch.randn(*cell_shape, generator=gen, dtype=torch.float64, requires_grad=True)
    pad = kernel_shape[-1] // 2

    def explicit():
        return torch.cat([F.conv2d(x[b:b + 1], placed_kernel(mix[b], cells, grid, kernel_shape), None, 2, pad, 1,
                                   groups) for b in range(batch)])

    weight = torch.randn(explicit().shape, generator=gen, dtype=torch.float64)
    want = explicit()
    want_grads = torch.autograd.grad((want * weight).sum(), (x, mix, cells))
    chunks = (1, 2 * kernel_shape[0] * kernel_shape[1] * 9, 1 << 30)     # one example, two, the whole batch
    for strategy, chunk in (("grouped", None), *((s, c) for s in ("chunked", "fused") for c in chunks)):
        if chunk is not None:
            monkeypatch.setattr(cell_conv, "CELL_CHUNK_ELEMENTS", chunk)
        got = cell_conv2d(x, mix, cells, grid, kernel_shape, 2, pad, 1, groups, strategy)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
        for g, w in zip(torch.autograd.grad((got * weight).sum(), (x, mix, cells)), want_grads):
            torch.testing.assert_close(g, w, rtol=0, atol=1e-11)
    torch.testing.assert_close(assemble_kernels(mix, cells, grid, kernel_shape)[1],
                               placed_kernel(mix[1], cells, grid, kernel_shape), rtol=0, atol=1e-12)


def test_kernel_gradients_map_back_to_the_cells_they_came_from():
    grid, cell_shape, kernel_shape, _ = CASES["3x3 taps as cells"]
    cells = torch.randn(*cell_shape, dtype=torch.float64)
    mix = torch.randn(2, 54, cell_shape[0], dtype=torch.float64)
    # the map is the transpose of assembly: <assemble(mix), G> == <mix cells, kernel_grad_to_cells(G)>
    grad = torch.randn(2, *kernel_shape, dtype=torch.float64)
    lhs = (assemble_kernels(mix, cells, grid, kernel_shape) * grad).sum()
    mixed = mix.reshape(-1, cell_shape[0]) @ cells.reshape(cell_shape[0], -1)
    rhs = (mixed * kernel_grad_to_cells(grad, cells, grid)).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)


def test_fused_runs_under_bf16_autocast_with_fp32_parameter_gradients(monkeypatch):
    monkeypatch.setattr(cell_conv, "CELL_CHUNK_ELEMENTS", 1)
    grid, cell_shape, kernel_shape, _ = CASES["3x3 taps as cells"]
    x = torch.randn(2, 6, 5, 5)
    mix = torch.randn(2, 54, 5, requires_grad=True)
    cells = torch.randn(*cell_shape, requires_grad=True)
    outs = {}
    for strategy in ("grouped", "chunked", "fused"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs[strategy] = cell_conv2d(x, mix, cells, grid, kernel_shape, 1, 1, 1, 1, strategy)
        assert outs[strategy].dtype == torch.bfloat16
    for strategy in ("chunked", "fused"):
        torch.testing.assert_close(outs[strategy].float(), outs["grouped"].float(), rtol=2e-2, atol=5e-2)
        cells.grad = mix.grad = None
        outs[strategy].float().sum().backward()
        assert cells.grad.dtype == torch.float32 and mix.grad.dtype == torch.float32


def test_auto_chunks_only_large_training_steps():
    assert auto_cell_strategy(128, (64, 64, 3, 3), training=True) == "chunked"
    assert auto_cell_strategy(128, (64, 64, 3, 3), training=False) == "grouped"
    assert auto_cell_strategy(2, (8, 8, 3, 3), training=True) == "grouped"
    with pytest.raises(ValueError, match="cell conv strategy 'bmm'; valid: grouped, chunked, fused"):
        cell_conv2d(torch.zeros(1, 4, 3, 3), torch.zeros(1, 9, 2), torch.zeros(2, 4, 4, 1, 1), (9, 1, 1),
                    (4, 4, 3, 3), strategy="bmm")


def test_set_strategy_reaches_the_kw_layers_and_the_model_still_agrees():
    torch.manual_seed(0)
    model = odconv.build_model("cifar_resnet18", num_classes=10, conv="kw1x", width=0.125).double()
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    model.train()
    want = model(x)
    layers = warehouse_layers(model)
    assert odconv.set_strategy(model, "fused") >= len(layers)
    assert {layer.strategy for layer in layers} == {"fused"}
    torch.testing.assert_close(model(x), want, rtol=0, atol=1e-10)
    assert odconv.set_strategy(model, "chunked") == len(layers)      # a KW-only name leaves ODConv layers alone
    torch.testing.assert_close(model(x), want, rtol=0, atol=1e-10)
    odconv.set_strategy(model, "fused")
    odconv.set_strategy(model, "bmm")                      # an ODConv-only strategy leaves KW layers alone
    assert {layer.strategy for layer in layers} == {"fused"}
    with odconv.use_strategy("grouped"):
        assert layers[0].chosen_strategy(128) == "grouped"
        with odconv.use_strategy("bmm"):
            assert layers[0].chosen_strategy(128) == "fused"
    odconv.set_strategy(model, "auto")
    assert layers[-1].chosen_strategy(128) == "chunked" and layers[-1].chosen_strategy(1) == "grouped"
    with torch.no_grad():
        assert layers[-1].chosen_strategy(128) == "grouped"


def test_a_state_dict_without_temperature_loads_into_a_copy_keeping_the_copys_value():
    manager = KernelWarehouseManager(cell_num_ratio=1)
    holder = torch.nn.Module()
    holder.warehouse_manager = manager
    holder.conv = manager.reserve(4, 4, 3, padding=1, warehouse_name="stage0_layer0_conv0")
    manager.store()
    manager.allocate(holder)
    clone = copy.deepcopy(holder)
    clone.conv.update_temperature(0.25)
    holder.conv.update_temperature(0.75)
    state = {k: v for k, v in holder.state_dict().items() if not k.endswith("temperature")}
    assert clone.load_state_dict(state, strict=True).missing_keys == []
    assert clone.conv.attention.temperature.item() == 0.25 and holder.conv.attention.temperature.item() == 0.75
    assert "conv.attention.temperature" not in state


def test_an_unknown_strategy_names_both_lists():
    model = odconv.build_model("cifar_resnet18", num_classes=10, conv="kw1x", width=0.125)
    with pytest.raises(ValueError, match=r"unknown strategy 'chunky'; valid: auto, bmm.*; KernelWarehouse layers: "
                                         r"auto, grouped, chunked, fused"):
        odconv.set_strategy(model, "chunky")
