"""Analysis for ``odconv-sweep results``: frames in, frames out (no text, no files).

- :func:`summary_table`: one row per grid variant: accuracy over seeds, the paired, blocked
  and Welch differences to its ``static`` reference, Holm-adjusted p-values, cost columns;
  :func:`add_pareto_fronts` marks the accuracy-vs-cost fronts.
- :func:`rerun_table` / :func:`rerun_spread`: reruns beside the grid points they repeat.

The effects of the attentions (attention pairs, the 2^4 factorial) are in
:mod:`sweeps.reporting.attentions`; the precision of the design (smallest detectable
differences, precision goals) in :mod:`sweeps.reporting.precision`; the statistics on plain
numbers in :mod:`sweeps.reporting.stats` and :mod:`sweeps.reporting.linear_models`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from ..definition import SweepDef
from ..grid import CONV_KEY, SEED_KEY, variant_label
from . import linear_models, stats
from .loading import bench_row, complete_records, seed_values

ALPHA = 0.05  # the two-sided level of every test and (1 - ALPHA) interval of the tables

# summary column <- the records' column: means over seeds (x 100: percent) and medians (costs)
PERCENT_MEANS = (("best_val_top1", "best_val_top1_mean"), ("final_val_top1", "val_top1_mean"),
                 ("test_top5", "top5_test_mean"), ("final_val_top5", "val_top5_mean"))
COST_MEDIANS = ("params_count", "macs", "train_throughput", "latency_b1_ms", "latency_b64_ms", "peak_memory_mb",
                "wall_time_s")
# ratio column <- the cost column divided by the reference's
COST_RATIOS = (("params_count", "params_ratio"), ("macs", "macs_ratio"), ("train_throughput", "throughput_ratio"),
               ("train_ms_per_image", "train_time_ratio"), ("latency_b1_ms", "latency_b1_ratio"),
               ("latency_b64_ms", "latency_b64_ratio"), ("peak_memory_mb", "memory_ratio"))
# the published table's ratio columns <- the bench table's
BENCH_RATIOS = {"bench_train_time_ratio": "train_vs_static", "bench_latency_b1_ratio": "latency_vs_static",
                "bench_memory_ratio": "mem_vs_static"}


def _grid_variants(sweep: SweepDef) -> dict[str, dict[str, Any]]:
    """Grid variant (grid order) -> ``params`` (without the seed) and ``seeds`` (its grid seeds)."""
    variants: dict[str, dict[str, Any]] = {}
    for p in sweep.grid_points():
        v = variants.setdefault(p.variant, {"params": {k: x for k, x in p.params.items() if k != SEED_KEY},
                                            "seeds": []})
        v["seeds"].append(p.seed)
    return variants


def _reference(params: dict[str, Any], variants: dict[str, Any]) -> str | None:
    """The grid's ``static`` variant with the same other axes as ``params``; None without one."""
    if CONV_KEY not in params:
        return None
    ref = dict(params)
    ref[CONV_KEY] = "static"
    label = variant_label(ref)
    return label if label in variants else None


class _Results:
    """The records of a summary's rows: the complete ones, the failed ones, and each variant's
    top-1 per seed (:func:`sweeps.reporting.loading.seed_values`)."""

    def __init__(self, df: pd.DataFrame) -> None:
        self.complete = complete_records(df)
        self.failed = df[df["status"] != "complete"] if len(df) else df
        self.by_seed = seed_values(df)

    def of(self, label: str) -> pd.DataFrame:
        """The complete records of variant ``label``."""
        return self.complete[self.complete["variant"] == label]

    def values(self, label: str, col: str) -> list[float]:
        """The finite values of ``col`` in the complete records of ``label``."""
        if not len(self.complete) or col not in self.complete.columns:
            return []
        s = pd.to_numeric(self.of(label)[col], errors="coerce")
        return [float(x) for x in s if pd.notna(x) and math.isfinite(float(x))]

    def first(self, label: str, col: str) -> Any:
        """The first non-missing ``col`` of the complete records of ``label`` (None without one)."""
        if not len(self.complete) or col not in self.complete.columns:
            return None
        s = self.of(label)[col].dropna()
        return s.iloc[0] if len(s) else None


def _seed_columns(label: str, grid_seeds: list[Any], ref: str | None, res: _Results) -> dict[str, Any]:
    """A row's accuracy over seeds, which seeds it has, and where it ran."""
    top1 = list(res.by_seed.get(label, {}).values())
    done = set(res.of(label)["seed"]) if len(res.complete) else set()
    failed = set(res.failed[res.failed["variant"] == label]["seed"]) - done if len(res.failed) else set()
    missing = [s for s in grid_seeds if s not in done]
    hosts = sorted({str(h) for h in res.of(label)["machine"].dropna()}) \
        if len(res.complete) and "machine" in res.complete.columns else []
    return {
        "top1_mean": np.mean(top1) if top1 else np.nan,
        "top1_std": np.std(top1, ddof=1) if len(top1) > 1 else np.nan,
        "n_seeds": len(top1), "n_grid_seeds": len(grid_seeds),
        "missing_seeds": ",".join(str(s) for s in missing if s not in failed),
        "failed_seeds": ",".join(str(s) for s in sorted(failed, key=str)),
        "reference": ref,
        "model_name": res.first(label, "model_name"), "model_width": res.first(label, "model_width"),
        "model_precision": res.first(label, "model_precision"), "measure_device": res.first(label, "measure_device"),
        "hosts": ",".join(hosts),
    }


def _measured_columns(label: str, res: _Results) -> dict[str, Any]:
    """A row's other accuracies (means over seeds, %) and its costs (medians over seeds)."""
    row: dict[str, Any] = {}
    for col, name in PERCENT_MEANS:
        xs = res.values(label, col)
        row[name] = 100 * np.mean(xs) if xs else np.nan
    for col in COST_MEDIANS:
        xs = res.values(label, col)
        row[col] = float(np.median(xs)) if xs else np.nan
    tp = [x for x in res.values(label, "train_throughput") if x > 0]
    row["train_ms_per_image"] = float(np.median([1000.0 / x for x in tp])) if tp else np.nan
    return row


def _comparison_columns(label: str, ref: str | None, res: _Results) -> dict[str, Any]:
    """A row against its reference: the paired t over shared seeds and Welch's unpaired t."""
    paired = stats.Paired(0, np.nan, np.nan, np.nan, np.nan, np.nan)
    d = lo = hi = wp = np.nan
    if ref is not None and ref != label:
        seeds, rseeds = res.by_seed.get(label, {}), res.by_seed.get(ref, {})
        top1, rtop1 = list(seeds.values()), list(rseeds.values())
        paired = stats.paired_diff(seeds, rseeds)
        d, lo, hi = stats.welch_ci(top1, rtop1)
        wp = stats.welch_p(top1, rtop1)
    return {"paired_n": paired.n, "paired_delta": paired.mean, "paired_sd": paired.sd,
            "paired_ci_low": paired.ci_low, "paired_ci_high": paired.ci_high, "paired_p": paired.p,
            "delta_vs_static": d, "delta_ci_low": lo, "delta_ci_high": hi, "welch_p": wp}


def summary_table(sweep: SweepDef, df: pd.DataFrame, bench: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per grid variant (grid order): accuracy over seeds, paired and Welch differences
    vs its ``static`` reference, Holm-adjusted paired p-values across the rows, the blocked
    model's differences (:func:`_add_blocked`), cost columns and ratios.

    ``df``: :func:`sweeps.reporting.loading.records_frame`; ``bench``:
    :func:`sweeps.reporting.loading.load_bench` (cost ratios from one ``make bench`` run where it
    has the variant's model, width and conv)."""
    variants = _grid_variants(sweep)
    res = _Results(df)
    rows = []
    for label, v in variants.items():
        ref = _reference(v["params"], variants)
        rows.append({"variant": label, "conv": v["params"].get(CONV_KEY), **_seed_columns(label, v["seeds"], ref, res),
                     **_measured_columns(label, res), **_comparison_columns(label, ref, res)})
    out = pd.DataFrame(rows)
    if not len(out):
        return out
    out.insert(out.columns.get_loc("paired_p") + 1, "paired_p_holm", stats.holm(out["paired_p"]))
    _add_blocked(out, res.by_seed)
    _add_cost_ratios(out)
    _add_bench_costs(out, bench)
    return out


def _add_cost_ratios(out: pd.DataFrame) -> None:
    """Each row's costs divided by its reference's (:data:`COST_RATIOS`; NaN without both)."""
    by = out.set_index("variant")

    def ratio(r: pd.Series, col: str) -> float:
        ref = r.get("reference")
        if not ref or ref not in by.index:
            return np.nan
        a, b = r[col], by.loc[ref, col]
        if pd.isna(a) or pd.isna(b) or not a or not b:
            return np.nan
        return float(a / b)

    for col, name in COST_RATIOS:
        out[name] = [ratio(r, col) for _, r in out.iterrows()]


def _add_bench_costs(out: pd.DataFrame, bench: pd.DataFrame | None) -> None:
    """The cost ratios of the published table: one ``make bench`` run (same machine, same
    moment) when it has both the variant and its static reference (``cost_source`` bench),
    else the trials' own medians (trials; empty without a reference)."""
    by = out.set_index("variant")
    for c in BENCH_RATIOS:
        out[c] = np.nan
    out["cost_source"] = "trials"
    out["bench_train_ms_per_image"] = np.nan
    for i, r in out.iterrows():
        ref = r.get("reference")
        if not ref or ref not in by.index:
            out.at[i, "cost_source"] = ""
            continue
        b = bench_row(bench, r["model_name"], r["model_width"], r["conv"], r["model_precision"], r["measure_device"])
        b_ref = bench_row(bench, by.loc[ref, "model_name"], by.loc[ref, "model_width"], by.loc[ref, "conv"],
                          by.loc[ref, "model_precision"], by.loc[ref, "measure_device"])
        if b is not None and b_ref is not None:
            for c, bc in BENCH_RATIOS.items():
                out.at[i, c] = float(b[bc])
            out.at[i, "cost_source"] = "bench"
            if {"train_step_ms", "batch"} <= set(b.index) and float(b["batch"]) > 0:
                out.at[i, "bench_train_ms_per_image"] = float(b["train_step_ms"]) / float(b["batch"])


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
        fit = linear_models.blocked_contrasts(data, ref) if len(data) else None
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


__all__ = ["ALPHA", "summary_table", "blocked_groups", "BLOCKED_SUMMARY_COLUMNS", "add_pareto_fronts",
           "train_time_column", "rerun_table", "rerun_spread", "RERUN_TABLE_COLUMNS"]
