"""The benchmark's kw_official section, on a stand-in checkout written by the test.

The official KernelWarehouse code is not shipped: the stand-in has the checkout's two files,
its imports (``modules.kernel_warehouse``, timm's ``DropPath`` and ``register_model``) and a
``kw_resnet18(**config)`` that takes the official config keywords. It builds this project's
model, with one of its KW layers' attention scaled when told to, so the section's check of
equal outputs can be seen to fail.
"""

from __future__ import annotations

import json
import math
import sys
import textwrap

import pytest

from odconv.bench import cli
from odconv.bench.kw_official import bench_kw_official, check_kw_checkout, official_kw_modules

STAND_IN = r'''
import json
import types
from pathlib import Path

from modules.kernel_warehouse import Warehouse_Manager
from timm.models.layers import DropPath
from timm.models.registry import register_model

import odconv
from odconv.layers.kernelwarehouse import set_warehouse_temperature

@register_model
def kw_resnet18(reduction, cell_num_ratio, cell_inplane_ratio, cell_outplane_ratio, sharing_range,
                nonlocal_basis_ratio, **kwargs):
    with open(Path(__file__).parent / "seen.jsonl", "a") as f:
        f.write(json.dumps(dict(reduction=reduction, cell_num_ratio=cell_num_ratio,
                                cell_inplane_ratio=cell_inplane_ratio, cell_outplane_ratio=cell_outplane_ratio,
                                sharing_range=sharing_range, nonlocal_basis_ratio=nonlocal_basis_ratio)) + "\n")
    spec = {0.25: "kw1d4x", 1.0: "kw1x"}[cell_num_ratio]
    model = odconv.build_model("resnet18", num_classes=1000, conv=spec, dropout=kwargs.get("dropout", 0.1))
    # a bound method, as the official class has: a deep copy's is bound to the copy
    model.net_update_temperature = types.MethodType(lambda self, t: set_warehouse_temperature(self, t), model)
    if Warehouse_Manager == "perturbed":
        model.layer1[0].conv1.attention.fc2.register_forward_hook(lambda m, i, out: out + 1.0)
    return model
'''


def write_checkout(root, perturbed: bool = False):
    (root / "modules").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "modules" / "kernel_warehouse.py").write_text(
        f"Warehouse_Manager = {'perturbed' if perturbed else 'official'!r}\n")
    (root / "models" / "kw_resnet.py").write_text(textwrap.dedent(STAND_IN))
    (root / "models" / "__init__.py").write_text("raise ImportError('models/__init__ must not be imported')\n")
    return root


@pytest.fixture(autouse=True)
def _forget_the_checkout():
    yield
    sys.modules.pop("modules.kernel_warehouse", None)
    sys.modules.pop("modules", None)


def test_a_checkout_without_the_official_files_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"no modules/kernel_warehouse.py, models/kw_resnet.py"):
        check_kw_checkout(str(tmp_path))
    assert check_kw_checkout(str(write_checkout(tmp_path / "kw"))) == tmp_path / "kw"


def test_the_builder_loads_by_file_with_timm_lent_for_the_import_only(tmp_path):
    builder = official_kw_modules(str(write_checkout(tmp_path)))
    assert builder.__name__ == "kw_resnet18"
    assert "timm" not in sys.modules and "timm.models.layers" not in sys.modules
    assert str(tmp_path) not in sys.path


def test_rows_pair_ours_with_the_official_module_and_static(tmp_path):
    root = write_checkout(tmp_path)
    rows, agreement = bench_kw_official(str(root), ("kw1d4x",), batch=2, image_size=32,
                                        device=cli.torch.device("cpu"), train_rounds=2, latency_rounds=2,
                                        log=lambda m: None)
    assert [(r["conv"], r["temperature"], r["mode"]) for r in agreement] == [
        ("kw1d4x", t, m) for t in (1.0, 0.3, 0.0) for m in ("train", "eval")]
    for r in agreement:            # the same weights, the same function, the same gradients
        assert r["max_output_diff"] == 0.0 and r["max_output"] > 0 and r["max_param_grad"] > 0
        if r["mode"] == "eval":
            assert r["max_input_grad_diff"] == r["max_param_grad_diff"] == 0.0
        else:                      # threaded reductions in backward: equal up to float rounding
            assert r["max_param_grad_diff"] <= 1e-5 * r["max_param_grad"]
    assert [(r["conv"], r["module"]) for r in rows] == [("kw1d4x", m) for m in ("static", "ours", "official")]
    seen = [json.loads(line) for line in (root / "models" / "seen.jsonl").read_text().splitlines()]
    # the official config of each spec (configs/resnet18/kw1d4x_resnet18.json, kw1x_resnet18.json)
    assert seen[0] == dict(reduction=0.0625, cell_num_ratio=0.25, cell_inplane_ratio=0.5, cell_outplane_ratio=0.5,
                           sharing_range=["layer", "conv"], nonlocal_basis_ratio=1.0)
    for r in rows:
        if r["module"] == "static":
            assert math.isnan(r["max_output_diff"])
        else:
            assert r["max_output_diff"] == 0.0          # the same weights, the same function
        assert r["train_step_ms"] > 0 and r["train_vs_official_q1"] <= r["train_vs_official_q3"]
    official = [r for r in rows if r["module"] == "official"]
    assert all(r["train_vs_official"] == 1.0 for r in official)
    ours = next(r for r in rows if r["module"] == "ours")
    assert ours["params_m"] == official[0]["params_m"] == 4.032        # the official code's 1/4x count


def test_a_different_function_shows_in_the_output_difference(tmp_path):
    rows, agreement = bench_kw_official(str(write_checkout(tmp_path, perturbed=True)), ("kw1x",), batch=2,
                                        image_size=32, device=cli.torch.device("cpu"), train_rounds=1,
                                        latency_rounds=1, log=lambda m: None)
    assert next(r for r in rows if r["module"] == "ours")["max_output_diff"] > 1e-4
    by_t = {(r["temperature"], r["mode"]): r for r in agreement}
    assert by_t[(1.0, "eval")]["max_output_diff"] == 0.0           # t = 1: the initial assignment alone
    for key in ((0.3, "train"), (0.0, "eval")):
        assert by_t[key]["max_output_diff"] > 1e-4 and by_t[key]["max_input_grad_diff"] > 0
        assert by_t[key]["max_param_grad_diff"] > 0


@pytest.mark.integration
def test_the_section_writes_its_table(tmp_path):
    root = write_checkout(tmp_path / "kw")
    out = tmp_path / "out"
    assert cli.main(["--quick", "--sections", "kw_official", "--kw-official", str(root), "--kw-official-convs",
                     "kw1x", "--out", str(out)]) == 0
    md = (out / "kw_official.md").read_text()
    assert "| kw1x | ours | 2 | 32 |" in md and "| kw1x | 0.3 | eval | 0.0e+00 |" in md
    assert (out / "kw_official_agreement.csv").read_text().startswith("conv,temperature,mode,")
    assert "in 1 of 1 configs" in md or "in 0 of 1 configs; slower: kw1x (x" in md
    assert (out / "kw_official.csv").read_text().startswith("conv,module,")


@pytest.mark.parametrize("argv, message", [
    (["--sections", "kw_official"], "--sections: kw_official needs --kw-official PATH"),
    (["--kw-official", "/nonexistent"], "--kw-official: '/nonexistent' is not a KernelWarehouse checkout"),
    (["--kw-official-convs", "odconv4x"], "--kw-official-convs: 'odconv4x' is not a KW spec; valid: kw1d4x"),
    (["--kw-official-convs", "kw3y"], "--kw-official-convs: "),
])
def test_bad_options_are_one_error_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--quick", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("python -m odconv.bench: error: " + message), err


def test_without_a_checkout_the_default_sections_leave_it_out():
    p = cli.build_parser()
    args = p.parse_args(["--quick"])
    plan = cli.make_plan(p, args, ["--quick"], cli.torch.device("cpu"))
    assert "kw_official" not in plan.sections and "models" in plan.sections
