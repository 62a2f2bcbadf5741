"""ODConv2d, CondConv2d and DyConv2d against independent formulations."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from odconv import CondConv2d, DyConv2d, ODConv2d, load_checkpoint, set_temperature
from odconv.spec import ATTENTIONS

from .reference_odconv import RefODConv2d

torch.set_num_threads(1)

# (in, out, k, stride, padding, dilation, groups)
GEOMETRIES = [
    (8, 12, 3, 1, 1, 1, 1),
    (8, 12, 3, 2, 1, 1, 1),
    (8, 8, 3, 1, 2, 2, 1),     # dilation
    (8, 12, 3, 1, 0, 1, 2),    # groups, no padding
    (8, 8, 3, 2, 1, 1, 8),     # depthwise
    (8, 12, 1, 1, 0, 1, 1),    # pointwise
    (6, 10, 5, 1, 2, 1, 1),    # 5x5
]
GEOM_IDS = ["3x3", "stride2", "dilation2", "groups2", "depthwise", "pointwise", "5x5"]


def subsets():
    """Every valid (attentions, kernel_num): kernel attention iff n >= 2."""
    base = ("channel", "filter", "spatial")
    for r in range(len(base) + 1):
        for combo in itertools.combinations(base, r):
            yield frozenset(combo), 1
            yield frozenset(combo) | {"kernel"}, 3


SUBSETS = list(subsets())
SUBSET_IDS = ["+".join(a for a in ATTENTIONS if a in s) + f"-n{n}" or f"none-n{n}" for s, n in SUBSETS]


def explicit_odconv(layer: ODConv2d, x: torch.Tensor) -> torch.Tensor:
    """Per example: its own kernel sum_i ka_i * sa * W_i, then a plain conv of ca * x, times fa."""
    att = layer.attention(x) if layer.attention is not None else {}
    outs = []
    for b in range(x.shape[0]):
        kernel = torch.zeros_like(layer.weight[0])
        for i in range(layer.kernel_num):
            w = layer.weight[i]
            if "spatial" in att:
                w = w * att["spatial"][b]
            if "kernel" in att:
                w = w * att["kernel"][b, i]
            kernel = kernel + w
        xb = x[b:b + 1]
        if "channel" in att:
            xb = xb * att["channel"][b].view(1, -1, 1, 1)
        yb = F.conv2d(xb, kernel, None, layer.stride, layer.padding, layer.dilation, layer.groups)
        if "filter" in att:
            yb = yb * att["filter"][b].view(1, -1, 1, 1)
        outs.append(yb)
    return torch.cat(outs)


def grads(module, x, y):
    g = torch.autograd.grad(y.square().sum(), [x] + [p for p in module.parameters()], allow_unused=True)
    return g


def assert_close_grads(ga, gb, atol=1e-5, rtol=1e-4):
    """Gradients agree; ``atol`` is relative to each reference gradient's largest entry (float32
    rounding of gradients in the hundreds is far above an absolute 1e-5)."""
    assert len(ga) == len(gb)
    for a, b in zip(ga, gb):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, atol=atol * max(1.0, b.abs().max().item()), rtol=rtol)


@pytest.mark.parametrize("atts, n", SUBSETS, ids=SUBSET_IDS)
@pytest.mark.parametrize("geom", GEOMETRIES, ids=GEOM_IDS)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_odconv_matches_explicit_per_example_kernels(atts, n, geom, train):
    torch.manual_seed(0)
    cin, cout, k, s, p, d, g = geom
    layer = ODConv2d(cin, cout, k, s, p, d, g, kernel_num=n, attentions=atts, reduction=0.5, min_channel=4)
    layer.train(train)
    if not train:  # give BN non-trivial running statistics
        layer.attention is not None and layer.attention.bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(3, cin, 9, 9, requires_grad=True)
    y = layer(x)
    y_ref = explicit_odconv(layer, x)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-4)
    assert_close_grads(grads(layer, x, y), grads(layer, x, y_ref))


def test_active_attentions_follow_the_reference_structure():
    assert ODConv2d(8, 8, 3, groups=8).active_attentions == {"channel", "spatial", "kernel"}  # depthwise: no filter
    assert ODConv2d(8, 8, 1).active_attentions == {"channel", "filter", "kernel"}  # pointwise: no spatial
    dw_pw = ODConv2d(8, 8, 1, groups=8, kernel_num=1, attentions={"filter", "spatial"})
    assert dw_pw.active_attentions == frozenset() and dw_pw.attention is None


@pytest.mark.parametrize("geom", GEOMETRIES, ids=GEOM_IDS)
def test_no_attention_is_exactly_conv2d(geom):
    cin, cout, k, s, p, d, g = geom
    layer = ODConv2d(cin, cout, k, s, p, d, g, kernel_num=1, attentions=())
    assert layer.attention is None and layer.weight.shape == (1, cout, cin // g, k, k)
    conv = nn.Conv2d(cin, cout, k, s, p, d, g, bias=False)
    with torch.no_grad():
        conv.weight.copy_(layer.weight[0])
    assert sum(p.numel() for p in layer.parameters()) == conv.weight.numel()
    x = torch.randn(2, cin, 9, 9, requires_grad=True)
    y, y_ref = layer(x), conv(x)
    torch.testing.assert_close(y, y_ref, atol=0, rtol=0)
    gx, gw = torch.autograd.grad(y.sum(), [x, layer.weight])
    gx_ref, gw_ref = torch.autograd.grad(y_ref.sum(), [x, conv.weight])
    torch.testing.assert_close(gx, gx_ref)
    torch.testing.assert_close(gw[0], gw_ref)


def test_switched_off_attention_has_no_parameters():
    full = ODConv2d(16, 32, 3, kernel_num=4)
    names = {n for n, _ in full.named_parameters()}
    assert {"attention.channel_fc.weight", "attention.filter_fc.weight", "attention.spatial_fc.weight",
            "attention.kernel_fc.weight"} <= names
    only_spatial = ODConv2d(16, 32, 3, kernel_num=1, attentions={"spatial"})
    names = {n for n, _ in only_spatial.named_parameters()}
    assert names == {"weight", "attention.fc.weight", "attention.bn.weight", "attention.bn.bias",
                     "attention.spatial_fc.weight", "attention.spatial_fc.bias"}


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(kernel_num=1, attentions=ATTENTIONS), "needs kernel_num >= 2"),
    (dict(kernel_num=4, attentions=("channel",)), "needs 'kernel' attention"),
    (dict(kernel_num=1, attentions=("channel", "colour")), "unknown attention"),
    (dict(kernel_num=1, attentions="channel"), "collection of names"),
])
def test_bad_attention_sets_are_value_errors(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        ODConv2d(8, 8, 3, **kwargs)


# --- the reference, number for number ---------------------------------------------------

REF_GEOMS = [(16, 32, 3, 1, 1, 1, 1, 4), (16, 32, 3, 2, 1, 1, 1, 1), (32, 32, 3, 1, 1, 1, 32, 4),
             (16, 32, 1, 1, 0, 1, 1, 1), (16, 32, 1, 1, 0, 1, 1, 4), (16, 16, 5, 1, 4, 2, 2, 2)]
REF_IDS = ["3x3-n4", "stride2-n1", "depthwise-n4", "pointwise-n1", "pointwise-n4", "5x5-dil2-groups2-n2"]


@pytest.mark.parametrize("geom", REF_GEOMS, ids=REF_IDS)
def test_same_seed_same_parameters_as_reference(geom):
    cin, cout, k, s, p, d, g, n = geom
    torch.manual_seed(123)
    ref = RefODConv2d(cin, cout, k, s, p, d, g, kernel_num=n)
    torch.manual_seed(123)
    ours = ODConv2d(cin, cout, k, s, p, d, g, kernel_num=n)
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    assert set(our_sd) - set(ref_sd) == {"attention.temperature"}
    assert set(ref_sd) <= set(our_sd)
    for key, value in ref_sd.items():
        assert our_sd[key].shape == value.shape, key
        torch.testing.assert_close(our_sd[key], value, atol=0, rtol=0)


@pytest.mark.parametrize("geom", REF_GEOMS, ids=REF_IDS)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("temperature", [1.0, 17.5])
def test_reference_state_dict_loads_strict_and_matches(geom, train, temperature):
    cin, cout, k, s, p, d, g, n = geom
    torch.manual_seed(1)
    ref = RefODConv2d(cin, cout, k, s, p, d, g, kernel_num=n)
    with torch.no_grad():  # move away from init so every part matters
        for prm in ref.parameters():
            prm.add_(0.1 * torch.randn_like(prm))
        ref.attention.bn.running_mean.normal_()
        ref.attention.bn.running_var.uniform_(0.5, 2)
    ours = ODConv2d(cin, cout, k, s, p, d, g, kernel_num=n)
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref.update_temperature(temperature)
    ours.update_temperature(temperature)
    ref.train(train)
    ours.train(train)
    x = torch.randn(4, cin, 10, 10)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, y = ref(x1), ours(x2)
    torch.testing.assert_close(y, y_ref, atol=1e-6, rtol=1e-5)
    g_ref = torch.autograd.grad(y_ref.square().sum(), [x1] + list(ref.parameters()))
    ours_params = dict(ours.named_parameters())
    g_ours = torch.autograd.grad(y.square().sum(), [x2] + [ours_params[nm] for nm, _ in ref.named_parameters()])
    assert_close_grads(g_ours, g_ref)
    if train:  # BN running statistics updated identically
        torch.testing.assert_close(ours.attention.bn.running_mean, ref.attention.bn.running_mean)


def test_ddp_checkpoint_loads_through_one_helper(tmp_path):
    torch.manual_seed(0)
    ref = RefODConv2d(16, 16, 3, 1, 1, kernel_num=4)
    wrapped = nn.Module()
    wrapped.module = ref  # what DistributedDataParallel's state_dict looks like: "module." + key
    path = tmp_path / "ddp.pt"
    torch.save(wrapped.state_dict(), path)
    assert all(k.startswith("module.") for k in torch.load(path))
    ours = ODConv2d(16, 16, 3, 1, 1, kernel_num=4)
    load_checkpoint(ours, path)
    torch.testing.assert_close(ours.weight, ref.weight)
    # A checkpoint of our own layer keeps its temperature.
    ours.update_temperature(7.0)
    again = ODConv2d(16, 16, 3, 1, 1, kernel_num=4)
    load_checkpoint(again, {"state_dict": {"module." + k: v for k, v in ours.state_dict().items()}})
    assert float(again.attention.temperature) == 7.0


def test_temperature_divides_all_logits():
    torch.manual_seed(0)
    layer = ODConv2d(8, 8, 3, 1, 1, kernel_num=4, min_channel=4).eval()
    x = torch.randn(2, 8, 6, 6)
    att = layer.attention
    z = att.relu(att.bn(att.fc(att.avgpool(x))))
    layer.update_temperature(30.0)
    out = layer.attention(x)
    torch.testing.assert_close(out["channel"], torch.sigmoid(att.channel_fc(z).flatten(1) / 30))
    torch.testing.assert_close(out["kernel"], torch.softmax(att.kernel_fc(z).flatten(1) / 30, dim=1))
    with pytest.raises(ValueError, match="temperature"):
        layer.update_temperature(0.0)


def test_set_temperature_reaches_every_dynamic_layer():
    model = nn.Sequential(ODConv2d(8, 8, 3, 1, 1), nn.ReLU(), DyConv2d(8, 8, 3, 1, 1), CondConv2d(8, 8, 3, 1, 1),
                          nn.Conv2d(8, 8, 1))
    assert set_temperature(model, 12.0) == 3
    assert float(model[0].attention.temperature) == 12.0
    assert float(model[2].attention.temperature) == 12.0
    assert "attention.temperature" in model[0].state_dict() and "attention.temperature" in model[2].state_dict()


# --- batch size 1 -------------------------------------------------------------------------

def _assert_real_gradients(gs, names):
    """Every gradient exists, is finite and is not all zero (a backward that ran but reached
    nothing would pass ``grad is not None``)."""
    for g, name in zip(gs, names):
        assert g is not None, f"no gradient for {name}"
        assert torch.isfinite(g).all() and g.abs().sum() > 0, f"gradient of {name}: {g}"


def test_batch_size_one_training_uses_running_statistics():
    torch.manual_seed(0)
    layer = ODConv2d(8, 16, 3, 1, 1, kernel_num=4, min_channel=4)
    layer.attention.bn.running_mean.normal_()
    layer.attention.bn.running_var.uniform_(0.5, 2.0)
    before = layer.attention.bn.running_mean.clone()
    x = torch.randn(1, 8, 7, 7, requires_grad=True)
    layer.train()
    y = layer(x)
    g_train = grads(layer, x, y)  # the reference raises here ("Expected more than 1 value per channel")
    torch.testing.assert_close(layer.attention.bn.running_mean, before)  # left unchanged
    layer.eval()
    torch.testing.assert_close(layer(x), y)  # same as eval mode for that example
    # ... and so are its gradients: those of the explicit per-example formula with eval-mode attention
    g_ref = grads(layer, x, explicit_odconv(layer, x))
    assert_close_grads(g_train, g_ref)
    _assert_real_gradients(g_train, ["x", *(n for n, _ in layer.named_parameters())])
    with pytest.raises(ValueError):
        RefODConv2d(8, 16, 3, 1, 1).train()(torch.randn(1, 8, 7, 7))


def condconv_formula(layer: CondConv2d, x: torch.Tensor) -> torch.Tensor:
    """CondConv's paper formula, per example: ``r = sigmoid(routing(GAP x))``, kernel and bias ``sum_i r_i W_i``."""
    outs = []
    for b in range(x.shape[0]):
        r = torch.sigmoid(x[b].mean(dim=(1, 2)) @ layer.routing.weight.T + layer.routing.bias)
        kernel = sum(r[i] * layer.weight[i] for i in range(layer.num_experts))
        bias = sum(r[i] * layer.bias[i] for i in range(layer.num_experts)) if layer.bias is not None else None
        outs.append(F.conv2d(x[b:b + 1], kernel, bias, layer.stride, layer.padding, layer.dilation, layer.groups))
    return torch.cat(outs)


def dyconv_formula(layer: DyConv2d, x: torch.Tensor, temperature: float) -> torch.Tensor:
    """DyConv's paper formula, per example: ``pi = softmax(fc2(relu(fc1(GAP x))) / T)``, kernel and
    bias ``sum_k pi_k W_k``."""
    a, t = layer.attention, temperature
    outs = []
    for b in range(x.shape[0]):
        hidden = torch.relu(a.fc1.weight.flatten(1) @ x[b].mean(dim=(1, 2)) + a.fc1.bias)
        pi = torch.softmax((a.fc2.weight.flatten(1) @ hidden + a.fc2.bias) / t, dim=0)
        kernel = sum(pi[i] * layer.weight[i] for i in range(layer.kernel_num))
        bias = sum(pi[i] * layer.bias[i] for i in range(layer.kernel_num)) if layer.bias is not None else None
        outs.append(F.conv2d(x[b:b + 1], kernel, bias, layer.stride, layer.padding, layer.dilation, layer.groups))
    return torch.cat(outs)


@pytest.mark.parametrize("kind", ["condconv", "dyconv"])
def test_baselines_train_with_batch_size_one(kind):
    """No BatchNorm in their attention: at batch 1 in training mode the baselines give the
    gradients of their paper formula, for the input and every parameter."""
    torch.manual_seed(0)
    if kind == "condconv":
        layer, formula = CondConv2d(8, 8, 3, 1, 1, bias=True, num_experts=4), condconv_formula
    else:
        layer = DyConv2d(8, 8, 3, 1, 1, bias=True, kernel_num=4)
        formula = lambda layer, x: dyconv_formula(layer, x, 5.0)  # noqa: E731
        layer.update_temperature(5.0)
        nn.init.normal_(layer.attention.fc1.bias, std=0.1)  # zero at init: make the attention biases matter
        nn.init.normal_(layer.attention.fc2.bias, std=0.1)
    nn.init.normal_(layer.bias)
    layer.train()
    x = torch.randn(1, 8, 5, 5, requires_grad=True)
    y = layer(x)
    torch.testing.assert_close(y, formula(layer, x), atol=1e-5, rtol=1e-4)
    g = grads(layer, x, y)
    assert_close_grads(g, grads(layer, x, formula(layer, x)))
    _assert_real_gradients(g, ["x", *(n for n, _ in layer.named_parameters())])


# --- baselines against their papers' formulas ------------------------------------------------

@pytest.mark.parametrize("geom", GEOMETRIES, ids=GEOM_IDS)
@pytest.mark.parametrize("bias", [False, True])
def test_condconv_is_sigmoid_routed_sum_of_experts(geom, bias):
    torch.manual_seed(0)
    cin, cout, k, s, p, d, g = geom
    layer = CondConv2d(cin, cout, k, s, p, d, g, bias=bias, num_experts=3)
    if bias:
        nn.init.normal_(layer.bias)
    x = torch.randn(3, cin, 9, 9, requires_grad=True)
    y_ref, y = condconv_formula(layer, x), layer(x)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-4)
    assert_close_grads(grads(layer, x, y), grads(layer, x, y_ref))


@pytest.mark.parametrize("geom", GEOMETRIES, ids=GEOM_IDS)
@pytest.mark.parametrize("bias", [False, True])
def test_dyconv_is_softmax_attention_over_kernels(geom, bias):
    torch.manual_seed(0)
    cin, cout, k, s, p, d, g = geom
    layer = DyConv2d(cin, cout, k, s, p, d, g, bias=bias, kernel_num=4)
    layer.update_temperature(5.0)
    if bias:
        nn.init.normal_(layer.bias)
    a = layer.attention
    nn.init.normal_(a.fc1.bias, std=0.1)   # zero at init: make the attention biases matter
    nn.init.normal_(a.fc2.bias, std=0.1)
    x = torch.randn(3, cin, 9, 9, requires_grad=True)
    y_ref, y = dyconv_formula(layer, x, 5.0), layer(x)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-4)
    assert_close_grads(grads(layer, x, y), grads(layer, x, y_ref))


def test_each_kernel_initialised_like_a_static_conv():
    """Each of the n kernels on its own gets kaiming-normal fan_out (std = sqrt(2 / (O k k))),
    not a fan computed over the whole 5-D tensor."""
    torch.manual_seed(0)
    expected = (2.0 / (64 * 9)) ** 0.5
    for layer in (ODConv2d(64, 64, 3, kernel_num=4), CondConv2d(64, 64, 3, num_experts=8),
                  DyConv2d(64, 64, 3, kernel_num=4)):
        for w in layer.weight:
            assert abs(w.std().item() / expected - 1) < 0.05, type(layer).__name__


# --- float64 gradcheck ---------------------------------------------------------------------

@pytest.mark.parametrize("atts, n", [(frozenset(ATTENTIONS), 2), (frozenset({"channel", "spatial"}), 1),
                                     (frozenset({"filter", "kernel"}), 2)],
                         ids=["all", "channel+spatial", "filter+kernel"])
def test_odconv_gradcheck(atts, n):
    torch.manual_seed(0)
    layer = ODConv2d(3, 4, 3, 1, 1, kernel_num=n, attentions=atts, min_channel=2).double()
    x = torch.randn(2, 3, 4, 4, dtype=torch.double, requires_grad=True)
    params = tuple(layer.parameters())

    def fn(x, *ps):
        return torch.func.functional_call(layer, dict(zip([k for k, _ in layer.named_parameters()], ps)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("make", [lambda: CondConv2d(3, 4, 3, 1, 1, bias=True, num_experts=2),
                                  lambda: DyConv2d(3, 4, 3, 1, 1, bias=True, kernel_num=2)], ids=["condconv", "dyconv"])
def test_baseline_gradcheck(make):
    torch.manual_seed(0)
    layer = make().double()
    x = torch.randn(2, 3, 4, 4, dtype=torch.double, requires_grad=True)
    names = [k for k, _ in layer.named_parameters()]

    def fn(x, *ps):
        return torch.func.functional_call(layer, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *layer.parameters()), eps=1e-6, atol=1e-5)
