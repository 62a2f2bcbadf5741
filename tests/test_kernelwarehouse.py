"""KernelWarehouse (odconv.layers.kernelwarehouse) against the plain restatement of the
official semantics (tests/reference_kw.py): the warehouse plan, outputs and gradients (input,
cells, every attention parameter, bias) in train and eval mode at temperatures 1, 0.3 and 0
with every cell-conv algorithm (``chunked``, ``fused``: one example per chunk),
batch-1 training, parameter counts by hand, state-dict names, and the errors."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from torch import nn

from odconv.layers.kernelwarehouse import (
    KernelWarehouseManager,
    KWConv2d,
    linear_warehouse_temperature,
    set_warehouse_temperature,
    to_official_state_dict,
)
from odconv.ops import cell_conv
from odconv.ops.primitives import conv_output_hw
from tests.reference_kw import WarehousePlan, plan_warehouse, reference_kw_conv

# (in, out, k, stride, padding, dilation, groups, layer name)
RESNET_LIKE = [(4, 4, 3, 1, 1, 1, 1, "stage0_layer0_conv0"),        # a block's 3x3
               (4, 8, 3, 2, 1, 1, 1, "stage0_layer1_conv0"),        # the next stage's first 3x3 (handover)
               (4, 8, 1, 2, 0, 1, 1, "stage0_layer1_conv1")]        # its 1x1 downsample
MOBILENET_LIKE = [(4, 8, 1, 1, 0, 1, 1, "stage1_layer0_pwconv0"),
                  (4, 4, 3, 2, 1, 1, 4, "stage1_layer0_dwconv0"),   # depthwise
                  (8, 8, 3, 1, 2, 2, 8, "stage1_layer1_dwconv0"),   # depthwise, dilated
                  (8, 12, 1, 1, 0, 1, 1, "stage1_layer0_pwconv1")]
SMALL = RESNET_LIKE[::2]                                            # the 3x3 and the 1x1
STAGES = {
    "kw1x": (dict(cell_num_ratio=1), RESNET_LIKE, False),
    "kw4x": (dict(cell_num_ratio=4), SMALL, False),
    "kw1/4x": (dict(cell_num_ratio=0.25, cell_inplane_ratio=0.5, cell_outplane_ratio=0.5), SMALL, False),
    "kw1/2x-basis": (dict(cell_num_ratio=0.5, cell_inplane_ratio=0.5, cell_outplane_ratio=0.5,
                          nonlocal_basis_ratio=0.5), SMALL, True),
    "mobilenet-2x": (dict(cell_num_ratio=2, sharing_range=("layer", "pwconv")), MOBILENET_LIKE, True),
    "whole-taps": (dict(cell_num_ratio=1, spatial_partition=False), RESNET_LIKE[:2], True),
}


class Stage(nn.Module):
    """Layers reserved from one manager (owned here, as a model owns it), then stored and allocated."""

    def __init__(self, settings: dict, layers: list, bias: bool = False) -> None:
        super().__init__()
        self.settings = settings
        settings = {"sharing_range": ("layer", "conv"), **settings}
        self.warehouse_manager = KernelWarehouseManager(**settings)
        self.convs = nn.ModuleList(
            self.warehouse_manager.reserve(i, o, k, s, p, d, g, bias=bias, warehouse_name=name)
            for i, o, k, s, p, d, g, name in layers)
        self.warehouse_manager.store()
        self.warehouse_manager.allocate(self)


def build(name: str, seed: int = 0) -> Stage:
    settings, layers, bias = STAGES[name]
    torch.manual_seed(seed)
    stage = Stage(settings, layers, bias).double()
    with torch.no_grad():                          # nothing trivially zero or one: biases, BN affine and stats
        for key, value in stage.state_dict().items():
            if value.dtype.is_floating_point and "temperature" not in key:
                value.copy_(value * 1.5 + 0.1 * torch.randn_like(value)) if "running_var" in key else \
                    value.add_(0.1 * torch.randn_like(value))
    return stage


def plans(stage: Stage) -> dict[int, WarehousePlan]:
    """The reference plan of every warehouse, from the layers' kernel shapes in module order."""
    settings = stage.settings
    by_warehouse: dict[int, list[KWConv2d]] = {}
    for conv in stage.convs:
        by_warehouse.setdefault(conv.warehouse_id, []).append(conv)
    ratios = {k: settings.get(k, 1.0) for k in ("cell_num_ratio", "cell_inplane_ratio", "cell_outplane_ratio")}
    partition = settings.get("spatial_partition", True)
    return {wid: plan_warehouse([c.weight_shape for c in convs], spatial_partition=partition, **ratios)
            for wid, convs in by_warehouse.items()}


def layer_plan(stage: Stage, conv: KWConv2d):
    plan = plans(stage)[conv.warehouse_id]
    index = [c for c in stage.convs if c.warehouse_id == conv.warehouse_id].index(conv)
    return plan, plan.layers[index]


def reference_output(stage: Stage, conv: KWConv2d, x: torch.Tensor, temperature: float, training: bool,
                     running: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    _, plan = layer_plan(stage, conv)
    return reference_kw_conv(x, stage.warehouse_manager.weights[conv.warehouse_id],
                             dict(conv.attention.named_parameters()), *running, plan, conv.weight_shape, temperature,
                             training, conv.stride, conv.padding, conv.dilation, conv.groups, conv.bias)


def outputs_and_grads(fn, x: torch.Tensor, params: list[torch.Tensor], weight: torch.Tensor):
    x = x.clone().requires_grad_(True)
    y = fn(x)
    grads = torch.autograd.grad((y * weight).sum(), [x, *params], allow_unused=True)
    return y.detach(), grads


@pytest.mark.parametrize("name", list(STAGES))
def test_the_warehouse_plan_matches_the_reference(name):
    stage = build(name)
    for wid, plan in plans(stage).items():
        assert tuple(stage.warehouse_manager.weights[wid].shape) == plan.cell_shape
    for conv in stage.convs:
        _, lp = layer_plan(stage, conv)
        grid = (conv.out_blocks, conv.in_blocks, conv.spatial_blocks)
        assert grid == (lp.out_blocks, lp.in_blocks, lp.spatial_blocks)
        assert (conv.start_cell, conv.end_cell) == (lp.start, lp.end)
        assert conv.attention.initial_assignment.argmax(dim=1).tolist() == lp.assigned


@pytest.mark.parametrize("strategy", ["grouped", "chunked", "fused"])
@pytest.mark.parametrize("temperature", [1.0, 0.3, 0.0])
@pytest.mark.parametrize("name", list(STAGES))
def test_outputs_and_gradients_match_the_reference(name, temperature, strategy, monkeypatch):
    stage = build(name)
    set_warehouse_temperature(stage, temperature)
    for conv in stage.convs:
        conv.strategy = strategy
    monkeypatch.setattr(cell_conv, "CELL_CHUNK_ELEMENTS", 1)     # chunked, fused: one example per chunk
    gen = torch.Generator().manual_seed(1)
    for training in (True, False):
        stage.train(training)
        for conv in stage.convs:
            x = torch.randn(2, conv.in_planes, 6, 6, generator=gen, dtype=torch.float64)
            params = [stage.warehouse_manager.weights[conv.warehouse_id], *conv.attention.parameters()]
            params += [conv.bias] if conv.bias is not None else []
            bn = conv.attention.norm1
            running = (bn.running_mean.clone(), bn.running_var.clone())
            out_hw = conv_output_hw((6, 6), conv.kernel_size, conv.stride, conv.padding, conv.dilation)
            weight = torch.randn(2, conv.out_planes, *out_hw, generator=gen, dtype=torch.float64)
            reference = partial(reference_output, stage, conv, temperature=temperature, training=training,
                                running=running)
            y_ref, g_ref = outputs_and_grads(reference, x, params, weight)
            y, g = outputs_and_grads(conv, x, params, weight)
            torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-10)
            for got, want in zip(g, g_ref):
                if want is None:                   # e.g. the attention at temperature 1 (fully one-hot)
                    assert got is None or got.abs().max() == 0
                else:
                    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
            if training:                           # the BatchNorm statistics moved as BatchNorm1d moves them
                z = conv.attention.fc1(x.mean(dim=(2, 3)))
                expected = 0.9 * running[0] + 0.1 * z.mean(dim=0)
                torch.testing.assert_close(bn.running_mean, expected.detach(), rtol=0, atol=1e-12)


def test_batch_size_one_trains_with_running_statistics():
    stage = build("kw1/2x-basis")
    set_warehouse_temperature(stage, 0.3)
    conv = stage.convs[1]
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64)
    stats = {k: v.clone() for k, v in stage.state_dict().items() if "running" in k}
    stage.eval()
    y_eval = conv(x).detach()
    stage.train()
    optimizer = torch.optim.SGD(stage.parameters(), lr=0.1)
    y = conv(x)
    torch.testing.assert_close(y, y_eval, rtol=0, atol=0)
    running = (conv.attention.norm1.running_mean, conv.attention.norm1.running_var)
    torch.testing.assert_close(y.detach(), reference_output(stage, conv, x, 0.3, True, running).detach(),
                               rtol=0, atol=1e-10)
    y.square().mean().backward()
    before = stage.warehouse_manager.weights[0].detach().clone()
    optimizer.step()
    assert not torch.equal(before, stage.warehouse_manager.weights[0])
    assert all(torch.equal(v, stage.state_dict()[k]) for k, v in stats.items())


def test_temperature_one_assembles_each_layer_from_its_own_cells():
    stage = build("kw1x")
    set_warehouse_temperature(stage, 1.0)
    cells = stage.warehouse_manager.weights[0]            # (29, 4, 4, 1, 1): 9 + 18 + 2 mixtures
    down = stage.convs[2]                                 # 4 -> 8 1x1: two output blocks, cells 27 and 28
    kernel = down.kernels(torch.randn(2, 4, 5, 5, dtype=torch.float64))
    assert (down.start_cell, down.end_cell) == (27, 29)
    torch.testing.assert_close(kernel[1], torch.cat([cells[27], cells[28]]), rtol=0, atol=0)
    first = stage.convs[0].kernels(torch.randn(1, 4, 5, 5, dtype=torch.float64))[0]
    for tap in range(9):                                  # 4 -> 4 3x3: cell t is tap t (row-major)
        torch.testing.assert_close(first[:, :, tap // 3, tap % 3], cells[tap, :, :, 0, 0], rtol=0, atol=0)


def test_parameter_count_of_a_small_warehouse_by_hand():
    torch.manual_seed(0)
    stage = Stage({"cell_num_ratio": 1}, [(8, 8, 3, 1, 1, 1, 1, "stage0_layer0_conv0"),
                                          (8, 16, 3, 2, 1, 1, 1, "stage0_layer1_conv0"),
                                          (8, 16, 1, 2, 0, 1, 1, "stage0_layer1_conv1")])
    # cells 8x8 (gcd of outputs 8, of inputs 8), 1x1 taps; mixtures 1*1*9 + 2*1*9 + 2*1*1 = 29 cells
    warehouse = 29 * 8 * 8
    # attention per layer: hidden max(int(8/16), 16) = 16; fc1 8*16, BN 2*16, fc2 16 -> (29 + 1) * m with bias
    attention = sum(8 * 16 + 2 * 16 + 16 * 30 * m + 30 * m for m in (9, 18, 2))
    assert (warehouse, attention) == (1856, 15270)
    assert sum(p.numel() for p in stage.parameters()) == 17126


def test_kw4x_cell_count_and_init_scale():
    torch.manual_seed(0)
    stage = Stage({"cell_num_ratio": 4}, [(64, 64, 3, 1, 1, 1, 1, "stage0_layer0_conv0")])
    cells = stage.warehouse_manager.weights[0]
    assert tuple(cells.shape) == (36, 64, 64, 1, 1)
    # the official init: Kaiming normal, fan_out = cells * co = 36 * 64, over the layer's cells
    assert abs(cells.std().item() / (2 / (36 * 64)) ** 0.5 - 1) < 0.02


def test_state_dict_has_the_official_names_and_loads_without_temperature():
    stage = Stage({"cell_num_ratio": 1, "nonlocal_basis_ratio": 0.5}, RESNET_LIKE[:2], bias=True)
    keys = list(stage.state_dict())
    assert keys == [
        "warehouse_manager.weights.0",
        "convs.0.bias", "convs.0.attention.basis_bias", "convs.0.attention.temperature",
        "convs.0.attention.fc1.weight", "convs.0.attention.norm1.weight", "convs.0.attention.norm1.bias",
        "convs.0.attention.norm1.running_mean", "convs.0.attention.norm1.running_var",
        "convs.0.attention.norm1.num_batches_tracked", "convs.0.attention.fc2.weight", "convs.0.attention.fc3.weight",
        "convs.1.bias", "convs.1.attention.basis_bias", "convs.1.attention.temperature",
        "convs.1.attention.fc1.weight", "convs.1.attention.norm1.weight", "convs.1.attention.norm1.bias",
        "convs.1.attention.norm1.running_mean", "convs.1.attention.norm1.running_var",
        "convs.1.attention.norm1.num_batches_tracked", "convs.1.attention.fc2.weight", "convs.1.attention.fc3.weight"]
    set_warehouse_temperature(stage, 0.5)
    official = to_official_state_dict(stage.state_dict())
    assert not any("temperature" in k for k in official)
    other = Stage({"cell_num_ratio": 1, "nonlocal_basis_ratio": 0.5}, RESNET_LIKE[:2], bias=True)
    other.load_state_dict(official, strict=True)
    assert other.convs[0].attention.temperature.item() == 0.0      # kept its own (the official starts at 0)


def test_sharing_range_names_the_warehouses():
    manager = KernelWarehouseManager(sharing_range="layer_conv")
    assert manager.sharing_range == ("layer", "conv")
    assert manager.warehouse_key("stage2_layer1_conv0") == "stage2_layer_conv"
    assert manager.warehouse_key("stage2_layer1_dwconv0") == "stage2_layer_dwconv0"
    a = manager.reserve(8, 8, 3, padding=1, warehouse_name="stage0_layer0_conv0")
    b = manager.reserve(8, 8, 3, padding=1, warehouse_name="stage1_layer0_conv1")
    c = manager.reserve(8, 8, 3, padding=1, warehouse_name="stage0_layer1_conv1")
    plain = manager.reserve(8, 8, 1, warehouse_name="stage0_layer1_conv2", enabled=False)
    assert (a.warehouse_id, b.warehouse_id, c.warehouse_id) == (0, 1, 0)
    assert manager.warehouse_names == ["stage0_layer_conv", "stage1_layer_conv"]
    assert type(plain) is nn.Conv2d and plain.bias is not None


def test_errors():
    manager = KernelWarehouseManager()
    conv = manager.reserve(8, 8, 3, padding=1)
    with pytest.raises(RuntimeError, match="store"):
        conv(torch.randn(2, 8, 4, 4))
    with pytest.raises(RuntimeError, match="store"):
        manager.allocate(nn.Sequential(conv))
    manager.store()
    with pytest.raises(RuntimeError, match="after store"):
        manager.reserve(8, 8, 3)
    with pytest.raises(ValueError, match="claim 0 of"):            # a reserved layer missing from the model
        manager.allocate(nn.Sequential())
    uneven = KernelWarehouseManager(cell_num_ratio=0.5)           # 9 mixtures do not split in halves
    layer = uneven.reserve(8, 8, 3, padding=1)
    uneven.store()
    with pytest.raises(ValueError, match="split"):
        uneven.allocate(nn.Sequential(layer))
    with pytest.raises(ValueError, match="one per warehouse"):
        other = KernelWarehouseManager(cell_num_ratio=(1, 2, 4))
        other.reserve(8, 8, 3)
        other.store()
    stage = Stage({}, RESNET_LIKE[:1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        stage.convs[0].update_temperature(30.0)


def test_temperature_schedule_and_mac_breakdown():
    assert [linear_warehouse_temperature(e, epochs=20) for e in (0, 5, 20, 30)] == [1.0, 0.75, 0.0, 0.0]
    stage = Stage({}, RESNET_LIKE[:1])
    parts = stage.convs[0].mac_breakdown((6, 6))
    assert parts["conv"] == 4 * 4 * 9 * 36
    assert parts["aggregation"] == 9 * 9 * 16           # 9 mixtures x 9 cells x 16 elements per cell
    assert parts["attention"] == 4 * 36 + 4 * 16 + 16 * 9 * 10


def test_a_deep_copy_uses_its_own_cells():
    """An EMA or checkpoint copy of a model: its layers must read the copy's warehouse, not the original's."""
    stage = build("kw1x")
    clone = copy.deepcopy(stage)
    assert all(c.manager is clone.warehouse_manager for c in clone.convs)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    stage.eval(), clone.eval()
    with torch.no_grad():
        clone.warehouse_manager.weights[0].mul_(2.0)
    torch.testing.assert_close(clone.convs[0](x), 2.0 * stage.convs[0](x), rtol=0, atol=1e-12)
