"""The iso-cost comparison: each variant against a *static ladder* (the static model at several
widths) at the variant's own cost. Frames in, frames out; the tables and plots are
:mod:`sweeps.reporting.isocost_report`'s.

On each cost axis (parameters, MACs, training time per image, batch-1 latency, training peak
memory) the ladder's top-1 is a function of ``x = log2(cost / cost of the narrowest static)``:
the *frontier*, a line in x (a quadratic when the line does not fit, see
:data:`LACK_OF_FIT_ALPHA`). Every compared variant enters the same OLS fit with an indicator
of its own, at its own x::

    top1 = a + b x [+ c x^2] [+ seed block] + sum_v delta_v [variant = v] + error

so ``delta_v`` is the variant's mean top-1 minus the frontier's at its cost (for the same
seeds), and its standard error carries both the variant's seed-to-seed spread and the
frontier's uncertainty (the residual variance is pooled over the ladder and the variants, as
in the blocked model of the summary). A variant whose cost lies outside the ladder's range is
not compared (``inside_ladder`` False): the frontier is never extrapolated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.api as sm

from . import stats
from .loading import bench_row, seed_values

# axis -> (the cost's column in the cost frame, label, unit)
AXES: dict[str, tuple[str, str, str]] = {
    "params": ("params", "parameters", "count"),
    "macs": ("macs", "MACs", "per image"),
    "train_time": ("train_ms_per_image", "training time", "ms per image"),
    "latency_b1": ("latency_b1_ms", "batch-1 latency", "ms"),
    "train_memory": ("train_peak_mb", "training peak memory", "MB"),
}
MIN_LADDER_WIDTHS = 3  # a line and a check of its fit need three widths
LACK_OF_FIT_ALPHA = 0.05  # the line gives way to a quadratic when its lack-of-fit test is below this
LEVEL = 0.95
#: When the order rule took its present form (the quadratic term's test joined lack of fit).
ORDER_RULE_SET = "the rule since 2026-12-03, commit 2c28ca2, set after the cifar10_factorial ladder had finished"
TABLE_COLUMNS = ["axis", "variant", "cost", "cost_ratio", "n_seeds", "top1_mean", "frontier_top1", "delta", "se",
                 "ci_low", "ci_high", "p", "p_holm", "mdd", "inside_ladder", "frontier_order", "df_resid"]
FRONTIER_COLUMNS = ["axis", "variant", "width", "cost", "cost_ratio", "n_seeds", "top1_mean", "fitted", "residual"]


def find_ladder(summary: pd.DataFrame) -> list[str]:
    """The static ladder of a summary (one row per variant: ``conv``, ``model_name``,
    ``model_width``, ``n_seeds``): the ``static`` variants of one model at distinct widths with
    results, narrowest first; empty when there are fewer than :data:`MIN_LADDER_WIDTHS`."""
    need = {"conv", "model_width", "n_seeds"}
    if not need <= set(summary.columns):
        return []
    s = summary[(summary["conv"].astype(str) == "static") & (summary["n_seeds"] > 0)
                & summary["model_width"].notna()]
    if "model_name" in s.columns and s["model_name"].nunique() > 1:
        return []  # several models: no one ladder
    s = s.sort_values("model_width", kind="stable").drop_duplicates("model_width")
    return list(s["variant"]) if len(s) >= MIN_LADDER_WIDTHS else []


@dataclass
class AxisFit:
    """One axis's comparison: the table rows, the frontier's fit, what the fit said."""

    axis: str
    table: pd.DataFrame
    frontier: pd.DataFrame  # the ladder's widths: mean top-1, fitted, residual (lack of fit per width)
    order: int  # 1: line in log2 cost; 2: quadratic
    coef: np.ndarray  # a, b [, c]: the frontier at the ladder's mean seed effect
    coef_cov: np.ndarray  # their covariance (from the joint fit)
    lack_of_fit_p: float  # F test of the frontier against one mean per width (ladder only), NaN without df
    next_order_p: float  # t test of the next power of x in the ladder-only fit
    line_lack_of_fit_p: float  # the line's two tests, which chose the order: its lack-of-fit p
    line_next_order_p: float  # and its quadratic term's p
    resid_sd: float
    df_resid: float
    x_range: tuple[float, float]  # the ladder's log2 cost ratios, narrowest and widest
    skipped: list[str] = field(default_factory=list)  # variants without this cost
    # the covariance of the compared variants' deltas (index and columns: variant), for contrasts
    delta_cov: pd.DataFrame = field(default_factory=pd.DataFrame)
    order_rule: str = "rule"  # "rule": chosen by the ladder's tests (LACK_OF_FIT_ALPHA); "fixed": by a plan


@dataclass
class IsoCostResult:
    """Every axis's :class:`AxisFit`, the ladder, and the axes left out with why."""

    ladder: list[str]
    axes: dict[str, AxisFit]
    missing_axes: dict[str, str]

    def table(self) -> pd.DataFrame:
        frames = [a.table for a in self.axes.values() if len(a.table)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=TABLE_COLUMNS)

    def frontier_table(self) -> pd.DataFrame:
        frames = [a.frontier.assign(axis=k)[FRONTIER_COLUMNS] for k, a in self.axes.items()]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=FRONTIER_COLUMNS)


def _ladder_only_tests(d: pd.DataFrame, order: int, block: bool) -> tuple[float, float]:
    """(lack-of-fit p: the frontier polynomial of ``order`` against one mean per width; the
    next-order term's p) over the ladder's results ``d`` (columns y, x, width, seed)."""
    def dummies(col: str) -> pd.DataFrame:
        return pd.get_dummies(d[col].astype(str), prefix=col, drop_first=True, dtype=float)

    seeds = dummies("seed") if block else pd.DataFrame(index=d.index)
    powers = pd.DataFrame({f"x{k}": d["x"].to_numpy(float) ** k for k in range(1, order + 2)}, index=d.index)
    poly = pd.concat([pd.Series(1.0, index=d.index, name="const"), powers.iloc[:, :order], seeds], axis=1)
    fit = sm.OLS(d["y"], poly).fit()
    full = sm.OLS(d["y"], pd.concat([pd.Series(1.0, index=d.index, name="const"), dummies("width"), seeds],
                                    axis=1)).fit()
    lof = float(full.compare_f_test(fit)[1]) if full.df_resid > 0 and fit.df_resid > full.df_resid else math.nan
    nxt = math.nan
    if d["width"].nunique() > order + 1:
        higher = sm.OLS(d["y"], pd.concat([poly, powers[[f"x{order + 1}"]]], axis=1)).fit()
        if higher.df_resid > 0:
            nxt = float(higher.pvalues[f"x{order + 1}"])
    return lof, nxt


def _frontier_order(lad: pd.DataFrame, block: bool, order: int | str) -> tuple[int, tuple[float, float],
                                                                              tuple[float, float]]:
    """(the frontier's order, its two ladder-only tests, the line's two tests): ``order`` when a
    plan fixed it, else by the rule of :data:`LACK_OF_FIT_ALPHA`."""
    line_tests = _ladder_only_tests(lad, 1, block)
    if order == "rule":
        # the data ask for a curve when either test rejects the line (NaN, no df: compares False);
        # a quadratic still needs 4 widths to leave its own lack-of-fit test a degree of freedom
        lof, nxt = line_tests
        order = 2 if (lof < LACK_OF_FIT_ALPHA or nxt < LACK_OF_FIT_ALPHA) and lad["width"].nunique() >= 4 else 1
    order = int(order)
    return order, (line_tests if order == 1 else _ladder_only_tests(lad, order, block)), line_tests


def _design(d: pd.DataFrame, order: int, block: bool, compared: list[str]) -> pd.DataFrame:
    """The joint fit's design matrix: intercept, x .. x^order, seed dummies (deviation coding:
    columns sum to zero over a balanced set, so the intercept is the mean seed's), an indicator
    per compared variant."""
    cols: dict[str, Any] = {"const": np.ones(len(d))}
    for k in range(1, order + 1):
        cols[f"x{k}"] = d["x"].to_numpy(float) ** k
    if block:
        seeds = sorted(d["seed"].unique(), key=str)
        for s in seeds[1:]:
            cols[f"seed[{s}]"] = (d["seed"] == s).astype(float) - (d["seed"] == seeds[0]).astype(float)
    for v in compared:
        cols[f"delta[{v}]"] = (d["variant"] == v).astype(float).to_numpy()
    return pd.DataFrame(cols, index=d.index)


def fit_axis(axis: str, results: pd.DataFrame, costs: pd.Series, ladder: list[str], widths: dict[str, float],
             block_seed: bool = True, level: float = LEVEL, order: int | str = "rule") -> AxisFit:
    """The comparison on one cost axis; ``order``: the frontier's polynomial order fixed in
    advance (1 or 2, e.g. by an analysis plan), or ``"rule"``: a line unless the ladder's tests
    reject it (:data:`LACK_OF_FIT_ALPHA`).

    ``results``: one row per result (``variant``, ``seed``, ``top1`` in percent); ``costs``:
    variant -> cost on this axis (NaN: unknown); ``ladder``: the static ladder, narrowest
    first (:func:`find_ladder`); ``widths``: ladder variant -> width. Every other variant of
    ``results`` with a known cost is compared."""
    ref = float(costs.get(ladder[0], math.nan))
    rungs = [v for v in ladder if np.isfinite(float(costs.get(v, math.nan)))]
    others = [v for v in dict.fromkeys(results["variant"]) if v not in ladder]
    skipped = [v for v in others if not np.isfinite(float(costs.get(v, math.nan)))]
    if not np.isfinite(ref) or len({round(math.log2(float(costs[v]) / ref), 6) for v in rungs}) < MIN_LADDER_WIDTHS:
        raise ValueError(f"{axis}: the ladder needs the narrowest static's cost and {MIN_LADDER_WIDTHS} widths with "
                         f"distinct costs; have {dict((v, float(costs[v])) for v in rungs)}")
    x_of = {v: math.log2(float(costs[v]) / ref) for v in rungs + [v for v in others if v not in skipped]}
    lo, hi = min(x_of[v] for v in rungs), max(x_of[v] for v in rungs)
    tol = 1e-9  # the narrowest static's own ratio is exactly 1
    inside = [v for v in others if v not in skipped and lo - tol <= x_of[v] <= hi + tol]
    d = results[results["variant"].isin(rungs + inside)].copy()
    d = d[np.isfinite(d["top1"].astype(float))]
    d["y"] = d["top1"].astype(float)
    d["x"] = d["variant"].map(x_of)
    d["width"] = d["variant"].map(lambda v: widths.get(v, math.nan)).astype(str)
    lad = d[d["variant"].isin(rungs)]
    block = block_seed and lad["seed"].nunique() > 1 and set(d["seed"]) <= set(lad["seed"])

    fixed = order != "rule"
    order, (lof, nxt), (line_lof, line_nxt) = _frontier_order(lad, block, order)

    compared = [v for v in inside if (d["variant"] == v).any()]
    X = _design(d, order, block, compared)
    fit = sm.OLS(d["y"], X).fit()
    ci = fit.conf_int(alpha=1 - level)
    poly = ["const"] + [f"x{k}" for k in range(1, order + 1)]
    coef = fit.params[poly].to_numpy(float)
    coef_cov = fit.cov_params().loc[poly, poly].to_numpy(float)

    rows = []
    for v in others:
        vals = results[(results["variant"] == v)]["top1"].astype(float)
        vals = vals[np.isfinite(vals)]
        cost = float(costs.get(v, math.nan))
        row = {"axis": axis, "variant": v, "cost": cost, "cost_ratio": cost / ref, "n_seeds": int(len(vals)),
               "top1_mean": float(vals.mean()) if len(vals) else math.nan, "inside_ladder": v in inside,
               "frontier_order": order, "df_resid": float(fit.df_resid)}
        name = f"delta[{v}]"
        if v in compared and fit.df_resid > 0:
            delta, se = float(fit.params[name]), float(fit.bse[name])
            row.update(frontier_top1=row["top1_mean"] - delta, delta=delta, se=se, ci_low=float(ci.loc[name, 0]),
                       ci_high=float(ci.loc[name, 1]), p=float(fit.pvalues[name]),
                       mdd=stats.mdd_t(se, float(fit.df_resid), alpha=1 - level))
        rows.append(row)
    table = pd.DataFrame(rows).reindex(columns=TABLE_COLUMNS)
    # family: the compared variants of this axis (Holm of a single p is that p)
    table["p_holm"] = stats.holm(table["p"].tolist()) if table["p"].notna().sum() > 1 else table["p"]

    means = lad.groupby("variant")["y"].agg(["mean", "size"])
    front = []
    for v in rungs:
        x = x_of[v]
        fitted = float(np.polyval(coef[::-1], x))
        front.append({"variant": v, "width": widths.get(v, math.nan), "cost": float(costs[v]),
                      "cost_ratio": 2 ** x, "n_seeds": int(means.loc[v, "size"]) if v in means.index else 0,
                      "top1_mean": float(means.loc[v, "mean"]) if v in means.index else math.nan,
                      "fitted": fitted})
    frontier = pd.DataFrame(front)
    frontier["residual"] = frontier["top1_mean"] - frontier["fitted"]
    names = [f"delta[{v}]" for v in compared]
    delta_cov = fit.cov_params().loc[names, names].set_axis(compared, axis=0).set_axis(compared, axis=1)
    return AxisFit(axis, table, frontier, order, coef, coef_cov, lof, nxt, line_lof, line_nxt,
                   float(np.sqrt(fit.scale)), float(fit.df_resid), (lo, hi), skipped, delta_cov,
                   "fixed" if fixed else "rule")


def frontier_band(fit: AxisFit, x: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The frontier (at the mean seed) at log2 cost ratios ``x`` (shape (n,)) with its pointwise
    ``level`` confidence band: (fitted, low, high), each shape (n,)."""
    basis = np.vstack([x ** k for k in range(fit.order + 1)]).T  # (n, order + 1)
    mean = basis @ fit.coef
    se = np.sqrt(np.einsum("ij,jk,ik->i", basis, fit.coef_cov, basis))
    t = stats.t_ppf(0.5 + level / 2, fit.df_resid)
    return mean, mean - t * se, mean + t * se


def cost_frame(summary: pd.DataFrame, bench_costs: pd.DataFrame | None) -> pd.DataFrame:
    """variant -> cost on every axis of :data:`AXES` (columns named by the axes' cost columns).

    Parameters and MACs come from the summary (``params_count``, ``macs``: counted, the same on
    every machine); times and memory only from one benchmark run (``bench_costs``: variant ->
    ``train_ms_per_image``, ``latency_b1_ms``, ``train_peak_mb``), never from the trials' own
    timings, which come from several machines and moments."""
    out = pd.DataFrame(index=pd.Index(summary["variant"], name="variant"))
    out["params"] = pd.to_numeric(summary.set_index("variant").get("params_count"), errors="coerce")
    out["macs"] = pd.to_numeric(summary.set_index("variant").get("macs"), errors="coerce")
    for col in ("train_ms_per_image", "latency_b1_ms", "train_peak_mb"):
        out[col] = np.nan
        if bench_costs is not None and col in bench_costs.columns:
            out[col] = pd.to_numeric(bench_costs[col], errors="coerce").reindex(out.index)
    return out


def results_frame(records: pd.DataFrame) -> pd.DataFrame:
    """One row per complete result with a finite metric: ``variant``, ``seed``, ``top1`` (percent)."""
    rows = [{"variant": v, "seed": s, "top1": y} for v, by_seed in seed_values(records).items()
            for s, y in by_seed.items()]
    return pd.DataFrame(rows, columns=["variant", "seed", "top1"])


def bench_costs(summary: pd.DataFrame, bench: pd.DataFrame | None) -> pd.DataFrame | None:
    """variant -> ``train_ms_per_image``, ``latency_b1_ms``, ``train_peak_mb`` from one benchmark
    table (:func:`sweeps.reporting.loading.load_bench`), for the variants it has (model, width, conv,
    precision and device kind as in the summary); None without a table."""
    if bench is None:
        return None
    rows = {}
    for _, r in summary.iterrows():
        b = bench_row(bench, r.get("model_name"), r.get("model_width"), r.get("conv"), r.get("model_precision"),
                      r.get("measure_device"))
        if b is not None:  # a table of ratios only (an older bench) gives no absolute cost
            rows[r["variant"]] = {
                "train_ms_per_image": float(b.get("train_step_ms", math.nan)) / float(b.get("batch", math.nan)),
                "latency_b1_ms": float(b.get("latency_b1_ms", math.nan)),
                "train_peak_mb": float(b.get("train_peak_mb", math.nan))}
    return pd.DataFrame.from_dict(rows, orient="index")


def isocost(results: pd.DataFrame, summary: pd.DataFrame, costs: pd.DataFrame,
            block_seed: bool = True, level: float = LEVEL, orders: dict[str, int | str] | None = None
            ) -> IsoCostResult | None:
    """The iso-cost comparison on every axis with the ladder's costs; None without a ladder.
    ``orders``: axis -> the frontier order an analysis plan fixed (1, 2 or "rule"; default "rule").

    ``results``: one row per result (``variant``, ``seed``, ``top1`` in percent); ``summary``:
    one row per variant (for :func:`find_ladder`); ``costs``: :func:`cost_frame`."""
    ladder = find_ladder(summary)
    if not ladder:
        return None
    widths = dict(zip(summary["variant"], summary["model_width"]))
    order = {v: i for i, v in enumerate(summary["variant"])}  # the tables list variants as the summary does
    results = results.sort_values("variant", key=lambda s: s.map(order), kind="stable")
    fits: dict[str, AxisFit] = {}
    missing: dict[str, str] = {}
    for axis, (col, label, _) in AXES.items():
        c = costs[col] if col in costs.columns else pd.Series(dtype=float)
        have = [v for v in ladder if np.isfinite(float(c.get(v, math.nan)))]
        if ladder[0] not in have or len(have) < MIN_LADDER_WIDTHS:
            missing[axis] = (f"the cost source gives {label} for {len(have)} of the ladder's {len(ladder)} widths"
                             + ("" if ladder[0] in have else ", not the narrowest"))
            continue
        distinct = len({round(math.log2(float(c[v]) / float(c[ladder[0]])), 6) for v in have})
        if distinct < MIN_LADDER_WIDTHS:
            missing[axis] = (f"the ladder's {label} takes {distinct} distinct value(s) over its {len(have)} widths: "
                             f"no frontier along it")
            continue
        fits[axis] = fit_axis(axis, results, c, ladder, widths, block_seed=block_seed, level=level,
                              order=(orders or {}).get(axis, "rule"))
    return IsoCostResult(ladder, fits, missing)
