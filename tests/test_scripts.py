"""The diagnostic scripts the README quotes (scripts/): they run, and their figures are in range."""

import importlib.util
from pathlib import Path

import pytest
import torch

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
