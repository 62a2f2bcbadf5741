"""Smoke run of the benchmark (`python -m odconv.bench --quick`): files and columns, not timings."""

from __future__ import annotations

import csv

from odconv.bench import layer_shapes, main


def test_layer_shapes_cover_both_models():
    shapes = layer_shapes()
    assert {s.model for s in shapes} == {"cifar_resnet18", "cifar_mobilenetv2"}
    assert any(s.groups > 1 and s.groups == s.in_ch for s in shapes)  # MobileNetV2 depthwise
    assert {s.hw for s in shapes if s.model == "cifar_resnet18"} >= {32, 16, 8, 4}


def test_quick_bench_writes_tables(tmp_path):
    assert main(["--quick", "--threads", "1", "--out", str(tmp_path)]) == 0
    for name in ("layers", "models"):
        assert (tmp_path / f"{name}.csv").exists()
        text = (tmp_path / f"{name}.md").read_text()
        assert "torch:" in text and "cpu:" in text
    with open(tmp_path / "layers.csv") as f:
        rows = list(csv.DictReader(f))
    strategies = {r["strategy"] for r in rows}
    assert {"static", "grouped", "bmm", "mix", "fused", "auto"} <= strategies
    assert {r["mode"] for r in rows} == {"fwd", "fwd+bwd"}
    ref = [r for r in rows if r["strategy"] == "grouped"]
    assert all(float(r["time_vs_reference"]) == 1.0 for r in ref)
    with open(tmp_path / "models.csv") as f:
        models = list(csv.DictReader(f))
    assert {r["conv"] for r in models} == {"static", "odconv4x"}
    assert all(float(r["train_vs_static"]) > 0 and float(r["mem_vs_static"]) > 0 for r in models)
