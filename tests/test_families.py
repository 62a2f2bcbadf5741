"""The conv-family registry (odconv/families.py): the built-in families, a family registered
by decorator, one installed as a package (entry point) and run through the sweep machinery in
a subprocess, and the registration errors."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import odconv.families as F
from odconv import (
    ConvFamily,
    ConvFamilyError,
    build_model,
    conv_families,
    count_macs,
    count_params,
    get_conv_family,
    make_conv,
    parse_conv_spec,
    register_conv_family,
    unregister_conv_family,
)
from odconv.families import TemperatureSchedule
from odconv.model_build import current_model_build

ROOT = Path(__file__).resolve().parents[1]
TINY = {"width": 0.125}

# The toy family's package: a static conv scaled per example by 2 * sigmoid(MLP(GAP(x))), the
# MLP's hidden width the spec's n (toyconv<n>x), with its own MAC count.
TOY_SOURCE = textwrap.dedent('''
    """A toy dynamic conv family for odconv-bench."""
    import torch
    from torch import nn

    from odconv.families import ConvFamily
    from odconv.ops.primitives import conv_output_hw


    class ToyConv2d(nn.Module):
        def __init__(self, cin, cout, k, stride, padding, dilation, groups, bias, hidden):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, dilation=dilation, groups=groups,
                                  bias=bias)
            self.fc1 = nn.Linear(cin, hidden)
            self.fc2 = nn.Linear(hidden, 1)

        def forward(self, x):
            scale = 2 * torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3))))))
            return self.conv(x) * scale.view(-1, 1, 1, 1)


    class ToyConvFamily(ConvFamily):
        name = "toyconv"
        examples = ("toyconv2x",)
        layer_types = (ToyConv2d,)

        def build(self, spec, cin, cout, k, *, stride, padding, dilation, groups, bias, **options):
            return ToyConv2d(cin, cout, k, stride, padding, dilation, groups, bias, spec.num)

        def mac_breakdown(self, module, in_hw):
            c = module.conv
            out_hw = conv_output_hw(in_hw, c.kernel_size[0], c.stride[0], c.padding[0], c.dilation[0])
            conv = c.out_channels * (c.in_channels // c.groups) * c.kernel_size[0] ** 2 * out_hw[0] * out_hw[1]
            hidden = module.fc1.out_features
            attention = c.in_channels * (in_hw[0] * in_hw[1] + hidden) + hidden
            return {"conv": conv, "aggregation": 0, "attention": attention,
                    "modulation": c.out_channels * out_hw[0] * out_hw[1]}

        def temperature_schedule(self, init, final, epochs):
            return None
''')


def load_toy(path: Path, name: str):
    path.mkdir(parents=True, exist_ok=True)
    (path / f"{name}.py").write_text(TOY_SOURCE)
    spec = importlib.util.spec_from_file_location(name, path / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def toy(tmp_path):
    """The toy family registered (the decorator, called on the class), unregistered after."""
    mod = load_toy(tmp_path / "src", "toy_family_b")
    register_conv_family(mod.ToyConvFamily)
    try:
        yield mod
    finally:
        unregister_conv_family("toyconv")


# --------------------------------------------------------------------------- (a) built-in families


@pytest.mark.parametrize("name, examples", [
    ("static", ["static"]), ("odconv", ["odconv1x", "odconv4x", "odconv1x-channel+spatial", "odconv4x-filter+kernel"]),
    ("condconv", ["condconv8x"]), ("dyconv", ["dyconv4x"]), ("kw", ["kw1d4x", "kw1d2x", "kw1x", "kw2x", "kw4x"]),
])
def test_builtin_families_are_registered_and_round_trip(name, examples):
    fam = get_conv_family(name)
    assert list(conv_families())[:5] == ["static", "odconv", "condconv", "dyconv", "kw"]
    assert list(fam.examples) == examples
    for text in examples:
        spec = parse_conv_spec(text)
        assert spec.kind == name and spec.family is fam and str(spec) == text
        assert fam.format(fam.parse(text)) == text


def test_builtin_schedules_and_placements():
    assert get_conv_family("static").temperature_schedule(30, 1, 10) is None
    assert get_conv_family("condconv").temperature_schedule(30, 1, 10) is None
    for name in ("odconv", "dyconv"):
        s = get_conv_family(name).temperature_schedule(30.0, 1.0, 10.0)
        assert (s.start, s.end, s.epochs, s.value(5.0)) == (30.0, 1.0, 10.0, 15.5)
    cc = get_conv_family("condconv").placement_defaults("paper", "resnet")
    assert cc.last_blocks == 3 and cc.classifier and cc.shared_router and not cc.downsample
    dy = get_conv_family("dyconv").placement_defaults("paper", "mobilenetv2")
    assert dy.downsample and dy.head and not dy.classifier
    assert get_conv_family("odconv").placement_defaults("paper", "resnet") == \
        get_conv_family("odconv").placement_defaults("matched", "resnet")


# --------------------------------------------------------------------------- (b) a registered family


def test_registered_family_works_everywhere_a_spec_works(toy):
    assert str(parse_conv_spec(" ToyConv3x ")) == "toyconv3x" and "toyconv" in conv_families()
    conv = make_conv("toyconv2x", 8, 16, 3)
    assert isinstance(conv, toy.ToyConv2d) and conv(torch.randn(2, 8, 6, 6)).shape == (2, 16, 6, 6)
    expected = get_conv_family("toyconv").mac_breakdown(conv, (6, 6))
    assert count_macs(conv, (8, 6, 6)) == sum(expected.values())     # its own count, not the generic one
    with pytest.raises(ValueError, match=r"option\(s\) \['reduction'\] do not apply to toyconv"):
        make_conv("toyconv2x", 8, 16, 3, reduction=0.5)
    with pytest.raises(ValueError, match="bad conv spec 'toyconv2x-channel'.*toyconv takes no attention"):
        parse_conv_spec("toyconv2x-channel")
    torch.manual_seed(0)
    model = build_model("cifar_resnet18", num_classes=10, conv="toyconv2x", **TINY)
    toys = [m for m in model.modules() if isinstance(m, toy.ToyConv2d)]
    assert len(toys) == 16 and model(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    static = build_model("cifar_resnet18", num_classes=10, conv="static", **TINY)
    extra = sum(m.fc1.weight.numel() + m.fc1.bias.numel() + m.fc2.weight.numel() + 1 for m in toys)
    assert count_params(model) == count_params(static) + extra


def test_a_family_without_its_own_count_is_counted_generically(toy):
    class Plain(toy.ToyConv2d):
        pass

    @register_conv_family
    class Uncounted(toy.ToyConvFamily):
        name = "uncountedconv"
        examples = ("uncountedconv2x",)
        layer_types = (Plain,)
        mac_breakdown = ConvFamily.mac_breakdown       # the default: the layer has no mac_breakdown

        def build(self, spec, cin, cout, k, *, stride, padding, dilation, groups, bias, **options):
            return Plain(cin, cout, k, stride, padding, dilation, groups, bias, spec.num)

    try:
        conv = make_conv("uncountedconv2x", 8, 16, 3)
        # what executes, by FlopCounterMode: the conv and the two Linear layers (not the pooling)
        assert count_macs(conv, (8, 6, 6)) == 16 * 8 * 9 * 36 + 8 * 2 + 2 * 1
    finally:
        unregister_conv_family("uncountedconv")


def test_family_hooks_share_parameters_across_a_model_and_pick_the_schedule(toy):
    """A family whose layers share parameters owned by the model (as KernelWarehouse's
    warehouses): begin_model makes the shared state, the builder uses it, end_model attaches it;
    and its own temperature schedule (1 -> 0 through its own setter) drives training."""
    from lightning_modules import ImageClassifier

    class SharedScale(nn.Module):
        def __init__(self, conv, shared):
            super().__init__()
            self.conv, self.shared_ref, self.t = conv, [shared], None

        def forward(self, x):
            return self.conv(x) * self.shared_ref[0]

    @register_conv_family
    class Shared(ConvFamily):
        name = "sharedconv"
        examples = ("sharedconv1x",)
        layer_types = (SharedScale,)

        def begin_model(self, spec, conv_options):
            return {"scale": nn.Parameter(torch.ones(())), "layers": 0}

        def build(self, spec, cin, cout, k, *, stride, padding, dilation, groups, bias, **options):
            build = current_model_build()
            if build is None:
                raise ValueError("sharedconv layers are built by build_model")
            build.state["layers"] += 1
            return SharedScale(nn.Conv2d(cin, cout, k, stride, padding, dilation, groups, bias), build.state["scale"])

        def end_model(self, model, state):
            model.shared_scale = state["scale"]

        def temperature_schedule(self, init, final, epochs):
            return TemperatureSchedule(1.0, 0.0, epochs, targets=lambda m: [x for x in m.modules()
                                                                           if isinstance(x, SharedScale)],
                                       setter=lambda m, v: setattr(m, "t", v))

    try:
        with pytest.raises(ValueError, match="built by build_model"):
            make_conv("sharedconv1x", 4, 4, 3)
        model = build_model("cifar_resnet18", num_classes=10, conv="sharedconv1x", **TINY)
        layers = [m for m in model.modules() if isinstance(m, SharedScale)]
        assert len(layers) == 16 and all(m.shared_ref[0] is model.shared_scale for m in layers)
        assert count_params(model) == count_params(build_model("cifar_resnet18", num_classes=10, **TINY)) + 1
        lm = ImageClassifier(conv="sharedconv1x", num_classes=10, model_options=TINY, temperature_epochs=2)
        assert lm.has_temperature
        assert lm.configure_callbacks()[0]._apply(lm, 0.5) == 0.75
        assert {m.t for m in lm.modules() if isinstance(m, SharedScale)} == {0.75}
    finally:
        unregister_conv_family("sharedconv")


# --------------------------------------------------------------------------- (d) errors


def test_unknown_family_lists_the_registered_ones():
    with pytest.raises(ValueError, match=r"unknown conv family 'nope'; registered: static, odconv, condconv, "
                                         r"dyconv, kw"):
        get_conv_family("nope")
    with pytest.raises(ValueError, match=r"bad conv spec 'nope4x'; valid: static, .*dyconv4x, kw1d4x.*"
                                         r"\(grammar: static \|"):
        parse_conv_spec("nope4x")


def test_bad_registrations_are_refused(toy):
    with pytest.raises(ConvFamilyError, match="'toyconv' is registered already"):
        register_conv_family(type("Again", (toy.ToyConvFamily,), {}))
    register_conv_family(toy.ToyConvFamily)           # the same family again: a no-op
    with pytest.raises(ConvFamilyError, match="'odconv' is registered already"):
        register_conv_family(type("Od", (toy.ToyConvFamily,), {"name": "odconv"}))
    with pytest.raises(ConvFamilyError, match="bad conv family name 'conv2'"):
        register_conv_family(type("Digit", (toy.ToyConvFamily,), {"name": "conv2"}))
    with pytest.raises(ConvFamilyError, match="gives no examples"):
        register_conv_family(type("NoEx", (toy.ToyConvFamily,), {"name": "noex", "examples": ()}))
    with pytest.raises(ConvFamilyError, match="example 'other3x' does not parse back"):
        register_conv_family(type("Wrong", (toy.ToyConvFamily,), {"name": "wrong", "examples": ("other3x",)}))
    greedy = type("Greedy", (toy.ToyConvFamily,), {"name": "od", "examples": ("od2x",),
                                                   "pattern": lambda self: re.compile(r"^od\w*?(\d+)x(?:-(.+))?$")})
    with pytest.raises(ConvFamilyError, match="its grammar claims 'odconv1x', a spec of family 'odconv'"):
        register_conv_family(greedy)
    with pytest.raises(ConvFamilyError, match="built in"):
        unregister_conv_family("odconv")
    assert list(conv_families()) == ["static", "odconv", "condconv", "dyconv", "kw", "toyconv"]


def test_entry_points_load_once_and_a_bad_one_is_a_clear_error(tmp_path, monkeypatch):
    load_toy(tmp_path, "toy_family_ep")
    monkeypatch.syspath_prepend(str(tmp_path))
    eps = [EntryPoint("toyconv", "toy_family_ep:ToyConvFamily", F.ENTRY_POINT_GROUP)]
    calls = []
    monkeypatch.setattr(F, "_entry_points", lambda: calls.append(1) or eps)
    monkeypatch.setitem(F._state, "entry_points", False)
    try:
        assert str(parse_conv_spec("toyconv2x")) == "toyconv2x" and "toyconv" in conv_families()
        conv_families()
        assert calls == [1]                             # loaded once
    finally:
        unregister_conv_family("toyconv")
    eps[:] = [EntryPoint("odconv", "toy_family_ep:ToyConvFamily", F.ENTRY_POINT_GROUP)]
    monkeypatch.setitem(F._state, "entry_points", False)
    monkeypatch.setattr(F, "_entry_point_errors", [])
    with pytest.raises(ConvFamilyError, match=r"entry point 'odconv' = 'toy_family_ep:ToyConvFamily'.*"
                                              r"named 'toyconv', not 'odconv'"):
        conv_families()
    assert "toyconv" not in F._FAMILIES


# --------------------------------------------------------------------------- (c) an installed package


def write_package(site: Path) -> None:
    """The toy family as an installed distribution: its module and a dist-info folder with its
    entry point (importlib.metadata finds dist-info folders on sys.path: no pip needed)."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "toy_conv_family.py").write_text(TOY_SOURCE)
    info = site / "toy_conv_family-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-conv-family\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{F.ENTRY_POINT_GROUP}]\ntoyconv = toy_conv_family:ToyConvFamily\n")


def test_an_installed_family_runs_through_a_sweep(tmp_path):
    site = tmp_path / "site"
    write_package(site)
    sweep = {"name": "toyfam", "base_config": str(ROOT / "experiments" / "smoke.yaml"),
             "overrides": {"trainer.max_epochs": 1, "trainer.limit_train_batches": 2, "trainer.limit_val_batches": 1,
                           "trainer.limit_test_batches": 1, "data.init_args.num_train": 160,
                           "data.init_args.num_test": 32},
             "grid": {"conv": ["static", "toyconv2x"], "seed": [0]}, "measure": {"enabled": False}}
    sweep_yaml = tmp_path / "toyfam.yaml"
    sweep_yaml.write_text(yaml.safe_dump(sweep))
    env = {k: v for k, v in os.environ.items() if k not in ("STORAGE", "WORKERS", "STUDY", "LAUNCHER")}
    env.update(PYTHONPATH=os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               CUDA_VISIBLE_DEVICES="", GPUS="cpu")
    r = subprocess.run([sys.executable, "-m", "sweeps", "run", str(sweep_yaml), "--results-root", str(tmp_path),
                        "--workers", "1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    records = {(rec := json.loads(p.read_text()))["params"]["model.conv"]: rec
               for p in (tmp_path / "toyfam" / "trials").glob("*.json")}
    assert sorted(records) == ["static", "toyconv2x"], records.keys()
    assert all(rec["status"] == "complete" for rec in records.values())
    # the toy family's counts, computed here with the same package registered in this process
    mod = load_toy(tmp_path / "here", "toy_family_c")
    register_conv_family(mod.ToyConvFamily)
    try:
        model = build_model("cifar_resnet18", num_classes=10, conv="toyconv2x", **TINY)
        assert records["toyconv2x"]["params_count"] == count_params(model) > records["static"]["params_count"]
        assert records["toyconv2x"]["macs"] == count_macs(model, (3, 16, 16))
    finally:
        unregister_conv_family("toyconv")
