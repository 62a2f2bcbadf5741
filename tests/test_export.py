"""Dynamic-conv models export with a dynamic batch dimension (torch.export, ONNX if
installed) and the exported program matches eager at batch sizes other than the export one;
the list of exportable strategies is true both ways (each listed one exports, each other
one fails to)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from odconv import EXPORTABLE_STRATEGIES, STRATEGIES, CondConv2d, DyConv2d, ODConv2d, set_strategy, use_strategy
from odconv.export import export_model, export_onnx

HAS_ONNX = importlib.util.find_spec("onnx") is not None and importlib.util.find_spec("onnxscript") is not None


def _small(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "odconv":
        convs = [ODConv2d(3, 8, 3, padding=1, kernel_num=4), ODConv2d(8, 8, 3, stride=2, padding=1, kernel_num=1),
                 ODConv2d(8, 8, 3, padding=1, groups=8, kernel_num=4), ODConv2d(8, 16, 1, kernel_num=4)]
    elif kind == "condconv":
        convs = [CondConv2d(3, 8, 3, padding=1, num_experts=4, bias=True), CondConv2d(8, 16, 3, stride=2, padding=1)]
    else:
        convs = [DyConv2d(3, 8, 3, padding=1, kernel_num=4, bias=True), DyConv2d(8, 16, 1, kernel_num=4)]
    layers: list[nn.Module] = []
    for c in convs:
        layers += [c, nn.BatchNorm2d(c.out_planes), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(convs[-1].out_planes, 5))


def _check(program, model, batches, hw=12):
    model.eval()
    for b in batches:
        x = torch.randn(b, 3, hw, hw)
        with torch.no_grad():
            ref = model(x)
        out = program.module()(x)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5 * (1 + ref.abs().max().item()))


@pytest.mark.parametrize("kind", ["odconv", "condconv", "dyconv"])
@pytest.mark.parametrize("layer_strategy", ["auto", "grouped", "fused"])
def test_export_dynamic_batch(kind, layer_strategy):
    model = _small(kind)
    set_strategy(model, layer_strategy)  # even a batch-baking layer strategy exports batch-agnostic
    program = export_model(model, torch.randn(3, 3, 12, 12))
    _check(program, model, [1, 2, 7])


def test_export_model_builder():
    from odconv import build_model

    model = build_model("cifar_resnet18", num_classes=10, conv="odconv4x", width=0.125)
    program = export_model(model, torch.randn(2, 3, 32, 32))
    _check(program, model, [1, 5], hw=32)


@pytest.mark.parametrize("strategy", EXPORTABLE_STRATEGIES)
def test_each_exportable_strategy_exports(strategy):
    model = _small("odconv")
    program = export_model(model, torch.randn(3, 3, 12, 12), strategy=strategy)
    _check(program, model, [1, 2, 7])


def _raw_export(model, strategy, onnx_path=None):
    """Export with ``strategy`` forced, bypassing export_model's check."""
    batch = torch.export.Dim("batch", min=1, max=64)
    with use_strategy(strategy), torch.no_grad():
        if onnx_path is None:
            program = torch.export.export(model.eval(), (torch.randn(3, 3, 12, 12),), dynamic_shapes=({0: batch},))
            _check(program, model, [1, 2, 7])
        else:
            torch.onnx.export(model.eval(), (torch.randn(3, 3, 12, 12),), onnx_path, dynamo=True,
                              dynamic_shapes=({0: batch},))


# How each strategy that is not listed as exportable fails when forced through (torch 2.13):
# "export": torch.export itself, since the ``fused`` strategies loop over batch chunks in Python
# and the batch becomes a constant; "onnx": torch.export keeps the batch symbolic (the program
# is right at every batch), but these run one conv with ``groups = groups * batch``, and ONNX's
# Conv takes ``group`` only as a constant attribute.
EXPORT_FAILURES = {"fused": "export", "fused_bmm": "export", "grouped": "onnx", "folded": "onnx"}


def _root_cause(err: BaseException) -> BaseException:
    while err.__cause__ is not None:
        err = err.__cause__
    return err


def test_every_strategy_is_listed_either_way():
    assert set(EXPORT_FAILURES) == set(STRATEGIES) - set(EXPORTABLE_STRATEGIES)


@pytest.mark.parametrize("strategy", sorted(set(STRATEGIES) - set(EXPORTABLE_STRATEGIES)))
def test_other_strategies_are_rejected_and_do_not_export(strategy, tmp_path):
    with pytest.raises(ValueError, match="dynamic batch"):
        export_model(_small("odconv"), torch.randn(2, 3, 12, 12), strategy=strategy)
    with pytest.raises(ValueError, match="dynamic batch"):
        export_onnx(_small("odconv"), torch.randn(2, 3, 12, 12), str(tmp_path / "m.onnx"), strategy=strategy)
    # ... and the rejection is needed: forced through, torch.export or the ONNX exporter fails
    if EXPORT_FAILURES[strategy] == "export":
        with pytest.raises(torch._dynamo.exc.UserError, match=r"Constraints violated \(batch\)") as exc:
            _raw_export(_small("odconv"), strategy)
        assert "specialized it to be a constant (3)" in str(exc.value)  # the example's batch, baked in
        return
    _raw_export(_small("odconv"), strategy)  # torch.export succeeds (and matches eager at batches 1, 2, 7)
    if not HAS_ONNX:
        pytest.fail(f"{strategy} exports with torch.export; its ONNX export cannot be checked without onnx")
    with pytest.raises(torch.onnx.OnnxExporterError, match="'group': SymbolicTensor") as exc:
        _raw_export(_small("odconv"), strategy, str(tmp_path / "m.onnx"))
    root = _root_cause(exc.value)
    assert isinstance(root, TypeError) and "Unsupported attribute type" in str(root)
    assert not (tmp_path / "m.onnx").exists()


def test_export_rule_picks_exportable_strategies(monkeypatch):
    """Under export, "auto" picks only exportable strategies, whatever the layers say: ``mix``
    when n * L < MIX_MAX_NL, else ``bmm``, at any batch; where the eager rule picks another."""
    from odconv.autotune import MIX_MAX_NL, rule

    # (weight shape (n, O, Cg, kh, kw), positions L, the choice under export, the eager one at batch 2)
    cases = [((4, 8, 8, 3, 3), 16, "mix", "mix"),
             ((4, 8, 8, 3, 3), 1024, "bmm", "folded"),
             ((4, 8, 8, 1, 1), 64, "bmm", "grouped"),
             ((4, 8, 1, 3, 3), 64, "bmm", "folded"),  # depthwise
             ((1, 8, 8, 3, 3), MIX_MAX_NL - 1, "mix", "folded"),
             ((1, 8, 8, 3, 3), MIX_MAX_NL, "bmm", "folded")]
    for shape, positions, exported, eager in cases:
        groups = shape[1] // shape[2]
        for batch in (1, 2, 4096):
            assert rule(shape, positions, groups, True, exporting=True, batch=batch,
                        input_elements=8 * positions) == exported, (shape, positions, batch)
        assert rule(shape, positions, groups, True, exporting=False, batch=2, input_elements=8 * positions) == eager
    # an actual export of a model whose layers ask for "fused": only the rule's choices run
    called: list[str] = []
    for name, fn in list(STRATEGIES.items()):
        def spy(*args, _name=name, _fn=fn):
            called.append(_name)
            return _fn(*args)
        monkeypatch.setitem(STRATEGIES, name, spy)
    model = _small("odconv")  # at 12x12: n*L = 4*144 (bmm), then 1*36, 4*36, 4*36 (mix)
    set_strategy(model, "fused")
    export_model(model, torch.randn(3, 3, 12, 12))
    assert called == ["bmm", "mix", "mix", "mix"]


@pytest.mark.skipif(not HAS_ONNX, reason="onnx is not installed (pip install .[onnx])")
def test_onnx_dynamic_batch(tmp_path):
    import onnx

    model = _small("odconv").eval()
    path = str(tmp_path / "odconv.onnx")
    export_onnx(model, torch.randn(2, 3, 12, 12), path)
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param and not dim.dim_value  # symbolic batch
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime as ort

        sess = ort.InferenceSession(path)
        for b in (1, 5):
            x = torch.randn(b, 3, 12, 12)
            with torch.no_grad():
                ref = model(x).numpy()
            (out,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
            assert abs(out - ref).max() <= 1e-4 * (1 + abs(ref).max())
