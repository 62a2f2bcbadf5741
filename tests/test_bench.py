"""The benchmark (`make bench`, `python -m odconv.bench`): its figures from planted timing
samples (a fake clock, hand-computed ratios), the one cost function against independent
counts, the recheck pass on planted rows, interleaved rounds, the targets against the
documented limits (docs/benchmark.md), and the command line's errors. Not the timings themselves."""

from __future__ import annotations

import copy
import csv
import subprocess
import sys

import pytest
import torch
from torch import nn

import odconv
from odconv.bench.cli import main
from odconv.bench.layers import REFERENCE, layer_rows, layer_shapes, recheck_layers
from odconv.bench.measurement import ModelCosts, measure_model_costs
from odconv.bench.models import STATIC_KEY, ConstantAttention, freeze_attentions, model_rows
from odconv.bench.report import evaluate_targets, memory_floor_summary
from odconv.bench.workers import preferred_cpu_workers
from odconv.timing import median_ratio, time_callable, time_rounds


class FakeClock:
    """A clock that only moves when told to: timed calls advance it by known amounts."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_layer_shapes_cover_both_models():
    shapes = layer_shapes()
    assert {s.model for s in shapes} == {"cifar_resnet18", "cifar_mobilenetv2"}
    assert any(s.groups > 1 and s.groups == s.in_ch for s in shapes)  # MobileNetV2 depthwise
    assert {s.hw for s in shapes if s.model == "cifar_resnet18"} >= {32, 16, 8, 4}
    assert len(layer_shapes(all_shapes=True)) > len(shapes)


def _read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    # In a subprocess, as `make bench` runs it: the CPU memory measurement starts the torch
    # profiler, whose threads abort a later backward in the same process under pytest's
    # fd capture (seen with torch 2.13).
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run([sys.executable, "-m", "odconv.bench", "--quick", "--threads", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_quick_bench_writes_every_table_and_only_its_progress(quick_run):
    out, proc = quick_run
    for name in ("layers", "models", "strategies", "floors", "workers", "targets"):
        assert (out / f"{name}.csv").exists()
        text = (out / f"{name}.md").read_text()
        assert "torch:" in text and "cpu:" in text and "load_average:" in text
    assert "## fp32" in (out / "models.md").read_text() and "## bf16" in (out / "models.md").read_text()
    # the torch profiler's (kineto's) log lines stay out of the output
    assert "USDT" not in proc.stdout + proc.stderr and "profiler_start" not in proc.stderr


def test_quick_bench_layer_rows_time_every_strategy_and_keep_the_contenders(quick_run):
    rows = _read(quick_run[0] / "layers.csv")
    groups: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        groups.setdefault((r["layer"], r["batch"], r["mode"]), {})[r["strategy"]] = r
    assert {r["mode"] for r in rows} == {"fwd", "fwd+bwd"}
    for g in groups.values():
        assert {"static", "grouped", "bmm", "mix", "fused", "auto"} <= set(g)
        # the reference, the static conv and the chosen one are timed every round (--quick: 2)
        auto = g["auto"]
        for name in ("static", "grouped", auto["runs"]):
            assert int(g[name]["samples"]) == 2 == len(g[name]["samples_ms"].split(";"))
        assert auto["runs"] in g and auto["runs"] not in ("static", "auto")


def test_quick_bench_model_tables_have_every_entry(quick_run):
    out = quick_run[0]
    models = _read(out / "models.csv")
    assert {(r["precision"], r["conv"]) for r in models} == {(p, c) for p in ("fp32", "bf16")
                                                               for c in ("static", "odconv4x")}
    strategies = _read(out / "strategies.csv")
    assert {(r["precision"], r["conv"], r["strategy"]) for r in strategies} == {
        (p, c, s) for p in ("fp32", "bf16") for c, s in (("static", "-"), ("odconv4x", "auto"), ("odconv4x", "fused"))}
    floors = _read(out / "floors.csv")
    assert {(r["precision"], r["conv"], r["attention"]) for r in floors} == {
        (p, c, a) for p in ("fp32", "bf16") for c, a in (("static", "computed"), ("odconv4x", "computed"),
                                                         ("odconv4x", "constant"))}
    for r in floors:  # the constant model has no attention parameters
        if r["attention"] == "constant":
            computed = next(c for c in floors if c["precision"] == r["precision"] and c["conv"] == r["conv"]
                            and c["attention"] == "computed")
            assert float(r["params_m"]) < float(computed["params_m"])
    for r in models:
        static = next(s for s in models if s["conv"] == "static" and s["precision"] == r["precision"])
        assert int(r["batch"]) == 8 and len(r["train_samples_ms"].split(";")) == 2
        # params of the network the benchmark builds, counted here independently
        net = odconv.build_model("cifar_resnet18", num_classes=10, conv=r["conv"], width=0.125)
        assert float(r["params_m"]) == round(sum(p.numel() for p in net.parameters()) / 1e6, 3)
        if r is static:
            assert float(r["train_vs_static"]) == float(r["mem_vs_static"]) == 1.0


def test_quick_bench_worker_layouts_ran_as_named(quick_run):
    rows = _read(quick_run[0] / "workers.csv")
    assert {(int(r["processes"]), int(r["threads_per_process"])) for r in rows} == {(2, 1), (1, 2)}
    for r in rows:
        # what each worker process's torch reported, not what was asked for
        assert r["threads_seen"] == r["threads_per_process"]
        assert float(r["images_per_s"]) > 0


# ------------------------------------------------------------------ the one cost function
class Ticking(nn.Module):
    """A tiny classifier (3x3 conv, 3 -> 4 channels, mean pool, linear 4 -> 10) whose forward
    pass advances ``clock`` by ``per_image`` seconds per image: planted, known timings."""

    def __init__(self, clock: FakeClock, per_image: float):
        super().__init__()
        self.clock, self.per_image = clock, per_image
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.clock.advance(self.per_image * x.shape[0])
        return self.fc(self.conv(x).mean((2, 3)))


def test_measure_model_costs_counts_params_and_macs_independently():
    model = Ticking(FakeClock(), 0.0)
    costs = measure_model_costs({"m": model}, batch=4, input_size=(3, 8, 8), timed=False)["m"]
    assert costs.params == sum(p.numel() for p in model.parameters()) == (4 * 3 * 9 + 4) + (4 * 10 + 10)
    # by hand: the conv makes 4 x 8 x 8 outputs of 3 x 3 x 3 MACs each; the linear 4 x 10
    assert costs.macs == 4 * 8 * 8 * 27 + 4 * 10
    assert costs.train_samples == [] and costs.peak_memory_bytes is None


def test_measure_model_costs_times_planted_steps_in_the_same_rounds():
    clock = FakeClock()
    fast, slow = Ticking(clock, 0.001), Ticking(clock, 0.003)
    slow.eval()
    costs = measure_model_costs({"fast": fast, "slow": slow}, batch=4, input_size=(3, 8, 8), train_rounds=3,
                                latency_batches=(1, 2), latency_rounds=2, memory=False, macs=False, clock=clock)
    # one forward per training step: 4 images x 1 ms; per eval forward: batch x 1 ms
    assert costs["fast"].train_samples == pytest.approx([0.004] * 3)
    assert costs["slow"].train_samples == pytest.approx([0.012] * 3)
    assert costs["fast"].latency_samples == {1: pytest.approx([0.001] * 2), 2: pytest.approx([0.002] * 2)}
    assert costs["slow"].latency_s(2) == pytest.approx(0.006)
    assert costs["fast"].train_images_per_s == pytest.approx(1000.0)
    assert median_ratio(costs["slow"].train_samples, costs["fast"].train_samples) == pytest.approx(3.0)
    assert fast.training and not slow.training  # modes as they were


def test_median_ratio_is_the_median_of_per_round_ratios():
    # round 3 ran on a slowed machine: its ratio is still 2; the ratio of medians would be 3 / 1
    assert median_ratio([2.0, 3.0, 20.0], [1.0, 1.0, 10.0]) == 2.0
    assert median_ratio([4.0, 6.0], [2.0, 2.0, 5.0]) == 2.5  # only the rounds both were timed in


def _costs(params, train, latency, memory):
    return ModelCosts(params=params, macs=None, batch=8, train_samples=train, latency_samples={1: latency},
                      peak_memory_bytes=memory)


def test_model_rows_from_planted_samples_match_hand_computed_figures():
    costs = {STATIC_KEY: _costs(1_000_000, [0.010, 0.012, 0.100], [0.001, 0.002, 0.004], 2 ** 20),
             "odconv4x|auto|computed": _costs(1_234_567, [0.020, 0.018, 0.300], [0.003, 0.003, 0.006], 3 * 2 ** 19)}
    static, dyn = model_rows(costs, "cifar_resnet18", 0.5, "bf16")
    assert (dyn["conv"], dyn["strategy"], dyn["attention"]) == ("odconv4x", "auto", "computed")
    assert (dyn["model"], dyn["width"], dyn["precision"]) == ("cifar_resnet18", 0.5, "bf16")
    assert dyn["params_m"] == 1.235 and dyn["batch"] == 8
    assert dyn["train_step_ms"] == 20.0 and dyn["latency_b1_ms"] == 3.0 and dyn["train_peak_mb"] == 1.5
    assert dyn["train_vs_static"] == 2.0      # rounds: 2.0, 1.5, 3.0 (the ratio of medians: 1.667)
    assert dyn["latency_vs_static"] == 1.5    # rounds: 3.0, 1.5, 1.5
    assert dyn["mem_vs_static"] == 1.5
    assert dyn["train_samples_ms"] == "20;18;300"
    assert static["train_vs_static"] == static["latency_vs_static"] == static["mem_vs_static"] == 1.0


def test_layer_rows_from_planted_samples_match_hand_computed_figures():
    samples = {"static": [0.010, 0.010], REFERENCE: [0.030, 0.030], "bmm": [0.020, 0.024], "mix": [0.050]}
    mems = {"static": 100, REFERENCE: 400, "bmm": 300, "mix": 200}
    rows = {r["strategy"]: r for r in layer_rows({"layer": "l"}, samples, mems, chosen=REFERENCE)}
    assert set(rows) == {"static", REFERENCE, "bmm", "mix", "auto"}
    auto, bmm, mix = rows["auto"], rows["bmm"], rows["mix"]
    assert (auto["runs"], auto["best"], auto["layer"]) == (REFERENCE, "bmm", "l")  # bmm's median: 22 ms
    assert (auto["time_vs_static"], auto["time_vs_reference"], auto["time_vs_best"]) == (3.0, 1.0, 1.364)  # 30/22
    assert (auto["mem_vs_static"], auto["mem_vs_reference"]) == (4.0, 1.0)
    assert (bmm["time_ms"], bmm["time_vs_static"], bmm["time_vs_reference"], bmm["samples"]) == (22.0, 2.2, 0.733, 2)
    assert (mix["time_ms"], mix["samples"], mix["samples_ms"], mix["best"]) == (50.0, 1, "50", "")


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
    clock = FakeClock()
    seconds = {"planted_fast": {"fused": 0.002, "grouped": 0.006}, "planted_slow": {"bmm": 0.008, "mix": 0.002}}
    asked = []

    def make_fns(row, names):
        asked.append((row["layer"], tuple(names)))
        return {n: (lambda s=seconds[row["layer"]][n]: clock.advance(s)) for n in names}

    assert recheck_layers(rows, make_fns, "cpu", rounds=5, log=lambda m: None, clock=clock) == 2
    assert asked == [("planted_fast", ("fused", "grouped")), ("planted_slow", ("bmm", "mix"))]
    fast, slow, fine, ref = rows
    assert fast["rechecked"] == "yes" and fast["recheck_vs_reference"] == 0.333
    assert fast["recheck_vs_best"] == 1.0                        # not re-timed: first pass stands
    assert slow["rechecked"] == "yes" and slow["recheck_vs_best"] == 4.0
    assert slow["recheck_vs_reference"] == 0.9 and slow["recheck_rounds"] == 5
    assert fine["rechecked"] == ref["rechecked"] == ""


def test_time_rounds_interleaves_and_drops_slow_entries_after_round_0():
    clock = FakeClock()
    order = []

    def entry(name, seconds):
        def call():
            order.append(name)
            clock.advance(seconds)
        return call

    fns = {"a": entry("a", 0.001), "b": entry("b", 0.002), "slow": entry("slow", 0.040),
           "kept": entry("kept", 0.040)}
    samples = time_rounds(fns, rounds=3, keep_within=5.0, keep=("kept",), clock=clock)
    assert order == ["a", "b", "slow", "kept",   # round 0: all, forward
                     "kept", "b", "a",           # round 1: contenders (within 5x of a's 1 ms, or kept), reversed
                     "a", "b", "kept"]           # round 2: forward again
    assert samples == {"a": pytest.approx([0.001] * 3), "b": pytest.approx([0.002] * 3),
                       "slow": pytest.approx([0.040]), "kept": pytest.approx([0.040] * 3)}
    with pytest.raises(ValueError, match="nope"):
        time_rounds(fns, keep=("nope",))


def test_time_rounds_measures_the_contenders_against_the_fastest_of_among():
    """A static conv 3x faster than every strategy must not drop them all: the strategies
    within 2x of the fastest *strategy* stay contenders (each timed every round)."""
    clock = FakeClock()
    fns = {n: (lambda s=s: clock.advance(s)) for n, s in
           {"static": 0.010, "fused": 0.030, "mix": 0.050, "folded": 0.100}.items()}
    samples = time_rounds(fns, rounds=3, keep_within=2.0, among=["fused", "mix", "folded"], clock=clock)
    # (the static conv, faster than the fastest strategy, is timed every round too)
    assert {n: len(v) for n, v in samples.items()} == {"static": 3, "fused": 3, "mix": 3, "folded": 1}
    # without among the static conv is the fastest, and only it stays within 2x of itself
    samples = time_rounds(fns, rounds=3, keep_within=2.0, clock=clock)
    assert {n: len(v) for n, v in samples.items()} == {"static": 3, "fused": 1, "mix": 1, "folded": 1}
    with pytest.raises(ValueError, match="among names"):
        time_rounds(fns, among=["nope"])


def test_time_rounds_warms_up_untimed():
    clock = FakeClock()
    calls = []
    samples = time_rounds({"f": lambda: (calls.append(1), clock.advance(0.5))}, rounds=2, warmup=3, clock=clock)
    assert len(calls) == 5 and samples == {"f": pytest.approx([0.5, 0.5])}


def test_time_callable_is_the_median_of_planted_calls():
    clock = FakeClock()
    durations = iter([9.0, 9.0, 0.3, 0.1, 0.2])  # two warm-up calls, then three timed
    assert time_callable(lambda: clock.advance(next(durations)), warmup=2, repeats=3, clock=clock) == \
        pytest.approx(0.2)


def test_targets_against_hand_computed_verdicts_and_the_documented_limits():
    def row(conv, train, mem, lat, precision="fp32"):
        return dict(model="cifar_resnet18", width=0.5, precision=precision, conv=conv,
                    strategy="-" if conv == "static" else "auto", train_vs_static=train, mem_vs_static=mem,
                    latency_vs_static=lat)

    models = [row("static", 1.0, 1.0, 1.0), row("odconv4x", 1.9, 1.6, 1.4), row("odconv1x", 1.6, 1.2, 2.0),
              row("dyconv4x", 1.8, 1.5, 3.0), row("condconv8x", 2.5, 1.1, 1.0)]
    layers = [dict(_auto_row("fused", "fused", 0.8, 1.0), shape="a"),
              dict(_auto_row("bmm", "mix", 1.2, 1.3), shape="b", rechecked="yes", recheck_vs_reference=0.97,
                   recheck_vs_best=1.12)]
    got = {(t["target"], t["precision"]): (t["measured"], t["limit"], t["met"])
           for t in evaluate_targets(models, layers)}
    # limits: the table of docs/benchmark.md, "Reading the tables"
    assert got == {
        ("odconv4x train step / static", "fp32"): (1.9, 2.0, True),
        ("odconv4x train peak memory / static", "fp32"): (1.6, 1.5, False),
        ("odconv4x batch-1 latency / static", "fp32"): (1.4, 1.5, True),
        ("odconv1x train step / static", "fp32"): (1.6, 1.5, False),
        ("odconv1x train peak memory / static", "fp32"): (1.2, 1.5, True),
        ("dyconv4x train step / static", "fp32"): (1.8, 1.8, True),
        ("dyconv4x train peak memory / static", "fp32"): (1.5, 1.5, True),
        ("condconv8x train step / static", "fp32"): (2.5, 1.8, False),
        ("condconv8x train peak memory / static", "fp32"): (1.1, 1.5, True),
        # the rechecked figures count, not the first pass's 1.2 / 1.3
        ("layer rows: auto / reference (worst row)", "fp32"): (0.97, 1.05, True),
        ("layer rows: auto / fastest strategy (worst row)", "fp32"): (1.12, 1.1, False),
    }


@pytest.mark.parametrize("args, names", [
    (["--sections", "layers,bogus"], ["'bogus'", "layers, models, strategies, floors, kw_official, workers"]),
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
