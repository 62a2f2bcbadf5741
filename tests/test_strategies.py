"""Every execution strategy of dynamic_conv2d computes the same function as every other and as
an explicit per-example loop of plain convs: outputs and all gradients (input, weight, every
attention, bias), for every ODConv attention subset, CondConv and DyConv, across conv
geometries; in bfloat16 against the float32 result; float64 gradcheck of each strategy on a
tiny case; the "auto" choice and its overrides."""

from __future__ import annotations

import itertools
import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import odconv.strategies as S
from odconv import CondConv2d, DyConv2d, ODConv2d, set_strategy, use_strategy
from odconv.autotune import choose_strategy, set_auto_mode
from odconv.functional import STRATEGIES, dynamic_conv2d, valid_strategies

EXACT = [s for s in sorted(STRATEGIES) if s != "compiled"]  # compiled: see test_compiled (slow)
SUBSETS = [frozenset(c) for r in range(1, 5) for c in itertools.combinations("cfsk", r)]
LOOP = "per-example loop"  # the independent formulation every strategy is compared with
# (batch, in, out, k, groups, stride, padding, dilation, H, W)
GEOMETRIES = {
    "plain": (3, 4, 6, 3, 1, 1, 1, 1, 7, 6),
    "stride2": (2, 4, 6, 3, 1, 2, 1, 1, 8, 7),
    "dilation2": (2, 4, 4, 3, 1, 1, 2, 2, 7, 7),
    "nopad": (2, 3, 5, 3, 1, 1, 0, 1, 6, 6),
    "groups2": (2, 4, 6, 3, 2, 1, 1, 1, 6, 5),
    "depthwise": (2, 6, 6, 3, 6, 1, 1, 1, 6, 6),
    "pointwise": (2, 4, 6, 1, 1, 1, 0, 1, 5, 5),
    "pointwise_s2": (2, 4, 6, 1, 1, 2, 0, 1, 6, 6),
    "batch1": (1, 4, 6, 3, 1, 1, 1, 1, 6, 6),
    "pointwise_batch1": (1, 4, 6, 1, 1, 1, 0, 1, 5, 5),  # one example's 1x1 conv runs as a matmul
    "k5": (2, 3, 4, 5, 1, 1, 2, 1, 7, 7),
}


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch):
    """Make the fused strategy split even these tiny batches into several chunks."""
    monkeypatch.setattr(S, "FUSED_CHUNK_ELEMENTS", 200)


def _inputs(geom, subset, n, bias=False, dtype=torch.float32, seed=0):
    b, i, o, k, g, s, p, d, h, w = geom
    gen = torch.Generator().manual_seed(seed)

    def r(*shape, positive=False):
        draw = torch.rand if positive else torch.randn
        t = draw(*shape, generator=gen, dtype=dtype)
        return t.requires_grad_()

    x = r(b, i, h, w)
    weight = r(n, o, i // g, k, k)
    att = {}
    if "c" in subset:
        att["channel"] = r(b, i, positive=True)
    if "f" in subset:
        att["filter"] = r(b, o, positive=True)
    if "s" in subset:
        att["spatial"] = r(b, k, k, positive=True)
    if "k" in subset:
        att["kernel"] = r(b, n, positive=True)
    if bias:
        att["bias"] = r(n, o)
    return x, weight, att, dict(stride=s, padding=p, dilation=d, groups=g)


def per_example_loop(x, weight, channel=None, filter=None, spatial=None, kernel=None, bias=None, *, stride, padding,
                     dilation, groups):
    """The op written out per example: its own kernel, then a plain conv (independent of the package)."""
    outs = []
    for b in range(x.shape[0]):
        k = sum((kernel[b, i] if kernel is not None else 1.0) * weight[i] for i in range(weight.shape[0]))
        if spatial is not None:
            k = k * spatial[b]
        bb = None
        if bias is not None:
            bb = sum((kernel[b, i] if kernel is not None else 1.0) * bias[i] for i in range(bias.shape[0]))
        xb = x[b:b + 1] if channel is None else x[b:b + 1] * channel[b].view(1, -1, 1, 1)
        yb = F.conv2d(xb, k, None, stride, padding, dilation, groups)
        if filter is not None:
            yb = yb * filter[b].view(1, -1, 1, 1)
        outs.append(yb if bb is None else yb + bb.view(1, -1, 1, 1))
    return torch.cat(outs)


def _run(strategy, x, weight, att, geo, grad_out=None):
    if strategy == LOOP:
        out = per_example_loop(x, weight, **att, **geo)
    else:
        out = dynamic_conv2d(x, weight, **att, **geo, strategy=strategy)
    if grad_out is None:
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    grads = torch.autograd.grad(out, [x, weight, *att.values()], grad_out)
    return out, grads, grad_out


def _assert_all_agree(x, weight, att, geo, names=(LOOP, *EXACT), rtol=1e-4, atol=1e-5):
    results = {}
    grad_out = None
    for name in names:
        out, grads, grad_out = _run(name, x, weight, att, geo, grad_out)
        results[name] = (out, grads)
    labels = ["output", "input", "weight", *att]
    for a, b in itertools.combinations(names, 2):  # every strategy against every other
        (oa, ga), (ob, gb) = results[a], results[b]
        for label, ta, tb in zip(labels, (oa, *ga), (ob, *gb)):
            scale = tb.abs().max().item() + 1e-12
            torch.testing.assert_close(ta, tb, rtol=rtol, atol=atol * scale,
                                       msg=lambda m, a=a, b=b, label=label: f"{a} vs {b}, {label}: {m}")


# spatial attention is never built for a pointwise conv: those pairs are not cases
CASES = [(g, s) for g in GEOMETRIES for s in SUBSETS if not ("s" in s and GEOMETRIES[g][3] == 1)]


@pytest.mark.parametrize("geom, subset", CASES, ids=[f"{g}-{''.join(sorted(s))}" for g, s in CASES])
def test_odconv_subsets_agree(geom, subset):
    g = GEOMETRIES[geom]
    n = 3 if "k" in subset else 1
    x, w, att, geo = _inputs(g, subset, n)
    _assert_all_agree(x, w, att, geo)


@pytest.mark.parametrize("geom", ["plain", "stride2", "groups2", "depthwise", "pointwise", "batch1"])
@pytest.mark.parametrize("bias", [False, True])
def test_kernel_mixing_with_bias_agrees(geom, bias):
    """CondConv / DyConv: kernel attention only, biases mixed like the kernels (n = 1 too)."""
    for n in (1, 4):
        x, w, att, geo = _inputs(GEOMETRIES[geom], "k", n, bias=bias)
        _assert_all_agree(x, w, att, geo)


@pytest.mark.parametrize("strategy", EXACT)
def test_gradcheck_float64(strategy):
    small, pointwise_batch1 = (2, 2, 2, 3, 1, 2, 1, 1, 4, 4), (1, 3, 2, 1, 1, 1, 0, 1, 3, 3)
    for geom, subset, n, bias in [(small, "cfsk", 2, False), (small, "k", 2, True), (small, "s", 1, False),
                                  (small, "cs", 1, False), (pointwise_batch1, "cfk", 2, True),
                                  (pointwise_batch1, "cf", 1, False)]:
        x, w, att, geo = _inputs(geom, subset, n, bias=bias, dtype=torch.float64)
        names = list(att)

        def f(x, w, *a, names=names, geo=geo):
            return dynamic_conv2d(x, w, **dict(zip(names, a)), **geo, strategy=strategy)

        assert torch.autograd.gradcheck(f, (x, w, *att.values()), eps=1e-6, atol=1e-6)


# (geometry, attentions, n): every kind of conv the models use
BF16_CASES = [("plain", "cfsk", 3), ("stride2", "cs", 1), ("groups2", "fk", 4), ("depthwise", "csk", 3),
              ("pointwise", "cfk", 4), ("pointwise_batch1", "cfk", 4), ("plain", "k", 4)]


@pytest.mark.parametrize("mode", ["bfloat16", "autocast"])
@pytest.mark.parametrize("strategy", EXACT)
def test_bfloat16_matches_float32(strategy, mode):
    """bfloat16 tensors, or float32 tensors under bfloat16 autocast: output and all gradients
    match the float32 per-example loop within bfloat16 precision (8-bit mantissa)."""
    for geom, subset, n in BF16_CASES:
        x, w, att, geo = _inputs(GEOMETRIES[geom], subset, n, bias="k" == subset)
        ref, ref_grads, grad_out = _run(LOOP, x, w, att, geo)
        if mode == "bfloat16":
            args = [t.detach().bfloat16().requires_grad_() for t in (x, w, *att.values())]
            out = dynamic_conv2d(args[0], args[1], **dict(zip(att, args[2:])), **geo, strategy=strategy)
            assert out.dtype == torch.bfloat16
            grads = torch.autograd.grad(out, args, grad_out.bfloat16())
        else:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = dynamic_conv2d(x, w, **att, **geo, strategy=strategy)
            grads = torch.autograd.grad(out, [x, w, *att.values()], grad_out.to(out.dtype))
            assert all(g.dtype == torch.float32 for g in grads)  # gradients in the parameters' dtype
        for label, a, b in zip(["output", "input", "weight", *att], (out, *grads), (ref, *ref_grads)):
            scale = b.abs().max().item()
            torch.testing.assert_close(a.float(), b, rtol=2e-2, atol=2e-2 * scale,
                                       msg=lambda m, g=geom, s=subset, lb=label: f"{g}-{s} {lb}: {m}")


def test_fused_inner_kernels_and_chunking_agree(monkeypatch):
    """Both inner kernels (grouped conv: fused; patches + bmm: fused_bmm), in one chunk per
    example, several examples per chunk, and the whole batch in one chunk."""
    x, w, att, geo = _inputs((5, 4, 6, 3, 2, 1, 1, 1, 6, 6), "cfsk", 3)
    for chunk in (1, 200, 10 ** 9):
        monkeypatch.setattr(S, "FUSED_CHUNK_ELEMENTS", chunk)
        _assert_all_agree(x, w, att, geo, names=[LOOP, "fused", "fused_bmm"])


def test_partial_requires_grad():
    """Only some inputs need gradients (e.g. the first layer's image)."""
    x, w, att, geo = _inputs(GEOMETRIES["plain"], "cfsk", 2)
    x = x.detach()
    ref = dynamic_conv2d(x, w, **att, **geo, strategy="grouped")
    g_ref = torch.autograd.grad(ref.sum(), [w, att["kernel"]])
    for name in EXACT:
        out = dynamic_conv2d(x, w, **att, **geo, strategy=name)
        g = torch.autograd.grad(out.sum(), [w, att["kernel"]])
        for a, b in zip(g, g_ref):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_channels_last_input_agrees():
    x, w, att, geo = _inputs(GEOMETRIES["plain"], "cfsk", 2)
    ref = dynamic_conv2d(x, w, **att, **geo, strategy="grouped")
    xcl = x.detach().contiguous(memory_format=torch.channels_last)
    for name in EXACT:
        torch.testing.assert_close(dynamic_conv2d(xcl, w, **att, **geo, strategy=name), ref, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------ layers
def _layers():
    torch.manual_seed(0)
    yield ODConv2d(8, 16, 3, padding=1, kernel_num=4)
    yield ODConv2d(8, 16, 3, stride=2, padding=1, kernel_num=1)
    yield ODConv2d(16, 16, 3, padding=1, groups=16, kernel_num=4)
    yield ODConv2d(8, 16, 1, kernel_num=4)
    yield CondConv2d(8, 16, 3, padding=1, num_experts=4, bias=True)
    yield DyConv2d(8, 16, 3, stride=2, padding=1, kernel_num=4, bias=True)


@pytest.mark.parametrize("layer", list(_layers()), ids=lambda m: type(m).__name__)
def test_layers_agree_across_strategies(layer):
    x = torch.randn(3, layer.in_planes, 8, 8, generator=torch.Generator().manual_seed(2))
    results = {}
    for name in ["auto", *EXACT]:
        layer.zero_grad()
        xg = x.clone().requires_grad_()
        with use_strategy(name):
            out = layer(xg)
        out.square().mean().backward()
        results[name] = [out, xg.grad] + [p.grad.clone() for p in layer.parameters() if p.grad is not None]
    for name, res in results.items():
        assert len(res) == len(results["grouped"])
        for a, b in zip(res, results["grouped"]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


# ------------------------------------------------------------------------ choice, overrides
def test_bad_strategy_name_lists_valid_ones():
    with pytest.raises(ValueError, match="valid: auto, bmm"):
        ODConv2d(4, 4, 3, strategy="nope")
    layer = ODConv2d(4, 4, 3)
    with pytest.raises(ValueError, match="fused"):
        layer.strategy = "nope"
    with pytest.raises(ValueError, match="grouped"):
        set_strategy(layer, "nope")
    with pytest.raises(ValueError, match="mix"):
        with use_strategy("nope"):
            pass
    x = torch.randn(1, 4, 5, 5)
    with pytest.raises(ValueError, match="valid"):
        dynamic_conv2d(x, torch.randn(1, 4, 4, 3, 3), strategy="nope")
    assert valid_strategies()[0] == "auto"


def test_overrides(monkeypatch):
    calls = []
    for name in EXACT:
        counted = (lambda n, f: lambda *a: calls.append(n) or f(*a))(name, STRATEGIES[name])
        monkeypatch.setitem(STRATEGIES, name, counted)
    layer = ODConv2d(4, 8, 3, padding=1)
    assert layer.strategy == "auto"
    x = torch.randn(2, 4, 6, 6)
    layer(x)
    assert calls == ["folded"]  # auto: a 6x6 map is no small map; 2 examples' kernels are few (test_auto_rule)
    layer.strategy = "bmm"
    layer(x)
    assert calls[-1] == "bmm"
    with use_strategy("mix"):  # the context manager wins over the layer's own choice
        layer(x)
        assert calls[-1] == "mix"
        with use_strategy(None):  # ... and can be lifted
            layer(x)
            assert calls[-1] == "bmm"
    model = torch.nn.Sequential(ODConv2d(4, 8, 3, padding=1), CondConv2d(8, 8, 3, padding=1, num_experts=2))
    assert set_strategy(model, "fused") == 2
    model(x)
    assert calls[-2:] == ["fused", "fused"]


def test_auto_rule():
    w4 = torch.randn(4, 64, 64, 3, 3, requires_grad=True)
    kern = torch.rand(8, 4)
    # batch 1: aggregate one kernel and run one plain conv, the channel and filter attentions
    # multiplied into the kernel when it is small against the maps (2 * O*Cg*kk < C*H*W + O*L)
    with torch.no_grad():
        # 3x3, 64->64 at 32x32: 2 * 36864 kernel elements against 65536 + 65536 map elements
        assert choose_strategy(torch.randn(1, 64, 32, 32), w4, kernel=kern[:1], padding=1) == "folded"
        # ... at 16x16: 2 * 36864 against 16384 + 16384
        assert choose_strategy(torch.randn(1, 64, 16, 16), w4, kernel=kern[:1], padding=1) == "grouped"
        w_pw = torch.randn(4, 16, 32, 1, 1)  # pointwise 32->16 at 32x32: 2 * 512 against 49152
        assert choose_strategy(torch.randn(1, 32, 32, 32), w_pw, kernel=kern[:1]) == "folded"
        w_pw = torch.randn(4, 64, 192, 1, 1)  # 192->64 at 8x8: 2 * 12288 against 16384
        assert choose_strategy(torch.randn(1, 192, 8, 8), w_pw, kernel=kern[:1]) == "grouped"
    # large feature maps, the batch's kernels (64 * 36864 elements) large: per-example kernels
    # built chunk by chunk (fused), training or not
    kern64 = torch.rand(64, 4)
    assert choose_strategy(torch.randn(64, 64, 32, 32), w4, kernel=kern64, padding=1) == "fused"
    with torch.no_grad():
        assert choose_strategy(torch.randn(64, 64, 32, 32), w4, kernel=kern64, padding=1) == "fused"
    # ... the batch's kernels few (8 * 36864 elements): one grouped conv, attentions folded in
    assert choose_strategy(torch.randn(8, 64, 32, 32), w4, kernel=kern, padding=1) == "folded"
    # n * L small: mix the outputs of the stacked kernels
    assert choose_strategy(torch.randn(8, 64, 4, 4), w4, kernel=kern, padding=1) == "mix"
    # ... on small maps only: one kernel with spatial attention at 8x8 (n * L = 64) builds
    # per-example kernels; at 4x4 it mixes
    spat64 = torch.rand(64, 3, 3)
    assert choose_strategy(torch.randn(64, 64, 8, 8), w4[:1], spatial=spat64, padding=1) == "fused"
    assert choose_strategy(torch.randn(64, 64, 4, 4), w4[:1], spatial=spat64, padding=1) == "mix"
    # pointwise on maps of 16x16 and more: attentions folded into the few (8 * 4096 elements)
    # per-example kernels; many kernels (1024 * 4096): batched matmul
    w1 = torch.randn(4, 64, 64, 1, 1)
    assert choose_strategy(torch.randn(8, 64, 16, 16), w1, kernel=kern) == "folded"
    assert choose_strategy(torch.randn(1024, 64, 16, 16), w1, kernel=torch.rand(1024, 4)) == "bmm"
    # ... on maps of at most 8x8, training or not: the reference
    assert choose_strategy(torch.randn(8, 64, 8, 8), w1, kernel=kern) == "grouped"
    w1g = w1.clone().requires_grad_(True)
    assert choose_strategy(torch.randn(8, 64, 8, 8), w1g, kernel=kern) == "grouped"
    # depthwise: the channel attention folded into the 9 taps of each example's kernels, but
    # the reference (one depthwise conv over B*C channels) on 4x4 maps
    wd = torch.randn(4, 64, 1, 3, 3)
    assert choose_strategy(torch.randn(8, 64, 8, 8), wd, kernel=kern, padding=1, groups=64) == "folded"
    assert choose_strategy(torch.randn(8, 64, 4, 4), wd, kernel=kern, padding=1, groups=64) == "grouped"
    # ... by the input map: a stride-2 conv of an 8x8 map (4x4 out) folds; so does batch 1
    assert choose_strategy(torch.randn(8, 64, 8, 8), wd, kernel=kern, stride=2, padding=1, groups=64) == "folded"
    with torch.no_grad():
        assert choose_strategy(torch.randn(1, 64, 8, 8), wd, kernel=kern[:1], padding=1, groups=64) == "folded"
        assert choose_strategy(torch.randn(1, 64, 4, 4), wd, kernel=kern[:1], padding=1, groups=64) == "grouped"
    # kernel shared by the batch: plain conv
    assert choose_strategy(torch.randn(8, 64, 8, 8), w4[:1], channel=torch.rand(8, 64), padding=1) == "grouped"


def test_tune_mode_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("ODCONV_TUNE_CACHE", str(tmp_path / "tune.json"))
    import odconv.autotune as A

    monkeypatch.setattr(A, "_default_cache", A.TuningCache())
    set_auto_mode("tune")
    try:
        layer = ODConv2d(4, 8, 3, padding=1)
        x = torch.randn(2, 4, 6, 6)
        ref = dynamic_conv2d(x, layer.weight, kernel=torch.full((2, 4), 0.25), padding=1, strategy="grouped")
        out = dynamic_conv2d(x, layer.weight, kernel=torch.full((2, 4), 0.25), padding=1)
        torch.testing.assert_close(out, ref)
        table = A.default_tuning_cache().table
        assert len(table) == 1 and list(table.values())[0] in STRATEGIES
        assert (tmp_path / "tune.json").exists()
        # batch 1 is measured too (the rule's fixed choice there is not the fastest everywhere)
        with torch.no_grad():
            name = choose_strategy(x[:1], layer.weight, kernel=torch.full((1, 4), 0.25), padding=1)
        key = next(k for k in table if k.startswith("(1, 4, 6, 6)"))
        assert table[key] == name and key.endswith("|infer") and len(table) == 2
        # the file holds both choices; a fresh process (a new default cache) uses them untimed
        assert json.loads((tmp_path / "tune.json").read_text()) == table
        monkeypatch.setattr(A, "_default_cache", A.TuningCache())
        monkeypatch.setattr(A, "time_callable", lambda *a, **k: pytest.fail("a cached choice was timed again"))
        with torch.no_grad():
            assert choose_strategy(x[:1], layer.weight, kernel=torch.full((1, 4), 0.25), padding=1) == name
    finally:
        set_auto_mode("rule")
    with pytest.raises(ValueError):
        set_auto_mode("fastest")


def test_tuning_cache_file_is_complete_json_and_reloads(tmp_path, monkeypatch):
    import odconv.atomic_files as AF
    from odconv.autotune import TuningCache

    path = tmp_path / "sub" / "tune.json"  # the folder does not exist yet
    first = TuningCache(path)
    first.store("(2, 4, 6, 6)|a|train", "fused")
    first.store("(1, 4, 6, 6)|b|infer", "folded")
    # the file is one complete JSON document holding the whole table, and nothing else is left
    assert json.loads(path.read_text()) == {"(2, 4, 6, 6)|a|train": "fused", "(1, 4, 6, 6)|b|infer": "folded"}
    assert sorted(p.name for p in path.parent.iterdir()) == ["tune.json"]
    # a second cache on the same file finds what the first saved (unknown strategy names dropped)
    path.write_text(json.dumps({**json.loads(path.read_text()), "(9,)|c|infer": "no-such-strategy"}))
    second = TuningCache(path)
    assert second.lookup("(2, 4, 6, 6)|a|train") == "fused"
    assert second.table == {"(2, 4, 6, 6)|a|train": "fused", "(1, 4, 6, 6)|b|infer": "folded"}
    # a save that fails midway (here: json.dump raising after a partial write) keeps the old file whole
    before = path.read_text()

    def broken_dump(data, f, **kwargs):
        f.write('{"(2, 4, 6, 6)|a|tr')
        raise OSError("disk full")

    monkeypatch.setattr(AF, "json", SimpleNamespace(dump=broken_dump))
    with pytest.raises(OSError, match="disk full"):
        second.store("(3,)|d|infer", "mix")
    assert path.read_text() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["tune.json"]
    with pytest.raises(ValueError, match="no file"):
        TuningCache().save()


@pytest.mark.slow
def test_compiled_strategy_agrees():
    x, w, att, geo = _inputs(GEOMETRIES["plain"], "cfsk", 2)
    _assert_all_agree(x, w, att, geo, names=[LOOP, "compiled"])
