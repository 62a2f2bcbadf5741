"""Smoke run of the benchmark (`python -m odconv.bench --quick`): files and columns, not timings."""

from __future__ import annotations

import csv
import subprocess
import sys

from odconv.bench import layer_shapes


def test_layer_shapes_cover_both_models():
    shapes = layer_shapes()
    assert {s.model for s in shapes} == {"cifar_resnet18", "cifar_mobilenetv2"}
    assert any(s.groups > 1 and s.groups == s.in_ch for s in shapes)  # MobileNetV2 depthwise
    assert {s.hw for s in shapes if s.model == "cifar_resnet18"} >= {32, 16, 8, 4}


def test_quick_bench_writes_tables(tmp_path):
    # In a subprocess, as `make bench` runs it: the CPU memory measurement starts the torch
    # profiler, whose threads abort a later backward in the same process under pytest's
    # fd capture (seen with torch 2.13).
    proc = subprocess.run([sys.executable, "-m", "odconv.bench", "--quick", "--threads", "1", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
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
