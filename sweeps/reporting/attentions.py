"""The effects of ODConv's attentions, from a sweep's summary and records: frames in, frames
out (no text, no files; :mod:`sweeps.reporting.tables` and :mod:`sweeps.reporting.effects_report`
write them).

- :func:`attention_table`: the effect of each attention over the grid's pairs of variants that
  differ only in it (any grid).
- :func:`factorial_groups` / :func:`effects_table`: the 2^4 factorial of the attentions (main
  effects, two-way interactions, outlying results and the refit without them;
  :func:`sweeps.reporting.linear_models.factorial_effects`);
  :func:`conditional_effects_table`: each factor's effect at each level of the other where a
  two-factor interaction passes :data:`INTERACTION_SCREEN_P`.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from odconv.spec import ConvSpec, parse_conv_spec

from ..definition import SweepDef
from ..grid import CONV_KEY, SEED_KEY, variant_label
from . import linear_models, stats
from .loading import seed_values

ATTS = ("channel", "filter", "spatial", "kernel")
OUTLIER_ALPHA = 0.05  # the Bonferroni-adjusted level at which a result is flagged as outlying
# A two-factor interaction whose unadjusted p-value is below this gets its conditional effects
# listed: a screen for "the main effect may hide opposite effects", not a claim of an interaction
# (an interaction that is truly zero passes it 10% of the time, so one of six often does).
INTERACTION_SCREEN_P = 0.10


def _other_axes(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k not in (SEED_KEY, CONV_KEY)}


def _spec_atts(conv: str | None) -> tuple[int, frozenset[str]] | None:
    """(kernel count, attentions) of an ODConv-family spec; static = (1, {}); else None."""
    if conv is None:
        return None
    try:
        s = parse_conv_spec(conv)
    except ValueError:
        return None
    if s.kind == "static":
        return 1, frozenset()
    if s.kind == "odconv":
        return s.num, frozenset(s.attentions)
    return None


def _nanmean(xs: list[float]) -> float:
    xs = [float(x) for x in xs if x is not None and not pd.isna(x)]
    return float(np.mean(xs)) if xs else float("nan")


def attention_table(sweep: SweepDef, summary: pd.DataFrame) -> pd.DataFrame:
    """Effect of switching each attention on, averaged over the grid pairs differing only in it
    (CI: one-sample t over the pairs' differences of means)."""
    if not len(summary):
        return pd.DataFrame()
    info = []
    for p_label, p in {pt.variant: pt for pt in sweep.grid_points()}.items():
        sa = _spec_atts(p.params.get(CONV_KEY))
        if sa is None:
            continue
        row = summary[summary["variant"] == p_label]
        if not len(row):
            continue
        info.append((p_label, sa[0], sa[1], json.dumps(_other_axes(p.params), sort_keys=True), row.iloc[0]))
    rows = []
    for att in ATTS:
        pairs = []
        for la, na, aa, oa, ra in info:
            if att in aa:
                continue
            for lb, nb, ab, ob, rb in info:
                if ob != oa or ab != aa | {att}:
                    continue
                if att == "kernel" and not (na == 1 and nb > 1):
                    continue
                if att != "kernel" and na != nb:
                    continue
                pairs.append((la, lb, ra, rb))
        effects = [rb["top1_mean"] - ra["top1_mean"] for _, _, ra, rb in pairs
                   if not pd.isna(rb["top1_mean"]) and not pd.isna(ra["top1_mean"])]
        m, lo, hi = stats.mean_ci(effects)
        dparams = [rb["params_count"] - ra["params_count"] for _, _, ra, rb in pairs]
        pmacs = [rb["macs"] / ra["macs"] for _, _, ra, rb in pairs if ra["macs"] and not pd.isna(ra["macs"])]
        tput = [rb["train_throughput"] / ra["train_throughput"] for _, _, ra, rb in pairs
                if ra["train_throughput"] and not pd.isna(ra["train_throughput"])]
        rows.append({"attention": att, "n_pairs": len(pairs), "n_pairs_with_results": len(effects),
                     "effect_mean": m, "effect_ci_low": lo, "effect_ci_high": hi,
                     "effect_min": min(effects) if effects else np.nan,
                     "effect_max": max(effects) if effects else np.nan,
                     "params_delta_mean": _nanmean(dparams), "macs_ratio_mean": _nanmean(pmacs),
                     "throughput_ratio_mean": _nanmean(tput),
                     "pairs": "; ".join(f"{a} -> {b}" for a, b, _, _ in pairs)})
    return pd.DataFrame(rows)


# --- the 2^4 factorial of ODConv's attentions ------------------------------------------------

Cell = tuple[bool, bool, bool, bool]  # channel, filter, spatial, kernel on


def _cell_of(conv: Any) -> tuple[Cell, int] | None:
    """(factor levels, kernel count) of a conv spec: ``static`` is the all-off cell; ODConv with
    n kernels has kernel on iff n >= 2; CondConv / DyConv are no cell (None)."""
    sa = _spec_atts(None if conv is None else str(conv))
    if sa is None:
        return None
    n, atts = sa
    return (("channel" in atts), ("filter" in atts), ("spatial" in atts), n >= 2), n


def _cell_spec(cell: Cell, n: int) -> str:
    atts = [a for a, on in zip(ATTS, cell) if on]
    if not atts:
        return "static"
    num = n if cell[3] else 1
    return str(ConvSpec("odconv", num, frozenset(atts)))


@dataclass
class FactorialGroup:
    """The 16 grid variants of one full factorial: ``label`` names the other axes and the
    kernel count of the kernel-on cells; ``variants`` maps a variant label to its cell."""

    label: str
    kernels: int
    variants: dict[str, Cell]


def factorial_groups(sweep: SweepDef) -> tuple[list[FactorialGroup], str]:
    """The full 2^4 factorials in the grid (one per combination of the other axes and per
    kernel count n >= 2), and, when there are none, why (the cells the nearest one lacks)."""
    by_other: dict[str, dict[str, tuple[Cell, int]]] = {}
    other_label: dict[str, str] = {}
    for p in sweep.grid_points():
        c = _cell_of(p.params.get(CONV_KEY))
        if c is None:
            continue
        k = json.dumps(_other_axes(p.params), sort_keys=True)
        by_other.setdefault(k, {})[p.variant] = c
        other_label[k] = variant_label(_other_axes(p.params)) if _other_axes(p.params) else ""
    groups: list[FactorialGroup] = []
    best_missing: list[str] | None = None
    # kernel off first, then by number of attentions on: the order a reader lists them in
    all_cells = sorted(itertools.product([False, True], repeat=4), key=lambda c: (c[3], sum(c), [not x for x in c]))
    for k, cells in by_other.items():
        ns = sorted({n for cell, n in cells.values() if cell[3]}) or [4]
        for n in ns:
            chosen = {lab: cell for lab, (cell, m) in cells.items() if not cell[3] or m == n}
            have = set(chosen.values())
            if len(have) == 16 and len(chosen) == 16:
                lab = " ".join(x for x in (other_label[k], f"kernels={n}") if x)
                groups.append(FactorialGroup(lab, n, chosen))
            else:
                missing = [_cell_spec(c, n) for c in all_cells if c not in have]
                if best_missing is None or len(missing) < len(best_missing):
                    best_missing = missing
    if groups:
        return groups, ""
    if best_missing is None:
        return [], "the grid has no ODConv or static variant"
    shown = ", ".join(best_missing[:8]) + (f", ... ({len(best_missing)} in all)" if len(best_missing) > 8 else "")
    return [], f"the grid lacks {len(best_missing)} of the 16 cells: {shown}"


EFFECT_TABLE_COLUMNS = ["group", "term", "estimate", "ci_low", "ci_high", "se", "p_value", "df_resid", "n_obs",
                        "resid_sd", "n_cells_with_data"]
OUTLIER_TABLE_COLUMNS = ["group", "variant", "seed", "top1", *linear_models.OUTLIER_COLUMNS]


@dataclass
class EffectsResult:
    """``table``: the effects (``EFFECT_TABLE_COLUMNS``); ``notes``: one line per factorial
    group (or why there is none); ``fits``: group label -> the statsmodels fit summary.
    ``outliers``: the results the fit flags as outlying (``OUTLIER_TABLE_COLUMNS``), and
    ``without_outliers``: the same model refitted without them (a sensitivity check; the
    estimates are ``table``'s), in ``EFFECT_TABLE_COLUMNS``, empty when none is flagged."""

    table: pd.DataFrame
    notes: list[str]
    fits: dict[str, linear_models.FactorialFit]
    groups: list[FactorialGroup]
    outliers: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=OUTLIER_TABLE_COLUMNS))
    without_outliers: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=EFFECT_TABLE_COLUMNS))


def effects_table(sweep: SweepDef, df: pd.DataFrame) -> EffectsResult:
    """Main effects and two-way interactions of ODConv's four attentions on top-1 (pp), from
    :func:`sweeps.reporting.linear_models.factorial_effects` on every complete trial of each full factorial."""
    groups, why = factorial_groups(sweep)
    if not groups:
        return EffectsResult(pd.DataFrame(columns=EFFECT_TABLE_COLUMNS), [f"n/a: {why}"], {}, [])
    by_seed = seed_values(df)
    frames, notes, fits, flagged, refits = [], [], {}, [], []

    def effect_rows(label: str, fit: linear_models.FactorialFit, n_cells: int) -> pd.DataFrame:
        t = fit.effects.copy()
        t.insert(0, "group", label)
        t["df_resid"], t["n_obs"], t["resid_sd"] = fit.df_resid, fit.n_obs, fit.resid_sd
        t["n_cells_with_data"] = n_cells
        return t

    for g in groups:
        rows = [{"y": y, "seed": seed, "variant": lab, **dict(zip(ATTS, cell))}
                for lab, cell in g.variants.items() for seed, y in by_seed.get(lab, {}).items()]
        data = pd.DataFrame(rows, columns=["y", "seed", "variant", *ATTS])
        n_cells = len({tuple(r[a] for a in ATTS) for r in rows})
        fit = (linear_models.factorial_effects(data, ATTS, response="y", block="seed", outlier_alpha=OUTLIER_ALPHA)
               if len(data) else None)
        name = g.label or "all"
        if fit is None:
            notes.append(f"{name}: n/a: {len(data)} results in {n_cells}/16 cells cannot estimate 4 main effects, "
                         "6 interactions and the seed blocks with a residual degree of freedom left")
            continue
        fits[g.label] = fit
        frames.append(effect_rows(g.label, fit, n_cells))
        notes.append(f"{name}: {fit.n_obs} results in {n_cells}/16 cells, residual SD {fit.resid_sd:.2f} pp on "
                     f"{fit.df_resid:g} df")
        if len(fit.outliers):
            out = data.loc[fit.outliers.index, ["variant", "seed", "y"]].rename(columns={"y": "top1"})
            flagged.append(pd.concat([out, fit.outliers], axis=1).assign(group=g.label))
            rest = data.drop(index=fit.outliers.index)
            refit = linear_models.factorial_effects(rest, ATTS, response="y", block="seed", outlier_alpha=OUTLIER_ALPHA)
            if refit is not None:
                refits.append(effect_rows(g.label, refit, len({tuple(r) for r in rest[list(ATTS)].to_numpy()})))
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=EFFECT_TABLE_COLUMNS)
    outliers = (pd.concat(flagged, ignore_index=True)[OUTLIER_TABLE_COLUMNS] if flagged
                else pd.DataFrame(columns=OUTLIER_TABLE_COLUMNS))
    without = (pd.concat(refits, ignore_index=True)[EFFECT_TABLE_COLUMNS] if refits
               else pd.DataFrame(columns=EFFECT_TABLE_COLUMNS))
    return EffectsResult(table[EFFECT_TABLE_COLUMNS], notes, fits, groups, outliers, without)


CONDITIONAL_TABLE_COLUMNS = ["group", "interaction", "interaction_estimate", "interaction_p", "factor", "given",
                             "given_on", "estimate", "ci_low", "ci_high", "se", "p_value", "main_effect",
                             "df_resid"]


def conditional_effects_table(effects: EffectsResult, screen_p: float = INTERACTION_SCREEN_P) -> pd.DataFrame:
    """For every two-factor interaction of a factorial group whose unadjusted p-value is below
    ``screen_p``: each of its two factors' effect with the other off and with it on (pp, on
    minus off like the main effects, averaged over the remaining two attentions), from the same
    OLS fit as ``effects.table`` (:attr:`sweeps.reporting.linear_models.FactorialFit.conditional`), with the
    95% interval and p-value of that contrast. Columns :data:`CONDITIONAL_TABLE_COLUMNS`;
    ``main_effect`` is the factor's main effect, the mean of its two conditional effects."""
    frames = []
    for label, fit in effects.fits.items():
        terms = fit.effects.set_index("term")
        screened = [t for t in terms.index if ":" in t and terms.loc[t, "p_value"] < screen_p]
        if not screened:
            continue
        c = fit.conditional[fit.conditional["interaction"].isin(screened)].copy()
        c.insert(0, "group", label)
        c.insert(2, "interaction_estimate", [float(terms.loc[t, "estimate"]) for t in c["interaction"]])
        c.insert(3, "interaction_p", [float(terms.loc[t, "p_value"]) for t in c["interaction"]])
        c["main_effect"] = [float(terms.loc[f, "estimate"]) for f in c["factor"]]
        c["df_resid"] = fit.df_resid
        frames.append(c)
    if not frames:
        return pd.DataFrame(columns=CONDITIONAL_TABLE_COLUMNS)
    return pd.concat(frames, ignore_index=True)[CONDITIONAL_TABLE_COLUMNS]


__all__ = ["ATTS", "OUTLIER_ALPHA", "INTERACTION_SCREEN_P", "attention_table", "Cell", "FactorialGroup",
           "factorial_groups", "EffectsResult", "effects_table", "EFFECT_TABLE_COLUMNS", "OUTLIER_TABLE_COLUMNS",
           "conditional_effects_table", "CONDITIONAL_TABLE_COLUMNS"]
