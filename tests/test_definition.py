"""Sweep files: the schema's errors, grid blocks, the shipped sweeps (sweeps/definition.py)."""

from __future__ import annotations

import itertools
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from odconv import ConvSpec, parse_conv_spec
from sweeps.cli import main as cli_main
from sweeps.definition import SweepDef, load_sweep, parse_sweep
from sweeps.grid import CONV_KEY, SEED_KEY, grid_key, variant_label
from tests.conftest import sweep_file_error

ROOT = Path(__file__).resolve().parents[1]
BASE = str(ROOT / "experiments" / "smoke.yaml")
SHIPPED = ("smoke", "ablation", "cifar10_cpu", "cifar10_factorial", "cifar10_confirm")
VARIANTS_1X = ["odconv1x-channel", "odconv1x-filter", "odconv1x-spatial", "odconv1x-channel+filter",
               "odconv1x-channel+spatial", "odconv1x-filter+spatial", "odconv1x"]


def _raw(**kw):
    d = {"name": "t", "base_config": BASE, "grid": {"conv": ["static", "odconv1x"], "seed": [0, 1]}}
    d.update(kw)
    return d


def _error(raw) -> str:
    return sweep_file_error(raw)


# --- the shipped sweeps ---------------------------------------------------------------------

@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_sweeps_are_valid(name):
    sw = load_sweep(ROOT / "sweeps" / f"{name}.yaml", check_files=False)
    assert sw.name == name
    keys = [p.key for p in sw.points()]
    assert len(keys) == len(set(keys))


def test_ablation_grid_has_every_attention_subset():
    sw = load_sweep(ROOT / "sweeps" / "ablation.yaml", check_files=False)
    convs = sw.grid["model.conv"]
    for v in ["static", "condconv8x", "dyconv4x", "odconv1x", "odconv4x"] + VARIANTS_1X:
        assert v in convs
    four = [c for c in convs if c.startswith("odconv4x")]
    assert len(four) == 8  # the 7 subsets with kernel, plus kernel alone
    assert sw.grid["seed_everything"] == [0, 1, 2]
    # every variant at width 1, and the static ladder (5 more widths) for the iso-cost comparison
    widths = sorted({p.params.get("model.model_options", sw.overrides["model.model_options"])["width"]
                     for p in sw.points() if p.params["model.conv"] == "static"})
    assert widths == [0.5, 0.75, 1.0, 1.5, 2.0, 3.0]
    assert len(sw.points()) == len(convs) * 3 + 5 * 3


def _factorial_cells() -> set[ConvSpec]:
    """The 16 cells built from the attention flags: channel, filter, spatial on/off; kernel off
    = 1 kernel, on = 4 kernels with kernel attention; all off = static."""
    cells = set()
    for flags in itertools.product([False, True], repeat=4):
        atts = frozenset(a for a, on in zip(("channel", "filter", "spatial", "kernel"), flags) if on)
        if not atts:
            cells.add(ConvSpec("static"))
        else:
            cells.add(ConvSpec("odconv", 4 if "kernel" in atts else 1, atts))
    return cells


def test_cifar10_factorial_study():
    sw = load_sweep(ROOT / "sweeps" / "cifar10_factorial.yaml")
    # the factorial's points (the static ladder, block 3, is tested in test_grid_blocks.py)
    points = [p for p in sw.grid_points() if "model.model_options" not in p.params]
    # KernelWarehouse (block 4): the official configs 1/4x, 1x, 4x at the factorial's width, seeds 0-3
    kw = [p for p in points if parse_conv_spec(p.params[CONV_KEY]).kind == "kw"]
    assert sorted({p.params[CONV_KEY] for p in kw}) == ["kw1d4x", "kw1x", "kw4x"]
    assert sorted({p.seed for p in kw}) == [0, 1, 2, 3] and len(kw) == 12
    points = [p for p in points if p not in kw]
    seeds: dict[ConvSpec, list[int]] = {}
    for p in points:
        assert set(p.params) == {CONV_KEY, SEED_KEY}
        seeds.setdefault(parse_conv_spec(p.params[CONV_KEY]), []).append(p.seed)
    cells = _factorial_cells()
    assert len(cells) == 16
    baselines = {ConvSpec("condconv", 8), ConvSpec("dyconv", 4)}
    assert set(seeds) == cells | baselines
    more = {parse_conv_spec(s) for s in ("static", "odconv4x", "condconv8x", "dyconv4x")}
    for spec, s in seeds.items():
        assert len(set(s)) == len(s) >= (4 if spec in more else 2), (str(spec), s)
    assert len(points) == 44
    # the run-to-run spread: >= 2 seed-0 ODConv points again with another kernel strategy, run last
    reruns = sw.rerun_pairs()
    assert len(reruns) >= 2 and [r.key for r, _ in reruns] == [p.key for p in sw.points()[len(sw.grid_points()):]]
    for rerun, orig in reruns:
        assert orig in points and orig.seed == 0 and parse_conv_spec(orig.params[CONV_KEY]).kind == "odconv"
        assert rerun.params == {**orig.params, "model.model_options": {"width": 0.125, "strategy": "grouped"}}
    # the precision goals, judged in summary.md
    assert sw.precision_goals == {"main_effect": 0.4, "rows": {"odconv4x": 0.75, "condconv8x": 0.75,
                                                               "dyconv4x": 0.75}}

    # real CIFAR-10, cifar_resnet18 at cifar10_cpu's width, cifar10_cpu's recipe but the schedule
    cpu = load_sweep(ROOT / "sweeps" / "cifar10_cpu.yaml")
    base = yaml.safe_load((ROOT / sw.base_config).read_text())
    assert base["data"]["class_path"].endswith("CIFAR10DataModule")
    assert sw.base_config == cpu.base_config
    ov = sw.overrides
    assert ov.get("model.model", base["model"]["model"]) == "cifar_resnet18"
    assert ov["model.model_options"] == cpu.overrides["model.model_options"]
    assert ov["trainer.max_epochs"] >= 15
    assert ov["model.temperature_epochs"] == pytest.approx(0.1 * ov["trainer.max_epochs"])
    schedule = {"trainer.max_epochs", "model.temperature_epochs", "model.model"}
    assert {k: v for k, v in ov.items() if k not in schedule} == \
        {k: v for k, v in cpu.overrides.items() if k not in schedule}
    assert (sw.metric, sw.measure) == (cpu.metric, cpu.measure)


def test_gitignore_keeps_factorial_journal_and_records_only():
    def ignored(path: str) -> bool:
        r = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT)
        assert r.returncode in (0, 1), r
        return r.returncode == 0

    assert not ignored("results/cifar10_factorial/optuna.journal")
    assert not ignored("results/cifar10_factorial/trials/model.conv_static_seed_0.json")
    for path in ("results/cifar10_factorial/runs/static/last.ckpt", "results/cifar10_factorial/optuna.journal.lock",
                 "results/cifar10_factorial/worker.log", "results/cifar10_cpu/optuna.journal",
                 "results/cifar10_cpu/trials/x.json"):
        assert ignored(path), path


# --- bad files: each error names the key path, the bad value and what is valid -------------

@pytest.mark.parametrize("raw, needles", [
    ([1, 2], ["YAML mapping"]),
    ({"name": "t", "grid": {"conv": ["static"]}}, ["missing required key 'base_config'"]),
    (_raw(gird={}), ["unknown key(s) ['gird']", "valid keys: analysis, base_config, description, grid"]),
    (_raw(grid={"conv": ["static", "odconv4x-channel"]}), ["grid axis 'conv'", "odconv4x-channel", "+kernel"]),
    (_raw(grid={"conv": ["static", "bogus"]}), ["grid axis 'conv'", "bad conv spec 'bogus'", "valid: static"]),
    (_raw(grid={"conv": "static"}), ["grid axis 'conv'", "non-empty list", "'static'"]),
    (_raw(grid={"conv": ["static", "static"]}), ["twice", "['static']"]),
    (_raw(grid={"conv": ["ODConv1x", "odconv1x"]}), ["twice", "['odconv1x']"]),  # same variant, two spellings
    (_raw(grid={"conv": ["static"], "seed": [True]}), ["grid axis 'seed'", "integer seeds", "[True]"]),
    (_raw(grid={"conv": ["static"], "seed": [0], "seed_everything": [1]}),
     ["grid gives axis 'seed_everything' twice (as 'seed' and 'seed_everything')"]),
    (_raw(grid={"conv": ["static"], "x": [{1, 2}]}), ["grid axis 'x'", "not a scalar or mapping"]),
    (_raw(overrides={"model.conv": "static"}), ["['model.conv']", "both in 'overrides' and in 'grid'"]),
    (_raw(overrides={"conv": "odconv9z"}), ["'overrides.conv' (model.conv)", "'odconv9z'", "valid"]),
    (_raw(overrides={"lr": 0.1, "model.lr": 0.2}), ["'overrides' sets 'model.lr' twice (as 'lr' and 'model.lr')"]),
    (_raw(overrides=["a"]), ["'overrides' must be a mapping", "['a']"]),
    (_raw(overrides={"model_name": "resnet9000"}), ["'overrides.model_name' (model.model)", "'resnet9000'",
                                                    "cifar_resnet18"]),
    (_raw(grid={"backbone": ["cifar_resnet18", "nope"]}), ["grid axis 'backbone'", "'nope'", "cifar_resnet18"]),
    (_raw(metric="acc"), ["'metric' must be one of", "'test/acc_top1'", "got 'acc'"]),
    (_raw(max_retries=-1), ["'max_retries' must be >= 0, got -1"]),
    (_raw(max_retries=True), ["'max_retries'", "integer", "True"]),
    (_raw(stale_after_s=5), ["'stale_after_s' must be >= 30", "got 5"]),
    (_raw(base_config="experiments/nope.yaml"), ["'base_config'", "'experiments/nope.yaml'", "does not exist"]),
    (_raw(name="a b"), ["'name'", "simple name", "'a b'"]),
    (_raw(description=3), ["'description'", "string", "got 3"]),
    (_raw(measure={"repeat": 3}), ["'measure': unknown key(s) ['repeat']", "valid keys: enabled, latency_batch_sizes"]),
    (_raw(measure={"latency_batch_sizes": [1, 0]}), ["'measure.latency_batch_sizes[1]' must be >= 1, got 0"]),
    (_raw(tune=[1]), ["'tune' must be a mapping", "[1]"]),
    (_raw(tune={"params": {}}), ["'tune.params' must have at least 1 item"]),
    (_raw(tune={"params": {"lr": {"type": "float", "low": 1, "high": 0.1}}}), ["'tune.params.lr'", "low < high",
                                                                              "low=1.0, high=0.1"]),
    (_raw(tune={"params": {"lr": {"type": "floot"}}}), ["'tune.params.lr.type' must be one of 'float', 'int' or "
                                                        "'categorical', got 'floot'"]),
    (_raw(tune={"params": {"lr": {"low": 1, "high": 2}}}), ["missing required key 'tune.params.lr.type'"]),
    (_raw(tune={"params": {"lr": {"type": "float", "low": "1e-5", "high": 0.1}}}),
     ["'tune.params.lr.low'", "'1e-5'", "write 1.0e-5"]),
    (_raw(tune={"params": {"wd": {"type": "float", "low": 0, "high": 0.1, "log": True}}}), ["'tune.params.wd'",
                                                                                         "log scale needs low > 0"]),
    (_raw(tune={"params": {"n": {"type": "int", "low": 1, "high": 2.5}}}), ["'tune.params.n'", "integer low and high"]),
    (_raw(tune={"params": {"o": {"type": "categorical"}}}), ["'tune.params.o'", "non-empty 'choices'"]),
    (_raw(tune={"params": {"o": {"type": "float", "low": 0, "high": 1, "choices": [1]}}}), ["'choices' is for type "
                                                                                          "categorical"]),
    (_raw(tune={"params": {"seed": {"type": "int", "low": 0, "high": 9}}}),
     ["'tune.params' key 'seed' is also a grid"]),
    (_raw(tune={"params": {"lr": {"type": "float", "low": 0.01, "high": 1}}, "pruner": "hyperband"}),
     ["'tune.pruner' must be one of 'median' or 'none', got 'hyperband'"]),
    (_raw(tune={"params": {"lr": {"type": "float", "low": 0.01, "high": 1}}, "metric": "test/acc_top1"}),
     ["'tune.metric' must be one of 'val/acc_top1', got 'test/acc_top1'"]),
    (_raw(tune={"params": {"lr": {"type": "float", "low": 0.01, "high": 1}}, "overrides": {"backbone": "x"}}),
     ["'tune.overrides.backbone' (model.model)", "unknown model 'x'"]),
    (_raw(tune={"params": {"lr": {"type": "float", "low": 0.01, "high": 1}}, "n_trial": 3}),
     ["'tune': unknown key(s) ['n_trial']", "n_trials"]),
    # grid blocks
    (_raw(grid=[]), ["'grid' must be a non-empty mapping", "or a non-empty list of such mappings", "got []"]),
    (_raw(grid=None), ["'grid' must be", "got None"]),
    (_raw(grid=[{"conv": ["static"], "seed": [0]}, "x"]), ["'grid[1]' must be a non-empty mapping", "got 'x'"]),
    (_raw(grid=[{"conv": ["static"], "seed": [0]}, {"conv": ["bogus"], "seed": [1]}]),
     ["grid[1] axis 'conv'", "bad conv spec 'bogus'"]),
    (_raw(grid=[{"conv": ["static"], "seed": [0]}, {"conv": ["odconv1x"]}]),
     ["grid[1] lacks axis/axes ['seed_everything'] that other blocks have", "in 'overrides'"]),
    (_raw(grid=[{"conv": ["static"], "seed": [0]}, {"conv": ["odconv1x", "static"], "seed": [0, 1]}]),
     ["grid point model.conv=static,seed_everything=0 is in grid[0] and in grid[1]"]),
])
def test_bad_sweep_yaml_clear_error(raw, needles):
    msg = _error(raw)
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_reruns_are_grid_points_again_with_overrides_run_last():
    sw = parse_sweep(_raw(reruns={"points": {"conv": ["odconv1x"], "seed": [1]},
                                  "overrides": {"model.model_options": {"strategy": "grouped"}}}))
    assert [p.key for p in sw.grid_points()] == [p.key for p in parse_sweep(_raw()).points()]
    ((rerun, orig),) = sw.rerun_pairs()
    assert orig.params == {CONV_KEY: "odconv1x", SEED_KEY: 1}
    assert rerun.params == {**orig.params, "model.model_options": {"strategy": "grouped"}}
    assert [p.key for p in sw.points()] == [p.key for p in sw.grid_points()] + [rerun.key]
    back = SweepDef.from_dict(json.loads(json.dumps(sw.to_dict())))
    assert back.rerun_pairs() == sw.rerun_pairs()


@pytest.mark.parametrize("reruns, needles", [
    ({"points": {"conv": ["odconv4x"], "seed": [0]}, "overrides": {"model.model_options": {"strategy": "grouped"}}},
     ["'reruns.points'", "model.conv=odconv4x,seed_everything=0 is not a grid point"]),
    ({"points": {"conv": ["odconv1x"]}, "overrides": {"model.model_options": {"strategy": "grouped"}}},
     ["a grid block's axes ['model.conv', 'seed_everything']", "got axes ['model.conv']"]),
    ({"points": {"conv": ["odconv1x"], "seed": [0]}, "overrides": {"seed": 3}},
     ["'reruns.overrides' sets grid axis/axes ['seed_everything']"]),
    ({"points": {"conv": ["odconv1x"], "seed": [0]}, "overrides": {"trainer.max_epochs": 1}},
     ["changes nothing", "trainer.max_epochs"]),
    ({"points": {"conv": ["odconv1x"], "seed": [0]}, "overrides": {}},
     ["'reruns.overrides' must have at least 1 item"]),
    ({"points": [{"conv": ["odconv1x"], "seed": [0]}, {"conv": ["odconv1x"], "seed": [0, 1]}],
      "overrides": {"model.lr": 0.1}}, ["'reruns.points' lists model.conv=odconv1x,seed_everything=0 twice"]),
    ({"points": {"conv": ["odconv1x"], "seed": [0]}, "overides": {"model.lr": 0.1}},
     ["unknown key(s) ['overides']", "valid keys: overrides, points"]),
])
def test_bad_reruns_clear_error(reruns, needles):
    msg = _error(_raw(reruns=reruns, overrides={"trainer.max_epochs": 1}))
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_precision_goals_are_kept_and_round_trip():
    sw = parse_sweep(_raw(precision_goals={"main_effect": 0.4, "rows": {"odconv1x": 0.75}}))
    assert sw.precision_goals == {"main_effect": 0.4, "rows": {"odconv1x": 0.75}}
    assert SweepDef.from_dict(json.loads(json.dumps(sw.to_dict()))).precision_goals == sw.precision_goals
    assert parse_sweep(_raw()).precision_goals == {}
    # a definition saved before the key existed still loads
    old = parse_sweep(_raw()).to_dict()
    del old["precision_goals"]
    assert SweepDef.from_dict(old).precision_goals == {}


@pytest.mark.parametrize("goals, needles", [
    ({"rows": {"odconv4x": 0.75}}, ["'precision_goals.rows' names 'odconv4x'", "valid: static, odconv1x"]),
    ({"main_effect": 0}, ["'precision_goals.main_effect' must be > 0"]),
    ({"rows": {"odconv1x": -1}}, ["precision_goals.rows.odconv1x", "must be > 0"]),
    ({}, ["'precision_goals' sets no goal"]),
    ({"main": 0.4}, ["unknown key(s) ['main']", "valid keys: main_effect, rows"]),
])
def test_bad_precision_goals_clear_error(goals, needles):
    msg = _error(_raw(precision_goals=goals))
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_bad_sweep_yaml_cli(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("name: bad\nbase_config: experiments/smoke.yaml\ngrid:\n  conv: [static, odconv9z]\n")
    assert cli_main(["check", str(p)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "odconv9z" in err and "valid" in err
    p.write_text("name: bad\nbase_config: experiments/smoke.yaml\ngrid: {conv: [static]}\nmax_retries: many\n")
    assert cli_main(["check", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("odconv-sweep: error: ") and err.count("\n") == 1
    assert "'max_retries'" in err and "'many'" in err
    p.write_text("name: bad\n grid: [\n")
    assert cli_main(["run", str(p)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert cli_main(["run", str(tmp_path / "missing.yaml")]) == 2


# --- what a valid file resolves to ----------------------------------------------------------

def test_grid_keys_stable_and_canonical():
    sw = parse_sweep(_raw(grid={"seed": [0], "conv": ["ODConv4x-kernel+channel"],
                                "model.model_options": [{"width": 0.5}]}))
    p = sw.points()[0]
    assert p.params["model.conv"] == "odconv4x-channel+kernel"
    assert p.key == grid_key(dict(reversed(list(p.params.items()))))
    assert p.variant == "odconv4x-channel+kernel model_options={\"width\":0.5}"
    assert "/" not in p.slug and len(p.slug) < 100


def test_aliases_canonical_and_defaults():
    sw = parse_sweep(_raw(overrides={"--lr": 0.05, "trainer.max_epochs": 3},
                          grid={"conv": ["static"], "seed": [3]},
                          tune={"params": {"weight_decay": {"type": "float", "low": 1.0e-5, "high": 1.0e-3,
                                                            "log": True},
                                           "model.optimizer": {"type": "categorical", "choices": ["sgd", "adamw"]}},
                                "pruner": None, "overrides": {"backbone": "cifar_resnet18"}}))
    assert sw.overrides == {"model.lr": 0.05, "trainer.max_epochs": 3}
    assert sw.tune.params == {"model.weight_decay": {"type": "float", "low": 1.0e-5, "high": 1.0e-3, "log": True},
                              "model.optimizer": {"type": "categorical", "choices": ["sgd", "adamw"]}}
    assert sw.tune.pruner == "none" and sw.tune.overrides == {"model.model": "cifar_resnet18"}
    assert (sw.tune.n_trials, sw.tune.metric, sw.tune.seed) == (10, "val/acc_top1", 0)
    assert (sw.metric, sw.max_retries, sw.stale_after_s, sw.description) == (None, 2, 900.0, "")
    # measure: every key resolved, unset ones at the defaults the trial process used to assume
    assert sw.measure == {"enabled": True, "repeats": 5, "latency_batch_sizes": [1, 64], "throughput_batch_size": None}
    assert parse_sweep(_raw(measure={"repeats": 2})).measure["repeats"] == 2
    conv_override = parse_sweep(_raw(overrides={"model.conv": "ODConv4x"}, grid={"seed": [0]})).overrides
    assert conv_override == {"model.conv": "odconv4x"}


def test_grid_blocks_join_and_match_the_single_block_form():
    one = parse_sweep(_raw(grid={"conv": ["static", "odconv4x"], "seed": [0, 1]}))
    as_list = parse_sweep(_raw(grid=[{"conv": ["static", "odconv4x"], "seed": [0, 1]}]))
    assert [p.params for p in as_list.points()] == [p.params for p in one.points()]
    assert as_list.grid == one.grid

    sw = parse_sweep(_raw(grid=[{"seed": [0, 1], "conv": ["static", "ODConv4x", "odconv1x"]},
                                {"conv": ["static", "odconv4x"], "seed": [2, 3]}]))
    expected = [{"model.conv": c, "seed_everything": s} for s in (0, 1) for c in ("static", "odconv4x", "odconv1x")] + \
               [{"model.conv": c, "seed_everything": s} for c in ("static", "odconv4x") for s in (2, 3)]
    assert [p.params for p in sw.points()] == expected
    # a point's key and label do not depend on the block or the axis order it came from
    for p in sw.points():
        assert p.key == f"model.conv={p.params['model.conv']},seed_everything={p.params['seed_everything']}"
        assert p.variant == variant_label({"model.conv": p.params["model.conv"]}) == p.params["model.conv"]
    assert sw.variants() == ["static", "odconv4x", "odconv1x"]
    # grid: each axis's value space over all blocks (one value space per Optuna param name)
    assert sw.grid == {"seed_everything": [0, 1, 2, 3], "model.conv": ["static", "odconv4x", "odconv1x"]}
    for p in sw.points():
        assert all(v in sw.grid[k] for k, v in p.params.items())


def test_snapshot_roundtrip_and_snapshots_without_blocks(tmp_path):
    sw = load_sweep(ROOT / "sweeps" / "cifar10_factorial.yaml")
    back = SweepDef.from_dict(json.loads(json.dumps(sw.to_dict())))
    assert [p.key for p in back.points()] == [p.key for p in sw.points()]
    # a sweep.json written before grid blocks existed: no "blocks", the grid is the one block
    old = load_sweep(ROOT / "sweeps" / "cifar10_cpu.yaml").to_dict()
    expected = [f"model.conv={c},seed_everything={s}" for c in old["grid"]["model.conv"] for s in (0, 1)]
    del old["blocks"]
    assert [p.key for p in SweepDef.from_dict(old).points()] == expected


def test_reruns_and_tuning_do_not_combine():
    msg = _error(_raw(reruns={"points": {"conv": ["odconv1x"], "seed": [0]}, "overrides": {"model.lr": 0.1}},
                      tune={"params": {"model.weight_decay": {"type": "float", "low": 1.0e-5, "high": 1.0e-3}}}))
    assert "'reruns' and 'tune' cannot be combined" in msg, msg


def test_a_snapshot_keeps_the_typed_slurm_section_and_the_analysis_plan():
    """What a worker (or a SLURM job) reads back from the driver's sweep.json is the sweep it
    was given: the slurm options (unset ones None in the JSON) and the plan with its hash."""
    plan = {"seeds": [0, 1], "contrasts": [{"name": "c", "variants": ["odconv1x"], "role": "primary"}]}
    sw = parse_sweep(_raw(slurm={"gpus_per_job": 1, "time_min": 30}, analysis=plan))
    back = SweepDef.from_dict(json.loads(json.dumps(sw.to_dict())))
    assert back.slurm == sw.slurm and back.slurm.mem_gb is None and back.slurm.time_min == 30
    assert back.plan_hash == sw.plan_hash is not None and back.analysis == plan
    assert SweepDef.from_dict(json.loads(json.dumps(parse_sweep(_raw()).to_dict()))).slurm is None
