"""Model builders: registry, layout, parameter counts against the official ODConv numbers."""

import math

import pytest
import torch
from torch import nn

from odconv import CondConv2d, DyConv2d, DynamicConvBase, ODConv2d, build_model, list_models, make_conv
from odconv.models import model_options, register_model

torch.set_num_threads(1)

IMAGENET = ["resnet18", "resnet50", "mobilenetv2_100", "mobilenetv2_075", "mobilenetv2_050"]
CIFAR = ["cifar_resnet18", "cifar_mobilenetv2"]

# The official ODConv repo's table (M params, num_classes=1000, reduction 1/16, min_channel 16).
PUBLISHED = {
    "resnet18": {"static": 11.69, "odconv1x": 11.94, "odconv4x": 44.90},
    "resnet50": {"static": 25.56, "odconv1x": 28.64, "odconv4x": 90.67},
    "mobilenetv2_100": {"static": 3.50, "odconv1x": 4.94, "odconv4x": 11.51},
    "mobilenetv2_075": {"static": 2.64, "odconv1x": 3.51, "odconv4x": 7.50},
    "mobilenetv2_050": {"static": 1.97, "odconv1x": 2.43, "odconv4x": 4.44},
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_meta(name, **kw):
    """Build on the meta device: shapes only, no memory, no init cost."""
    with torch.device("meta"):
        return build_model(name, num_classes=kw.pop("num_classes", 1000), **kw)


def cifar_kw(name):
    return {"width": 0.25} if name.startswith("cifar") else {}


# --------------------------------------------------------------------------- registry


def test_list_models_has_every_builder():
    assert set(IMAGENET + CIFAR) <= set(list_models())
    assert list_models() == sorted(list_models())
    assert list_models("cifar_*") == sorted(CIFAR)


def test_unknown_model_names_it_and_lists_valid_names():
    with pytest.raises(ValueError) as err:
        build_model("resnet19", num_classes=10)
    msg = str(err.value)
    assert "resnet19" in msg and all(name in msg for name in IMAGENET + CIFAR)


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(conv="odconv3"), "bad conv spec"),
    (dict(conv="odconv1x-kernel"), "kernel"),
    (dict(placement="published"), "matched, paper"),
    (dict(frobnicate=1), "frobnicate"),
    (dict(width=0.5), "width"),                       # not an option of an ImageNet model
    (dict(conv="condconv8x", min_channel=8), "min_channel"),   # ODConv-only option
    (dict(conv="static", reduction=0.25), "reduction"),
    (dict(conv="odconv1x", routing=False), "routing"),  # internal, not a user option
    (dict(num_classes=0), "num_classes"),
    (dict(dropout=1.5), "dropout"),
])
def test_bad_arguments_are_clear_value_errors(kwargs, fragment):
    kwargs = {"num_classes": 10, **kwargs}
    with pytest.raises(ValueError, match=fragment):
        build_model("resnet18", **kwargs)


def test_options_reach_the_layers_and_none_means_default():
    m = build_model("cifar_resnet18", num_classes=10, conv="odconv1x", width=0.25, reduction=0.25, min_channel=4,
                    strategy="grouped")
    layer = m.layer4[1].conv2
    assert isinstance(layer, ODConv2d)
    assert layer.attention.hidden == max(int(layer.in_planes * 0.25), 4) and layer.strategy == "grouped"
    m = build_model("cifar_resnet18", num_classes=10, conv="static", width=0.25, reduction=None)
    assert not any(isinstance(x, DynamicConvBase) for x in m.modules())
    m = build_model("cifar_mobilenetv2", num_classes=10, conv="dyconv4x", width=0.25, reduction=0.5)
    assert all(layer.attention.hidden == max(int(layer.in_planes * 0.5), 1)
               for layer in m.modules() if isinstance(layer, DyConv2d))


def test_model_options_and_register_model():
    assert model_options("cifar_resnet18") == {"width": 1.0, "in_chans": 3, "dropout": 0.0}
    assert model_options("mobilenetv2_100")["dropout"] == 0.2

    def resnet18(*, num_classes, conv="static", placement="matched", conv_options=None):
        return nn.Linear(1, num_classes)

    with pytest.raises(ValueError, match="twice"):
        register_model(resnet18)

    def no_conv_argument(*, num_classes):
        return nn.Linear(1, num_classes)

    with pytest.raises(TypeError, match="conv"):
        register_model(no_conv_argument)


# --------------------------------------------------------------------------- layout


@pytest.mark.parametrize("name, n_dynamic", [("resnet18", 16), ("resnet50", 48), ("mobilenetv2_100", 51),
                                             ("cifar_resnet18", 16), ("cifar_mobilenetv2", 51)])
def test_matched_placement_follows_the_official_repo(name, n_dynamic):
    m = build_meta(name, conv="odconv1x", **cifar_kw(name))
    dynamic = [n for n, x in m.named_modules() if isinstance(x, DynamicConvBase)]
    static = [n for n, x in m.named_modules() if type(x) is nn.Conv2d and ".attention." not in n]
    assert len(dynamic) == n_dynamic
    if "resnet" in name:
        # stem and 1x1 shortcuts static; every conv inside the blocks dynamic
        assert sorted(static) == sorted(["conv1"] + [n for n in static if n.endswith("downsample.0")])
        assert len(static) == (5 if name == "resnet50" else 4)
        assert all(".conv" in n for n in dynamic)
        assert type(m.fc) is nn.Linear
    else:
        # only the stem is static: depthwise and the last 1x1 (to 1280) are dynamic
        assert static == ["features.0.0"]
        assert "features.18.0" in dynamic
        assert any(m.get_submodule(n).groups == m.get_submodule(n).in_planes > 1 for n in dynamic)
        assert type(m.classifier[1]) is nn.Linear and isinstance(m.classifier[0], nn.Dropout)


def test_resnet50_is_v1_5_stride_on_the_3x3():
    m = build_meta("resnet50")
    block = m.layer2[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2) and block.downsample[0].stride == (2, 2)


def test_state_dict_names_follow_torchvision():
    keys = set(build_meta("resnet18").state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
            "layer2.0.downsample.1.weight", "fc.weight", "fc.bias"} <= keys
    keys = set(build_meta("mobilenetv2_100").state_dict())
    assert {"features.0.0.weight", "features.1.conv.0.0.weight", "features.1.conv.1.weight",
            "features.2.conv.0.0.weight", "features.2.conv.2.weight", "features.2.conv.3.running_var",
            "features.18.0.weight", "classifier.1.weight"} <= keys


@pytest.mark.parametrize("name, size, feat_hw", [("cifar_resnet18", 32, 4), ("cifar_mobilenetv2", 32, 4),
                                                 ("cifar_resnet18", 64, 8), ("cifar_mobilenetv2", 64, 8)])
def test_small_image_layout_downsamples_8x(name, size, feat_hw):
    m = build_model(name, num_classes=7, width=0.25).eval()
    body = m.layer4 if "resnet" in name else m.features
    seen = {}
    body.register_forward_hook(lambda mod, a, out: seen.update(hw=out.shape[-1]))
    assert m(torch.randn(2, 3, size, size)).shape == (2, 7)
    assert seen["hw"] == feat_hw


def test_width_scales_the_small_models():
    full = n_params(build_meta("cifar_resnet18", num_classes=10))
    quarter = n_params(build_meta("cifar_resnet18", num_classes=10, width=0.25))
    assert 11.1e6 < full < 11.2e6            # the usual CIFAR ResNet-18: 11.17M
    assert quarter < full / 12
    m = build_meta("cifar_mobilenetv2", num_classes=10, width=0.25)
    assert m.features[0][0].out_channels == 8 and m.num_features == 1280


@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_models_forward(name):
    m = build_model(name, num_classes=5, in_chans=1, conv="odconv1x").eval()
    assert m(torch.randn(2, 1, 64, 64)).shape == (2, 5)


# --------------------------------------------------------------------------- parameter table


@pytest.mark.parametrize("name, spec", [(n, s) for n in IMAGENET for s in ("static", "odconv1x", "odconv4x")])
def test_parameter_counts_match_the_official_table(name, spec):
    m = build_meta(name, conv=spec, reduction=0.0625 if spec != "static" else None,
                   min_channel=16 if spec != "static" else None)
    assert round(n_params(m) / 1e6, 2) == PUBLISHED[name][spec]


# --------------------------------------------------------------------------- init


def test_static_layers_use_the_official_init():
    torch.manual_seed(0)
    m = build_model("resnet18", num_classes=10, conv="odconv1x")
    w = m.layer4[0].downsample[0].weight       # static 1x1, 256 -> 512
    assert w.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.05)
    w = m.conv1.weight                          # static 7x7 stem, 3 -> 64
    assert w.std().item() == pytest.approx(math.sqrt(2 / (64 * 49)), rel=0.1)
    assert all(torch.all(b.weight == 1) and torch.all(b.bias == 0)
               for b in m.modules() if isinstance(b, nn.BatchNorm2d))


@pytest.mark.parametrize("spec", ["odconv4x", "condconv8x", "dyconv4x"])
def test_dynamic_kernels_keep_their_per_kernel_init(spec):
    """Each kernel on its own ~ N(0, 2 / fan_out) with fan_out = out * k * k, not a kaiming
    over the whole 5-D tensor (PyTorch would take fan_out = dim 1 * prod(dims 2:) = in * out * k * k
    for a 5-D tensor: kernels ~sqrt(in) times too small)."""
    torch.manual_seed(0)
    m = build_model("cifar_resnet18", num_classes=10, conv=spec, width=0.5)
    layer = m.layer4[1].conv1        # 256 -> 256, 3x3
    expected = math.sqrt(2 / (256 * 9))
    for i in range(layer.weight.shape[0]):
        assert layer.weight[i].std().item() == pytest.approx(expected, rel=0.05)
    if spec == "odconv4x":
        att = layer.attention
        assert torch.all(att.bn.weight == 1) and torch.all(att.kernel_fc.bias == 0)


def test_mobilenet_classifier_init():
    torch.manual_seed(0)
    m = build_model("mobilenetv2_100", num_classes=1000)
    assert m.classifier[1].weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert torch.all(m.classifier[1].bias == 0)


# --------------------------------------------------------------------------- factory use


def test_every_conv_comes_from_the_factory(monkeypatch):
    """The builders build their block convs through odconv.make_conv, nothing else."""
    import odconv.models.placement as placement

    calls = []

    def spy(spec, *args, **kwargs):
        calls.append(str(spec))
        return make_conv(spec, *args, **kwargs)

    monkeypatch.setattr(placement, "make_conv", spy)
    m = build_model("cifar_mobilenetv2", num_classes=10, width=0.25, conv="dyconv4x")
    n_conv = sum(isinstance(x, (nn.Conv2d, DynamicConvBase)) for n, x in m.named_modules()
                 if ".attention" not in n)
    assert len(calls) == n_conv - 1          # all but the stem
    assert set(calls) == {"dyconv4x"}


def test_condconv_matched_routes_each_layer_on_its_input():
    m = build_meta("resnet18", conv="condconv8x")
    convs = [x for x in m.modules() if isinstance(x, CondConv2d)]
    assert len(convs) == 16 and all(c.routing is not None for c in convs)
    assert not hasattr(m.layer1[0], "router") or m.layer1[0].router is None
