"""The diagnostic scripts the README quotes (scripts/): they run, and their figures are in range."""

import importlib.util
from pathlib import Path

import pytest
import torch

from odconv import build_model

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_attention_diagnostics_on_the_smoke_sweep(monkeypatch):
    monkeypatch.chdir(ROOT)
    torch.set_num_threads(1)
    out = _load("attention_diagnostics").main(["--sweep", "smoke", "--conv", "odconv4x", "--epochs", "1",
                                               "--set", "model.temperature_epochs=0"])
    assert out["set"] == {"model.temperature_epochs": 0}
    assert set(out["attention"]) == {"channel", "filter", "spatial", "kernel"}
    for name in ("channel", "filter", "spatial"):
        assert 0.0 <= out["attention"][name]["saturated_fraction"] <= 1.0
    assert 0.25 <= out["attention"]["kernel"]["mean_max_weight"] <= 1.0   # softmax over 4 kernels
    assert 0.0 <= out["test_top1"] <= 100.0
    assert set(out["top1_first_2048"]) == {"eval", "train"}


def test_attention_diagnostics_rejects_a_bad_set(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit):
        _load("attention_diagnostics").main(["--conv", "odconv4x", "--set", "model.lr"])
    assert "KEY=VALUE" in capsys.readouterr().err


def test_op_breakdown_table(tmp_path):
    torch.set_num_threads(1)
    mod = _load("op_breakdown")
    out = tmp_path / "ob.md"
    assert mod.main(["--widths", "0.125", "--convs", "static,odconv1x", "--rounds", "1", "--batch", "4",
                     "--threads", "1", "--out", str(out)]) == 0
    rows = [line.split(" | ") for line in out.read_text().splitlines() if line.startswith("| 0.125")]
    assert [(r[1], r[2]) for r in rows] == [("static", "fp32"), ("static", "bf16"), ("odconv1x", "fp32"),
                                            ("odconv1x", "bf16")]
    for r in rows:  # the step is the sum of its kinds; convolutions run in every step
        kinds = [float(x) for x in r[4:9]]
        assert abs(float(r[3]) - sum(kinds)) <= 0.3 and kinds[0] > 0
    # ODConv applies its attentions with elementwise operators: counted calls, not their time
    # (which a loaded machine can reorder)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    calls = {conv: mod.step_profile(build_model("cifar_resnet18", conv=conv, width=0.125, num_classes=10), x, y,
                                    False)["calls elementwise and reductions"] for conv in ("static", "odconv1x")}
    assert calls["odconv1x"] > calls["static"] > 0
    assert mod.kind_of("aten::mul") == "elementwise and reductions" and mod.kind_of("aten::foo") == "other"


def test_kw_width_table(tmp_path):
    out = tmp_path / "kw.md"
    assert _load("kw_widths").main(["--widths", "0.5", "--out", str(out)]) == 0
    rows = {line.split(" | ")[0].strip("| `"): line.split(" | ") for line in out.read_text().splitlines()
            if line.startswith("| `")}
    resnet = [float(c.split("x / ")[0]) for c in rows["cifar_resnet18"][4:7]]
    # at width 0.5 KW 1/4x has fewer parameters than static, 1x about as many, 4x about four times
    assert resnet[0] < 1.0 < resnet[1] < 1.2 and 3.5 < resnet[2] < 4.5
