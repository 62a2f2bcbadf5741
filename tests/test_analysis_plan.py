"""Analysis plans (sweeps/analysis_plan.py, sweeps/reporting/plan_status.py, contrasts.py, wording.py):
a plan's checks against the grid and its hash; a plan recorded before the runs (pre-specified), a
plan changed halfway and no plan (exploratory); the planned contrasts against plain numpy least
squares with the family's Holm adjustment; the wording rules of every generated sentence; and the
files through make results."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as sps

from sweeps.analysis_plan import plan_hash, read_plans, record_plan
from sweeps.cli import main as sweep_main
from sweeps.definition import parse_sweep
from sweeps.grid import GridPoint
from sweeps.layout import SweepLayout
from sweeps.record import TrialRecord, write_record
from sweeps.reporting.aggregate import aggregate
from sweeps.reporting.contrasts import plan_contrasts
from sweeps.reporting.plan_status import EXPLORATORY, PRESPECIFIED, plan_status
from sweeps.reporting.wording import (
    FORBIDDEN,
    axis_sentence,
    contrast_sentence,
    contrast_variants,
    family_sentence,
    verdict,
)
from sweeps.sweep_schema import AnalysisSection
from tests.conftest import sweep_file_error

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
PLAN = {"seeds": [4, 5, 6], "frontier_order": {"macs": 1},
        "contrasts": [{"name": "pooled", "variants": ["a", "b"], "axis": "macs", "role": "primary"},
                      {"name": "a_alone", "variants": ["a"], "axis": "macs"},
                      {"name": "b_alone", "variants": ["b"], "axis": "macs"}]}


def _sweep(analysis):
    return {"name": "t", "base_config": "experiments/smoke.yaml",
            "overrides": {"model.model_options": {"width": 0.125}},
            "grid": [{"conv": ["static", "odconv1x-channel", "odconv1x"], "seed": [4, 5, 6]},
                     {"conv": ["static"], "model.model_options": [{"width": 0.15}, {"width": 0.1875}],
                      "seed": [4, 5, 6]}],
            **({"analysis": analysis} if analysis is not None else {})}


def _plan_for_grid():
    return {**PLAN, "contrasts": [{"name": "pooled", "variants": ["odconv1x-channel", "odconv1x"], "axis": "macs",
                                   "role": "primary"}]}


def test_a_plan_is_checked_against_the_grid_and_hashed_as_written():
    sw = parse_sweep(_sweep(_plan_for_grid()), check_files=False)
    assert sw.plan().contrasts[0].variants == ["odconv1x-channel", "odconv1x"]
    assert sw.plan_hash == plan_hash(_plan_for_grid())
    reordered = dict(reversed(list(_plan_for_grid().items())))
    assert plan_hash(reordered) == sw.plan_hash  # key order does not matter
    changed = {**_plan_for_grid(), "alpha": 0.01}
    assert plan_hash(changed) != sw.plan_hash
    assert parse_sweep(_sweep(None), check_files=False).plan_hash is None


@pytest.mark.parametrize("analysis, words", [
    ({**PLAN, "contrasts": [{"name": "x", "variants": ["nope"], "role": "primary"}]},
     ["'analysis.contrasts[0]' (x) names 'nope', not a variant of the grid", "odconv1x-channel"]),
    ({**_plan_for_grid(), "seeds": [4, 99]}, ["'analysis.seeds' [99] are not seeds of the grid"]),
    ({**_plan_for_grid(), "frontier_widths": [0.125, 0.3]}, ["'analysis.frontier_widths' [0.3]", "0.1875"]),
    ({**_plan_for_grid(), "contrasts": [{"name": "x", "variants": ["odconv1x"]}]}, ["no primary contrast"]),
    ({**_plan_for_grid(), "correction": "fdr"}, ["'analysis.correction' must be one of", "'holm'"]),
    ({**_plan_for_grid(), "frontier_order": {"macs": 3}}, ["analysis.frontier_order.macs"]),
])
def test_a_bad_plan_is_one_error_line_naming_it(analysis, words):
    line = sweep_file_error(_sweep(analysis))
    for w in words:
        assert w in line, (w, line)


def test_the_plans_log_records_each_new_plan_once(tmp_path):
    layout = SweepLayout("t", tmp_path)
    first = record_plan(layout, {"seeds": [1, 2]}, now=T0)
    assert record_plan(layout, {"seeds": [1, 2]}, now=T0 + timedelta(hours=1)) == first  # a resumed run
    second = record_plan(layout, {"seeds": [1, 2, 3]}, now=T0 + timedelta(hours=2))
    assert [p.hash for p in read_plans(layout)] == [first.hash, second.hash]
    assert read_plans(layout)[1].time == T0 + timedelta(hours=2)
    assert record_plan(layout, None) is None and len(read_plans(layout)) == 2


def test_odconv_sweep_plan_records_a_plan_before_any_trial(tmp_path, capsys):
    """`odconv-sweep plan` logs the file's plan once (a repeat keeps it, an edit adds one) and
    starts nothing; a sweep without a plan is one error line, exit 2."""
    root = Path(__file__).resolve().parents[1]
    layout = SweepLayout("t", tmp_path / "results")

    def plan(analysis):
        path = tmp_path / "t.yaml"
        path.write_text(yaml.safe_dump({**_sweep(analysis), "base_config": str(root / "experiments" / "smoke.yaml")}))
        code = sweep_main(["plan", str(path), "--results-root", str(layout.root)])
        return code, capsys.readouterr()

    code, out = plan(_plan_for_grid())
    first = read_plans(layout)
    assert code == 0 and [p.hash for p in first] == [plan_hash(_plan_for_grid())]
    assert f"plan {first[0].hash} recorded at {first[0].recorded_at}" in out.out and not layout.trials.exists()
    code, out = plan(_plan_for_grid())
    assert code == 0 and read_plans(layout) == first and f"in force since {first[0].recorded_at}" in out.out
    code, out = plan({**_plan_for_grid(), "alpha": 0.01})
    assert code == 0 and [p.hash for p in read_plans(layout)][0] == first[0].hash and len(read_plans(layout)) == 2
    code, out = plan(None)
    assert code == 2 and "has no analysis: section" in out.err and len(out.err.strip().splitlines()) == 1


def _records(times, plans, variants=("static", "a"), seeds=(4, 5, 6)):
    """One complete record per (variant, seed), the k-th finishing at ``times[k]`` under ``plans[k]``."""
    rows = [{"variant": v, "seed": s, "status": "complete"} for s in seeds for v in variants]
    for row, t, h in zip(rows, times, plans):
        row["finished_at"] = t.isoformat(timespec="seconds")
        row["analysis_plan"] = h
    return pd.DataFrame(rows)


def test_a_plan_recorded_before_the_runs_is_prespecified(tmp_path):
    layout = SweepLayout("t", tmp_path)
    plan = {"seeds": [4, 5, 6], "contrasts": [{"name": "c", "variants": ["a"], "role": "primary"}]}
    entry = record_plan(layout, plan, now=T0)
    recs = _records([T0 + timedelta(minutes=10 * k) for k in range(1, 7)], [entry.hash] * 6)
    st = plan_status(plan, recs, read_plans(layout), ["static"])
    assert st.label == PRESPECIFIED and st.prespecified
    assert (st.covered, st.under_plan, st.later_changes) == (6, 6, [])
    assert "before the first trial it covers finished" in st.reason


def test_a_plan_changed_halfway_is_exploratory_and_its_change_is_named(tmp_path):
    layout = SweepLayout("t", tmp_path)
    plan_a = {"seeds": [4, 5, 6], "contrasts": [{"name": "c", "variants": ["a"], "role": "primary"}]}
    plan_b = {**plan_a, "alpha": 0.1}
    a = record_plan(layout, plan_a, now=T0)
    b = record_plan(layout, plan_b, now=T0 + timedelta(minutes=35))  # after three trials finished
    times = [T0 + timedelta(minutes=10 * k) for k in range(1, 7)]
    recs = _records(times, [a.hash] * 3 + [b.hash] * 3)
    st = plan_status(plan_b, recs, read_plans(layout), ["static"])
    assert st.label == EXPLORATORY and not st.prespecified
    assert [p.hash for p in st.later_changes] == [b.hash] and st.later_changes[0].recorded_at == b.recorded_at
    assert (st.covered, st.under_plan) == (6, 3)
    assert "after the first trial it covers finished" in st.reason
    # the first plan, judged on its own, was in force before any result
    assert plan_status(plan_a, recs, read_plans(layout), ["static"]).label == PRESPECIFIED


def test_a_first_plan_written_after_the_data_is_exploratory_and_no_change(tmp_path):
    layout = SweepLayout("t", tmp_path)
    plan = {"seeds": [4, 5, 6], "contrasts": [{"name": "c", "variants": ["a"], "role": "primary"}]}
    recs = _records([T0 + timedelta(minutes=10 * k) for k in range(1, 7)], [None] * 6)
    entry = record_plan(layout, plan, now=T0 + timedelta(days=3))
    st = plan_status(plan, recs, read_plans(layout), ["static"])
    assert st.label == EXPLORATORY and (st.covered, st.under_plan, st.later_changes) == (6, 0, [])
    assert st.reason == (f"plan {entry.hash} was recorded at {entry.recorded_at}, after the first trial it "
                         f"covers finished ({(T0 + timedelta(minutes=10)).isoformat(timespec='seconds')}): every "
                         "result it covers is exploratory")


def test_no_plan_is_exploratory():
    st = plan_status(None, _records([T0] * 6, [None] * 6), [], ["static"])
    assert st.label == EXPLORATORY and "no analysis plan" in st.reason


def test_a_plan_never_recorded_is_exploratory():
    plan = {"seeds": [4, 5, 6]}
    st = plan_status(plan, _records([T0] * 6, [None] * 6), [], ["static"])
    assert st.label == EXPLORATORY and "not in the study's plans log" in st.reason


# --- the planned contrasts ---------------------------------------------------------------------

RUNGS = {"static": (0.125, 1.0), "static w=0.15": (0.15, 1.44), "static w=0.1875": (0.1875, 2.25),
         "static w=0.25": (0.25, 4.0)}
ARMS = {"a": 1.02, "b": 1.05, "c": 1.10}
OFFSET = {"a": 0.8, "b": 0.2, "c": -0.3}
SEED_EFFECT = {4: 0.3, 5: -0.2, 6: 0.1, 7: -0.4}


def _data(rng_seed=0):
    rng = np.random.default_rng(rng_seed)
    rows, summary, costs = [], [], {}
    for v, (w, r) in RUNGS.items():
        summary.append({"variant": v, "conv": "static", "model_name": "m", "model_width": w, "n_seeds": 4})
        costs[v] = 1e6 * r
    for v, r in ARMS.items():
        summary.append({"variant": v, "conv": v, "model_name": "m", "model_width": 0.125, "n_seeds": 4})
        costs[v] = 1e6 * r
    for v in costs:
        for s in SEED_EFFECT:
            off = OFFSET.get(v, 0.0)
            rows.append({"variant": v, "seed": s, "top1": 80 + 1.5 * math.log2(costs[v] / 1e6) + off + SEED_EFFECT[s]
                         + rng.normal(0, 0.3)})
    cost_frame = pd.DataFrame({"macs": pd.Series(costs)})
    return pd.DataFrame(rows), pd.DataFrame(summary), cost_frame


def _numpy_contrast(res, costs, weights, seeds):
    """The pooled contrast from a design matrix written out here: intercept, x, seed deviations,
    one indicator per arm; its estimate, standard error and df."""
    d = res[res["seed"].isin(seeds)].reset_index(drop=True)
    x = np.log2(d["variant"].map(costs["macs"]) / costs["macs"]["static"]).to_numpy()
    cols = [np.ones(len(d)), x]
    ss = sorted(seeds)
    cols += [(d["seed"] == s).to_numpy(float) - (d["seed"] == ss[0]).to_numpy(float) for s in ss[1:]]
    arms = list(ARMS)
    cols += [(d["variant"] == v).to_numpy(float) for v in arms]
    X = np.column_stack(cols)
    beta, *_ = np.linalg.lstsq(X, d["top1"].to_numpy(), rcond=None)
    resid = d["top1"].to_numpy() - X @ beta
    df = len(d) - X.shape[1]
    cov = (resid @ resid / df) * np.linalg.inv(X.T @ X)
    w = np.zeros(X.shape[1])
    for v, c in weights.items():
        w[2 + len(ss) - 1 + arms.index(v)] = c
    return float(w @ beta), float(math.sqrt(w @ cov @ w)), df


def test_planned_contrasts_against_numpy_least_squares_with_holm_over_the_secondaries():
    res, summary, costs = _data()
    plan = AnalysisSection.model_validate({**PLAN, "seeds": [4, 5, 6, 7]})
    t = plan_contrasts(plan, res, summary, costs, prespecified=True).set_index("contrast")
    for name, weights in {"pooled": {"a": 0.5, "b": 0.5}, "a_alone": {"a": 1.0}, "b_alone": {"b": 1.0}}.items():
        est, se, df = _numpy_contrast(res, costs, weights, [4, 5, 6, 7])
        row = t.loc[name]
        assert row["estimate"] == pytest.approx(est, abs=1e-10) and row["se"] == pytest.approx(se, rel=1e-9)
        assert row["df"] == df and row["p"] == pytest.approx(2 * sps.t.sf(abs(est / se), df), rel=1e-9)
        half = sps.t.ppf(0.975, df) * se
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((est - half, est + half), rel=1e-9)
    # the primary is a family of one; the two secondaries are adjusted together (Holm, by hand)
    assert t.loc["pooled", "p_adjusted"] == pytest.approx(t.loc["pooled", "p"])
    p = sorted([t.loc["a_alone", "p"], t.loc["b_alone", "p"]])
    holm = [min(1.0, 2 * p[0]), min(1.0, max(2 * p[0], p[1]))]
    assert sorted(t.loc[["a_alone", "b_alone"], "p_adjusted"]) == pytest.approx(holm)
    assert t["prespecified"].all() and (t["n_seeds"] == 4).all()
    # the planted offsets come back: a 0.8 above the frontier, the pool (0.8 + 0.2) / 2
    assert t.loc["a_alone", "ci_low"] < 0.8 < t.loc["a_alone", "ci_high"]
    assert t.loc["pooled", "ci_low"] < 0.5 < t.loc["pooled", "ci_high"]


def test_contrasts_keep_to_the_plans_seeds_and_frontier_widths():
    res, summary, costs = _data()
    shifted = res.copy()
    shifted.loc[shifted["seed"] == 7, "top1"] += 50.0  # a seed outside the plan: must not move anything
    shifted.loc[shifted["variant"] == "static w=0.25", "top1"] += 50.0  # a rung outside the plan's frontier
    plan = AnalysisSection.model_validate({**PLAN, "seeds": [4, 5, 6]})
    narrow = AnalysisSection.model_validate({**PLAN, "seeds": [4, 5, 6], "frontier_widths": [0.125, 0.15, 0.1875]})
    base = plan_contrasts(narrow, res, summary, costs, True).set_index("contrast")
    moved = plan_contrasts(narrow, shifted, summary, costs, True).set_index("contrast")
    assert moved["estimate"].to_numpy() == pytest.approx(base["estimate"].to_numpy())
    assert (moved["n_seeds"] == 3).all()
    wide = plan_contrasts(plan, shifted, summary, costs, True).set_index("contrast")
    assert wide.loc["pooled", "estimate"] != pytest.approx(base.loc["pooled", "estimate"])


def test_a_contrast_missing_a_planned_result_is_interim_and_gives_no_verdict():
    """Every result a contrast plans (its variants and the plan's rungs at the plan's seeds) is
    counted; while one is missing the sentence withholds the verdict, whatever the p-value."""
    res, summary, costs = _data()
    res.loc[res["variant"] == "a", "top1"] += 3.0  # far above: the complete study says "above"
    grid_seeds = {v: [4, 5, 6, 7, 8] if v == "static w=0.15" else [4, 5, 6, 7] for v in summary["variant"]}
    plan = AnalysisSection.model_validate({**PLAN, "seeds": [4, 5, 6, 7], "frontier_widths": [0.125, 0.15, 0.1875]})
    full = plan_contrasts(plan, res, summary, costs, True, grid_seeds).set_index("contrast")
    # a_alone plans a and the three rungs at seeds 4-7 (seed 8 is outside the plan): 16 results
    assert full.loc["a_alone", ["n_results", "n_results_planned"]].tolist() == [16, 16]
    assert full.loc["pooled", "n_results_planned"] == 20
    assert contrast_sentence(full.loc["a_alone"].to_dict() | {"contrast": "a_alone"}).endswith(": above.")
    for dropped in [("a", 7), ("static w=0.15", 5)]:  # an arm's result, a rung's result
        part = res[~((res["variant"] == dropped[0]) & (res["seed"] == dropped[1]))]
        row = plan_contrasts(plan, part, summary, costs, True, grid_seeds).set_index("contrast").loc["a_alone"]
        assert row[["n_results", "n_results_planned"]].tolist() == [15, 16] and row["p_adjusted"] < 0.05
        text = contrast_sentence(row.to_dict() | {"contrast": "a_alone"})
        assert text.endswith(": interim (15 of the 16 results the plan names), no verdict before the last.")
        assert "above" not in text
    # a rung outside the plan's widths is not planned; without grid seeds nothing is counted
    assert full.loc["b_alone", "n_results_planned"] == 16
    assert plan_contrasts(plan, res, summary, costs, True)["n_results_planned"].isna().all()


def test_a_contrast_against_another_variant():
    res, summary, costs = _data()
    plan = AnalysisSection.model_validate({"seeds": [4, 5, 6, 7], "frontier_order": {"macs": 1}, "contrasts": [
        {"name": "a_vs_c", "variants": ["a"], "against": "c", "axis": "macs", "role": "primary"}]})
    row = plan_contrasts(plan, res, summary, costs, False).iloc[0]
    est, se, _ = _numpy_contrast(res, costs, {"a": 1.0, "c": -1.0}, [4, 5, 6, 7])
    assert row["estimate"] == pytest.approx(est, abs=1e-10) and row["se"] == pytest.approx(se, rel=1e-9)
    assert not row["prespecified"]


def test_a_pooled_contrast_names_each_variant_once_whatever_its_label_holds(tmp_path):
    """Labels with "+" (attention specs) and spaces (grid axes) survive contrasts.csv and the sentence."""
    res, summary, costs = _data()
    names = {"a": "odconv1x-channel+filter", "b": "odconv4x-spatial+kernel width=0.125", "c": "c"}
    res["variant"] = res["variant"].replace(names)
    summary["variant"] = summary["variant"].replace(names)
    costs = costs.rename(index=names)
    plan = AnalysisSection.model_validate({**PLAN, "seeds": [4, 5, 6, 7], "contrasts": [
        {"name": "pooled", "variants": [names["a"], names["b"], "c"], "axis": "macs", "role": "primary"}]})
    plan_contrasts(plan, res, summary, costs, prespecified=False).to_csv(tmp_path / "contrasts.csv", index=False)
    row = pd.read_csv(tmp_path / "contrasts.csv").iloc[0]
    assert contrast_variants(row["variants"]) == [names["a"], names["b"], "c"]
    with pytest.raises(ValueError, match=r"JSON list of variant labels.*'a\+b'"):
        contrast_variants("a+b")  # an unreadable value is named, not a bare JSONDecodeError
    assert contrast_sentence(row).startswith(
        "pooled (primary, exploratory): `odconv1x-channel+filter`, `odconv4x-spatial+kernel width=0.125` and `c` "
        "(pooled mean) against the static frontier at equal MACs, 4 seeds: ")


# --- wording ------------------------------------------------------------------------------------

def test_verdicts_follow_the_adjusted_p_value_only():
    assert verdict(+0.9, 0.01, 0.05) == "above" and verdict(-0.9, 0.01, 0.05) == "below"
    assert verdict(+2.0, 0.06, 0.05) == "not distinguishable"  # a large estimate, not significant
    assert verdict(+0.1, math.nan, 0.05) == "not distinguishable"


def test_generated_sentences_never_claim_more_than_their_intervals():
    res, summary, costs = _data(rng_seed=3)
    plan = AnalysisSection.model_validate({**PLAN, "seeds": [4, 5, 6, 7]})
    table = plan_contrasts(plan, res, summary, costs, prespecified=True)
    sentences = [contrast_sentence(r) for _, r in table.iterrows()]
    axis_table = pd.DataFrame({"variant": ["x", "y", "z", "far"], "delta": [0.9, -0.2, 2.5, np.nan],
                               "ci_low": [0.1, -1.0, -0.1, np.nan], "ci_high": [1.7, 0.6, 5.1, np.nan],
                               "p": [0.03, 0.6, 0.06, np.nan], "p_holm": [0.09, 0.6, 0.12, np.nan],
                               "mdd": [1.1, 1.1, 3.0, np.nan], "inside_ladder": [True, True, True, False],
                               "cost": [1.0, 1.0, 1.0, 9.0]})
    sentences.append(axis_sentence("macs", axis_table))
    for s in sentences:
        assert not any(w in s.lower() for w in FORBIDDEN), s
    axis = sentences[-1]
    assert "0 lie above it and 0 below it at Holm 5%" in axis
    assert "3 are not distinguishable from it (the design detects 1.10-3.00 pp at 80% power)" in axis
    assert ("1 unadjusted 95% interval excludes 0, 1 of them of variants not distinguishable after adjustment: "
            "`x`") in axis
    assert "1 lies outside the ladder's range and is not compared (`far`)" in axis
    assert "2 of 3 Δs are positive" in axis


def _axis_rows(variants, delta, p_holm, inside=None, n_seeds=None):
    k = len(variants)
    return pd.DataFrame({"variant": variants, "delta": delta, "ci_low": [d - 1 for d in delta],
                         "ci_high": [d + 1 for d in delta], "p_holm": p_holm, "mdd": [1.2 + 0.1 * i for i in range(k)],
                         "inside_ladder": inside or [True] * k, "cost": [1.0] * k, "n_seeds": n_seeds or [4] * k})


def test_a_family_sentence_places_each_variant_with_the_axis_verdict_rule():
    per_axis = {
        "params": _axis_rows(["a", "b", "c"], [-2.0, -1.5, -0.9], [0.001, 0.01, 0.02], n_seeds=[1, 2, 4]),
        "macs": _axis_rows(["a", "b", "c"], [0.8, -1.5, 0.4], [0.03, 0.2, 0.5]),
        "latency_b1": _axis_rows(["a", "b", "c"], [np.nan, np.nan, np.nan], [np.nan] * 3, inside=[False] * 3),
    }
    s = family_sentence("Fam", per_axis)
    assert s.startswith("Fam (`a`, `b`, `c`; 1-4 seeds), against the static frontier at Holm 5%: ")
    assert "at equal parameters, all 3 below it;" in s
    assert "at equal MACs, 1 above it (`a`), 2 not distinguishable from it (`b`, `c`; the design detects " \
           "1.30-1.40 pp at 80% power);" in s
    assert "at equal batch-1 latency, all 3 outside the ladder's range, not compared." in s
    assert "on no axis" not in s  # `a` is above on MACs
    one = family_sentence("Solo", {"params": _axis_rows(["s"], [0.3], [0.6], n_seeds=[4])})
    assert one == ("Solo (`s`, 4 seeds), against the static frontier at Holm 5%: at equal parameters, not "
                   "distinguishable from it (the design detects 1.20 pp at 80% power); above it on no axis.")
    pair = family_sentence("Pair", {"params": _axis_rows(["a", "b"], [-2.0, -1.5], [0.001, 0.01])})
    assert "at equal parameters, both below it; above it on no axis." in pair
    assert not any(w in (s + one + pair).lower() for w in FORBIDDEN)


def test_make_results_writes_the_contrasts_and_claims_of_a_planned_sweep(tmp_path):
    """Through make results' aggregation: a planned grid (a static ladder and two arms), records
    written as trials write them (finished after the plan was recorded, holding its hash)."""
    root = Path(__file__).resolve().parents[1]
    raw = {**_sweep(_plan_for_grid()), "name": "planned", "base_config": str(root / "experiments" / "smoke.yaml")}
    sw = parse_sweep(raw)
    layout = SweepLayout("planned", tmp_path)
    layout.dir.mkdir()
    layout.snapshot.write_text(json.dumps(sw.to_dict(), default=str))
    entry = record_plan(layout, sw.analysis, now=T0)
    macs = {0.125: 1.0e6, 0.15: 1.44e6, 0.1875: 2.25e6}
    for k, p in enumerate(sw.grid_points()):
        conv, seed = p.params["model.conv"], p.seed
        w = p.params.get("model.model_options", {"width": 0.125})["width"]
        n = macs[w] * {"static": 1.0, "odconv1x-channel": 1.02, "odconv1x": 1.05}[conv]
        top1 = 80 + 1.5 * math.log2(n / 1e6) + {4: 0.3, 5: -0.2, 6: 0.1}[seed] + 0.05 * ((k * 7) % 5 - 2) \
            + (0.6 if conv != "static" else 0.0)
        rec = TrialRecord(sweep="planned", grid_key=p.key, variant=p.variant, params=p.params, seed=seed,
                          status="complete", metric="test/acc_top1", value=top1 / 100, params_count=int(n / 50),
                          macs=int(n), analysis_plan=entry.hash, host="h", measure_device="cpu",
                          finished_at=(T0 + timedelta(minutes=10 * (k + 1))).isoformat(timespec="seconds"),
                          config={"model": {"model": "cifar_resnet18", "conv": conv, "model_options": {"width": w}}})
        write_record(layout.record(GridPoint(p.params).slug), rec)
    out = aggregate("planned", tmp_path)
    assert out["plan_status"].label == PRESPECIFIED
    csv = pd.read_csv(layout.report("contrasts.csv"))
    assert list(csv["contrast"]) == ["pooled"] and csv.loc[0, "n_seeds"] == 3 and bool(csv.loc[0, "prespecified"])
    assert contrast_variants(csv.loc[0, "variants"]) == ["odconv1x-channel", "odconv1x"]
    assert csv.loc[0, "ci_low"] < 0.6 < csv.loc[0, "ci_high"]
    claims = layout.report("claims.md").read_text()
    lead = claims.split("<!-- claims:planned:lead -->")[1].split("<!-- /claims:planned:lead -->")[0]
    assert lead.startswith("\n**Pre-specified.** Plan " + entry.hash)
    assert "pooled (primary, pre-specified): `odconv1x-channel` and `odconv1x` (pooled mean)" in lead
    assert "15 of the 15 results the plan covers ran under it" in layout.report("contrasts.md").read_text()
    assert "**Status: pre-specified.**" in layout.report("isocost.md").read_text()
    family = claims.split("<!-- claims:planned:family-odconv -->\n")[1].split("\n<!--")[0]
    assert family.startswith("ODConv (`odconv1x-channel`, `odconv1x`; 3 seeds each), against the static frontier")
