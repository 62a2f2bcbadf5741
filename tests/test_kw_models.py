"""The ``kw`` conv family in models: the official KernelWarehouse models' parameter counts,
warehouses and state-dict layout (github.com/OSVAI/KernelWarehouse, its ``configs/``), a KW layer
inside a model against the plain restatement (tests/reference_kw.py), KW at small and odd widths,
the temperature schedule and the cost counting."""

from __future__ import annotations

import hashlib
import warnings

import pytest
import torch
from torch import nn

from odconv import build_model, count_params, get_conv_family, make_conv, parse_conv_spec, profile_model
from odconv.kw_family import KWAttentionCostWarning, official_settings
from odconv.layers.kernelwarehouse import KWConv2d, set_warehouse_temperature, to_official_state_dict, warehouse_layers
from tests.reference_kw import plan_warehouse, reference_kw_conv

# build_model(name, num_classes=1000, conv=spec) against the official builders with the official
# configs (kw_resnet18, kw_resnet50, kw_mobilenetv2_100, kw_mobilenetv2_050, counted by running the
# official code). ResNet-18 kw1d4x: the official code gives 4,031,768; its README says 4.08M.
OFFICIAL_PARAMS = {
    ("resnet18", "kw1d4x"): 4_031_768, ("resnet18", "kw1d2x"): 7_431_044, ("resnet18", "kw1x"): 11_932_148,
    ("resnet18", "kw2x"): 23_242_127, ("resnet18", "kw4x"): 45_862_085,
    ("resnet50", "kw1d2x"): 17_638_264, ("resnet50", "kw1x"): 28_052_310, ("resnet50", "kw4x"): 102_015_144,
    ("mobilenetv2_100", "kw1x"): 5_168_146, ("mobilenetv2_100", "kw4x"): 11_379_382,
    ("mobilenetv2_050", "kw1x"): 2_854_522, ("mobilenetv2_050", "kw4x"): 4_648_587,
}

# The official kw_resnet18 (kw1x config) state dict: 259 keys; sha256 of its sorted "key shape" lines.
OFFICIAL_KW1X_RESNET18_KEYS = 259
OFFICIAL_KW1X_RESNET18_SHA256 = "3ed9ce67f3267d982e1174347a9064189f1547e16962e800ac58d07f1b53066d"
OFFICIAL_KW1X_RESNET18_SOME = {     # the warehouses and the first block of layer2 (handover, downsample)
    "warehouse_manager.weights.0": (56, 64, 64, 1, 1), "warehouse_manager.weights.1": (47, 128, 128, 1, 1),
    "warehouse_manager.weights.2": (47, 256, 256, 1, 1), "warehouse_manager.weights.3": (27, 512, 512, 1, 1),
    "layer2.0.conv1.attention.fc1.weight": (16, 64), "layer2.0.conv1.attention.fc2.weight": (1026, 16),
    "layer2.0.conv1.attention.fc2.bias": (1026,), "layer2.0.conv1.attention.norm1.weight": (16,),
    "layer2.0.conv1.attention.norm1.bias": (16,), "layer2.0.conv1.attention.norm1.running_mean": (16,),
    "layer2.0.conv1.attention.norm1.running_var": (16,), "layer2.0.conv1.attention.norm1.num_batches_tracked": (),
    "layer2.0.conv2.attention.fc1.weight": (16, 128), "layer2.0.conv2.attention.fc2.weight": (432, 16),
    "layer2.0.conv2.attention.fc2.bias": (432,),
    "layer2.0.downsample.0.attention.fc1.weight": (16, 64), "layer2.0.downsample.0.attention.fc2.weight": (114, 16),
    "layer2.0.downsample.0.attention.fc2.bias": (114,), "layer2.0.downsample.1.weight": (128,),
}
# The official MobileNetV2 warehouses, in order (kw1x: sharing ("layer", "pwconv"); kw4x: ("layer",)).
OFFICIAL_MBV2_WAREHOUSES = {
    "kw1x": ["stage0_conv0", "stage1_layer_dwconv0", "stage1_layer_pwconv", "stage2_layer_pwconv",
             "stage2_layer_dwconv0", "stage3_layer_pwconv", "stage3_layer_dwconv0", "stage4_layer_pwconv",
             "stage4_layer_dwconv0", "stage5_layer_pwconv", "stage5_layer_dwconv0", "stage6_layer_pwconv",
             "stage6_layer_dwconv0"],
    "kw4x": ["stage0_conv0", "stage1_layer_dwconv0", "stage1_layer_pwconv1", "stage1_layer_pwconv0",
             "stage2_layer_pwconv0", "stage2_layer_dwconv0", "stage2_layer_pwconv1", "stage3_layer_pwconv0",
             "stage3_layer_dwconv0", "stage3_layer_pwconv1", "stage4_layer_pwconv0", "stage4_layer_dwconv0",
             "stage4_layer_pwconv1", "stage5_layer_pwconv0", "stage5_layer_dwconv0", "stage5_layer_pwconv1",
             "stage6_layer_pwconv0", "stage6_layer_dwconv0", "stage6_layer_pwconv1"],
}


def meta_model(name, conv, **kw):
    with torch.device("meta"):
        return build_model(name, num_classes=kw.pop("num_classes", 1000), conv=conv, **kw)


# --------------------------------------------------------------------------- specs


def test_specs_round_trip_and_bad_ones_are_clear():
    for text in ("kw1d4x", "kw1d2x", "kw1x", "kw2x", "kw4x", "kw1d8x"):
        spec = parse_conv_spec(text)
        assert spec.kind == "kw" and str(spec) == text and spec.is_dynamic
    assert parse_conv_spec("kw1d4x").settings == (("divisor", 4),) and parse_conv_spec("kw2x").num == 2
    for bad, match in [("kw1d1x", "d >= 2"), ("kw3d4x", "kw<n>x or kw1d<d>x"), ("kw0x", ">= 1")]:
        with pytest.raises(ValueError, match=match):
            parse_conv_spec(bad)
    with pytest.raises(ValueError, match="build it through odconv.build_model"):
        make_conv("kw1x", 8, 8, 3)


def test_official_settings_per_model_family():
    s = official_settings(parse_conv_spec("kw1d4x"), "resnet", "basic")
    assert (s["cell_num_ratio"], s["cell_inplane_ratio"], s["cell_outplane_ratio"]) == (0.25, 0.5, 0.5)
    assert s["sharing_range"] == ("layer", "conv") and s["reduction"] == 0.0625 and s["nonlocal_basis_ratio"] == 1
    assert official_settings(parse_conv_spec("kw1d2x"), "resnet", "bottleneck")["nonlocal_basis_ratio"] == 0.0625
    assert official_settings(parse_conv_spec("kw1x"), "mobilenetv2")["sharing_range"] == ("layer", "pwconv")
    assert official_settings(parse_conv_spec("kw4x"), "mobilenetv2")["sharing_range"] == ("layer",)


# --------------------------------------------------------------------------- the official models


@pytest.mark.parametrize("name, spec", list(OFFICIAL_PARAMS))
def test_parameter_counts_equal_the_official_models(name, spec):
    with warnings.catch_warnings():
        warnings.simplefilter("error", KWAttentionCostWarning)       # never for the official models
        model = meta_model(name, spec)
    assert count_params(model) == OFFICIAL_PARAMS[(name, spec)]


def test_resnet_warehouses_and_handover_are_the_official_ones():
    r18 = meta_model("resnet18", "kw1x")
    assert r18.warehouse_manager.warehouse_names == [f"stage{i}_layer_conv" for i in range(4)]
    wid = {n: m.warehouse_id for n, m in r18.named_modules() if isinstance(m, KWConv2d)}
    assert wid["layer1.0.conv1"] == 0 and wid["layer2.0.conv1"] == 0 and wid["layer2.0.downsample.0"] == 0
    assert wid["layer2.0.conv2"] == 1 and wid["layer2.1.conv1"] == 1 and wid["layer4.0.conv1"] == 2
    assert isinstance(r18.conv1, nn.Conv2d) and isinstance(r18.fc, nn.Linear)
    r50 = meta_model("resnet50", "kw1x")
    assert type(r50.layer1[0].conv1) is nn.Conv2d                      # official: plain
    assert type(r50.layer1[0].downsample[0]) is nn.Conv2d              # stride-1 downsample: plain
    assert r50.layer2[0].downsample[0].warehouse_id == 0 and r50.layer2[0].conv1.warehouse_id == 0
    assert r50.layer2[0].conv2.warehouse_id == 1 and r50.layer2[0].conv3.warehouse_id == 1


@pytest.mark.parametrize("spec", ["kw1x", "kw4x"])
def test_mobilenetv2_warehouses_are_the_official_ones(spec):
    model = meta_model("mobilenetv2_100", spec)
    assert model.warehouse_manager.warehouse_names == OFFICIAL_MBV2_WAREHOUSES[spec]
    assert isinstance(model.features[0][0], KWConv2d) and isinstance(model.features[18][0], KWConv2d)


def test_resnet18_state_dict_has_the_official_layout_and_loads_strictly():
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=1000, conv="kw1x")
    official = to_official_state_dict(model.state_dict())
    lines = sorted(f"{k} {tuple(v.shape)}" for k, v in official.items())
    assert len(lines) == OFFICIAL_KW1X_RESNET18_KEYS
    assert {k: tuple(official[k].shape) for k in OFFICIAL_KW1X_RESNET18_SOME} == OFFICIAL_KW1X_RESNET18_SOME
    assert hashlib.sha256("\n".join(lines).encode()).hexdigest() == OFFICIAL_KW1X_RESNET18_SHA256
    other = build_model("resnet18", num_classes=1000, conv="kw1x")
    other.load_state_dict({k: v.clone() for k, v in official.items()}, strict=True)   # no temperature keys
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in official.items())


# --------------------------------------------------------------------------- a KW layer in a model


def _layer_plan(model, layer):
    manager = model.warehouse_manager
    same = [m for m in warehouse_layers(model) if m.warehouse_id == layer.warehouse_id]
    plan = plan_warehouse([m.weight_shape for m in same], **{k: manager.per_warehouse[k][layer.warehouse_id]
                                                             for k in ("cell_num_ratio", "cell_inplane_ratio",
                                                                       "cell_outplane_ratio")})
    return plan.layers[same.index(layer)]


@pytest.mark.parametrize("temperature", [1.0, 0.3, 0.0])
def test_a_layer_in_a_model_matches_the_reference(temperature):
    torch.manual_seed(0)
    model = build_model("cifar_resnet18", num_classes=10, conv="kw1x", width=0.125).double()
    with torch.no_grad():
        for key, value in model.state_dict().items():          # nothing trivially zero or one
            if value.dtype.is_floating_point and "temperature" not in key:
                value.add_(0.1 * torch.randn_like(value).abs()) if "running_var" in key else \
                    value.add_(0.1 * torch.randn_like(value))
    set_warehouse_temperature(model, temperature)
    layer = model.layer2[0].conv1                            # stage 1's first conv: in stage 0's warehouse
    assert layer.warehouse_id == 0
    plan = _layer_plan(model, layer)
    captured = {}

    def keep_input(module, args):
        captured.setdefault("x", args[0].detach())

    layer.register_forward_pre_hook(keep_input)
    gen = torch.Generator().manual_seed(1)
    cells = model.warehouse_manager.weights[layer.warehouse_id]
    for training in (True, False):
        model.train(training)
        captured.clear()
        model(torch.randn(3, 3, 32, 32, generator=gen, dtype=torch.float64))
        x = captured["x"].clone().requires_grad_(True)
        bn = layer.attention.norm1
        running = (bn.running_mean.clone(), bn.running_var.clone())
        params = [cells, *layer.attention.parameters()]
        y = layer(x)
        y_ref = reference_kw_conv(x, cells, dict(layer.attention.named_parameters()), *running, plan,
                                  layer.weight_shape, temperature, training, layer.stride, layer.padding,
                                  layer.dilation, layer.groups)
        torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-10)
        weight = torch.randn(y.shape, generator=gen, dtype=torch.float64)
        got = torch.autograd.grad((y * weight).sum(), [x, *params], allow_unused=True)
        want = torch.autograd.grad((y_ref * weight).sum(), [x, *params], allow_unused=True)
        for g, w in zip(got, want):
            if w is None:
                assert g is None or torch.count_nonzero(g) == 0
            else:
                torch.testing.assert_close(g, w, rtol=0, atol=1e-10)


# --------------------------------------------------------------------------- any width


@pytest.mark.parametrize("width", [0.125, 0.25])
@pytest.mark.parametrize("spec", ["kw1d4x", "kw1x", "kw4x"])
@pytest.mark.parametrize("name", ["cifar_resnet18", "cifar_mobilenetv2"])
def test_kw_builds_and_trains_a_step_at_small_widths(name, spec, width):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", KWAttentionCostWarning)     # tiny MobileNetV2s: the heads dominate
        model = build_model(name, num_classes=10, conv=spec, width=width)
    cells = model.warehouse_manager.weights
    before = [c.detach().clone() for c in cells]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    set_warehouse_temperature(model, 0.5)
    batch = 1 if (name, spec, width) == ("cifar_resnet18", "kw1x", 0.125) else 2   # batch 1 trains too
    loss = nn.functional.cross_entropy(model(torch.randn(batch, 3, 32, 32)), torch.arange(batch))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and any(not torch.equal(b, c) for b, c in zip(before, cells))


def test_an_odd_width_builds_or_says_why():
    with pytest.raises(ValueError, match=r"kw1d4x cannot cut this model's kernels into warehouse cells: .*"
                                         r"cells \(4, 4\) do not divide"):
        meta_model("cifar_resnet18", "kw1d4x", width=0.1375, num_classes=10)
    with pytest.warns(KWAttentionCostWarning, match=r"kw1x: the attention heads hold .*'stage1_layer_conv'"):
        model = meta_model("cifar_resnet18", "kw1x", width=0.1375, num_classes=10)
    assert len(model.warehouse_manager.weights) == 4


def test_options_override_the_official_defaults():
    model = meta_model("cifar_resnet18", "kw1x", width=0.25, num_classes=10, reduction=0.25, sharing_range="layer")
    manager = model.warehouse_manager
    assert manager.sharing_range == ("layer",) and model.layer4[1].conv2.attention.hidden_planes == 32
    model = meta_model("resnet18", "kw1d2x", nonlocal_basis_ratio=0.0625)
    assert model.warehouse_manager.nonlocal_basis_ratio == 0.0625 and model.layer1[0].conv1.attention.uses_basis
    assert len(manager.weights) > 4                   # the convs of a stage no longer share one warehouse
    with pytest.raises(ValueError, match=r"conv option\(s\) \['cell_inplane_ratio'\] do not apply to odconv"):
        build_model("cifar_resnet18", num_classes=10, conv="odconv1x", cell_inplane_ratio=0.5)


# --------------------------------------------------------------------------- schedule, costs


def test_temperature_schedule_goes_from_one_to_zero_on_the_kw_layers():
    schedule = get_conv_family("kw").temperature_schedule(30.0, 1.0, 20.0)
    assert [schedule.value(e) for e in (0, 5, 20, 30)] == [1.0, 0.75, 0.0, 0.0]
    model = build_model("cifar_resnet18", num_classes=10, conv="kw1x", width=0.125)
    targets = schedule.targets(model)
    assert targets and all(isinstance(m, KWConv2d) for m in targets) and len(targets) == 19
    for m in targets:
        schedule.setter(m, schedule.value(10.0))
    assert {float(m.attention.temperature) for m in targets} == {0.5}


def test_costs_count_the_warehouse_once_and_the_attention():
    model = build_model("cifar_resnet18", num_classes=10, conv="kw1x", width=0.125)
    p = profile_model(model, (3, 32, 32))
    assert p["params"] == sum(t.numel() for t in model.parameters())          # the cells once
    parts = p["macs_breakdown"]
    assert parts["conv"] > 0 and parts["aggregation"] > 0 and parts["attention"] > 0
    layers = {n: e for n, e in p["layers"].items() if e["type"] == "KWConv2d"}
    assert len(layers) == 19
    assert layers["layer2.0.conv1"]["macs"] == model.layer2[0].conv1.macs((32, 32))
