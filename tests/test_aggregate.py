"""`odconv-sweep results` on synthetic trial records (no training): paired differences, Holm,
factorial effects, power, cost and Pareto fronts against independent computations, and honest
output for sweeps without a factorial, with one seed, with missing cells and failed trials."""

from __future__ import annotations

import csv
import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from scipy import stats as ss

from sweeps.cli import main as cli_main
from sweeps.definition import load_sweep, parse_sweep
from sweeps.grid import grid_key
from sweeps.record import TrialRecord, read_records, write_record
from sweeps.reporting import precision as P
from sweeps.reporting.aggregate import aggregate
from sweeps.reporting.analysis import train_time_column
from sweeps.reporting.attentions import factorial_groups
from sweeps.reporting.formats import CSV_FLOAT_FORMAT, format_float, write_csv
from sweeps.reporting.plots import label_points, short_label
from sweeps.reporting.precision import seeds_for_main_effect, seeds_for_row
from tests.conftest import lstsq_vs_reference

ROOT = Path(__file__).resolve().parents[1]
BASE = str(ROOT / "experiments" / "smoke.yaml")
ATTS = ("channel", "filter", "spatial", "kernel")
# the 16 cells of the attention factorial, as conv specs (kernel on = 4 kernels)
CELLS = {cell: ("static" if not any(cell) else
                ("odconv4x" if cell[3] else "odconv1x") + ("" if cell[:3] == (1, 1, 1) else
                                                           "-" + "+".join(a for a, on in zip(ATTS, cell) if on)))
         for cell in itertools.product([0, 1], repeat=4)}
MAIN = {"channel": 1.0, "filter": 0.5, "spatial": -0.3, "kernel": 2.0}
INTER = {("channel", "kernel"): -0.6}
SEED_SHIFT = {0: 0.0, 1: 0.8, 2: -0.5}


def _rec(sweep: str, conv: str, seed: int, top1_pct: float | None, status: str = "complete", tput: float = 100.0,
         params: int = 1000, host: str = "hostA", width: float = 0.25, synthetic: bool = False) -> TrialRecord:
    p = {"model.conv": conv, "seed_everything": seed}
    return TrialRecord(sweep=sweep, grid_key=grid_key(p), variant=conv, params=p, seed=seed, status=status,
                       reason=None if status == "complete" else "diverged: nan", metric="test/acc_top1",
                       value=None if top1_pct is None else top1_pct / 100, params_count=params, macs=10_000,
                       train_throughput=tput, latency_b1_ms=1.0, latency_b64_ms=10.0, peak_memory_mb=5.0,
                       host=host, synthetic=synthetic, measure_device="cpu",
                       config={"model": {"model": "cifar_resnet18", "model_options": {"width": width}}})


def _write(root: Path, name: str, grid: dict, recs: list[TrialRecord], **extra):
    sw = parse_sweep({"name": name, "base_config": BASE, "grid": grid, **extra})
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / "sweep.json").write_text(json.dumps(sw.to_dict()))
    for r in recs:
        write_record(root / name / "trials" / f"{r.grid_key.replace('=', '_').replace(',', '__')}.json", r)
    return sw


def _cell_top1(cell, seed: int, noise: float) -> float:
    x = {a: 2 * v - 1 for a, v in zip(ATTS, cell)}
    y = 70 + SEED_SHIFT[seed] + sum(MAIN[a] / 2 * x[a] for a in ATTS)
    return y + sum(e / 2 * x[a] * x[b] for (a, b), e in INTER.items()) + noise


def _holm(p):
    """Holm's step-down adjustment, written out (independent of statsmodels)."""
    p = np.asarray(p, float)
    order = np.argsort(p)
    adj = np.empty_like(p)
    running = 0.0
    for i, j in enumerate(order):
        running = max(running, min(1.0, (len(p) - i) * p[j]))
        adj[j] = running
    return adj


def _power_nct(nc: float, df: float) -> float:
    c = ss.t.ppf(0.975, df)
    return ss.nct.sf(c, df, nc) + ss.nct.cdf(-c, df, nc)


def _factorial_records(name: str):
    rng = np.random.default_rng(3)
    recs, truth = [], {}
    for cell, conv in CELLS.items():
        for seed in (0, 1, 2):
            y = _cell_top1(cell, seed, rng.normal(0, 0.05))
            truth[(conv, seed)] = y
            recs.append(_rec("fac", conv, seed, y, tput=200.0 / (1 + sum(cell)), params=1000 + 100 * sum(cell)))
    recs.append(_rec("fac", "condconv8x", 0, 71.0, tput=50.0, params=9000))
    recs.append(_rec("fac", "condconv8x", 1, 71.9, tput=50.0, params=9000))
    recs.append(_rec("fac", "condconv8x", 2, None, status="failed", tput=50.0, params=9000))
    # dyconv4x: seed 1 missing (not run yet)
    recs += [_rec("fac", "dyconv4x", s, 69.0 + SEED_SHIFT[s] + 0.1 * s, tput=300.0, params=4000) for s in (0, 2)]
    for r in recs:
        r.sweep = name
    return recs, truth


FACTORIAL_GRID = {"conv": list(CELLS.values()) + ["condconv8x", "dyconv4x"], "seed": [0, 1, 2]}


@pytest.fixture
def factorial(tmp_path):
    recs, truth = _factorial_records("fac")
    sw = _write(tmp_path, "fac", FACTORIAL_GRID, recs)
    return sw, truth, aggregate("fac", tmp_path), tmp_path / "fac"


def test_a_csv_holds_its_floats_at_the_stated_precision_so_rounding_noise_changes_no_byte(tmp_path):
    """Two runs whose numbers differ by floating-point noise (1e-14 relative, as between two
    CPUs) write the same bytes; a difference at the stated precision changes them."""
    x = 1 / 3 + 1e-15

    def table(v: float, zero: float) -> pd.DataFrame:
        return pd.DataFrame({"variant": ["a", "b", "c"], "n": [1, 2, 3], "value": [v, 82.35250115394592, np.nan],
                             "delta": [zero, -2.025690391579218, 3.318055139e-13],
                             "mixed": [v, "text", None]})  # a float among an object column's values

    one, two, three = (tmp_path / f"{n}.csv" for n in ("one", "two", "three"))
    write_csv(table(x, 0.0), one)
    write_csv(table(x * (1 + 1e-14), -0.0), two)   # noise below the precision; a zero of the other sign
    write_csv(table(x + 1e-9, 0.0), three)
    assert CSV_FLOAT_FORMAT == "%.10g"
    assert one.read_bytes() == two.read_bytes()
    assert one.read_text().splitlines() == ["variant,n,value,delta,mixed", "a,1,0.3333333333,0,0.3333333333",
                                            "b,2,82.35250115,-2.025690392,text", "c,3,,3.318055139e-13,"]
    assert three.read_bytes() != one.read_bytes()


def test_every_csv_of_the_report_uses_the_stated_float_format(factorial):
    """Each number in every CSV ``make results`` writes is as :func:`format_float` writes it
    (no float written at full precision), and the plots carry no software version."""
    _, _, out, res = factorial
    csvs = [p for p in out["files"] if p.suffix == ".csv"]
    assert {"summary.csv", "effects.csv", "conditional_effects.csv", "attention.csv"} <= {p.name for p in csvs}
    n_floats = 0
    for path in csvs:
        with path.open(newline="") as f:
            cells = [c for row in list(csv.reader(f))[1:] for c in row]
        for c in cells:
            try:
                v = float(c)
            except ValueError:
                continue
            assert c == format_float(v), (path.name, c)
            n_floats += "." in c
    assert n_floats > 100
    for png in out["plots"]:
        assert b"Matplotlib version" not in png.read_bytes(), png.name


def test_precision_goals_are_judged_on_the_intervals_the_results_gave(tmp_path):
    recs, truth = _factorial_records("goals")
    goals = {"main_effect": 0.1, "rows": {"odconv4x": 5.0, "condconv8x": 0.2, "dyconv4x": 1.0}}
    _write(tmp_path, "goals", FACTORIAL_GRID, recs, precision_goals=goals)
    out = aggregate("goals", tmp_path)
    res = tmp_path / "goals"
    eff = pd.read_csv(res / "effects.csv").set_index("term")
    widest = max((eff.loc[a, "ci_high"] - eff.loc[a, "ci_low"]) / 2 for a in ATTS)
    s = pd.read_csv(res / "summary.csv", dtype={"failed_seeds": str, "missing_seeds": str}).set_index("variant")
    got = {g["goal"]: g for g in out["power"]["goals"]}
    main = got["each main effect of the factorial"]
    assert main["measured"] == pytest.approx(widest) and main["verdict"] == ("met" if widest <= 0.1 else "not met")
    # odconv4x: 3 seeds paired with static, an interval computed by hand
    d = np.array([truth[("odconv4x", k)] - truth[("static", k)] for k in (0, 1, 2)])
    half = ss.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    o4 = got["`odconv4x` vs `static` (paired, 3 seeds)"]
    assert o4["measured"] == pytest.approx(half) and o4["verdict"] == "met"  # noise 0.05: far inside 5 pp
    assert o4["planned"] == pytest.approx(ss.t.ppf(0.975, 2) * out["power"]["paired_diff_sd"] / math.sqrt(3))
    # condconv8x: 2 seeds (one failed), its paired interval is wide: over 0.2
    c8 = got["`condconv8x` vs `static` (paired, 3 seeds)"]
    c8_half = (s.loc["condconv8x", "paired_ci_high"] - s.loc["condconv8x", "paired_ci_low"]) / 2
    assert c8["measured"] == pytest.approx(c8_half) and c8["verdict"] == "not met"
    md = (res / "summary.md").read_text().split("| variant")[0]
    assert "Precision goals of the sweep file" in md
    assert re.search(r"\| `condconv8x` vs `static` \(paired, 3 seeds\) +\| ± 0.20 ", md)
    assert md.count("not met") >= 1
    # the blocked model: every variant and seed in one OLS (numpy here), the interval on its residual df
    fit = lstsq_vs_reference(pd.DataFrame([{"variant": r.variant, "seed": r.seed, "y": 100 * r.value}
                                           for r in recs if r.status == "complete"]), "static")
    b4 = got["`odconv4x` vs `static` (blocked model, 3 seeds)"]
    est, se, dof, resid_sd = fit["odconv4x"]
    h = ss.t.ppf(0.975, dof) * se
    assert s.loc["odconv4x", ["blocked_delta", "blocked_ci_low", "blocked_ci_high"]].tolist() == pytest.approx(
        [est, est - h, est + h])
    # the pooled SD rests on every variant, and dyconv4x still misses a seed: open, whatever it says so far
    assert b4["measured"] == pytest.approx(h) and h < 5.0 and b4["verdict"] == "open"
    # planned: the grid (18 variants x 3 seeds, complete) gives sqrt(2/3) x the residual SD on 34 df
    assert b4["planned"] == pytest.approx(ss.t.ppf(0.975, 34) * math.sqrt(2 / 3) * resid_sd)
    assert got["`dyconv4x` vs `static` (blocked model, 3 seeds)"]["verdict"] == "open"
    assert got["`dyconv4x` vs `static` (paired, 3 seeds)"]["verdict"] == "open"
    # its last seed in: judged
    last = _rec("goals", "dyconv4x", 1, 69.0 + SEED_SHIFT[1] + 0.1)
    write_record(res / "trials" / "dyconv4x_1.json", last)
    got = {g["goal"]: g for g in aggregate("goals", tmp_path)["power"]["goals"]}
    assert got["`odconv4x` vs `static` (blocked model, 3 seeds)"]["verdict"] == "met"


@pytest.mark.parametrize("sd,aim", [(0.6, 0.4), (0.74, 0.4), (0.3, 0.4), (2.0, 0.4)])
def test_seeds_for_a_main_effect_solve_the_balanced_design_by_hand(sd, aim):
    # a balanced 2^4 with s seeds a cell: N = 16 s results, each effect's SE 2 sd / sqrt(N), residual df
    # N - 1 (mean) - 10 (4 mains, 6 interactions) - (s - 1) (seed blocks)
    def half(s):
        return ss.t.ppf(0.975, 15 * s - 10) * 2 * sd / math.sqrt(16 * s)
    cells = {conv: cell for cell, conv in CELLS.items()}
    need = next((s for s in range(2, 13) if half(s) <= aim), None)
    got = seeds_for_main_effect(cells, {c: [0, 1] for c in cells}, sd, aim)
    if need is None:
        assert got is None
    elif need == 2:
        assert got == (0, 0)  # the grid's two seeds already do
    else:
        assert got == (need, 16 * (need - 2))
    # cells that already have more seeds need fewer added
    more = {c: [0, 1, 2, 3] if c in ("static", "odconv4x") else [0, 1] for c in cells}
    if need and need > 2:
        k, added = seeds_for_main_effect(cells, more, sd, aim)
        assert k <= need and added == 14 * (k - 2) + 2 * max(0, k - 4)


@pytest.mark.parametrize("sd,n_now,aim", [(0.54, 4, 0.75), (0.3, 4, 0.75), (0.54, 2, 0.75), (5.0, 4, 0.75)])
def test_seeds_for_a_row_solve_the_paired_t_interval_by_hand(sd, n_now, aim):
    need = next((n for n in range(max(2, n_now), 13) if ss.t.ppf(0.975, n - 1) * sd / math.sqrt(n) <= aim), None)
    assert seeds_for_row(sd, n_now, aim) == need
    assert seeds_for_row(float("nan"), n_now, aim) is None


def test_summary_says_how_many_seeds_would_meet_each_goal(tmp_path):
    recs, _ = _factorial_records("need")
    rng = np.random.default_rng(5)
    for r in recs:  # noise of about 1 pp: three seeds are not enough for +-0.4 on a main effect
        if r.value is not None:
            r.value += rng.normal(0, 0.01)
    _write(tmp_path, "need", FACTORIAL_GRID, recs, precision_goals={"main_effect": 0.4, "rows": {"odconv4x": 0.75}})
    out = aggregate("need", tmp_path)
    got = {g["goal"]: g for g in out["power"]["goals"]}
    pw = out["power"]
    cells = {conv: cell for cell, conv in CELLS.items()}
    k, added = seeds_for_main_effect(cells, {c: [0, 1, 2] for c in cells}, pw["effect_sd"], 0.4)
    assert k > 3 and added == 16 * (k - 3)
    assert got["each main effect of the factorial"]["seeds_needed"] == f"{k} a cell (+{added} fits)"
    n = seeds_for_row(pw["paired_diff_sd"], 3, 0.75)
    row = got["`odconv4x` vs `static` (paired, 3 seeds)"]["seeds_needed"]
    assert row == (f"{n} on both (+{n - 3} each)" if n and n > 3 else "> 12" if n is None else "the grid's")
    md = (tmp_path / "need" / "summary.md").read_text()
    assert "seeds to meet it" in md and f"{k} a cell (+{added} fits)" in md


def test_a_met_goal_needs_no_more_seeds_whatever_the_pooled_sd_says(tmp_path, monkeypatch):
    recs, _ = _factorial_records("met")
    _write(tmp_path, "met", FACTORIAL_GRID, recs, precision_goals={"rows": {"odconv4x": 5.0, "condconv8x": 0.2}})
    # the pooled SDs (over every row) can ask for more seeds than the row's own interval needed
    monkeypatch.setattr(P, "seeds_for_row", lambda sd, n, aim: 9)
    got = {g["goal"]: g for g in aggregate("met", tmp_path)["power"]["goals"]}
    met = got["`odconv4x` vs `static` (paired, 3 seeds)"]
    assert met["verdict"] == "met" and met["seeds_needed"] == "the grid's"
    unmet = got["`condconv8x` vs `static` (paired, 3 seeds)"]
    assert unmet["verdict"] == "not met" and unmet["seeds_needed"] == "9 on both (+6 each)"


def test_precision_goals_stay_open_without_results(tmp_path):
    _write(tmp_path, "open", {"conv": ["static", "odconv4x"], "seed": [0, 1]}, [],
           precision_goals={"rows": {"odconv4x": 0.75}})
    out = aggregate("open", tmp_path)
    paired, blocked = out["power"]["goals"]
    for g in (paired, blocked):
        assert g["verdict"] == "open" and math.isnan(g["measured"]) and g["seeds_needed"] == "n/a"
    assert paired["goal"] == "`odconv4x` vs `static` (paired, 2 seeds)"
    assert blocked["goal"] == "`odconv4x` vs `static` (blocked model, 2 seeds)"


def test_factorial_effects_recover_the_known_effects(factorial):
    sw, truth, out, res = factorial
    groups, why = factorial_groups(sw)
    assert len(groups) == 1 and why == "" and groups[0].kernels == 4 and len(groups[0].variants) == 16
    eff = pd.read_csv(res / "effects.csv")
    assert {"term", "estimate", "ci_low", "ci_high"} <= set(eff.columns)
    terms = list(eff["term"])
    assert terms[:4] == list(ATTS) and set(terms[4:]) == {f"{a}:{b}" for a, b in itertools.combinations(ATTS, 2)}
    e = eff.set_index("term")
    for t, r in e.iterrows():
        want = MAIN[t] if ":" not in t else INTER.get(tuple(t.split(":")), 0.0)
        assert abs(r["estimate"] - want) < 0.06 and r["ci_low"] < want < r["ci_high"], t
    # independent: a main effect of a balanced design is mean(on) - mean(off) over all results
    on = [y for (conv, _), y in truth.items() for cell, c in CELLS.items() if c == conv and cell[0]]
    off = [y for (conv, _), y in truth.items() for cell, c in CELLS.items() if c == conv and not cell[0]]
    assert e.loc["channel", "estimate"] == pytest.approx(np.mean(on) - np.mean(off), abs=1e-9)
    assert (e["n_obs"] == 48).all() and (e["df_resid"] == 48 - 1 - 2 - 10).all()
    assert (e["n_cells_with_data"] == 16).all()
    md = (res / "effects.md").read_text()
    assert "2 × coefficient" in md and "channel:kernel" in md and "kernels=4" in md
    assert (res / "effects.png").stat().st_size > 0
    assert "## Factorial effects of the attentions" in (res / "summary.md").read_text()


def _cell_mean_difference(truth: dict, factor: str, given: str, given_on: bool) -> float:
    """Mean top-1 with ``factor`` on minus with it off, over the results with ``given`` at
    ``given_on``: a conditional effect of a balanced design, from the results alone."""
    fi, gi = ATTS.index(factor), ATTS.index(given)
    at = [(cell[fi], y) for (conv, _), y in truth.items() for cell, c in CELLS.items()
          if c == conv and cell[gi] == given_on]
    return np.mean([y for on, y in at if on]) - np.mean([y for on, y in at if not on])


def test_a_large_interaction_gets_its_conditional_effects(factorial):
    sw, truth, out, res = factorial
    eff = pd.read_csv(res / "effects.csv").set_index("term")
    cond = pd.read_csv(res / "conditional_effects.csv")
    # the screen: exactly the interactions with unadjusted p < 0.10, each with 4 conditional effects
    screened = {t for t in eff.index if ":" in t and eff.loc[t, "p_value"] < 0.10}
    assert "channel:kernel" in screened and set(cond["interaction"]) == screened and len(cond) == 4 * len(screened)
    c = cond[cond["interaction"] == "channel:kernel"].set_index(["factor", "given_on"])
    for factor, given in (("channel", "kernel"), ("kernel", "channel")):
        for on in (False, True):
            assert c.loc[(factor, on), "given"] == given
            assert c.loc[(factor, on), "estimate"] == pytest.approx(_cell_mean_difference(truth, factor, given, on),
                                                                    abs=1e-9)
            assert c.loc[(factor, on), "ci_low"] < c.loc[(factor, on), "estimate"] < c.loc[(factor, on), "ci_high"]
        # the main effect (on minus off, over the other's levels) is the mean of its two conditional effects
        assert c.loc[factor, "main_effect"].tolist() == pytest.approx([eff.loc[factor, "estimate"]] * 2)
        assert c.loc[factor, "estimate"].mean() == pytest.approx(eff.loc[factor, "estimate"], abs=1e-9)
    # near the truth the records were made from: main effect -/+ the interaction (-0.6)
    assert c.loc[("channel", False), "estimate"] == pytest.approx(1.6, abs=0.1)
    assert c.loc[("channel", True), "estimate"] == pytest.approx(0.4, abs=0.1)
    assert c.loc[("kernel", True), "estimate"] == pytest.approx(1.4, abs=0.1)
    md = (res / "effects.md").read_text().split("## Conditional effects where two attentions interact")[1]
    assert re.search(r"\| `channel:kernel` \(<0\.001\) +\| channel +\| kernel +\| \+1\.6\d \[", md)
    assert "`conditional_effects.csv`" in md


def test_without_a_large_interaction_no_conditional_effects_are_listed(tmp_path, monkeypatch):
    monkeypatch.delitem(INTER, ("channel", "kernel"))  # records with no interaction at all
    recs, _ = _factorial_records("flat")
    _write(tmp_path, "flat", FACTORIAL_GRID, recs)
    aggregate("flat", tmp_path)
    eff = pd.read_csv(tmp_path / "flat" / "effects.csv").set_index("term")
    assert not any(eff.loc[t, "p_value"] < 0.10 for t in eff.index if ":" in t)  # this noise draw passes none
    assert len(pd.read_csv(tmp_path / "flat" / "conditional_effects.csv")) == 0
    assert "No two-way interaction has p < 0.10" in (tmp_path / "flat" / "effects.md").read_text()


def test_an_outlying_run_is_listed_and_the_effects_refitted_without_it(tmp_path):
    recs, truth = _factorial_records("outl")
    bad = CELLS[(1, 0, 1, 1)]  # odconv4x-channel+spatial+kernel, seed 0 trained badly
    for r in recs:
        if r.variant == bad and r.seed == 0:
            r.value -= 0.03
    _write(tmp_path, "outl", FACTORIAL_GRID, recs)
    aggregate("outl", tmp_path)
    res = tmp_path / "outl"
    out = pd.read_csv(res / "outliers.csv")
    assert list(out["variant"]) == [bad] and list(out["seed"]) == [0]
    assert out["top1"].iloc[0] == pytest.approx(truth[(bad, 0)] - 3.0)
    assert out["p_bonferroni"].iloc[0] < 0.05 and out["student_resid"].iloc[0] < 0
    # the estimates keep it (resid SD inflated); the refit without it recovers the truth as the clean
    # design does: independent, the effects of the 47 other results by numpy least squares
    eff = pd.read_csv(res / "effects.csv").set_index("term")
    wo = pd.read_csv(res / "effects_without_outliers.csv").set_index("term")
    assert (eff["n_obs"] == 48).all() and (wo["n_obs"] == 47).all()
    assert wo["resid_sd"].iloc[0] < eff["resid_sd"].iloc[0] / 5
    rows = [(cell, seed, y) for (conv, seed), y in truth.items() for cell, c in CELLS.items()
            if c == conv and (conv, seed) != (bad, 0)]
    x = np.array([[2 * v - 1 for v in cell] for cell, _, _ in rows], dtype=float)
    pairs = list(itertools.combinations(range(4), 2))
    X = np.column_stack([np.ones(len(rows))] + [[float(s == k) for _, s, _ in rows] for k in (1, 2)]
                        + [x[:, i] for i in range(4)] + [x[:, i] * x[:, j] for i, j in pairs])
    beta, *_ = np.linalg.lstsq(X, np.array([y for _, _, y in rows]), rcond=None)
    for i, a in enumerate(ATTS):
        assert wo.loc[a, "estimate"] == pytest.approx(2 * beta[3 + i], abs=1e-9)
    md = (res / "effects.md").read_text()
    assert "**Outlying results.** 1 of the 48 results lies" in md and f"`{bad}`" in md
    assert "without the outlying results: 47 results" in md
    widest = max(wo.loc[a, "ci_high"] - wo.loc[a, "ci_low"] for a in ATTS) / 2
    summary_md = (res / "summary.md").read_text()
    assert (f"1 outlying result (listed under *Factorial effects*) is part of the factorial's residual SD: without "
            f"it, the residual SD is {wo['resid_sd'].iloc[0]:.2f} pp and the widest main-effect interval ± {widest:.2f}"
            ) in summary_md
    # and the blocked model of every row vs static without it: numpy least squares, variant + seed
    obs = [(c, str(sd), y) for (c, sd), y in truth.items() if (c, sd) != (bad, 0)]
    obs += [("condconv8x", "0", 71.0), ("condconv8x", "1", 71.9), ("dyconv4x", "0", 69.0),
            ("dyconv4x", "2", 69.0 + SEED_SHIFT[2] + 0.2)]
    variants = sorted({c for c, _, _ in obs} - {"static"})
    X = np.column_stack([np.ones(len(obs))] + [[float(c == v) for c, _, _ in obs] for v in variants]
                        + [[float(sd == k) for _, sd, _ in obs] for k in ("1", "2")])
    y = np.array([v for _, _, v in obs])
    beta, rss, *_ = np.linalg.lstsq(X, y, rcond=None)
    dof = len(obs) - X.shape[1]
    assert f"the blocked model's residual SD is {math.sqrt(float(rss[0]) / dof):.2f} pp on {dof} df" in summary_md
    # the run is redone and lands where it should: the lists go, not left stale
    for r in recs:
        if r.variant == bad and r.seed == 0:
            r.value += 0.03
    _write(tmp_path, "outl", FACTORIAL_GRID, recs)
    aggregate("outl", tmp_path)
    assert not (res / "outliers.csv").exists() and not (res / "effects_without_outliers.csv").exists()
    assert "Outlying results" not in (res / "effects.md").read_text()


def test_paired_rows_holm_and_power_match_independent_computations(factorial):
    sw, truth, out, res = factorial
    s = pd.read_csv(res / "summary.csv", dtype={"failed_seeds": str, "missing_seeds": str}).set_index("variant")
    conv = CELLS[(1, 0, 0, 1)]  # odconv4x-channel+kernel
    d = np.array([truth[(conv, k)] - truth[("static", k)] for k in (0, 1, 2)])
    h = ss.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    assert s.loc[conv, "paired_n"] == 3 and s.loc[conv, "paired_delta"] == pytest.approx(d.mean())
    assert (s.loc[conv, "paired_ci_low"], s.loc[conv, "paired_ci_high"]) == pytest.approx((d.mean() - h, d.mean() + h))
    assert s.loc[conv, "paired_p"] == pytest.approx(2 * ss.t.sf(abs(d.mean()) / (d.std(ddof=1) / math.sqrt(3)), 2))
    # pairs only over the seeds both have: dyconv4x has seeds 0 and 2
    dy = np.array([69.0 - truth[("static", 0)], 69.0 + SEED_SHIFT[2] + 0.2 - truth[("static", 2)]])
    assert s.loc["dyconv4x", "paired_n"] == 2 and s.loc["dyconv4x", "paired_delta"] == pytest.approx(dy.mean())
    assert s.loc["condconv8x", "paired_n"] == 2 and s.loc["condconv8x", "failed_seeds"] == "2"
    # Holm across every row that has a paired p-value
    rows = s["paired_p"].dropna()
    assert len(rows) == 17 and math.isnan(s.loc["static", "paired_p"])
    assert s.loc[rows.index, "paired_p_holm"].to_numpy() == pytest.approx(_holm(rows.to_numpy()))
    # power: the pooled SD is the within-variant SD over all variants with >= 2 results
    top = {}
    for (c, _), y in truth.items():
        top.setdefault(c, []).append(y)
    top["condconv8x"], top["dyconv4x"] = [71.0, 71.9], [69.0, 69.0 + SEED_SHIFT[2] + 0.2]
    ss_within = sum(((np.asarray(v) - np.mean(v)) ** 2).sum() for v in top.values())
    dof = sum(len(v) - 1 for v in top.values())
    pw = out["power"]
    assert pw["pooled_sd_df"] == dof and pw["pooled_sd"] == pytest.approx(math.sqrt(ss_within / dof))
    # main effect: 48 planned results, balanced, so its standard error is 2 sd / sqrt(48) at the fit's SD
    resid_sd = pd.read_csv(res / "effects.csv")["resid_sd"].iloc[0]
    assert pw["effect_n_obs"] == 48 and pw["effect_df"] == 35 and pw["effect_sd"] == pytest.approx(resid_sd)
    assert _power_nct(pw["mdd_main_effect"] / (2 * resid_sd / math.sqrt(48)), 35) == pytest.approx(0.8, abs=1e-6)
    paired3, unpaired3 = pw["mdd_rows"][3]
    assert unpaired3 > 0 and paired3 > 0 and set(pw["mdd_rows"]) == {3}
    # 95% half-widths: t quantile x standard error, for the main effect and for 3 paired seeds
    per_sd = ss.t.ppf(0.975, 35) * 2 / math.sqrt(48)
    assert pw["halfwidth_per_sd"] == pytest.approx(per_sd) and pw["halfwidth_main_effect"] == pytest.approx(
        per_sd * resid_sd)
    hw_paired3, hw_unpaired3, hw_per_sd3 = pw["halfwidth_rows"][3]
    assert hw_per_sd3 == pytest.approx(ss.t.ppf(0.975, 2) / math.sqrt(3))
    assert hw_paired3 == pytest.approx(ss.t.ppf(0.975, 2) * pw["paired_diff_sd"] / math.sqrt(3))
    assert hw_unpaired3 == pytest.approx(ss.t.ppf(0.975, 4) * pw["pooled_sd"] * math.sqrt(2 / 3))
    md = (res / "summary.md").read_text()
    head = md.split("| variant")[0]
    assert "## Precision of this design" in head and "pooled seed-to-seed standard deviation" in head
    assert "smallest main effect the factorial detects" in head and f"{pw['mdd_main_effect']:.2f} pp" in head
    assert f"95% interval ± {pw['halfwidth_main_effect']:.2f} pp ({per_sd:.2f} × the residual SD)" in head
    assert (f"95% interval ± {hw_paired3:.2f} pp paired ({hw_per_sd3:.2f} × the SD of paired differences; "
            f"± {hw_unpaired3:.2f} unpaired)") in head


def test_cost_columns_and_pareto_fronts(factorial):
    sw, truth, out, res = factorial
    s = out["summary"]
    assert s.set_index("variant").loc["static", "train_ms_per_image"] == pytest.approx(5.0)  # 1000 / 200 img/s
    c, v = s["train_ms_per_image"].to_numpy(), s["top1_mean"].to_numpy()
    brute = [not any(c[j] <= c[i] and v[j] >= v[i] and (c[j] < c[i] or v[j] > v[i]) for j in range(len(s)))
             for i in range(len(s))]
    assert s["pareto_train_time"].tolist() == brute and any(brute)
    assert s.set_index("variant").loc["dyconv4x", "pareto_train_time"]  # the cheapest is always on the front
    # no bench table under this results root: the ratios are the trials' own, with the host named
    assert set(s["cost_source"]) == {"trials"}
    assert s.set_index("variant").loc["odconv4x", "train_time_ratio"] == pytest.approx(5.0)
    md = (res / "summary.md").read_text()
    assert "hostA" in md
    for f in ("accuracy_vs_train_time.png", "accuracy_vs_params.png", "accuracy_bars.png", "accuracy_vs_macs.png"):
        assert (res / f).stat().st_size > 0


def test_cost_ratios_come_from_the_bench_table_when_it_has_the_model(tmp_path):
    recs = [_rec("b", conv, s, 70 + i + 0.1 * s, tput=100.0 / (i + 1), host=f"host{s}")
            for i, conv in enumerate(["static", "odconv1x", "odconv1x-channel"]) for s in (0, 1)]
    _write(tmp_path, "b", {"conv": ["static", "odconv1x", "odconv1x-channel"], "seed": [0, 1]}, recs)
    (tmp_path / "bench").mkdir()
    cols = ["model", "width", "precision", "conv", "strategy", "batch", "train_vs_static", "latency_vs_static",
            "mem_vs_static"]
    bench = pd.DataFrame([["cifar_resnet18", 0.25, "fp32", "static", "-", 64, 1.0, 1.0, 1.0],
                          ["cifar_resnet18", 0.25, "bf16", "static", "-", 64, 1.0, 1.0, 1.0],
                          ["cifar_resnet18", 0.25, "bf16", "odconv1x", "auto", 64, 5.0, 5.0, 5.0],  # other precision
                          ["cifar_resnet18", 0.25, "fp32", "odconv1x", "auto", 64, 2.7, 2.24, 2.74],
                          ["cifar_resnet18", 0.25, "fp32", "odconv1x", "grouped", 64, 3.11, 2.09, 4.69],
                          # another width
                          ["cifar_resnet18", 1.0, "fp32", "odconv1x-channel", "auto", 64, 9.0, 9.0, 9.0]],
                         columns=cols)
    bench.to_csv(tmp_path / "bench" / "models.csv", index=False)
    (tmp_path / "bench" / "models.md").write_text("# bench\n\n- device: cpu\n")
    s = aggregate("b", tmp_path)["summary"].set_index("variant")
    assert s.loc["odconv1x", "cost_source"] == "bench"
    assert s.loc["odconv1x", ["bench_train_time_ratio", "bench_latency_b1_ratio", "bench_memory_ratio"]].tolist() \
        == [2.7, 2.24, 2.74]
    assert s.loc["odconv1x-channel", "cost_source"] == "trials"
    assert s.loc["odconv1x-channel", "train_time_ratio"] == pytest.approx(3.0)
    assert s.loc["odconv1x", "hosts"] == "host0,host1"
    # one host name, two CPUs (a VM moved between machines): two machines, flagged
    statics = sorted((r for r in read_records(tmp_path / "b" / "trials") if r.variant == "static"),
                     key=lambda r: r.seed)
    for r, cpu in zip(statics, ["AMD EPYC", "Intel Xeon"]):
        r.host, r.versions = "vm", {"cpu": cpu, "platform": "Linux"}
        write_record(tmp_path / "b" / "trials" / f"{r.grid_key.replace('=', '_').replace(',', '__')}.json", r)
    s3 = aggregate("b", tmp_path)["summary"].set_index("variant")
    assert s3.loc["static", "hosts"] == "vm (AMD EPYC),vm (Intel Xeon)"
    md = (tmp_path / "b" / "summary.md").read_text()
    row = [ln for ln in md.splitlines() if ln.startswith("| `odconv1x` ")][0]
    assert "2.70x" in row and "bench" in row
    assert "several hosts" in md
    # a bench run on another kind of device (models.md says cuda; the trials measured on cpu) is not used
    (tmp_path / "bench" / "models.md").write_text("# bench\n\n- device: cuda\n")
    s2 = aggregate("b", tmp_path)["summary"].set_index("variant")
    assert s2.loc["odconv1x", "cost_source"] == "trials"
    assert s2.loc["odconv1x", "train_time_ratio"] == pytest.approx(2.0)
    # nor is a missing table
    s3 = aggregate("b", tmp_path, bench_csv=tmp_path / "none.csv")["summary"].set_index("variant")
    assert set(s3["cost_source"]) == {"trials"}


def test_the_sweeps_own_bench_table_wins_over_the_general_one(tmp_path):
    recs = [_rec("b", conv, s, 70 + i + 0.1 * s, tput=100.0 / (i + 1))
            for i, conv in enumerate(["static", "odconv1x", "odconv1x-channel"]) for s in (0, 1)]
    _write(tmp_path, "b", {"conv": ["static", "odconv1x", "odconv1x-channel"], "seed": [0, 1]}, recs)
    cols = ["model", "width", "precision", "conv", "strategy", "batch", "train_vs_static", "latency_vs_static",
            "mem_vs_static"]
    general = [["cifar_resnet18", 0.25, "fp32", "static", "-", 64, 1.0, 1.0, 1.0],
               ["cifar_resnet18", 0.25, "fp32", "odconv1x", "auto", 64, 2.7, 2.24, 2.74]]
    own = [["cifar_resnet18", 0.25, "fp32", "static", "-", 64, 1.0, 1.0, 1.0],
           ["cifar_resnet18", 0.25, "fp32", "odconv1x", "auto", 64, 1.9, 2.0, 2.1],
           ["cifar_resnet18", 0.25, "fp32", "odconv1x-channel", "auto", 64, 1.3, 1.4, 1.5]]
    for folder, rows in ((tmp_path / "bench", general), (tmp_path / "b" / "bench", own)):
        folder.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows, columns=cols).to_csv(folder / "models.csv", index=False)
        (folder / "models.md").write_text("# bench\n\n- device: cpu\n")
    s = aggregate("b", tmp_path)["summary"].set_index("variant")
    assert set(s.loc[["odconv1x", "odconv1x-channel"], "cost_source"]) == {"bench"}
    assert s.loc["odconv1x", "bench_train_time_ratio"] == 1.9
    assert s.loc["odconv1x-channel", ["bench_train_time_ratio", "bench_latency_b1_ratio", "bench_memory_ratio"]
                 ].tolist() == [1.3, 1.4, 1.5]
    # without it, the general table (which lacks odconv1x-channel)
    (tmp_path / "b" / "bench" / "models.csv").unlink()
    s = aggregate("b", tmp_path)["summary"].set_index("variant")
    assert s.loc["odconv1x", "bench_train_time_ratio"] == 2.7
    assert s.loc["odconv1x-channel", "cost_source"] == "trials"


def test_time_plot_and_pareto_front_use_the_bench_when_it_covers_every_variant(tmp_path):
    # the trials' times say odconv1x-channel is the dearest; the one bench run says it is cheaper than odconv1x
    recs = [_rec("b", conv, s, top1 + 0.1 * s, tput=tput, host=f"host{s}")
            for conv, top1, tput in (("static", 70.0, 100.0), ("odconv1x", 72.0, 60.0),
                                     ("odconv1x-channel", 71.0, 20.0)) for s in (0, 1)]
    _write(tmp_path, "b", {"conv": ["static", "odconv1x", "odconv1x-channel"], "seed": [0, 1]}, recs)
    cols = ["model", "width", "precision", "conv", "strategy", "batch", "train_step_ms", "train_vs_static",
            "latency_vs_static", "mem_vs_static"]
    rows = [["cifar_resnet18", 0.25, "fp32", "static", "-", 128, 128.0, 1.0, 1.0, 1.0],
            ["cifar_resnet18", 0.25, "fp32", "odconv1x", "auto", 128, 256.0, 2.0, 2.0, 2.0],
            ["cifar_resnet18", 0.25, "fp32", "odconv1x-channel", "auto", 128, 160.0, 1.25, 1.3, 1.4]]
    folder = tmp_path / "b" / "bench"
    folder.mkdir(parents=True)
    pd.DataFrame(rows, columns=cols).to_csv(folder / "models.csv", index=False)
    (folder / "models.md").write_text("# bench\n\n- cpu: Test CPU\n- device: cpu\n")
    s = aggregate("b", tmp_path)["summary"].set_index("variant")
    assert s["bench_train_ms_per_image"].tolist() == pytest.approx([1.0, 2.0, 1.25])  # step / batch
    assert train_time_column(s.reset_index()) == "bench_train_ms_per_image"
    # on the bench's times odconv1x-channel (71%, 1.25 ms) is on the front; on the trials' (50 ms) it would not be
    assert s["pareto_train_time"].tolist() == [True, True, True]
    row = [ln for ln in (tmp_path / "b" / "summary.md").read_text().splitlines()
           if ln.startswith("| `odconv1x-channel` ")][0]
    assert "| 1.250 " in row and "| 50.000 " not in row
    # a bench that lacks one variant: the whole plot and front fall back to the trials' own times
    pd.DataFrame(rows[:2], columns=cols).to_csv(folder / "models.csv", index=False)
    s = aggregate("b", tmp_path)["summary"].set_index("variant")
    assert train_time_column(s.reset_index()) == "train_ms_per_image"
    assert s["pareto_train_time"].tolist() == [True, True, False]


def test_learning_curves_average_seeds_and_pair_them_with_static(tmp_path):
    hist = {("static", 0): [50, 60, 70], ("static", 1): [40, 62, 72],
            ("odconv1x", 0): [45, 61, 74], ("odconv1x", 1): [30, 58],  # seed 1 stopped after 2 epochs
            ("odconv1x", 2): [20, 30, 40]}  # no static with seed 2: in the mean, not in the pairs
    recs = []
    for (conv, seed), accs in hist.items():
        r = _rec("lc", conv, seed, accs[-1] + 10.0)
        r.val_history = [{"epoch": e, "val/acc_top1": a / 100, "val/loss": 1.0} for e, a in enumerate(accs)]
        recs.append(r)
    _write(tmp_path, "lc", {"conv": ["static", "odconv1x"], "seed": [0, 1, 2]}, recs)
    out = aggregate("lc", tmp_path)
    c = pd.read_csv(tmp_path / "lc" / "val_curves.csv").set_index(["variant", "epoch"])
    assert list(dict.fromkeys(c.index.get_level_values(0))) == ["static", "odconv1x"]
    assert c.loc[("static", 1), "val_top1_mean"] == pytest.approx(61.0)
    assert c.loc[("static", 1), "paired_delta"] != c.loc[("static", 1), "paired_delta"]  # NaN: its own reference
    o = c.loc["odconv1x"]
    assert o["n_seeds"].tolist() == [3, 3, 2]
    assert o["val_top1_mean"].tolist() == pytest.approx([95 / 3, 149 / 3, 57.0])
    assert o["val_top1_min"].tolist() == pytest.approx([20, 30, 40]) and o["val_top1_max"].tolist() == pytest.approx(
        [45, 61, 74])
    assert o["n_pairs"].tolist() == [2, 2, 1]
    assert o["paired_delta"].tolist() == pytest.approx([((45 - 50) + (30 - 40)) / 2, ((61 - 60) + (58 - 62)) / 2, 4.0])
    assert (tmp_path / "lc" / "val_curves.png") in out["plots"]
    assert (tmp_path / "lc" / "val_curves.png").stat().st_size > 0
    # a grid without `static`: curves without a reference, no gaps
    _write(tmp_path, "noref", {"conv": ["odconv1x"], "seed": [0, 1, 2]},
           [r for r in recs if r.variant == "odconv1x"])
    out = aggregate("noref", tmp_path)
    c = out["val_curves"]
    assert set(c["variant"]) == {"odconv1x"} and c["paired_delta"].isna().all() and (c["n_pairs"] == 0).all()
    assert (tmp_path / "noref" / "val_curves.png").stat().st_size > 0


@pytest.mark.parametrize("variant,label", [
    ("odconv4x-channel+kernel", "4x ck"), ("odconv1x", "1x cfs"), ("odconv4x", "4x cfsk"),
    ("odconv1x-spatial", "1x s"), ("odconv8x-kernel", "8x k"), ("static", "static"), ("condconv8x", "condconv8x"),
    ("odconv4x-channel+bogus", "odconv4x-channel+bogus"), ("conv=odconv1x,width=0.5", "conv=odconv1x,width=0.5"),
    ('static model_options={"width":0.1875}', "static w=0.1875"),
    ('odconv1x model_options={"width": 0.5}', "1x cfs w=0.5")])
def test_scatter_labels_shorten_odconv_specs_and_ladder_widths(variant, label):
    assert short_label(variant) == label


def test_scatter_labels_of_a_dense_cluster_do_not_overlap():
    """The study's parameter axis in miniature: seven points stacked at one x, ten at another,
    a lone point and one at the right edge; every label drawn, none overlapping another,
    every stacked label tied to its own point, and all inside the figure."""
    rng = np.random.default_rng(0)
    xs = np.r_[1.05 + 0.02 * rng.random(7), 4.0 + 0.05 * rng.random(10), 2.2, 8.9]
    ys = np.r_[83.0 + 0.1 * np.arange(7), 82.5 + 0.12 * np.arange(10), 84.5, 86.7]
    labels = [f"1x v{i}" for i in range(7)] + [f"4x variant{i}" for i in range(10)] + ["w=0.1875", "w=0.375"]
    fig = Figure(figsize=(7, 5))
    canvas = FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.scatter(xs, ys)
    ax.set_xscale("log", base=2)
    fig.tight_layout()
    notes = label_points(ax, xs, ys, labels)
    canvas.draw()
    renderer = canvas.get_renderer()
    boxes = [Text.get_window_extent(t, renderer) for t in notes]   # the text alone, not its leader line
    assert [t.get_text() for t in notes] == labels
    for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2):
        assert not a.overlaps(b), (labels[i], labels[j])
    assert all(fig.bbox.contains(b.x0, b.y0) and fig.bbox.contains(b.x1, b.y1) for b in boxes)
    for t, x, y in zip(notes, xs, ys):
        assert t.xy == (x, y)                            # the label (and its leader line) points at its own point
    assert sum(t.arrow_patch is not None for t in notes) >= 17   # the two clusters are stacked with lines


def test_one_seed_no_factorial_failed_and_missing_trials(tmp_path):
    recs = [_rec("one", "static", 0, 70.0), _rec("one", "odconv1x", 0, 72.0),
            _rec("one", "dyconv4x", 0, None, status="failed")]
    _write(tmp_path, "one", {"conv": ["static", "odconv1x", "dyconv4x", "condconv4x"], "seed": [0]}, recs)
    out = aggregate("one", tmp_path)
    s = out["summary"].set_index("variant")
    assert s.loc["odconv1x", "paired_delta"] == pytest.approx(2.0) and s.loc["odconv1x", "paired_n"] == 1
    assert math.isnan(s.loc["odconv1x", "paired_ci_low"]) and math.isnan(s.loc["odconv1x", "paired_p_holm"])
    assert s.loc["dyconv4x", "failed_seeds"] == "0" and s.loc["condconv4x", "missing_seeds"] == "0"
    res = tmp_path / "one"
    md = (res / "summary.md").read_text()
    assert "one seed per variant" in md and "smallest main effect: n/a (the grid lacks 14 of the 16 cells" in md
    assert "| n/a" in md and "failed 0" in md and "missing 0" in md and "diverged" in md
    assert "n/a: the grid lacks 14 of the 16 cells" in (res / "effects.md").read_text()
    assert list(pd.read_csv(res / "effects.csv").columns)[:4] == ["group", "term", "estimate", "ci_low"]
    assert len(pd.read_csv(res / "effects.csv")) == 0 and not (res / "effects.png").exists()
    assert len(pd.read_csv(res / "conditional_effects.csv")) == 0
    assert "Conditional effects" not in (res / "effects.md").read_text()
    # each row shares the grid's one seed with `static`, and with one result a variant no SD is
    # estimable (0 df): the smallest detectable difference is unknown, not absent
    pw = out["power"]
    assert pw["pooled_sd_df"] == 0 and pw["paired_diff_sd_df"] == 0
    assert list(pw["mdd_rows"]) == [1] and all(math.isnan(x) for x in pw["mdd_rows"][1])


def test_no_records_yet(tmp_path):
    _write(tmp_path, "empty", {"conv": ["static", "odconv1x"], "seed": [0, 1]}, [])
    out = aggregate("empty", tmp_path)
    assert out["summary"]["n_seeds"].tolist() == [0, 0]
    md = (tmp_path / "empty" / "summary.md").read_text()
    assert "0/4 grid points done" in md and "partial sweep" in md


def test_factorial_with_a_failed_cell_and_one_seed(tmp_path):
    recs = []
    for cell, conv in CELLS.items():
        failed = cell == (1, 1, 1, 1)  # odconv4x failed
        recs.append(_rec("gap", conv, 1, None if failed else _cell_top1(cell, 1, 0.0),
                         status="failed" if failed else "complete"))
    _write(tmp_path, "gap", {"conv": list(CELLS.values()), "seed": [1]}, recs)
    out = aggregate("gap", tmp_path)
    eff = out["effects"].set_index("term")
    # no noise: the model holds exactly, so 15 cells (15 results, 11 terms, 4 residual df) recover the truth
    assert (eff["n_cells_with_data"] == 15).all() and (eff["df_resid"] == 4).all()
    assert eff.loc["kernel", "estimate"] == pytest.approx(MAIN["kernel"], abs=1e-6)
    assert eff.loc["channel:kernel", "estimate"] == pytest.approx(INTER[("channel", "kernel")], abs=1e-6)
    assert "15/16 cells" in (tmp_path / "gap" / "effects.md").read_text()
    # a planned design of 16 cells x 1 seed has 5 residual df
    assert out["power"]["effect_n_obs"] == 16 and out["power"]["effect_df"] == 5


def test_factorial_not_estimable(tmp_path):
    recs = [_rec("few", conv, 0, _cell_top1(cell, 0, 0.0)) for cell, conv in list(CELLS.items())[:9]]
    _write(tmp_path, "few", {"conv": list(CELLS.values()), "seed": [0]}, recs)
    out = aggregate("few", tmp_path)
    assert len(out["effects"]) == 0
    assert "n/a: 9 results in 9/16 cells cannot estimate" in (tmp_path / "few" / "effects.md").read_text()


def test_results_command_on_the_shipped_smoke_grid(tmp_path):
    """What `make results SWEEP=smoke` does, on synthetic records of sweeps/smoke.yaml's grid."""
    sw = load_sweep(ROOT / "sweeps" / "smoke.yaml", check_files=False)
    (tmp_path / "smoke").mkdir()
    (tmp_path / "smoke" / "sweep.json").write_text(json.dumps(sw.to_dict()))
    for i, p in enumerate(sw.points()):
        r = _rec("smoke", p.params["model.conv"], p.seed, 10.0 + i % 5, tput=100.0 + i, synthetic=True)
        write_record(tmp_path / "smoke" / "trials" / f"{p.slug}.json", r)
    assert cli_main(["results", "smoke", "--results-root", str(tmp_path)]) == 0
    res = tmp_path / "smoke"
    for f in ("summary.csv", "summary.md", "attention.csv", "attention.md", "effects.csv", "effects.md",
              "accuracy_bars.png", "accuracy_vs_params.png", "accuracy_vs_train_time.png", "accuracy_vs_macs.png"):
        assert (res / f).stat().st_size > 0, f
    md = (res / "summary.md").read_text()
    assert "Synthetic data" in md and "Precision of this design" in md and "Holm p" in md
    assert len(pd.read_csv(res / "summary.csv")) == len(sw.variants())


def test_grids_without_a_seed_axis_or_without_static(tmp_path):
    sw = _write(tmp_path, "noseed", {"conv": ["static", "odconv1x"]}, [])
    for p, top1 in zip(sw.points(), (70.0, 71.5)):
        r = _rec("noseed", p.params["model.conv"], 0, top1)
        r.params, r.grid_key, r.seed = dict(p.params), p.key, None
        write_record(tmp_path / "noseed" / "trials" / f"{p.slug}.json", r)
    s = aggregate("noseed", tmp_path)["summary"].set_index("variant")
    assert s.loc["odconv1x", "paired_n"] == 1 and s.loc["odconv1x", "paired_delta"] == pytest.approx(1.5)
    assert math.isnan(s.loc["odconv1x", "paired_ci_low"])
    # no conv axis: nothing to compare with, said so
    sw = _write(tmp_path, "lr", {"lr": [0.1, 0.2], "seed": [0, 1]}, [])
    for p in sw.points():
        r = _rec("lr", "static", p.seed, 70.0 + p.seed)
        r.params, r.grid_key, r.variant = dict(p.params), p.key, p.variant
        write_record(tmp_path / "lr" / "trials" / f"{p.slug}.json", r)
    out = aggregate("lr", tmp_path)
    assert out["summary"]["paired_n"].tolist() == [0, 0] and out["power"]["pooled_sd"] == pytest.approx(math.sqrt(0.5))
    md = (tmp_path / "lr" / "summary.md").read_text()
    table = md.split("| variant")[1].split("**Reading.**")[0]
    assert md.count("n/a (no `static` with these axes)") == 2 and "reference" not in table


def test_reruns_give_the_run_to_run_spread_and_stay_out_of_the_tables(tmp_path):
    grid = {"conv": ["static", "odconv1x"], "seed": [0, 1, 2]}
    extra = {"model.model_options": {"width": 0.25, "strategy": "grouped"}}
    sw = parse_sweep({"name": "rr", "base_config": BASE, "grid": grid,
                      "reruns": {"points": [{"conv": ["static"], "seed": [0]},
                                            {"conv": ["odconv1x"], "seed": [0, 1, 2]}], "overrides": extra}})
    grid_top1 = {("static", 0): 70.0, ("static", 1): 71.0, ("static", 2): 70.4,
                 ("odconv1x", 0): 72.0, ("odconv1x", 1): 71.5, ("odconv1x", 2): 73.1}
    rerun_delta = {("static", 0): 0.0, ("odconv1x", 0): 0.3, ("odconv1x", 1): -0.5}  # seed 2's rerun not done
    recs = [_rec("rr", c, s, v) for (c, s), v in grid_top1.items()]
    for (c, s), d in rerun_delta.items():
        r = _rec("rr", c, s, grid_top1[c, s] + d)
        p = {**r.params, **extra}
        r.params, r.grid_key, r.variant = p, grid_key(p), f"{c} model_options=..."
        recs.append(r)
    (tmp_path / "rr").mkdir()
    (tmp_path / "rr" / "sweep.json").write_text(json.dumps(sw.to_dict()))
    for r in recs:
        write_record(tmp_path / "rr" / "trials" / f"{abs(hash(r.grid_key))}.json", r)
    out = aggregate("rr", tmp_path)
    rr = out["reruns"]
    assert len(rr) == 4 and rr["difference"].isna().sum() == 1
    got = {(v, s): d for v, s, d in zip(rr["variant"], rr["seed"], rr["difference"]) if not math.isnan(d)}
    assert got == pytest.approx({k: v for k, v in rerun_delta.items()})
    # pooled SD of the pairs, written out: sum of (d/2)^2 * 2 per pair over 1 df each
    expected = math.sqrt(sum(d * d / 2 for d in rerun_delta.values()) / len(rerun_delta))
    md = (tmp_path / "rr" / "summary.md").read_text()
    assert f"run-to-run standard deviation of top-1: {expected:.2f} pp (3 pair(s)" in md
    # the tables see the grid points only
    s = out["summary"].set_index("variant")
    assert list(s.index) == ["static", "odconv1x"] and s.loc["odconv1x", "n_seeds"] == 3
    assert s.loc["odconv1x", "paired_delta"] == pytest.approx(np.mean([2.0, 0.5, 2.7]))
    assert "6/6 grid points done" in md
    assert len(pd.read_csv(tmp_path / "rr" / "reruns.csv")) == 4
