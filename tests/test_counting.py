"""Cost counting: parameters, MACs per image (published figures, hand-computed counts)."""

import pytest
import torch
from torch import nn

from odconv import CondConv2d, DyConv2d, ODConv2d, build_model, count_macs, count_params, profile_model
from odconv.functional import STRATEGIES


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread for these counts (each runs forward passes; threads only add
    contention on a shared machine), restored afterwards for the other test modules."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_count_params_counts_shared_parameters_once():
    lin = nn.Linear(4, 5)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    assert count_params(model) == 25
    lin.bias.requires_grad_(False)
    assert count_params(model, trainable_only=True) == 20


def test_published_static_macs_at_224():
    """torchvision / the papers: ResNet-18 1.814 GMACs, MobileNetV2 1.0 300.8 MMACs."""
    with torch.device("meta"):       # shapes only: same count, no memory, fast
        resnet18 = build_model("resnet18", num_classes=1000)
        mobilenet = build_model("mobilenetv2_100", num_classes=1000)
    assert count_macs(resnet18) == 1_814_073_344
    assert round(count_macs(resnet18) / 1e9, 3) == 1.814
    assert round(count_macs(mobilenet) / 1e6, 1) == 300.8


@pytest.mark.parametrize("spec", ["static", "odconv4x", "condconv8x"])
def test_meta_device_models_count_the_same(spec):
    kw = dict(num_classes=10, width=0.25, conv=spec, placement="paper")
    with torch.device("meta"):
        on_meta = build_model("cifar_mobilenetv2", **kw)
    assert count_macs(on_meta, (3, 32, 32)) == count_macs(build_model("cifar_mobilenetv2", **kw), (3, 32, 32))


def hand_count(model: nn.Module, size) -> int:
    """Static MACs by hand: out_elements * in/groups * k * k per conv, in * out per Linear."""
    total = 0

    def conv_hook(m, args, out):
        nonlocal total
        total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def lin_hook(m, args, out):
        nonlocal total
        total += out.numel() * m.in_features

    for m in model.modules():
        if type(m) is nn.Conv2d:
            m.register_forward_hook(conv_hook)
        elif type(m) is nn.Linear:
            m.register_forward_hook(lin_hook)
    model.eval()(torch.zeros(1, *size))
    return total


@pytest.mark.parametrize("name", ["cifar_resnet18", "cifar_mobilenetv2"])
def test_static_macs_are_convs_and_linears(name):
    size = (3, 32, 32)
    assert count_macs(build_model(name, num_classes=10, width=0.25), size) == \
        hand_count(build_model(name, num_classes=10, width=0.25), size)


def odconv_by_hand(cin, cout, k, n, h, w, stride=1, groups=1, hidden=16):
    ho, wo = (h + 2 * (k // 2) - k) // stride + 1, (w + 2 * (k // 2) - k) // stride + 1
    depthwise = groups == cin == cout
    heads = cin + (0 if depthwise else cout) + (k * k if k > 1 else 0) + (n if n > 1 else 0)
    conv = cout * (cin // groups) * k * k * ho * wo
    aggregation = n * cout * (cin // groups) * k * k if (n > 1 or k > 1) else 0
    attention = cin * h * w + cin * hidden + hidden * heads
    modulation = cin * h * w + (0 if depthwise else cout * ho * wo)
    return dict(conv=conv, aggregation=aggregation, attention=attention, modulation=modulation)


@pytest.mark.parametrize("cin, cout, k, n, stride, groups", [
    (16, 32, 3, 4, 1, 1), (16, 32, 3, 1, 2, 1), (32, 32, 3, 4, 1, 32), (16, 24, 1, 1, 1, 1), (16, 24, 1, 4, 1, 1)])
def test_odconv_layer_macs_match_a_hand_count(cin, cout, k, n, stride, groups):
    layer = ODConv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, kernel_num=n)
    expected = odconv_by_hand(cin, cout, k, n, 10, 12, stride, groups)
    assert layer.mac_breakdown((10, 12)) == expected
    p = profile_model(nn.Sequential(layer), (cin, 10, 12))
    assert p["macs"] == sum(expected.values())
    assert p["macs_breakdown"] == {"static": 0, **expected}
    assert p["layers"]["0"]["in_hw"] == (10, 12)


def test_baseline_layer_macs_match_a_hand_count():
    cc = CondConv2d(16, 32, 3, padding=1, num_experts=8, bias=True)
    assert cc.mac_breakdown((8, 8)) == dict(conv=32 * 16 * 9 * 64, aggregation=8 * 32 * 16 * 9 + 8 * 32,
                                            attention=16 * 64 + 16 * 8, modulation=0)
    dy = DyConv2d(16, 32, 3, padding=1, kernel_num=4)
    assert dy.mac_breakdown((8, 8)) == dict(conv=32 * 16 * 9 * 64, aggregation=4 * 32 * 16 * 9,
                                            attention=16 * 64 + 16 * 4 + 4 * 4, modulation=0)
    assert count_macs(nn.Sequential(dy), (16, 8, 8)) == dy.macs((8, 8))


def test_dynamic_model_macs_are_static_part_plus_analytic_layers():
    """The non-dynamic part of an ODConv model costs what the same part of the static model
    does: the conv itself is counted once, analytically, never by what the strategy runs."""
    size = (3, 32, 32)
    static = profile_model(build_model("cifar_resnet18", num_classes=10, width=0.25), size)
    dyn = profile_model(build_model("cifar_resnet18", num_classes=10, width=0.25, conv="odconv4x"), size)
    assert dyn["macs_breakdown"]["static"] + dyn["macs_breakdown"]["conv"] == static["macs"]
    assert dyn["macs"] == sum(dyn["macs_breakdown"].values())
    assert dyn["macs"] == dyn["macs_breakdown"]["static"] + sum(e["macs"] for e in dyn["layers"].values())
    assert len(dyn["layers"]) == 16 and all(e["calls"] == 1 for e in dyn["layers"].values())
    assert dyn["layers"]["layer2.0.conv1"]["in_hw"] == (32, 32)
    assert dyn["layers"]["layer2.0.conv2"]["in_hw"] == (16, 16)


def test_shared_routers_and_dynamic_classifier_are_counted():
    m = build_model("cifar_resnet18", num_classes=10, width=0.25, conv="condconv8x", placement="paper")
    p = profile_model(m, (3, 32, 32))
    assert {"layer3.1.router", "layer4.0.router", "layer4.1.router", "fc.conv"} <= set(p["layers"])
    r = p["layers"]["layer4.0.router"]
    assert r["attention"] == 64 * 8 * 8 + 64 * 8 and r["macs"] == r["attention"]      # GAP + FC, block input
    assert p["layers"]["layer4.0.conv1"]["attention"] == 0                             # routed by the block
    assert p["layers"]["fc.conv"]["conv"] == 128 * 10 and p["layers"]["fc.conv"]["in_hw"] == (1, 1)


# "compiled" strategies are left out: compiling costs seconds and needs a toolchain; the count
# never runs them differently anyway (dynamic layers are counted analytically).
@pytest.mark.parametrize("strategy", sorted(s for s in STRATEGIES if "compile" not in s))
def test_macs_do_not_depend_on_the_execution_strategy(strategy):
    size = (3, 32, 32)
    ref = count_macs(build_model("cifar_mobilenetv2", num_classes=10, width=0.25, conv="odconv4x"), size)
    m = build_model("cifar_mobilenetv2", num_classes=10, width=0.25, conv="odconv4x", strategy=strategy)
    assert count_macs(m, size) == ref


def test_profiling_leaves_the_model_as_it_was():
    m = build_model("cifar_resnet18", num_classes=10, width=0.25, conv="odconv1x").train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    count_macs(m, (3, 32, 32))
    assert m.training and all(mod.training for mod in m.modules())
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not m._forward_hooks and not m.layer1[0].conv1._forward_pre_hooks


def test_macs_scale_with_input_size_and_bad_sizes_are_errors():
    m = build_model("cifar_resnet18", num_classes=10, width=0.25)
    small, big = count_macs(m, (3, 32, 32)), count_macs(m, (3, 64, 64))
    fc = 128 * 10
    assert big - fc == 4 * (small - fc)
    with pytest.raises(ValueError, match="input_size"):
        count_macs(m, (32, 32))


def test_profile_model_reports():
    m = build_model("cifar_mobilenetv2", num_classes=10, width=0.25, conv="dyconv4x", placement="paper")
    p = profile_model(m, (3, 32, 32))
    assert p["params"] == count_params(m) and p["params_classifier"] == 1280 * 10 + 10
    assert p["params_static_classifier"] == p["params"]
    assert set(p["macs_breakdown"]) == {"static", "conv", "aggregation", "attention", "modulation"}
    assert p["input_size"] == (3, 32, 32)
