"""Issue 6: ``placement="matched" | "paper"``: the baselines as their papers built them."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from odconv import CondConv2d, DyConv2d, DynamicConvBase, ODConv2d, build_model, profile_model
from odconv.models import DynamicLinear, SharedRouter

torch.set_num_threads(1)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta(name, conv="static", placement="matched", **kw):
    with torch.device("meta"):
        return build_model(name, num_classes=kw.pop("num_classes", 1000), conv=conv, placement=placement, **kw)


def static_convs(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {n: m for n, m in model.named_modules() if type(m) is nn.Conv2d}


# --------------------------------------------------------------------------- the option


def test_bad_placement_lists_valid_values():
    with pytest.raises(ValueError, match="'published'.*matched, paper"):
        build_model("cifar_resnet18", num_classes=10, placement="published")


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2_100"])
@pytest.mark.parametrize("spec", ["static", "odconv1x", "odconv4x", "odconv4x-channel+kernel"])
def test_odconv_and_static_paper_placement_is_the_matched_one(name, spec):
    a, b = meta(name, spec, "matched"), meta(name, spec, "paper")
    assert [(k, v.shape) for k, v in a.state_dict().items()] == [(k, v.shape) for k, v in b.state_dict().items()]


# --------------------------------------------------------------------------- published counts

# The ODConv paper's tables (M params, ImageNet, 1000 classes).
PUBLISHED = [
    ("resnet18", "condconv8x", 81.35),
    ("resnet18", "dyconv4x", 45.47),
    ("mobilenetv2_100", "dyconv4x", 12.40),
]


@pytest.mark.parametrize("name, spec, published", PUBLISHED)
def test_paper_parameter_counts(name, spec, published):
    assert round(n_params(meta(name, spec, "paper")) / 1e6, 2) == published


def test_condconv_resnet50_backbone_adds_90m():
    static = profile_params(meta("resnet50"))
    cond = profile_params(meta("resnet50", "condconv8x", "paper"))
    assert round((cond["params_backbone"] - static["params_backbone"]) / 1e6, 1) == 90.0


def profile_params(model):
    """Parameter split of profile_model without running the model (meta device)."""
    clf = model.get_classifier()
    total, head = n_params(model), n_params(clf)
    return {"params": total, "params_backbone": total - head}


def expected_condconv(name: str, last_blocks: int, n: int = 8) -> int:
    """Static count + (n - 1) copies of every conv in the last blocks and of the classifier
    (weight and bias) + one router (C_in -> n, with bias) per dynamic block and one for the
    classifier: plain arithmetic on the static model's layer shapes."""
    static = meta(name)
    blocks = [b for layer in ("layer1", "layer2", "layer3", "layer4") for b in getattr(static, layer, [])] \
        if "resnet" in name else list(static.features[1:-1])
    extra = 0
    for block in blocks[-last_blocks:]:
        convs = [m for nm, m in block.named_modules() if type(m) is nn.Conv2d and "downsample" not in nm]
        extra += (n - 1) * sum(c.weight.numel() for c in convs) + convs[0].in_channels * n + n
    fc = static.get_classifier()
    extra += (n - 1) * fc.weight.numel() + fc.in_features * n + n   # experts share the Linear's one bias
    return n_params(static) + extra


def expected_dyconv(name: str, k: int = 4) -> int:
    """Static count + (K - 1) copies of every conv but the stem + per conv an attention
    C -> C/4 (bias) -> K (bias)."""
    static = meta(name)
    convs = list(static_convs(static).values())[1:]
    extra = sum((k - 1) * c.weight.numel() + (c.in_channels + 1) * (c.in_channels // 4) + (c.in_channels // 4) * k + k
                for c in convs)
    return n_params(static) + extra


@pytest.mark.parametrize("name, spec, count, published", [
    ("resnet18", "condconv8x", 81_346_120, 81.35),
    ("mobilenetv2_100", "condconv8x", 22_878_496, 22.88),
    ("resnet18", "dyconv4x", 45_472_052, 45.47),
    ("resnet50", "dyconv4x", 100_878_072, 100.88),
    ("mobilenetv2_100", "dyconv4x", 12_404_540, 12.40),
])
def test_paper_counts_reproduce_the_published_figures(name, spec, count, published):
    """Exact counts from the protocols, computed independently, equal the published figures
    to two decimals."""
    got = n_params(meta(name, spec, "paper"))
    if spec.startswith("condconv"):
        assert got == expected_condconv(name, 3 if "resnet" in name else 6)
    else:
        assert got == expected_dyconv(name)
    assert got == count
    assert f"{got / 1e6:.2f}" == f"{published:.2f}"


def test_counts_with_and_without_the_dynamic_classifier():
    m = build_model("resnet18", num_classes=1000, conv="condconv8x", placement="paper")
    p = profile_model(m, (3, 64, 64))
    assert p["params"] == 81_346_120
    assert p["params_classifier"] == 8 * 512 * 1000 + 1000 + 512 * 8 + 8
    assert p["params_backbone"] == p["params"] - p["params_classifier"]
    assert p["params_static_classifier"] == p["params_backbone"] + 512 * 1000 + 1000 == 77_758_016
    d = profile_model(build_model("cifar_resnet18", num_classes=10, conv="dyconv4x", placement="paper", width=0.25),
                      (3, 32, 32))
    assert d["params_static_classifier"] == d["params"]


# --------------------------------------------------------------------------- where the layers go


def test_condconv_paper_resnet18_layout():
    m = meta("resnet18", "condconv8x", "paper")
    dynamic = {n for n, x in m.named_modules() if isinstance(x, DynamicConvBase)}
    assert dynamic == {"layer3.1.conv1", "layer3.1.conv2", "layer4.0.conv1", "layer4.0.conv2", "layer4.1.conv1",
                       "layer4.1.conv2", "fc.conv"}
    assert type(m.layer4[0].downsample[0]) is nn.Conv2d
    routers = {n: x for n, x in m.named_modules() if isinstance(x, SharedRouter)}
    assert set(routers) == {"layer3.1.router", "layer4.0.router", "layer4.1.router"}
    assert routers["layer4.0.router"].in_channels == 256           # the block input
    assert all(m.get_submodule(n).routing is None for n in dynamic - {"fc.conv"})   # no router of their own
    assert isinstance(m.fc, DynamicLinear) and m.fc.conv.routing is not None
    assert m.fc.conv.bias is None and m.fc.bias.shape == (1000,)   # one bias shared by the experts
    assert all(x.num_experts == 8 for x in m.modules() if isinstance(x, CondConv2d))


def test_condconv_paper_mobilenetv2_layout():
    m = meta("mobilenetv2_100", "condconv8x", "paper")
    blocks = [i for i, f in enumerate(m.features) if any(isinstance(x, CondConv2d) for x in f.modules())]
    assert blocks == [12, 13, 14, 15, 16, 17]
    assert all(m.features[i].router is not None for i in blocks)
    assert type(m.features[18][0]) is nn.Conv2d and isinstance(m.classifier[1], DynamicLinear)


def test_dyconv_paper_layout():
    m = meta("resnet18", "dyconv4x", "paper")
    assert [n for n, x in static_convs(m).items() if ".attention." not in n] == ["conv1"]
    assert isinstance(m.layer2[0].downsample[0], DyConv2d) and type(m.fc) is nn.Linear
    m = meta("mobilenetv2_100", "dyconv4x", "paper")
    assert [n for n, x in static_convs(m).items() if ".attention." not in n] == ["features.0.0"]
    assert isinstance(m.features[18][0], DyConv2d) and isinstance(m.features[2].conv[1][0], DyConv2d)
    assert m.features[2].conv[1][0].groups == 96        # depthwise (16 -> 96 expansion)


def test_shared_router_routes_every_conv_of_its_block():
    torch.manual_seed(0)
    m = build_model("cifar_resnet18", num_classes=10, conv="condconv8x", placement="paper", width=0.25).eval()
    block = m.layer4[0]
    x = torch.randn(3, block.conv1.in_planes, 8, 8)
    r = torch.sigmoid(F.linear(x.mean((2, 3)), block.router.fc.weight, block.router.fc.bias))
    seen = []
    for conv in (block.conv1, block.conv2):
        conv.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(kwargs["routing"]), with_kwargs=True)
    block(x)
    assert len(seen) == 2 and all(torch.allclose(s, r) for s in seen)


# --------------------------------------------------------------------------- equal to a static conv

GEOMS = [dict(k=3, stride=1, padding=1, groups=1), dict(k=3, stride=2, padding=1, groups=1),
         dict(k=1, stride=1, padding=0, groups=1), dict(k=3, stride=1, padding=1, groups=8),
         dict(k=5, stride=1, padding=2, groups=2)]


@pytest.mark.parametrize("g", GEOMS, ids=["3x3", "stride2", "1x1", "depthwise", "5x5-groups2"])
@pytest.mark.parametrize("bias", [False, True])
def test_k1_dyconv_and_n1_condconv_equal_a_static_conv(g, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, g["k"], stride=g["stride"], padding=g["padding"], groups=g["groups"], bias=bias)
    x = torch.randn(3, 8, 9, 9)
    expected = conv(x)
    geo = dict(stride=g["stride"], padding=g["padding"], groups=g["groups"], bias=bias)
    dy = DyConv2d(8, 8, g["k"], kernel_num=1, **geo)
    cc = CondConv2d(8, 8, g["k"], num_experts=1, **geo)
    with torch.no_grad():
        for layer in (dy, cc):
            layer.weight.copy_(conv.weight.unsqueeze(0))
            if bias:
                layer.bias.copy_(conv.bias.unsqueeze(0))
    torch.testing.assert_close(dy(x), expected)
    torch.testing.assert_close(cc(x, routing=torch.ones(3, 1)), expected)


def test_k1_dyconv_model_equals_the_static_model():
    torch.manual_seed(0)
    dyn = build_model("cifar_resnet18", num_classes=10, conv="dyconv1x", placement="paper", width=0.25).eval()
    static = build_model("cifar_resnet18", num_classes=10, width=0.25).eval()
    state = {k: v for k, v in dyn.state_dict().items() if ".attention." not in k}
    state = {k: (v.squeeze(0) if k.endswith("weight") and v.dim() == 5 else v) for k, v in state.items()}
    static.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(dyn(x), static(x))


# --------------------------------------------------------------------------- batch (in)dependence


def one_by_one(layer, x, **kw):
    return torch.cat([layer(x[i:i + 1], **kw) for i in range(x.shape[0])])


@pytest.mark.parametrize("make", [lambda: CondConv2d(8, 12, 3, padding=1, bias=True),
                                  lambda: DyConv2d(8, 12, 3, padding=1, bias=True)], ids=["condconv", "dyconv"])
@pytest.mark.parametrize("train", [True, False])
def test_baseline_outputs_do_not_depend_on_the_rest_of_the_batch(make, train):
    torch.manual_seed(0)
    layer = make().train(train)
    x = torch.randn(5, 8, 7, 7)
    full = layer(x)
    torch.testing.assert_close(full, one_by_one(layer, x))
    x2 = x.clone()
    x2[1:] = torch.randn(4, 8, 7, 7) * 3
    torch.testing.assert_close(layer(x2)[0], full[0])


def test_odconv_outputs_depend_on_the_batch_in_train_mode_only():
    """ODConv's attention head has a BatchNorm: in train mode it normalises with batch
    statistics, so one example's output depends on the others; in eval mode it does not."""
    torch.manual_seed(0)
    layer = ODConv2d(8, 12, 3, padding=1, kernel_num=4)
    x = torch.randn(5, 8, 7, 7)
    x2 = x.clone()
    x2[1:] = torch.randn(4, 8, 7, 7) * 3
    layer.train()
    assert not torch.allclose(layer(x)[0], layer(x2)[0], atol=1e-4)
    layer.eval()
    torch.testing.assert_close(layer(x)[0], layer(x2)[0])
    torch.testing.assert_close(layer(x), one_by_one(layer, x))


@pytest.mark.parametrize("spec", ["condconv8x", "dyconv4x"])
def test_paper_models_are_batch_independent_in_eval(spec):
    torch.manual_seed(0)
    m = build_model("cifar_mobilenetv2", num_classes=10, conv=spec, placement="paper", width=0.25).eval()
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(m(x), one_by_one(m, x), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- batch size 1 training

SPECS = [("static", "matched"), ("odconv1x", "matched"), ("odconv4x", "matched"),
         ("odconv1x-channel+spatial", "matched"), ("condconv8x", "matched"), ("dyconv4x", "matched"),
         ("condconv8x", "paper"), ("dyconv4x", "paper")]
BS1_CASES = ([(name, s, p) for name in ("cifar_resnet18", "cifar_mobilenetv2") for s, p in SPECS]
             + [(name, s, p) for name in ("resnet18", "mobilenetv2_050")
                for s, p in SPECS if s == "odconv4x" or p == "paper"]
             + [(name, "odconv1x", "matched") for name in ("resnet50", "mobilenetv2_100", "mobilenetv2_075")])


@pytest.mark.parametrize("name, spec, placement", BS1_CASES)
def test_batch_size_one_training(name, spec, placement):
    torch.manual_seed(0)
    kw = {"width": 0.25} if name.startswith("cifar") else {}
    size = 32 if name.startswith("cifar") else 64
    m = build_model(name, num_classes=10, conv=spec, placement=placement, **kw).train()
    out = m(torch.randn(1, 3, size, size))
    F.cross_entropy(out, torch.tensor([3])).backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
