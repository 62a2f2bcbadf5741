"""The benchmark (`make bench`, `python -m odconv.bench`): its figures recomputed from the
CSVs' own absolute times, the recheck pass on planted rows, interleaved rounds, the targets
table against the issue's limits, and the command line's errors. Not the timings themselves."""

from __future__ import annotations

import copy
import csv
import statistics
import subprocess
import sys
import time

import pytest
import torch

import odconv
from odconv.bench import (
    ConstantAttention,
    evaluate_targets,
    freeze_attentions,
    layer_shapes,
    main,
    memory_floor_summary,
    preferred_cpu_workers,
    recheck_layers,
)
from odconv.timing import time_rounds

# The issue's limits, written out here (not imported) so a changed constant is caught.
ISSUE_TIME_LIMITS = {"odconv4x": 2.0, "odconv1x": 1.5, "dyconv4x": 1.8, "condconv8x": 1.8}
ISSUE_MEMORY_LIMIT = 1.5
ISSUE_LATENCY_LIMITS = {"odconv4x": 1.5}


def test_layer_shapes_cover_both_models():
    shapes = layer_shapes()
    assert {s.model for s in shapes} == {"cifar_resnet18", "cifar_mobilenetv2"}
    assert any(s.groups > 1 and s.groups == s.in_ch for s in shapes)  # MobileNetV2 depthwise
    assert {s.hw for s in shapes if s.model == "cifar_resnet18"} >= {32, 16, 8, 4}
    assert len(layer_shapes(all_shapes=True)) > len(shapes)


def _read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _samples(text):
    return [float(v) for v in text.split(";")]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    # In a subprocess, as `make bench` runs it: the CPU memory measurement starts the torch
    # profiler, whose threads abort a later backward in the same process under pytest's
    # fd capture (seen with torch 2.13).
    out = tmp_path_factory.mktemp("bench")
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "odconv.bench", "--quick", "--threads", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, time.perf_counter() - started


def test_quick_bench_writes_every_table(quick_run):
    out, seconds = quick_run
    for name in ("layers", "models", "strategies", "floors", "workers", "targets"):
        assert (out / f"{name}.csv").exists()
        text = (out / f"{name}.md").read_text()
        assert "torch:" in text and "cpu:" in text and "load_average:" in text
    assert "## fp32" in (out / "models.md").read_text() and "## bf16" in (out / "models.md").read_text()
    assert seconds < 120  # the quick mode is what tests use: seconds, not minutes


def test_quick_bench_layer_figures_follow_from_its_own_times(quick_run):
    rows = _read(quick_run[0] / "layers.csv")
    groups: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        groups.setdefault((r["layer"], r["batch"], r["mode"]), {})[r["strategy"]] = r
    assert {r["mode"] for r in rows} == {"fwd", "fwd+bwd"}
    for g in groups.values():
        assert {"static", "grouped", "bmm", "mix", "fused", "auto"} <= set(g)
        strategies = [s for s in g if s not in ("static", "auto")]
        for r in g.values():
            samples = _samples(r["samples_ms"])
            assert len(samples) == int(r["samples"]) >= 1
            assert float(r["time_ms"]) == pytest.approx(statistics.median(samples), rel=1e-3)
            ratio = float(r["time_ms"]) / float(g["static"]["time_ms"])
            assert float(r["time_vs_static"]) == pytest.approx(ratio, rel=2e-3, abs=2e-3)
            ratio = float(r["time_ms"]) / float(g["grouped"]["time_ms"])
            assert float(r["time_vs_reference"]) == pytest.approx(ratio, rel=2e-3, abs=2e-3)
        # the reference, the static conv and the chosen one are timed every round
        auto = g["auto"]
        for name in ("static", "grouped", auto["runs"]):
            assert int(g[name]["samples"]) == 2
        assert auto["runs"] in strategies and auto["time_ms"] == g[auto["runs"]]["time_ms"]
        fastest = min(strategies, key=lambda s: float(g[s]["time_ms"]))
        assert float(g[fastest]["time_ms"]) == float(g[auto["best"]]["time_ms"])
        assert float(auto["time_vs_best"]) == pytest.approx(
            float(auto["time_ms"]) / float(g[fastest]["time_ms"]), rel=2e-3, abs=2e-3)


def test_quick_bench_model_ratios_are_medians_of_per_round_ratios(quick_run):
    rows = _read(quick_run[0] / "models.csv")
    assert {(r["precision"], r["conv"]) for r in rows} == {(p, c) for p in ("fp32", "bf16")
                                                             for c in ("static", "odconv4x")}
    for r in rows:
        static = next(s for s in rows if s["conv"] == "static" and s["precision"] == r["precision"]
                      and s["width"] == r["width"])
        for col, ratio in (("train_samples_ms", "train_vs_static"), ("latency_samples_ms", "latency_vs_static")):
            mine, base = _samples(r[col]), _samples(static[col])
            assert len(mine) == len(base) >= 2
            expected = statistics.median(a / b for a, b in zip(mine, base))
            assert float(r[ratio]) == pytest.approx(expected, rel=5e-3)
        assert float(r["mem_vs_static"]) == pytest.approx(float(r["train_peak_mb"]) / float(static["train_peak_mb"]),
                                                          rel=5e-3)


def test_quick_bench_strategies_table_times_each_model_under_each_strategy(quick_run):
    out = quick_run[0]
    rows = _read(out / "strategies.csv")
    assert {(r["precision"], r["conv"], r["strategy"]) for r in rows} == {
        (p, c, s) for p in ("fp32", "bf16") for c, s in (("static", "-"), ("odconv4x", "auto"), ("odconv4x", "fused"))}
    for r in rows:
        static = next(s for s in rows if s["conv"] == "static" and s["precision"] == r["precision"])
        mine, base = _samples(r["train_samples_ms"]), _samples(static["train_samples_ms"])
        assert float(r["train_vs_static"]) == pytest.approx(statistics.median(a / b for a, b in zip(mine, base)),
                                                            rel=5e-3)
        assert float(r["mem_vs_static"]) == pytest.approx(float(r["train_peak_mb"]) / float(static["train_peak_mb"]),
                                                          rel=5e-3)
    text = (out / "strategies.md").read_text()
    for precision in ("fp32", "bf16"):
        dynamic = [r for r in rows if r["precision"] == precision and r["conv"] != "static"]
        least = min(dynamic, key=lambda r: float(r["mem_vs_static"]))
        assert f"- {precision} resnet18 w0.125 odconv4x: `{least['strategy']}`, {float(least['mem_vs_static']):.2f}x" \
            in text


def test_quick_bench_floors_time_each_model_with_and_without_its_attention_branch(quick_run):
    out = quick_run[0]
    rows = _read(out / "floors.csv")
    assert {(r["precision"], r["conv"], r["attention"]) for r in rows} == {
        (p, c, a) for p in ("fp32", "bf16") for c, a in (("static", "computed"), ("odconv4x", "computed"),
                                                         ("odconv4x", "constant"))}
    text = (out / "floors.md").read_text()
    for precision in ("fp32", "bf16"):
        by = {r["attention"]: r for r in rows if r["precision"] == precision and r["conv"] == "odconv4x"}
        computed, constant = float(by["computed"]["train_vs_static"]), float(by["constant"]["train_vs_static"])
        # the constant model has no attention parameters
        assert float(by["constant"]["params_m"]) < float(by["computed"]["params_m"])
        assert f"| {computed:.2f} | {constant:.2f} | {computed - constant:.2f} |" in text


@pytest.mark.parametrize("conv", ["odconv4x", "dyconv4x", "odconv1x-channel+spatial"])
def test_freeze_attentions_keeps_the_function_and_drops_the_branch(conv):
    torch.manual_seed(0)
    model = odconv.build_model("cifar_resnet18", num_classes=10, conv=conv, width=0.125)
    x = torch.randn(4, 3, 32, 32)
    for mode in ("train", "eval"):
        frozen = copy.deepcopy(model).train(mode == "train")
        expected = frozen(x)  # train mode: the batch statistics of x, as in the capture
        frozen = copy.deepcopy(model).train(mode == "train")
        n_before = sum(p.numel() for p in frozen.parameters())
        replaced = freeze_attentions(frozen, x)
        assert replaced == len([m for m in frozen.modules() if isinstance(m, ConstantAttention)]) > 0
        assert sum(p.numel() for p in frozen.parameters()) < n_before  # the branch's parameters are gone
        out = frozen(x)
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
        out.sum().backward()  # the dynamic conv's backward still runs, into the constants too
        const = next(m for m in frozen.modules() if isinstance(m, ConstantAttention)).value
        grads = const.values() if isinstance(const, dict) else [const]
        assert all(g.grad is not None for g in grads)


def test_memory_floor_summary_names_the_leanest_strategy_and_its_verdict():
    def row(conv, strategy, mem, time_ratio, precision="fp32"):
        return dict(precision=precision, model="cifar_resnet18", width=0.5, conv=conv, strategy=strategy,
                    mem_vs_static=mem, train_vs_static=time_ratio)
    rows = [row("static", "-", 1.0, 1.0), row("odconv4x", "auto", 2.0, 2.6), row("odconv4x", "fused", 1.43, 5.0),
            row("odconv1x", "auto", 1.6, 1.8), row("odconv1x", "fused", 1.55, 3.6)]
    text = memory_floor_summary(rows, limit=1.5)
    assert "- fp32 resnet18 w0.5 odconv4x: `fused`, 1.43x memory (within 1.5x), 5.00x time" in text
    assert "- fp32 resnet18 w0.5 odconv1x: `fused`, 1.55x memory (above 1.5x), 3.60x time" in text
    assert "w0.5 static" not in text and text.count("\n- ") == 2


def test_quick_bench_targets_use_the_issue_limits(quick_run):
    out = quick_run[0]
    models = {(r["precision"], r["conv"]): r for r in _read(out / "models.csv")}
    targets = _read(out / "targets.csv")
    seen = set()
    for t in targets:
        if t["model"] == "layers":
            continue
        conv, what = t["target"].split(" ", 1)
        row = models[(t["precision"], conv)]
        limit, measured = {"train step / static": (ISSUE_TIME_LIMITS.get(conv), row["train_vs_static"]),
                           "train peak memory / static": (ISSUE_MEMORY_LIMIT, row["mem_vs_static"]),
                           "batch-1 latency / static": (ISSUE_LATENCY_LIMITS.get(conv), row["latency_vs_static"])}[what]
        assert float(t["limit"]) == limit and float(t["measured"]) == float(measured)
        assert t["met"] == str(float(measured) <= limit)
        seen.add((t["precision"], what))
    assert len(seen) == 6  # time, memory, latency x fp32, bf16
    layer = [t for t in targets if t["model"] == "layers"]
    assert [float(t["limit"]) for t in layer] == [1.05, 1.1]


def test_quick_bench_worker_layouts_ran_as_named(quick_run):
    rows = _read(quick_run[0] / "workers.csv")
    assert {(int(r["processes"]), int(r["threads_per_process"])) for r in rows} == {(2, 1), (1, 2)}
    for r in rows:
        # what each worker process's torch reported, not what was asked for
        assert r["threads_seen"] == r["threads_per_process"]
        assert float(r["images_per_s"]) > 0


@pytest.mark.parametrize("gains, expected", [((1.3, 1.1), 2), ((0.8, 0.9), 1), ((1.2, 0.9), None)])
def test_preferred_cpu_workers_reads_the_layout_table(tmp_path, gains, expected):
    path = tmp_path / "workers.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["conv", "processes", "threads_per_process", "vs_one_process"])
        w.writeheader()
        for conv, gain in zip(("static", "odconv4x"), gains):
            w.writerow(dict(conv=conv, processes=2, threads_per_process=1, vs_one_process=gain))
            w.writerow(dict(conv=conv, processes=1, threads_per_process=2, vs_one_process=1.0))
    assert preferred_cpu_workers(str(path)) == expected
    assert preferred_cpu_workers(str(tmp_path / "absent.csv")) is None


# ------------------------------------------------------------------------ recheck pass
def _auto_row(runs, best, vs_ref, vs_best, layer="l"):
    return dict(model="m", layer=layer, shape=layer, batch=64, mode="fwd", strategy="auto", runs=runs, best=best,
                time_vs_reference=vs_ref, time_vs_best=vs_best, rechecked="", recheck_rounds="",
                recheck_vs_reference="", recheck_vs_best="")


def _sleeper(ms):
    return lambda: time.sleep(ms / 1000)


def test_recheck_retimes_only_flagged_rows_against_their_contenders():
    rows = [
        # planted: the first pass says auto is 1.5x the reference, but auto is really 3x faster
        _auto_row("fused", "fused", 1.5, 1.0, layer="planted_fast"),
        # planted: auto really is 4x the fastest strategy (and the first pass says 1.3x)
        _auto_row("bmm", "mix", 0.9, 1.3, layer="planted_slow"),
        # within both tolerances: left alone
        _auto_row("fused", "mix", 1.02, 1.05, layer="fine"),
        # the reference itself, fastest: nothing to compare
        _auto_row("grouped", "grouped", 1.0, 1.0, layer="reference"),
    ]
    speeds = {"planted_fast": {"fused": 2, "grouped": 6}, "planted_slow": {"bmm": 8, "mix": 2}}
    asked = []

    def make_fns(row, names):
        asked.append((row["layer"], tuple(names)))
        return {n: _sleeper(speeds[row["layer"]][n]) for n in names}

    assert recheck_layers(rows, make_fns, "cpu", rounds=5, log=lambda m: None) == 2
    assert asked == [("planted_fast", ("fused", "grouped")), ("planted_slow", ("bmm", "mix"))]
    fast, slow, fine, ref = rows
    assert fast["rechecked"] == "yes" and float(fast["recheck_vs_reference"]) < 1.0
    assert fast["recheck_vs_best"] == 1.0                        # not re-timed: first pass stands
    assert slow["rechecked"] == "yes" and float(slow["recheck_vs_best"]) > 1.5
    assert fine["rechecked"] == ref["rechecked"] == ""


def test_time_rounds_interleaves_and_drops_slow_entries_after_round_0():
    order = []

    def entry(name, ms):
        def call():
            order.append(name)
            time.sleep(ms / 1000)
        return call

    fns = {"a": entry("a", 1), "b": entry("b", 1), "slow": entry("slow", 40), "kept": entry("kept", 40)}
    samples = time_rounds(fns, rounds=3, keep_within=5.0, keep=("kept",))
    assert order == ["a", "b", "slow", "kept",   # round 0: all, forward
                     "kept", "b", "a",           # round 1: contenders, reversed
                     "a", "b", "kept"]           # round 2: forward again
    assert [len(samples[n]) for n in ("a", "b", "slow", "kept")] == [3, 3, 1, 3]
    assert min(samples["slow"] + samples["kept"]) >= 0.04 > max(samples["a"])
    with pytest.raises(ValueError, match="nope"):
        time_rounds(fns, keep=("nope",))


def test_targets_against_hand_computed_verdicts():
    def row(conv, train, mem, lat, precision="fp32"):
        return dict(model="cifar_resnet18", width=0.5, precision=precision, conv=conv,
                    strategy="-" if conv == "static" else "auto", train_vs_static=train, mem_vs_static=mem,
                    latency_vs_static=lat)

    models = [row("static", 1.0, 1.0, 1.0), row("odconv4x", 1.9, 1.6, 1.4), row("odconv1x", 1.6, 1.2, 2.0),
              row("dyconv4x", 1.8, 1.5, 3.0), row("condconv8x", 2.5, 1.1, 1.0)]
    layers = [dict(_auto_row("fused", "fused", 0.8, 1.0), shape="a"),
              dict(_auto_row("bmm", "mix", 1.2, 1.3), shape="b", rechecked="yes", recheck_vs_reference=0.97,
                   recheck_vs_best=1.12)]
    got = {(t["target"], t["precision"]): (t["measured"], t["met"]) for t in evaluate_targets(models, layers)}
    assert got == {
        ("odconv4x train step / static", "fp32"): (1.9, True),
        ("odconv4x train peak memory / static", "fp32"): (1.6, False),
        ("odconv4x batch-1 latency / static", "fp32"): (1.4, True),
        ("odconv1x train step / static", "fp32"): (1.6, False),
        ("odconv1x train peak memory / static", "fp32"): (1.2, True),
        ("dyconv4x train step / static", "fp32"): (1.8, True),
        ("dyconv4x train peak memory / static", "fp32"): (1.5, True),
        ("condconv8x train step / static", "fp32"): (2.5, False),
        ("condconv8x train peak memory / static", "fp32"): (1.1, True),
        # the rechecked figures count, not the first pass's 1.2 / 1.3
        ("layer rows: auto / reference (worst row)", "fp32"): (0.97, True),
        ("layer rows: auto / fastest strategy (worst row)", "fp32"): (1.12, False),
    }


@pytest.mark.parametrize("args, names", [
    (["--sections", "layers,bogus"], ["'bogus'", "layers, models, strategies, floors, workers"]),
    (["--floor-convs", "odconv9"], ["'odconv9'", "odconv4x"]),
    (["--model-strategies", "auto,nah"], ["'nah'", "fused", "grouped"]),
    (["--convs", "odconv4x,bogus"], ["'bogus'", "odconv4x", "dyconv4x"]),
    (["--strategy-convs", "odconv3"], ["'odconv3'", "odconv1x"]),
    (["--strategy-models", "resnet99:1"], ["'resnet99'", "cifar_resnet18"]),
    (["--strategies", "grouped,nope"], ["'nope'", "fused"]),
    (["--precisions", "fp8"], ["'fp8'", "fp32, bf16"]),
    (["--models", "resnet99:1"], ["'resnet99'", "cifar_resnet18"]),
    (["--batches", "0"], ["'0'"]),
])
def test_command_line_names_the_bad_value_and_the_choices(args, names, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    for name in names:
        assert name in err
