"""The precision of a sweep's design, for ``odconv-sweep results``: frames in, numbers out.

- :func:`power_summary`: the pooled seed-to-seed SD, the smallest differences the design
  detects (80% power, two-sided 5%) and the half-widths of the 95% intervals it gives: a row
  vs ``static`` per number of shared seeds, and a main effect of the attention factorial as
  the grid plans it.
- :func:`precision_goals`: the sweep file's ``precision_goals`` against the intervals the
  results gave, and the seeds that would meet them (:func:`seeds_for_main_effect`,
  :func:`seeds_for_row`, :func:`planned_blocked_halfwidth`).
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import pandas as pd

from ..definition import SweepDef
from . import linear_models, stats
from .analysis import ALPHA, blocked_groups
from .attentions import ATTS, EffectsResult
from .loading import seed_values

POWER = 0.8  # the power at which the smallest detectable differences are given
MAX_PLANNED_SEEDS = 12  # the most seeds a cell or row is planned with when meeting a goal


def planned_blocked_halfwidth(seeds: dict[str, list[Any]], members: list[str], variant: str, resid_sd: float,
                              extra: int = 0) -> float:
    """Half-width of the 95% interval of ``variant`` minus ``members[0]`` (the reference) that
    the blocked model gives on the planned design (``seeds``: variant -> grid seeds, over
    ``members``), with ``extra`` more seeds for the variant and the reference, at ``resid_sd``."""
    design = []
    for v in members:
        planned = list(seeds.get(v, [])) + ([f"new{i}" for i in range(extra)] if v in (variant, members[0]) else [])
        design += [{"variant": v, "seed": str(x)} for x in planned]
    planned_se = linear_models.blocked_standard_errors(pd.DataFrame(design), members[0]) if design else None
    if planned_se is None or variant not in planned_se[0].index or not np.isfinite(resid_sd):
        return np.nan
    se_unit, df_res = planned_se
    return stats.t_ppf(1 - ALPHA / 2, df_res) * float(se_unit[variant]) * resid_sd


def power_summary(sweep: SweepDef, df: pd.DataFrame, summary: pd.DataFrame, effects: EffectsResult) -> dict[str, Any]:
    """Seed-to-seed spread and the smallest differences this design detects (80% power,
    two-sided 5%): a row vs ``static`` for each number of seeds a row shares with its
    reference in the grid (paired, and unpaired), and a main effect of the factorial as the
    grid plans it (every cell at its grid seeds), with the fit's residual SD; and the half-widths
    of the 95% intervals the same design gives (``halfwidth_rows``, ``halfwidth_main_effect``,
    which is ``halfwidth_per_sd`` times the residual SD: known before any SD is)."""
    by_seed = seed_values(df)
    grid_seeds = sweep.grid_seeds()
    sd, sd_df = stats.pooled_sd(list(s.values()) for s in by_seed.values())
    diffs, shared = [], set()
    if len(summary):
        for _, r in summary.iterrows():
            ref = r.get("reference")
            if ref and ref != r["variant"]:
                a, b = by_seed.get(r["variant"], {}), by_seed.get(ref, {})
                diffs.append([a[s] - b[s] for s in a if s in b])
                shared.add(len(set(grid_seeds.get(r["variant"], [])) & set(grid_seeds.get(ref, []))))
    sd_diff, sd_diff_df = stats.pooled_sd(diffs)
    out: dict[str, Any] = {"pooled_sd": sd, "pooled_sd_df": sd_df, "paired_diff_sd": sd_diff,
                           "paired_diff_sd_df": sd_diff_df,
                           "n_seeds": sorted({len(v) for v in grid_seeds.values()}),
                           "mdd_rows": {n: (stats.mdd_paired(sd_diff, n, ALPHA, POWER),
                                            stats.mdd_two_sample(sd, n, ALPHA, POWER)) for n in sorted(shared)},
                           "halfwidth_rows": {n: (stats.ci_halfwidth_paired(sd_diff, n, 1 - ALPHA),
                                                  stats.ci_halfwidth_two_sample(sd, n, 1 - ALPHA),
                                                  stats.ci_halfwidth_paired(1.0, n, 1 - ALPHA))
                                              for n in sorted(shared)},
                           "mdd_main_effect": np.nan, "effect_sd": np.nan, "effect_n_obs": 0, "effect_df": np.nan,
                           "halfwidth_main_effect": np.nan, "halfwidth_per_sd": np.nan}
    if effects.groups:
        g = effects.groups[0]
        design = _factorial_design(g.variants, grid_seeds)
        planned = linear_models.effect_standard_errors(design, ATTS, block="seed")
        fit = effects.fits.get(g.label)
        e_sd = fit.resid_sd if fit is not None else sd
        if planned is not None:
            se_unit, df_res = planned
            per_sd = stats.t_ppf(1 - ALPHA / 2, df_res) * float(se_unit[list(ATTS)].max())
            out.update(effect_sd=e_sd, effect_n_obs=len(design), effect_df=df_res,
                       mdd_main_effect=stats.mdd_t(e_sd * float(se_unit[list(ATTS)].max()), df_res, ALPHA, POWER),
                       halfwidth_per_sd=per_sd, halfwidth_main_effect=per_sd * e_sd)
    out["goals"] = precision_goals(sweep, summary, effects, out, grid_seeds)
    out["goal_rows"] = list((sweep.precision_goals or {}).get("rows") or {})
    out["blocked_without_outliers"] = _blocked_without_outliers(summary, by_seed, effects.outliers)
    return out


def _blocked_without_outliers(summary: pd.DataFrame, by_seed: dict[str, dict[Any, float]],
                              outliers: pd.DataFrame) -> dict[str, Any] | None:
    """The blocked model of the rows against ``static`` refitted without the results the
    factorial flags as outlying: its residual SD, df and each row's interval half-width; None
    when nothing is flagged or the refit is not estimable."""
    if not len(outliers) or not len(summary):
        return None
    drop = set(zip(outliers["variant"], outliers["seed"].astype(str)))
    members = blocked_groups(summary).get("static")
    if not members:
        return None
    data = pd.DataFrame([{"variant": v, "seed": str(seed), "y": y} for v in members
                         for seed, y in by_seed.get(v, {}).items() if (v, str(seed)) not in drop])
    fit = linear_models.blocked_contrasts(data, "static") if len(data) else None
    if fit is None:
        return None
    return {"resid_sd": float(fit["resid_sd"].iloc[0]), "df_resid": float(fit["df_resid"].iloc[0]),
            "halfwidths": {r["treatment"]: (r["ci_high"] - r["ci_low"]) / 2 for _, r in fit.iterrows()}}


def _factorial_design(cells: dict[str, tuple], seeds: dict[str, list[Any]], at_least: int = 0) -> pd.DataFrame:
    """One row per planned result of the factorial (``seed`` and the four attentions): every
    cell at its grid seeds, topped up with new seeds to ``at_least`` seeds a cell."""
    rows = []
    for lab, cell in cells.items():
        have = list(seeds.get(lab, []))
        extra = [f"new{i}" for i in range(max(0, at_least - len(have)))]
        rows += [{"seed": seed, **dict(zip(ATTS, cell))} for seed in have + extra]
    return pd.DataFrame(rows)


def seeds_for_main_effect(cells: dict[str, tuple], seeds: dict[str, list[Any]], resid_sd: float, aim: float,
                          max_seeds: int = MAX_PLANNED_SEEDS) -> tuple[int, int] | None:
    """(seeds a cell, fits to add) that bring the widest planned 95% half-width of a main effect
    to ``aim`` or below at residual SD ``resid_sd``, topping every factorial cell (``cells``:
    label -> on/off tuple; ``seeds``: label -> grid seeds) up to that many seeds; None when
    ``max_seeds`` a cell do not reach it or the SD is unknown. (0, 0) when the grid meets it."""
    if not np.isfinite(resid_sd):
        return None
    have = min(len(seeds.get(lab, [])) for lab in cells)
    for k in range(have, max_seeds + 1):
        planned = linear_models.effect_standard_errors(_factorial_design(cells, seeds, k), ATTS, block="seed")
        if planned is None:
            continue
        se_unit, df_res = planned
        if stats.t_ppf(1 - ALPHA / 2, df_res) * float(se_unit[list(ATTS)].max()) * resid_sd <= aim:
            added = sum(max(0, k - len(seeds.get(lab, []))) for lab in cells)
            return (k, added) if added else (0, 0)
    return None


def seeds_for_row(sd_diff: float, n_now: int, aim: float, max_seeds: int = MAX_PLANNED_SEEDS) -> int | None:
    """The fewest seeds (shared by a row and its reference, at least ``n_now``) whose paired 95%
    interval has half-width ``aim`` or below at SD ``sd_diff`` of the paired differences; None
    when ``max_seeds`` do not reach it or the SD is unknown."""
    for n in range(max(2, n_now), max_seeds + 1):
        hw = stats.ci_halfwidth_paired(sd_diff, n, 1 - ALPHA)
        if np.isfinite(hw) and hw <= aim:
            return n
    return None


def precision_goals(sweep: SweepDef, summary: pd.DataFrame, effects: EffectsResult, pw: dict[str, Any],
                    grid_seeds: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The sweep's ``precision_goals`` against the results: one dict per goal with ``goal``
    (what), ``aim`` (half-width, pp), ``measured`` (the half-width of the interval the results
    gave: the widest of the four main effects' 95% intervals, or the row's paired interval vs
    its reference), ``planned`` (the design's half-width at the pooled SDs measured so far)
    and ``verdict`` (``met``, ``not met``, or ``open`` while nothing is measured or a result it
    rests on is still to run: a seed missing, not failed)."""
    goals = sweep.precision_goals or {}
    rows: list[dict[str, Any]] = []
    missing = (set(summary.loc[summary["missing_seeds"].fillna("").astype(str) != "", "variant"])
               if len(summary) else set())

    def add(goal: str, aim: float, measured: float, planned: float, needs: str, rests_on: Iterable[str]) -> None:
        verdict = ("open" if pd.isna(measured) or missing & set(rests_on) else "met" if measured <= aim
                   else "not met")
        # a goal the results met needs no more seeds, whatever the pooled SDs' estimate says
        rows.append({"goal": goal, "aim": aim, "measured": measured, "planned": planned, "verdict": verdict,
                     "seeds_needed": "the grid's" if verdict == "met" else needs})

    if goals.get("main_effect") is not None:
        measured = np.nan
        if effects.groups and effects.groups[0].label in effects.fits:
            e = effects.fits[effects.groups[0].label].effects.set_index("term")
            mains = e.loc[[a for a in ATTS if a in e.index]]
            if len(mains):
                measured = float(((mains["ci_high"] - mains["ci_low"]) / 2).max())
        needs = "n/a"
        if effects.groups and np.isfinite(pw.get("effect_sd", np.nan)):
            k = seeds_for_main_effect(effects.groups[0].variants, grid_seeds, pw["effect_sd"],
                                      float(goals["main_effect"]))
            needs = (f"> {MAX_PLANNED_SEEDS} a cell" if k is None else "the grid's" if k == (0, 0)
                     else f"{k[0]} a cell (+{k[1]} fits)")
        add("each main effect of the factorial", float(goals["main_effect"]), measured,
            float(pw.get("halfwidth_main_effect", np.nan)), needs,
            effects.groups[0].variants if effects.groups else [])
    by_variant = summary.set_index("variant") if len(summary) else pd.DataFrame()
    for variant, aim in (goals.get("rows") or {}).items():
        measured, ref = np.nan, "static"
        if variant in by_variant.index:
            r = by_variant.loc[variant]
            ref = r.get("reference") or ref
            measured = (float(r["paired_ci_high"]) - float(r["paired_ci_low"])) / 2
        n = len(set(grid_seeds.get(variant, [])) & set(grid_seeds.get(ref, [])))
        needs = "n/a"
        if np.isfinite(pw["paired_diff_sd"]):
            k = seeds_for_row(pw["paired_diff_sd"], n, float(aim))
            needs = (f"> {MAX_PLANNED_SEEDS}" if k is None else "the grid's" if k <= n
                     else f"{k} on both (+{k - n} each)")
        add(f"`{variant}` vs `{ref}` (paired, {n} seeds)", float(aim), measured,
            stats.ci_halfwidth_paired(pw["paired_diff_sd"], n, 1 - ALPHA), needs, [variant, ref])
        # the same comparison in the blocked model (pooled residual variance over the variants)
        members = blocked_groups(summary).get(ref, [ref, variant]) if len(summary) else [ref, variant]
        b_measured = b_sd = np.nan
        if variant in by_variant.index:
            r = by_variant.loc[variant]
            b_measured = (float(r["blocked_ci_high"]) - float(r["blocked_ci_low"])) / 2
            b_sd = float(r["blocked_resid_sd"])
        planned = planned_blocked_halfwidth(grid_seeds, members, variant, b_sd)
        needs = "n/a"
        if np.isfinite(planned):
            k = next((e for e in range(MAX_PLANNED_SEEDS - n + 1)
                      if planned_blocked_halfwidth(grid_seeds, members, variant, b_sd, e) <= float(aim)), None)
            needs = (f"> {MAX_PLANNED_SEEDS}" if k is None else "the grid's" if k == 0
                     else f"{n + k} on both (+{k} each)")
        add(f"`{variant}` vs `{ref}` (blocked model, {n} seeds)", float(aim), b_measured, planned, needs, members)
    return rows


__all__ = ["POWER", "MAX_PLANNED_SEEDS", "power_summary", "precision_goals", "seeds_for_main_effect", "seeds_for_row",
           "planned_blocked_halfwidth"]
