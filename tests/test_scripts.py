"""The diagnostic scripts the README quotes (scripts/): they run, and their figures are in range."""

import csv
import importlib.util
from pathlib import Path

import pytest
import torch

from odconv.functional import STRATEGIES

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


def _bench_csv(path, rows):
    fields = ["model", "layer", "shape", "batch", "mode", "strategy", "time_vs_reference"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow(dict(zip(fields, r)))


def test_bench_recheck_retimes_only_rows_above_the_threshold(tmp_path, capsys):
    path = tmp_path / "layers.csv"
    _bench_csv(path, [("cifar_resnet18", "layer1.0.conv1", "64->64", 2, "fwd", "auto", 1.3),
                      ("cifar_resnet18", "layer1.0.conv1", "64->64", 2, "fwd+bwd", "auto", 0.9),
                      ("cifar_resnet18", "layer1.0.conv1", "64->64", 2, "fwd", "fused", 2.0)])
    out = _load("bench_recheck").main(["--csv", str(path), "--repeats", "1", "--threads", "1"])
    assert len(out) == 1 and out[0]["mode"] == "fwd"
    assert out[0]["recheck_runs"] in STRATEGIES and out[0]["recheck"] > 0
    assert "| cifar_resnet18 | layer1.0.conv1 |" in capsys.readouterr().out


def test_bench_recheck_names_an_unknown_layer(tmp_path, capsys):
    path = tmp_path / "layers.csv"
    _bench_csv(path, [("cifar_resnet18", "layer9.conv", "x", 2, "fwd", "auto", 1.3)])
    with pytest.raises(SystemExit):
        _load("bench_recheck").main(["--csv", str(path), "--repeats", "1"])
    assert "cifar_resnet18:layer9.conv" in capsys.readouterr().err
