"""The named contrasts of an analysis plan (the sweep file's ``analysis.contrasts``): the mean
of one or more variants against the static frontier at equal cost, or against another variant,
on one cost axis. Frames in, a frame out.

Each axis is fitted once as in the iso-cost comparison (:func:`sweeps.reporting.isocost.fit_axis`),
restricted to the plan's seeds and frontier widths, with the plan's frontier order and seed
block: ``top1 = frontier(x) [+ seed] + sum_v delta_v [variant = v]``. A contrast is a linear
combination ``w . delta`` (``1/k`` on each of its ``k`` variants, ``-1`` on ``against`` when
that is a variant), its standard error ``sqrt(w' Cov(delta) w)`` from the same fit, its
two-sided t test on the fit's residual df. p-values are adjusted within each role's family
(primary, secondary) by the plan's correction.

A contrast is *interim* while some result it plans is missing: a grid point of its variants,
its ``against`` and the plan's static rungs at the plan's seeds (``n_results`` of
``n_results_planned``); its sentence then gives no verdict (:func:`sweeps.reporting.wording.contrast_sentence`).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests

from ..analysis_plan import FRONTIER
from ..sweep_schema import AnalysisSection, ContrastSection
from . import stats
from .isocost import AXES, AxisFit, find_ladder, fit_axis

COLUMNS = ["contrast", "role", "axis", "variants", "against", "estimate", "se", "ci_low", "ci_high", "p",
           "p_adjusted", "correction", "alpha", "mdd", "df", "n_seeds", "n_results", "n_results_planned",
           "prespecified", "note"]
METHODS = {"holm": "holm", "bonferroni": "bonferroni"}


def plan_ladder(plan: AnalysisSection, summary: pd.DataFrame) -> list[str]:
    """The static rungs the plan's frontier is fitted to: the summary's ladder, restricted to
    ``frontier_widths`` when the plan names them."""
    ladder = find_ladder(summary)
    if plan.frontier_widths is None:
        return ladder
    widths = dict(zip(summary["variant"], summary["model_width"]))
    return [v for v in ladder if float(widths[v]) in plan.frontier_widths]


def _weights(c: ContrastSection) -> dict[str, float]:
    w = {v: 1.0 / len(c.variants) for v in c.variants}
    if c.against != FRONTIER:
        w[c.against] = w.get(c.against, 0.0) - 1.0
    return w


def _completeness(c: ContrastSection, plan: AnalysisSection, results: pd.DataFrame, rungs: list[str],
                  grid_seeds: dict[str, list] | None) -> dict:
    """The results the contrast plans (its variants, ``against`` and the static rungs, at the
    plan's seeds the grid runs them at) and how many of them are in ``results``."""
    if grid_seeds is None:
        return {"n_results": math.nan, "n_results_planned": math.nan}
    names = list(c.variants) + ([] if c.against == FRONTIER else [c.against]) + rungs
    planned = {(v, s) for v in dict.fromkeys(names) for s in grid_seeds.get(v, []) if s in plan.seeds}
    done = set(zip(results["variant"], results["seed"]))
    return {"n_results": len(planned & done), "n_results_planned": len(planned)}


def _row(c: ContrastSection, fit: AxisFit | None, results: pd.DataFrame, alpha: float, complete: dict) -> dict:
    # a JSON list: variant labels may hold any character a separator could be ("+" in specs)
    row = {"contrast": c.name, "role": c.role, "axis": c.axis, "variants": json.dumps(list(c.variants)),
           "against": c.against, "n_seeds": int(results[results["variant"].isin(c.variants)]["seed"].nunique()),
           **complete}
    w = _weights(c)
    missing = [] if fit is None else [v for v in w if v not in fit.delta_cov.index]
    if fit is None or missing or not fit.df_resid > 0:
        why = "no frontier on this axis" if fit is None else f"not compared on this axis: {', '.join(missing)}"
        return {**row, "note": why if (fit is None or missing) else "no residual degrees of freedom"}
    vec = pd.Series(w).reindex(fit.delta_cov.index, fill_value=0.0).to_numpy(float)
    deltas = fit.table.set_index("variant")["delta"].reindex(fit.delta_cov.index).to_numpy(float)
    est = float(vec @ deltas)
    se = float(math.sqrt(vec @ fit.delta_cov.to_numpy(float) @ vec))
    t_crit = stats.t_ppf(1 - alpha / 2, fit.df_resid)
    p = float(2 * stats.t_sf(abs(est / se), fit.df_resid)) if se > 0 else math.nan
    return {**row, "estimate": est, "se": se, "ci_low": est - t_crit * se, "ci_high": est + t_crit * se, "p": p,
            "mdd": stats.mdd_t(se, fit.df_resid, alpha=alpha), "df": fit.df_resid, "note": ""}


def adjust(table: pd.DataFrame, correction: str) -> pd.Series:
    """Each role's family adjusted by ``correction`` (holm, bonferroni; none: the p-values as they are)."""
    out = table["p"].astype(float).copy()
    if correction == "none":
        return out
    for _, idx in table.groupby("role").groups.items():
        p = table.loc[idx, "p"].astype(float)
        ok = p.notna()
        if ok.sum() > 0:
            out.loc[p[ok].index] = multipletests(p[ok].to_numpy(), method=METHODS[correction])[1]
    return out


def plan_contrasts(plan: AnalysisSection, results: pd.DataFrame, summary: pd.DataFrame, costs: pd.DataFrame,
                   prespecified: bool, grid_seeds: dict[str, list] | None = None) -> pd.DataFrame:
    """One row per contrast of ``plan`` (:data:`COLUMNS`; estimates in percentage points, intervals
    at ``1 - alpha``). ``results``: one row per result (``variant``, ``seed``, ``top1`` in %);
    ``summary``: one row per variant (``conv``, ``model_width``, ...); ``costs``:
    :func:`sweeps.reporting.isocost.cost_frame`; ``prespecified``: the plan's status;
    ``grid_seeds``: variant -> the seeds the grid runs it at (``SweepDef.grid_seeds``), for the
    results each contrast plans (None: not counted, never interim)."""
    ladder = plan_ladder(plan, summary)
    static = set(summary[summary["conv"].astype(str) == "static"]["variant"])
    keep = results["variant"].isin(ladder) | ~results["variant"].isin(static)  # rungs outside the plan's ladder go
    res = results[results["seed"].isin(plan.seeds) & keep]
    widths = dict(zip(summary["variant"], summary["model_width"]))
    fits: dict[str, AxisFit | None] = {}
    for axis in dict.fromkeys(c.axis for c in plan.contrasts):
        col = AXES[axis][0]
        c = costs[col] if col in costs.columns else pd.Series(dtype=float)
        usable = len(ladder) >= 3 and np.isfinite(float(c.get(ladder[0], math.nan)))
        fits[axis] = fit_axis(axis, res, c, ladder, widths, block_seed=plan.seed_block, level=1 - plan.alpha,
                              order=plan.frontier_order.get(axis, "rule")) if usable else None
    # a rung with no result yet has no known width: it counts as planned until its first result
    rungs = [v for v in static if plan.frontier_widths is None or pd.isna(widths.get(v))
             or float(widths[v]) in plan.frontier_widths]
    rows = [_row(c, fits[c.axis], res, plan.alpha, _completeness(c, plan, results, rungs, grid_seeds))
            for c in plan.contrasts]
    table = pd.DataFrame(rows).reindex(columns=COLUMNS)
    table["p_adjusted"] = adjust(table, plan.correction)
    table["correction"] = plan.correction
    table["alpha"] = plan.alpha
    table["prespecified"] = prespecified
    return table
