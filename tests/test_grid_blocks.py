"""Grid blocks with different axes (a static width ladder beside a conv grid): the sweep file's
rules, and a worker claiming such a point in a study whose earlier trials registered the same
key with another value space (the CIFAR-10 study's reruns and its ladder)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

from sweeps.definition import load_sweep, parse_sweep
from sweeps.grid import CONV_KEY, SEED_KEY
from sweeps.running import grid_queue as Q
from sweeps.running import study as S
from sweeps.running.storage import make_storage
from sweeps.running.worker import GridSource
from tests.conftest import sweep_file_error

ROOT = Path(__file__).resolve().parents[1]
BASE = str(ROOT / "experiments" / "smoke.yaml")
OPTS = "model.model_options"


def _ladder(**kw):
    d = {"name": "t", "base_config": BASE, "overrides": {OPTS: {"width": 0.125}},
         "grid": [{"conv": ["static", "odconv1x"], "seed": [0, 1]},
                  {"seed": [0, 1], "conv": ["static"], OPTS: [{"width": 0.25}, {"width": 0.5}]}]}
    d.update(kw)
    return d


def claim_all(st, sw, tmp_path) -> list[dict]:
    """The trial specs a grid worker claims from ``st`` until the queue is empty (no trial runs)."""
    worker = SimpleNamespace(study=st, sweep=sw, stop=False, storage=st.storage, res_dir=tmp_path / "res",
                             devices_per_trial=1, results_root=str(tmp_path),
                             mark_claimed=lambda trial: dict(trial.user_attrs))
    claimed = []
    while (claim := GridSource().claim(worker)) is not None:
        claimed.append(claim.spec)
    return claimed


def _error(raw) -> str:
    return sweep_file_error(raw)


def test_a_block_may_add_an_axis_whose_other_value_the_overrides_give():
    sw = parse_sweep(_ladder())
    keys = [p.key for p in sw.grid_points()]
    assert keys[:4] == ["model.conv=static,seed_everything=0", "model.conv=static,seed_everything=1",
                        "model.conv=odconv1x,seed_everything=0", "model.conv=odconv1x,seed_everything=1"]
    ladder = sw.grid_points()[4:]
    assert [(p.params[SEED_KEY], p.params[OPTS]["width"]) for p in ladder] == \
        [(0, 0.25), (0, 0.5), (1, 0.25), (1, 0.5)]
    assert {p.variant for p in ladder} == {'static model_options={"width":0.25}', 'static model_options={"width":0.5}'}
    assert sw.overrides[OPTS] == {"width": 0.125}  # the value the first block's points take


@pytest.mark.parametrize("raw, needles", [
    # the first block's points would have no written value for the axis
    (_ladder(overrides={}), ["grid[0] lacks axis/axes ['model.model_options']", "in 'overrides'"]),
    # the ladder lists the overrides' width: the same configuration as the first block's static
    (_ladder(grid=[{"conv": ["static"], "seed": [0]}, {"conv": ["static"], "seed": [0], OPTS: [{"width": 0.125}]}]),
     ["grid points model.conv=static,seed_everything=0 (grid[0])",
      'model.conv=static,model.model_options={"width":0.125},seed_everything=0 (grid[1]) run the same configuration']),
    # an axis of every block is no override
    (_ladder(overrides={"seed": 3}), ["key(s) ['seed_everything'] are both in 'overrides' and in 'grid'"]),
    # reruns name points by one block's axes
    (_ladder(reruns={"points": {"conv": ["odconv1x"]}, "overrides": {"model.lr": 0.5}}),
     ["'reruns.points' must name grid points by a grid block's axes", "got axes ['model.conv']"]),
])
def test_bad_blocks_clear_error(raw, needles):
    msg = _error(raw)
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_reruns_of_a_block_without_the_axis_may_override_it():
    sw = parse_sweep(_ladder(reruns={"points": {"conv": ["odconv1x"], "seed": [0]},
                                     "overrides": {OPTS: {"width": 0.125, "strategy": "grouped"}}}))
    ((rerun, orig),) = sw.rerun_pairs()
    assert rerun.params == {CONV_KEY: "odconv1x", SEED_KEY: 0, OPTS: {"width": 0.125, "strategy": "grouped"}}
    # ... but not of a block that has it as an axis
    msg = _error(_ladder(reruns={"points": {"conv": ["static"], "seed": [0], OPTS: [{"width": 0.25}]},
                                 "overrides": {OPTS: {"width": 0.25, "strategy": "grouped"}}}))
    assert "'reruns.overrides' sets grid axis/axes ['model.model_options']" in msg


def test_the_cifar10_study_keeps_its_points_and_adds_a_ladder():
    sw = load_sweep(ROOT / "sweeps" / "cifar10_factorial.yaml")
    records = (ROOT / "results" / "cifar10_factorial" / "trials").glob("*.json")
    done = {json.loads(r.read_text())["grid_key"] for r in records}
    keys = [p.key for p in sw.points()]
    assert done and done <= set(keys)  # every point the study ran is still a point: nothing re-runs
    widths = sorted({p.params[OPTS]["width"] for p in sw.grid_points() if OPTS in p.params})
    assert len(widths) >= 4 and 0.125 not in widths
    for w in widths:
        seeds = [p.seed for p in sw.grid_points() if p.params.get(OPTS, {}).get("width") == w]
        assert seeds == [0, 1, 2, 3] and all(p.params[CONV_KEY] == "static" for p in sw.grid_points()
                                             if p.params.get(OPTS, {}).get("width") == w)


def test_a_ladder_point_is_claimed_after_a_rerun_registered_the_key_with_another_value_space(tmp_path):
    """Optuna keeps one value space per param name in a study: a worker that offered the
    ladder's widths as choices of ``model.model_options`` failed once a rerun had registered
    that name with its own value. Grid trials register no Optuna params at all."""
    sw = parse_sweep(_ladder())
    st = S.create_study(make_storage(None, sw.name, tmp_path), sw.name)
    earlier = st.ask()  # a trial of the same study that registered the key with one value
    earlier.suggest_categorical(OPTS, [Q.encode_value({"width": 0.125, "strategy": "grouped"})])
    st.tell(earlier, 0.5)
    Q.enqueue_grid(st, sw)
    claimed = claim_all(st, sw, tmp_path)
    assert [c["grid_key"] for c in claimed] == [p.key for p in sw.grid_points()]
    ladder = [c for c in claimed if OPTS in c["params"]]
    assert [c["params"][OPTS]["width"] for c in ladder] == [0.25, 0.5, 0.25, 0.5]
    for c in ladder:  # the trial's command line sets the ladder's width after the overrides' one
        args = c["cli_args"]
        width_args = [a for a in args if a.startswith(f"--{OPTS}=")]
        assert json.loads(width_args[-1].split("=", 1)[1]) == c["params"][OPTS]
    trials = {t.number: t for t in st.get_trials()}
    for c in claimed:
        t = trials[c["trial_number"]]
        assert t.state == optuna.trial.TrialState.RUNNING
        assert t.params == {} and json.loads(t.user_attrs["grid_params"]) == c["params"]


def test_a_grid_that_gains_a_variant_claims_its_new_points_in_the_same_study(tmp_path):
    """Adding a variant to a study's grid (every earlier point keeps its key) enqueues and claims
    the new points beside the finished ones: trials of the study that registered
    ``model.conv`` with the old grid's values do not stand in the way."""
    sw = parse_sweep(_ladder())
    st = S.create_study(make_storage(None, sw.name, tmp_path), sw.name)
    old = st.ask()  # a trial of an earlier version of the study, with the old value space
    old.suggest_categorical(CONV_KEY, ["static", "odconv1x"])
    st.tell(old, 0.5)
    raw = _ladder()
    raw["grid"].append({"seed": [0], "conv": ["dyconv4x"]})
    grown = parse_sweep(raw)
    assert [p.key for p in grown.grid_points()][:len(sw.grid_points())] == [p.key for p in sw.grid_points()]
    Q.enqueue_grid(st, grown)
    claimed = [spec["grid_key"] for spec in claim_all(st, grown, tmp_path)]
    assert claimed == [p.key for p in grown.grid_points()]
    assert claimed[-1] == "model.conv=dyconv4x,seed_everything=0"
