"""The iso-cost comparison (sweeps/reporting/isocost.py; its files: sweeps/reporting/isocost_report.py):
against plain numpy least squares, on synthetic ladders with a known answer, a variant outside the
ladder, the frontier's lack-of-fit test, and the Holm adjustment its verdicts rest on."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from sweeps.definition import parse_sweep
from sweeps.grid import GridPoint
from sweeps.record import TrialRecord, write_record
from sweeps.reporting.aggregate import aggregate
from sweeps.reporting.isocost import AXES, IsoCostResult, cost_frame, find_ladder, fit_axis, frontier_band, isocost
from sweeps.reporting.isocost_report import NO_LADDER, isocost_markdown, write_isocost

RATIOS = {"static": 1.0, "static w=0.15": 1.5, "static w=0.1875": 2.25, "static w=0.25": 4.0, "static w=0.375": 9.0}
WIDTHS = {"static": 0.125, "static w=0.15": 0.15, "static w=0.1875": 0.1875, "static w=0.25": 0.25,
          "static w=0.375": 0.375}
SEED_EFFECT = {0: 0.4, 1: -0.3, 2: 0.1, 3: -0.2}


def frontier(x: float, curve: float = 0.0) -> float:
    return 80.0 + 1.2 * x + curve * x * x


def _results(variants: dict[str, tuple[float, float]], sd: float = 0.3, curve: float = 0.0, rng_seed: int = 0,
             seeds=(0, 1, 2, 3)) -> pd.DataFrame:
    """Ladder results on ``frontier`` plus ``variants``: name -> (cost ratio, offset from the frontier)."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for v, r in RATIOS.items():
        for s in seeds:
            rows.append({"variant": v, "seed": s, "top1": frontier(math.log2(r), curve) + SEED_EFFECT[s]
                         + rng.normal(0, sd)})
    for v, (r, off) in variants.items():
        for s in seeds:
            rows.append({"variant": v, "seed": s, "top1": frontier(math.log2(r), curve) + off + SEED_EFFECT[s]
                         + rng.normal(0, sd)})
    return pd.DataFrame(rows)


def _costs(variants: dict[str, tuple[float, float]]) -> pd.Series:
    ratios = {**RATIOS, **{v: r for v, (r, _) in variants.items()}}
    return pd.Series({v: 1000.0 * r for v, r in ratios.items()})


def test_on_the_frontier_gives_zero_above_it_one_outside_it_nothing():
    variants = {"on": (3.0, 0.0), "above": (2.0, 1.0), "outside": (12.0, 0.0)}
    res = _results(variants, sd=0.15, rng_seed=3)
    costs = _costs(variants)
    costs["no cost"] = np.nan
    res = pd.concat([res, pd.DataFrame([{"variant": "no cost", "seed": 0, "top1": 80.0}])], ignore_index=True)
    fit = fit_axis("params", res, costs, list(RATIOS), WIDTHS)
    t = fit.table.set_index("variant")
    assert fit.order == 1
    assert abs(t.loc["on", "delta"]) < 0.35 and t.loc["on", "ci_low"] < 0 < t.loc["on", "ci_high"]
    assert abs(t.loc["above", "delta"] - 1.0) < 0.35 and t.loc["above", "ci_low"] < 1.0 < t.loc["above", "ci_high"]
    assert t.loc["above", "ci_low"] > 0  # 4 seeds, SD 0.3: a 1-point gain is detected
    assert not t.loc["outside", "inside_ladder"] and np.isnan(t.loc["outside", "delta"])
    assert np.isnan(t.loc["outside", "p_holm"])  # not in the Holm family
    assert t.loc["outside", "cost_ratio"] == pytest.approx(12.0)
    assert fit.skipped == ["no cost"] and np.isnan(t.loc["no cost", "delta"])
    # delta is the mean minus the frontier at the variant's cost
    for v in ("on", "above"):
        assert t.loc[v, "top1_mean"] - t.loc[v, "frontier_top1"] == pytest.approx(t.loc[v, "delta"])
    assert t.loc["above", "p_holm"] >= t.loc["above", "p"]
    assert 0 < t.loc["above", "mdd"] < 1.0


def test_delta_and_interval_match_numpy_least_squares():
    """The same model built by hand: intercept, x, seed dummies (treatment coding: the
    deltas do not depend on it), one indicator per compared variant."""
    variants = {"a": (1.2, 0.3), "b": (5.0, -0.5)}
    res = _results(variants, sd=0.5, rng_seed=3)
    res = res[~((res["variant"] == "b") & (res["seed"] == 3))]  # unbalanced: one result missing
    costs = _costs(variants)
    fit = fit_axis("macs", res, costs, list(RATIOS), WIDTHS)
    t = fit.table.set_index("variant")

    x = np.log2(res["variant"].map(costs).to_numpy() / costs["static"])
    cols = [np.ones(len(res)), x] + [(res["seed"] == s).to_numpy(float) for s in (1, 2, 3)] \
        + [(res["variant"] == v).to_numpy(float) for v in variants]
    X = np.column_stack(cols)
    y = res["top1"].to_numpy()
    beta, rss, rank, _ = np.linalg.lstsq(X, y, rcond=None)
    df = len(y) - rank
    s2 = float(rss[0]) / df
    cov = s2 * np.linalg.inv(X.T @ X)
    tq = sps.t.ppf(0.975, df)
    for i, v in enumerate(variants):
        j = 5 + i
        se = math.sqrt(cov[j, j])
        assert t.loc[v, "delta"] == pytest.approx(beta[j], abs=1e-9)
        assert t.loc[v, "se"] == pytest.approx(se, rel=1e-9)
        assert t.loc[v, "ci_low"] == pytest.approx(beta[j] - tq * se, rel=1e-9)
        assert t.loc[v, "ci_high"] == pytest.approx(beta[j] + tq * se, rel=1e-9)
        assert t.loc[v, "p"] == pytest.approx(2 * sps.t.sf(abs(beta[j] / se), df), rel=1e-7)
    assert fit.df_resid == df
    # the frontier's slope is the ladder's (variants have free intercepts)
    assert fit.coef[1] == pytest.approx(beta[1], rel=1e-9)
    # the band at a ladder width contains the frontier and is symmetric about it
    mean, lo, hi = frontier_band(fit, np.array([0.0, 2.0]))
    assert np.all(lo < mean) and np.all(mean < hi) and np.allclose(hi - mean, mean - lo)


def test_a_curved_ladder_is_fitted_with_a_quadratic_and_a_straight_one_is_not():
    straight = fit_axis("params", _results({}, sd=0.2, rng_seed=1), _costs({}), list(RATIOS), WIDTHS)
    assert straight.order == 1 and straight.lack_of_fit_p > 0.05 and straight.next_order_p > 0.05
    assert abs(straight.frontier["residual"]).max() < 0.5
    curved = fit_axis("params", _results({}, sd=0.2, curve=-0.6, rng_seed=1), _costs({}), list(RATIOS), WIDTHS)
    assert curved.order == 2 and curved.coef[2] == pytest.approx(-0.6, abs=0.2)
    assert curved.line_lack_of_fit_p < 0.05 and curved.line_next_order_p < 0.05  # both tests reject the line
    lof_line = fit_axis("params", _results({}, sd=0.2, curve=-0.6, rng_seed=1), _costs({}), list(RATIOS)[:3],
                        WIDTHS)
    assert lof_line.order == 1  # three widths: no df for a quadratic and a lack-of-fit test


def test_a_curve_that_only_the_quadratic_term_detects_gets_a_quadratic(tmp_path):
    """The line's two tests disagree: its lack of fit (3 df) passes, its quadratic term (1 df,
    the sharper test against a bend) rejects. The data ask for the curve, so the quadratic is
    fitted, and isocost.md says which test moved it."""
    summary = _ladder_and_one_variant()
    # rng_seed 3, curve -0.15: a ladder on which the two tests disagree (checked first)
    out = isocost(_results({"v": (3.0, 0.0)}, sd=0.2, curve=-0.15, rng_seed=3), summary, cost_frame(summary, None))
    fit = out.axes["params"]
    assert fit.line_lack_of_fit_p >= 0.05 and fit.line_next_order_p < 0.05
    assert fit.order == 2 and fit.coef[2] == pytest.approx(-0.15, abs=0.1)
    assert fit.lack_of_fit_p > 0.05  # the quadratic fits the ladder
    write_isocost(tmp_path, out, "t", "test/acc_top1", "cpu X", "bench/models.csv")
    md = (tmp_path / "isocost.md").read_text()
    section = md[md.index("## parameters"):md.index("## MACs")]
    assert (f"rejected at the 0.05 level by its quadratic term's test, p = {fit.line_next_order_p:.3f} "
            f"(lack-of-fit test: p = {fit.line_lack_of_fit_p:.3f}), so a quadratic was fitted") in section


def _holm_by_hand(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment written out: the k-th smallest of m p-values (k from 0) times
    m - k, never below the one before it, at most 1."""
    out = np.empty(len(p))
    running = 0.0
    for k, i in enumerate(np.argsort(p, kind="stable")):
        running = max(running, min(1.0, (len(p) - k) * p[i]))
        out[i] = running
    return out


def test_verdicts_rest_on_p_values_holm_adjusted_across_the_axis_variants():
    """Four variants compared on one axis (and one outside the ladder, not in the family): the
    p_holm column is Holm's adjustment of the p column over the four, and the verdicts use it:
    of the three variants with unadjusted p < 0.05, only the one whose adjusted p stays below
    0.05 is named above (or below) the frontier."""
    variants = {"a": (1.3, 0.45), "b": (2.0, 0.45), "c": (3.0, 0.0), "d": (5.0, -0.1), "outside": (12.0, 0.0)}
    # rng_seed 9: unadjusted p < 0.05 for a, b (above) and d (below); Holm keeps a only (checked below)
    fit = fit_axis("params", _results(variants, sd=0.3, rng_seed=9), _costs(variants), list(RATIOS), WIDTHS)
    t = fit.table.set_index("variant")
    compared = t[t["p"].notna()]
    assert list(compared.index) == ["a", "b", "c", "d"] and np.isnan(t.loc["outside", "p_holm"])
    assert compared["p_holm"].to_numpy() == pytest.approx(_holm_by_hand(compared["p"].to_numpy()), rel=1e-12)
    assert set(compared.index[compared["p"] < 0.05]) == {"a", "b", "d"}
    assert set(compared.index[compared["p_holm"] < 0.05]) == {"a"}
    assert compared.loc["a", "delta"] > 0 > compared.loc["d", "delta"]

    md = isocost_markdown(IsoCostResult(list(RATIOS), {"params": fit}, {}), "t", "test/acc_top1", "cpu X", "b.csv")
    assert ("At equal parameters, of 4 variants compared with the static frontier, 1 lies above it (`a`) and 0 "
            "below it at Holm 5%; 3 are not distinguishable from it") in md
    assert "3 unadjusted 95% intervals exclude 0, 2 of them of variants not distinguishable after adjustment: `b`" in md
    assert "1 lies outside the ladder's range and is not compared (`outside`)." in md
    row = next(line for line in md.splitlines() if line.startswith("| parameters"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    a = compared.loc["a"]
    assert cells[2:7] == ["4", f"`a` {a['delta']:+.2f} [{a['ci_low']:+.2f}, {a['ci_high']:+.2f}]", "none", "3", "1"]
    section = md[md.index("## parameters"):]
    holm_column = [line.split("|")[7].strip() for line in section.splitlines() if line.startswith("| `")]
    assert holm_column == [f"{p:.3f}" if p >= 0.001 else "<0.001" for p in compared["p_holm"]] + ["n/a"]


def test_find_ladder_needs_three_static_widths_of_one_model():
    summary = pd.DataFrame({"variant": ["static", "odconv4x", "static w=0.25", "static w=0.15"],
                            "conv": ["static", "odconv4x", "static", "static"],
                            "model_name": ["m"] * 4, "model_width": [0.125, 0.125, 0.25, 0.15],
                            "n_seeds": [4, 4, 2, 3]})
    assert find_ladder(summary) == ["static", "static w=0.15", "static w=0.25"]
    assert find_ladder(summary[summary["variant"] != "static w=0.15"]) == []
    assert find_ladder(summary.assign(n_seeds=[4, 4, 0, 3])) == []  # a width without results is no rung


def test_isocost_uses_counted_costs_and_bench_times_only():
    summary = pd.DataFrame({"variant": list(RATIOS) + ["v"], "conv": ["static"] * 5 + ["odconv4x"],
                            "model_name": ["m"] * 6, "model_width": list(WIDTHS.values()) + [0.125],
                            "n_seeds": [4] * 6, "params_count": [1000 * r for r in RATIOS.values()] + [3000.0],
                            "macs": [10.0 * r for r in RATIOS.values()] + [11.0],
                            "latency_b1_ms": [1.0] * 6})  # the trials' own timing: not a cost source
    res = _results({"v": (3.0, 0.5)})
    costs = cost_frame(summary, None)
    out = isocost(res, summary, costs)
    assert out is not None and list(out.axes) == ["params", "macs"]
    assert set(out.missing_axes) == {"train_time", "latency_b1", "train_memory"}
    assert "0 of the ladder's 5 widths" in out.missing_axes["train_time"]
    bench = pd.DataFrame({"train_ms_per_image": [r for r in RATIOS.values()] + [2.0]}, index=summary["variant"])
    out = isocost(res, summary, cost_frame(summary, bench))
    assert list(out.axes) == ["params", "macs", "train_time"]
    table = out.table()
    assert set(table["axis"]) == {"params", "macs", "train_time"} and set(table["variant"]) == {"v"}
    assert table.set_index("axis").loc["macs", "cost_ratio"] == pytest.approx(1.1)
    assert isocost(res, summary[summary["conv"] != "static"], costs) is None
    assert set(AXES) == {"params", "macs", "train_time", "latency_b1", "train_memory"}


def test_the_interval_covers_the_true_offset_about_95_times_in_100():
    """Coverage over simulated studies with a known offset: the interval is as wide as it claims
    (too narrow, e.g. a frontier taken as exact, would cover less)."""
    variants = {"v": (2.0, 0.7)}
    covered = 0
    n = 120
    for i in range(n):
        fit = fit_axis("params", _results(variants, sd=0.4, rng_seed=1000 + i), _costs(variants), list(RATIOS),
                       WIDTHS)
        row = fit.table.iloc[0]
        covered += bool(row["ci_low"] <= 0.7 <= row["ci_high"])
    # binomial(120, 0.95): 108..119 holds with probability > 0.99
    assert 108 <= covered <= 119, covered


def test_files_per_axis_and_no_files_without_a_ladder(tmp_path):
    summary = pd.DataFrame({"variant": list(RATIOS) + ["odconv4x", "far"], "conv": ["static"] * 5 + ["odconv4x"] * 2,
                            "model_name": ["m"] * 7, "model_width": list(WIDTHS.values()) + [0.125, 0.125],
                            "n_seeds": [4] * 7, "params_count": [1000 * r for r in RATIOS.values()] + [3000.0, 20000.0],
                            "macs": [10.0 * r for r in RATIOS.values()] + [11.0, 12.0]})
    # rng_seed 1: a ladder the lack-of-fit test takes for a line (as about 95% of straight ones)
    res = _results({"odconv4x": (3.0, 0.5), "far": (20.0, 0.0)}, sd=0.2, rng_seed=1)
    out = isocost(res, summary, cost_frame(summary, None))
    assert out.axes["params"].order == 1
    paths, line = write_isocost(tmp_path, out, "t", "test/acc_top1", "cpu X", "bench/models.csv")
    names = sorted(p.name for p in paths)
    assert names == ["isocost.csv", "isocost.md", "isocost_frontier.csv", "isocost_macs.png", "isocost_params.png"]
    table = pd.read_csv(tmp_path / "isocost.csv")
    need = ["axis", "variant", "cost_ratio", "top1_mean", "frontier_top1", "delta", "ci_low", "ci_high", "p_holm",
            "inside_ladder"]
    assert set(need) <= set(table.columns)
    t = table.set_index(["axis", "variant"])
    assert not t.loc[("params", "far"), "inside_ladder"] and t.loc[("params", "odconv4x"), "inside_ladder"]
    assert t.loc[("params", "odconv4x"), "delta"] == pytest.approx(0.5, abs=0.3)
    md = (tmp_path / "isocost.md").read_text()
    assert "## parameters (count)" in md and "## MACs (per image)" in md and "## Axes not compared" in md
    assert "training time: the cost source gives training time for 0 of the ladder's 5 widths" in md
    assert "lies outside the ladder's range and is not compared (`far`)" in md
    frontier = pd.read_csv(tmp_path / "isocost_frontier.csv")
    assert len(frontier) == 10 and set(frontier["axis"]) == {"params", "macs"}
    # the glance table agrees with the CSVs: the frontier's slope, one compared (its verdict by
    # Holm p), one outside the ladder
    glance = md[md.index("## At a glance"):md.index("## parameters")]
    row = next(line for line in glance.splitlines() if line.startswith("| parameters"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    fp = frontier[frontier["axis"] == "params"]
    slope = np.polyfit(np.log2(fp["cost_ratio"]), fp["fitted"], 1)[0]
    r = t.loc[("params", "odconv4x")]
    assert r["p_holm"] < 0.05  # +0.5 pp at SD 0.2 over 4 seeds
    verdict = f"`odconv4x` {r['delta']:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"
    assert cells == ["parameters", f"{slope:+.2f}", "1", verdict, "none", "0", "1", f"{r['mdd']:.2f}-{r['mdd']:.2f}"]
    # a sweep without a ladder: one line, no files, stale ones removed
    paths, line = write_isocost(tmp_path, None, "t", "test/acc_top1", "", "")
    assert paths == [] and line == NO_LADDER
    assert not list(tmp_path.glob("isocost*"))


def test_make_results_of_a_sweep_with_a_ladder_writes_the_iso_cost_files(tmp_path):
    """Through `odconv-sweep results`' aggregation: a grid with a static ladder block, records
    whose parameter counts grow with width, and a bench table for the time axis."""
    root = Path(__file__).resolve().parents[1]
    opts = "model.model_options"
    widths = [0.125, 0.15, 0.1875, 0.25]
    raw = {"name": "iso", "base_config": str(root / "experiments" / "smoke.yaml"),
           "overrides": {opts: {"width": 0.125}},
           "grid": [{"seed": [0, 1, 2], "conv": ["static", "odconv4x"]},
                    {"seed": [0, 1, 2], "conv": ["static"], opts: [{"width": w} for w in widths[1:]]}]}
    sw = parse_sweep(raw)
    (tmp_path / "iso").mkdir()
    (tmp_path / "iso" / "sweep.json").write_text(json.dumps(sw.to_dict()))
    params = {w: int(10_000 * (w / 0.125) ** 2) for w in widths}
    for p in sw.grid_points():
        conv, seed = p.params["model.conv"], p.seed
        w = p.params.get(opts, {"width": 0.125})["width"]
        x = math.log2(params[w] / params[0.125])
        top1 = frontier(x) + SEED_EFFECT[seed] + (0.05, -0.03, 0.02)[seed] * (1 + widths.index(w))
        n = params[w]
        if conv == "odconv4x":  # 2.5x static's parameters, 0.8 pp above the frontier there
            n = int(2.5 * params[0.125])
            top1 = frontier(math.log2(2.5)) + 0.8 + SEED_EFFECT[seed] + (0.04, -0.02, -0.02)[seed]
        rec = TrialRecord(sweep="iso", grid_key=p.key, variant=p.variant, params=p.params, seed=seed,
                          status="complete", reason=None, metric="test/acc_top1", value=top1 / 100, params_count=n,
                          macs=100 * n, train_throughput=100.0, latency_b1_ms=1.0, latency_b64_ms=10.0,
                          peak_memory_mb=5.0, host="h", synthetic=False, measure_device="cpu",
                          config={"model": {"model": "cifar_resnet18", "conv": conv, "model_options": {"width": w}}})
        write_record(tmp_path / "iso" / "trials" / f"{GridPoint(p.params).slug}.json", rec)
    bench = tmp_path / "models.csv"
    rows = [("static", w, 100.0 * (1 + 2 * (w - 0.125) / 0.125)) for w in widths] + [("odconv4x", 0.125, 180.0)]
    pd.DataFrame([{"model": "cifar_resnet18", "width": w, "precision": "fp32", "conv": c,
                   "strategy": "-" if c == "static" else "auto", "batch": 100, "train_step_ms": t,
                   "latency_b1_ms": 2.0, "train_peak_mb": 50.0, "train_vs_static": 1.0, "latency_vs_static": 1.0,
                   "mem_vs_static": 1.0} for c, w, t in rows]).to_csv(bench, index=False)

    out = aggregate("iso", tmp_path, bench_csv=bench)
    assert out["isocost_line"].startswith("iso-cost: 3 comparison(s) on 3 axis/axes against a ladder of 4 widths")
    t = out["isocost"].set_index("axis")
    assert list(t["variant"]) == ["odconv4x"] * 3
    assert t.loc["params", "delta"] == pytest.approx(0.8, abs=0.15)
    assert t.loc["params", "cost_ratio"] == pytest.approx(2.5, rel=1e-3)
    assert t.loc["train_time", "cost_ratio"] == pytest.approx(1.8)
    # latency and memory are the same for every width here: no frontier along them
    md = (tmp_path / "iso" / "isocost.md").read_text()
    assert "- batch-1 latency: the ladder's batch-1 latency takes 1 distinct value(s) over its 4 widths" in md
    assert {"isocost.csv", "isocost.md", "isocost_params.png", "isocost_train_time.png"} <= \
        {p.name for p in out["files"]}
    summary = out["summary"].set_index("variant")
    ladder_row = summary.loc['static model_options={"width":0.25}']
    assert ladder_row["model_width"] == 0.25 and ladder_row["n_seeds"] == 3

    # the same sweep without its ladder results: no iso-cost files, one line
    for f in (tmp_path / "iso" / "trials").glob("*width*"):
        f.unlink()
    out = aggregate("iso", tmp_path, bench_csv=bench)
    assert out["isocost"] is None and out["isocost_line"].startswith("no iso-cost comparison")
    assert not list((tmp_path / "iso").glob("isocost*"))


def _ladder_and_one_variant() -> pd.DataFrame:
    """The summary rows of the ladder and one ODConv variant ``v`` at 3x the narrowest's parameters."""
    return pd.DataFrame({"variant": list(RATIOS) + ["v"], "conv": ["static"] * 5 + ["odconv4x"],
                         "model_name": ["m"] * 6, "model_width": list(WIDTHS.values()) + [0.125],
                         "n_seeds": [4] * 6, "params_count": [1000 * r for r in RATIOS.values()] + [3000.0],
                         "macs": [10.0 * r for r in RATIOS.values()] + [11.0]})


def test_the_glance_table_names_a_quadratic_frontier_with_its_two_coefficients(tmp_path):
    """A curved ladder: the glance row says the frontier is a quadratic and gives the slope at the
    narrowest width and the curvature the fit found (not one slope, which a quadratic does not have)."""
    summary = _ladder_and_one_variant()
    out = isocost(_results({"v": (3.0, 0.0)}, sd=0.2, curve=-0.6, rng_seed=1), summary, cost_frame(summary, None))
    fit = out.axes["params"]
    assert fit.order == 2
    write_isocost(tmp_path, out, "t", "test/acc_top1", "cpu X", "bench/models.csv")
    md = (tmp_path / "isocost.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| parameters"))
    cell = [c.strip() for c in row.strip("|").split("|")][1]
    assert fit.lack_of_fit_p > 0.05  # a quadratic ladder: the quadratic fits it
    assert cell == f"quadratic: {fit.coef[1]:+.2f} at the narrowest, {fit.coef[2]:+.2f} curvature"
    assert fit.coef[2] == pytest.approx(-0.6, abs=0.2)
    assert "still departs from the ladder" not in md


def test_a_frontier_that_misses_the_ladder_is_flagged_in_the_glance_row_and_its_section(tmp_path):
    """A ladder with a step at one width (as a time axis can have): neither the line nor the
    quadratic fits it, and isocost.md says so where the frontier is given and in the glance row."""
    summary = _ladder_and_one_variant()
    res = _results({"v": (3.0, 0.0)}, sd=0.2, rng_seed=1)
    res.loc[res["variant"] == "static w=0.1875", "top1"] += 1.5
    out = isocost(res, summary, cost_frame(summary, None))
    fit = out.axes["params"]
    assert fit.lack_of_fit_p < 0.05
    write_isocost(tmp_path, out, "t", "test/acc_top1", "cpu X", "bench/models.csv")
    md = (tmp_path / "isocost.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| parameters"))
    assert [c.strip() for c in row.strip("|").split("|")][1].endswith("(lack of fit)")
    section = md[md.index("## parameters"):md.index("## MACs")]
    assert "still departs from the ladder's width means" in section
