"""Analysis for ``odconv-sweep results``: frames in, frames out (no text, no files).

- :func:`summary_table`: one row per grid variant: accuracy over seeds, the paired, blocked
  and Welch differences to its ``static`` reference, Holm-adjusted p-values, cost columns;
  :func:`add_pareto_fronts` marks the accuracy-vs-cost fronts.
- :func:`attention_table`: the effect of each attention over the grid's pairs of variants that
  differ only in it (any grid).
- :func:`factorial_groups` / :func:`effects_table`: the 2^4 factorial of ODConv's attentions
  (main effects, two-way interactions, outlying results and the refit without them);
  :func:`conditional_effects_table`: each factor's effect at each level of the other where a
  two-factor interaction passes :data:`INTERACTION_SCREEN_P`.
- :func:`rerun_table` / :func:`rerun_spread`: reruns beside the grid points they repeat.

The precision of the design (smallest detectable differences, precision goals) is in
:mod:`sweeps.reporting.precision`; the statistics on plain numbers in :mod:`sweeps.reporting.stats`.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..definition import CONV_KEY, SEED_KEY, SweepDef, variant_label
from . import stats
from .loading import bench_row, complete_records, seed_values

ATTS = ("channel", "filter", "spatial", "kernel")
ALPHA = 0.05  # the two-sided level of every test and (1 - ALPHA) interval of the tables
OUTLIER_ALPHA = 0.05  # the Bonferroni-adjusted level at which a result is flagged as outlying
# A two-factor interaction whose unadjusted p-value is below this gets its conditional effects
# listed: a screen for "the main effect may hide opposite effects", not a claim of an interaction
# (an interaction that is truly zero passes it 10% of the time, so one of six often does).
INTERACTION_SCREEN_P = 0.10


def _other_axes(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k not in (SEED_KEY, CONV_KEY)}


def summary_table(sweep: SweepDef, df: pd.DataFrame, bench: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per grid variant (grid order): accuracy over seeds, paired and Welch differences
    vs its ``static`` reference, Holm-adjusted paired p-values across the rows, cost columns.

    ``df``: :func:`sweeps.reporting.loading.records_frame`; ``bench``:
    :func:`sweeps.reporting.loading.load_bench` (cost ratios from one ``make bench`` run where it
    has the variant's model, width and conv)."""
    variants: dict[str, dict[str, Any]] = {}
    for p in sweep.grid_points():
        v = variants.setdefault(p.variant, {"params": {k: x for k, x in p.params.items() if k != SEED_KEY},
                                            "seeds": []})
        v["seeds"].append(p.seed)
    complete = complete_records(df)
    failed = df[df["status"] != "complete"] if len(df) else df
    by_seed = seed_values(df)

    def vals(label: str, col: str) -> list[float]:
        if not len(complete) or col not in complete.columns:
            return []
        s = pd.to_numeric(complete[complete["variant"] == label][col], errors="coerce")
        return [float(x) for x in s if pd.notna(x) and math.isfinite(float(x))]

    def first(label: str, col: str) -> Any:
        if not len(complete) or col not in complete.columns:
            return None
        s = complete[complete["variant"] == label][col].dropna()
        return s.iloc[0] if len(s) else None

    def ref_label(vparams: dict[str, Any]) -> str | None:
        if CONV_KEY not in vparams:
            return None
        ref = dict(vparams)
        ref[CONV_KEY] = "static"
        lab = variant_label(ref)
        return lab if lab in variants else None

    rows = []
    for label, v in variants.items():
        seeds = by_seed.get(label, {})
        top1 = list(seeds.values())
        done_seeds = set(complete[complete["variant"] == label]["seed"]) if len(complete) else set()
        failed_seeds = set(failed[failed["variant"] == label]["seed"]) - done_seeds if len(failed) else set()
        missing = [s for s in v["seeds"] if s not in done_seeds]
        ref = ref_label(v["params"])
        hosts = sorted({str(h) for h in complete[complete["variant"] == label]["machine"].dropna()}) \
            if len(complete) and "machine" in complete.columns else []
        row: dict[str, Any] = {
            "variant": label, "conv": v["params"].get(CONV_KEY),
            "top1_mean": np.mean(top1) if top1 else np.nan,
            "top1_std": np.std(top1, ddof=1) if len(top1) > 1 else np.nan,
            "n_seeds": len(top1), "n_grid_seeds": len(v["seeds"]),
            "missing_seeds": ",".join(str(s) for s in missing if s not in failed_seeds),
            "failed_seeds": ",".join(str(s) for s in sorted(failed_seeds, key=str)),
            "reference": ref,
            "model_name": first(label, "model_name"), "model_width": first(label, "model_width"),
            "model_precision": first(label, "model_precision"), "measure_device": first(label, "measure_device"),
            "hosts": ",".join(hosts),
        }
        for col, name in (("best_val_top1", "best_val_top1_mean"), ("final_val_top1", "val_top1_mean"),
                          ("test_top5", "top5_test_mean"), ("final_val_top5", "val_top5_mean")):
            xs = vals(label, col)
            row[name] = 100 * np.mean(xs) if xs else np.nan
        for col in ("params_count", "macs", "train_throughput", "latency_b1_ms", "latency_b64_ms", "peak_memory_mb",
                    "wall_time_s"):
            xs = vals(label, col)
            row[col] = float(np.median(xs)) if xs else np.nan
        tp = [x for x in vals(label, "train_throughput") if x > 0]
        row["train_ms_per_image"] = float(np.median([1000.0 / x for x in tp])) if tp else np.nan
        paired = stats.Paired(0, np.nan, np.nan, np.nan, np.nan, np.nan)
        d = lo = hi = wp = np.nan
        if ref is not None and ref != label:
            rseeds = by_seed.get(ref, {})
            paired = stats.paired_diff(seeds, rseeds)
            d, lo, hi = stats.welch_ci(top1, list(rseeds.values()))
            wp = stats.welch_p(top1, list(rseeds.values()))
        row.update(paired_n=paired.n, paired_delta=paired.mean, paired_sd=paired.sd, paired_ci_low=paired.ci_low,
                   paired_ci_high=paired.ci_high, paired_p=paired.p,
                   delta_vs_static=d, delta_ci_low=lo, delta_ci_high=hi, welch_p=wp)
        rows.append(row)
    out = pd.DataFrame(rows)
    if not len(out):
        return out
    out.insert(out.columns.get_loc("paired_p") + 1, "paired_p_holm", stats.holm(out["paired_p"]))
    _add_blocked(out, by_seed)
    by = out.set_index("variant")

    def ratio(r: pd.Series, col: str) -> float:
        ref = r.get("reference")
        if not ref or ref not in by.index:
            return np.nan
        a, b = r[col], by.loc[ref, col]
        if pd.isna(a) or pd.isna(b) or not a or not b:
            return np.nan
        return float(a / b)

    for col, name in (("params_count", "params_ratio"), ("macs", "macs_ratio"),
                      ("train_throughput", "throughput_ratio"),
                      ("train_ms_per_image", "train_time_ratio"), ("latency_b1_ms", "latency_b1_ratio"),
                      ("latency_b64_ms", "latency_b64_ratio"), ("peak_memory_mb", "memory_ratio")):
        out[name] = [ratio(r, col) for _, r in out.iterrows()]
    # cost ratios of the published table: one `make bench` run (same machine, same moment) when it
    # has both the variant and its static reference; else the trials' own medians
    bench_cols = {"bench_train_time_ratio": "train_vs_static", "bench_latency_b1_ratio": "latency_vs_static",
                  "bench_memory_ratio": "mem_vs_static"}
    for c in bench_cols:
        out[c] = np.nan
    out["cost_source"] = "trials"
    for i, r in out.iterrows():
        ref = r.get("reference")
        if not ref or ref not in by.index:
            out.at[i, "cost_source"] = ""
            continue
        b = bench_row(bench, r["model_name"], r["model_width"], r["conv"], r["model_precision"], r["measure_device"])
        b_ref = bench_row(bench, by.loc[ref, "model_name"], by.loc[ref, "model_width"], by.loc[ref, "conv"],
                           by.loc[ref, "model_precision"], by.loc[ref, "measure_device"])
        if b is not None and b_ref is not None:
            for c, bc in bench_cols.items():
                out.at[i, c] = float(b[bc])
            out.at[i, "cost_source"] = "bench"
            if {"train_step_ms", "batch"} <= set(b.index) and float(b["batch"]) > 0:
                out.at[i, "bench_train_ms_per_image"] = float(b["train_step_ms"]) / float(b["batch"])
    if "bench_train_ms_per_image" not in out.columns:
        out["bench_train_ms_per_image"] = np.nan
    return out


BLOCKED_SUMMARY_COLUMNS = ["blocked_delta", "blocked_ci_low", "blocked_ci_high", "blocked_p", "blocked_p_holm",
                           "blocked_resid_sd", "blocked_df_resid"]


def blocked_groups(summary: pd.DataFrame) -> dict[str, list[str]]:
    """reference -> the variants compared with it (the reference first)."""
    groups: dict[str, list[str]] = {}
    for _, r in summary.iterrows():
        ref = r.get("reference")
        if ref:
            groups.setdefault(ref, [ref])
            if r["variant"] != ref:
                groups[ref].append(r["variant"])
    return groups


def _add_blocked(out: pd.DataFrame, by_seed: dict[str, dict[Any, float]]) -> None:
    """Fill ``out`` (the summary) with each row's difference to its reference in the blocked
    model (variant + seed over every variant that shares the reference: pooled residual
    variance), its interval, p-value and the Holm-adjusted p across the rows."""
    for c in BLOCKED_SUMMARY_COLUMNS:
        out[c] = np.nan
    for ref, members in blocked_groups(out).items():
        data = pd.DataFrame([{"variant": v, "seed": str(seed), "y": y}
                             for v in members for seed, y in by_seed.get(v, {}).items()])
        fit = stats.blocked_contrasts(data, ref) if len(data) else None
        if fit is None:
            continue
        for _, f in fit.iterrows():
            i = out.index[out["variant"] == f["treatment"]][0]
            out.loc[i, BLOCKED_SUMMARY_COLUMNS] = [f["estimate"], f["ci_low"], f["ci_high"], f["p_value"], np.nan,
                                                   f["resid_sd"], f["df_resid"]]
        ri = out.index[out["variant"] == ref][0]
        out.loc[ri, ["blocked_resid_sd", "blocked_df_resid"]] = [fit["resid_sd"].iloc[0], fit["df_resid"].iloc[0]]
    out["blocked_p_holm"] = stats.holm(out["blocked_p"])


def add_pareto_fronts(summary: pd.DataFrame, time_col: str) -> None:
    """Mark in ``summary`` the variants on the Pareto fronts of top-1 against training time per
    image (``time_col``: :func:`train_time_column`) and against parameters: ``pareto_train_time``,
    ``pareto_params``."""
    if len(summary):
        summary["pareto_train_time"] = stats.pareto_front(summary[time_col], summary["top1_mean"])
        summary["pareto_params"] = stats.pareto_front(summary["params_count"], summary["top1_mean"])


def train_time_column(summary: pd.DataFrame) -> str:
    """The per-image training time the accuracy-vs-time plot and its Pareto front use: the
    benchmark's (``bench_train_ms_per_image``: one run on one machine) when it covers every
    variant with a result, else the trials' own medians (``train_ms_per_image``)."""
    has = summary.dropna(subset=["top1_mean"]) if len(summary) else summary
    if len(has) and "bench_train_ms_per_image" in has.columns and has["bench_train_ms_per_image"].notna().all():
        return "bench_train_ms_per_image"
    return "train_ms_per_image"


def _spec_atts(conv: str | None) -> tuple[int, frozenset[str]] | None:
    """(kernel count, attentions) of an ODConv-family spec; static = (1, {}); else None."""
    if conv is None:
        return None
    try:
        from odconv import parse_conv_spec
        s = parse_conv_spec(conv)
    except (ImportError, ValueError):
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


# --- the 2^4 factorial of ODConv's attentions -------------------------------------------------

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
    from odconv.spec import ConvSpec
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
OUTLIER_TABLE_COLUMNS = ["group", "variant", "seed", "top1", *stats.OUTLIER_COLUMNS]


@dataclass
class EffectsResult:
    """``table``: the effects (``EFFECT_TABLE_COLUMNS``); ``notes``: one line per factorial
    group (or why there is none); ``fits``: group label -> the statsmodels fit summary.
    ``outliers``: the results the fit flags as outlying (``OUTLIER_TABLE_COLUMNS``), and
    ``without_outliers``: the same model refitted without them (a sensitivity check; the
    estimates are ``table``'s), in ``EFFECT_TABLE_COLUMNS``, empty when none is flagged."""

    table: pd.DataFrame
    notes: list[str]
    fits: dict[str, stats.FactorialFit]
    groups: list[FactorialGroup]
    outliers: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=OUTLIER_TABLE_COLUMNS))
    without_outliers: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=EFFECT_TABLE_COLUMNS))


def effects_table(sweep: SweepDef, df: pd.DataFrame) -> EffectsResult:
    """Main effects and two-way interactions of ODConv's four attentions on top-1 (pp), from
    :func:`sweeps.reporting.stats.factorial_effects` on every complete trial of each full factorial."""
    groups, why = factorial_groups(sweep)
    if not groups:
        return EffectsResult(pd.DataFrame(columns=EFFECT_TABLE_COLUMNS), [f"n/a: {why}"], {}, [])
    by_seed = seed_values(df)
    frames, notes, fits, flagged, refits = [], [], {}, [], []

    def effect_rows(label: str, fit: stats.FactorialFit, n_cells: int) -> pd.DataFrame:
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
        fit = (stats.factorial_effects(data, ATTS, response="y", block="seed", outlier_alpha=OUTLIER_ALPHA)
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
            refit = stats.factorial_effects(rest, ATTS, response="y", block="seed", outlier_alpha=OUTLIER_ALPHA)
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
    OLS fit as ``effects.table`` (:attr:`sweeps.reporting.stats.FactorialFit.conditional`), with the
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


RERUN_TABLE_COLUMNS = ["variant", "seed", "changed", "original", "rerun", "difference", "original_key", "rerun_key"]


def rerun_table(sweep: SweepDef, df: pd.DataFrame) -> pd.DataFrame:
    """One row per rerun (``reruns:`` of the sweep file): the grid point's value and the
    rerun's (%, NaN until both are done) and their difference (rerun - original, pp).
    ``df``: :func:`sweeps.reporting.loading.records_frame` with every point's record, reruns included."""
    value: dict[str, float] = {}
    for _, r in complete_records(df).iterrows():
        x = pd.to_numeric(r.get("value"), errors="coerce")
        if pd.notna(x) and math.isfinite(float(x)):
            value[r["grid_key"]] = 100.0 * float(x)
    changed = variant_label(sweep.reruns.get("overrides", {})) if sweep.reruns else ""
    rows = []
    for rerun, orig in sweep.rerun_pairs():
        a, b = value.get(orig.key, np.nan), value.get(rerun.key, np.nan)
        rows.append({"variant": orig.variant, "seed": orig.seed, "changed": changed, "original": a, "rerun": b,
                     "difference": b - a, "original_key": orig.key, "rerun_key": rerun.key})
    return pd.DataFrame(rows, columns=RERUN_TABLE_COLUMNS)


def rerun_spread(reruns: pd.DataFrame) -> tuple[float, int]:
    """(run-to-run standard deviation, its degrees of freedom): the pooled SD of the pairs
    (grid point, rerun) with both values, i.e. RMS(difference) / sqrt(2); (NaN, 0) without one."""
    pairs = [[r["original"], r["rerun"]] for _, r in reruns.iterrows()
             if pd.notna(r["original"]) and pd.notna(r["rerun"])]
    return stats.pooled_sd(pairs)


__all__ = ["ATTS", "ALPHA", "OUTLIER_ALPHA", "INTERACTION_SCREEN_P", "summary_table", "blocked_groups",
           "BLOCKED_SUMMARY_COLUMNS", "add_pareto_fronts", "train_time_column", "attention_table", "Cell",
           "FactorialGroup", "factorial_groups", "EffectsResult", "effects_table", "EFFECT_TABLE_COLUMNS",
           "OUTLIER_TABLE_COLUMNS", "conditional_effects_table", "CONDITIONAL_TABLE_COLUMNS", "rerun_table",
           "rerun_spread", "RERUN_TABLE_COLUMNS"]
