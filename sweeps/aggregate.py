"""Aggregate a sweep's trial records into tables and plots (``odconv-sweep results <sweep>``).

Writes under ``results/<sweep>/`` (how to read each: ``docs/results.md``):

- ``summary.csv`` / ``summary.md``: the design's precision at the top (pooled seed-to-seed
  standard deviation, smallest detectable difference), then one row per variant: top-1 mean ±
  std over seeds (in %), seeds done of the grid's (missing and failed seeds named), the
  **paired** difference vs ``static`` (the variant with the same other axes and
  ``conv=static``; runs with the same seed are pairs) with its t interval and Holm-adjusted
  p-value, the Welch (unpaired) difference and interval beside it, params, MACs, and cost
  ratios vs ``static`` (from ``results/bench/models.csv`` when it has the variant's model and
  width, else from the trials' own measurements, with their host names).
- ``effects.csv`` / ``effects.md`` / ``effects.png``: when the grid holds the full 2^4
  factorial of ODConv's attentions (channel, filter, spatial, kernel), the main effects and
  two-way interactions from a linear model with seed as a block; ``outliers.csv`` and
  ``effects_without_outliers.csv`` while the fit flags a result as outlying.
- ``attention.csv`` / ``attention.md``: the effect of switching each ODConv attention on,
  averaged over every pair of grid variants that differ only in that attention (any grid).
- ``accuracy_bars.png``, ``accuracy_vs_params.png``, ``accuracy_vs_train_time.png`` (Pareto
  fronts marked), ``accuracy_vs_macs.png``.

Partial sweeps aggregate too: seeds not (yet) done are listed in the ``missing`` column.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from . import stats
from .cost import bench_path
from .curves import curves_table
from .definition import CONV_KEY, SEED_KEY, SweepDef, find_sweep_file, grid_key, load_sweep, variant_label
from .record import TrialRecord, model_of, read_records
from .stats import t_ppf, welch_ci

ATTS = ("channel", "filter", "spatial", "kernel")
ALPHA, POWER = 0.05, 0.8
OUTLIER_ALPHA = 0.05  # the Bonferroni-adjusted level at which a result is flagged as outlying


# --- loading ---------------------------------------------------------------------------

def load_sweep_for_results(sweep: str, results_root: str | os.PathLike = "results") -> SweepDef:
    """The sweep definition of a results folder (``sweep.json`` written by the run), else the YAML."""
    snap = Path(results_root) / sweep / "sweep.json"
    if snap.exists():
        return SweepDef.from_dict(json.loads(snap.read_text()))
    return load_sweep(find_sweep_file(sweep), check_files=False)


def records_from_study(study) -> list[TrialRecord]:
    """Records kept in the study's user attributes (for points run on other machines, whose
    JSON files are on their disks)."""
    out = []
    for t in study.get_trials(deepcopy=False):
        rec = t.user_attrs.get("record")
        if isinstance(rec, dict) and t.state.is_finished():
            try:
                out.append(TrialRecord.from_dict(rec))
            except (ValueError, TypeError):
                pass
    return out


def records_frame(sweep_name: str, results_root: str | os.PathLike = "results",
                  extra: list[TrialRecord] | None = None) -> pd.DataFrame:
    """One row per grid point (its record's scalar fields and ``val_history``, plus
    ``model_name``, ``model_width`` and ``model_precision`` from the resolved config); a
    complete record wins over a failed one."""
    by_key = {r.grid_key: r for r in read_records(Path(results_root) / sweep_name / "trials")}
    # a point's record from the study when its file is not here (or only a failed one is)
    for r in extra or []:
        cur = by_key.get(r.grid_key)
        if cur is None or (cur.status != "complete" and r.status == "complete"):
            by_key[r.grid_key] = r
    rows = []
    for r in by_key.values():
        d = r.to_dict()
        d["model_name"], d["model_width"], d["model_precision"] = model_of(d.pop("config", None) or {})
        d.pop("cli_args", None)
        d.pop("data", None)
        d["key_params"] = json.dumps(r.params, sort_keys=True)
        d["machine"] = machine_label(r)
        rows.append(d)
    return pd.DataFrame(rows)


def machine_label(rec: TrialRecord) -> str | None:
    """Which machine a trial ran on: its host name, with the CPU model the record names (or,
    in records written before the CPU was recorded, the platform string), since host names
    alone (e.g. a VM's) do not tell two machines apart."""
    what = (rec.versions or {}).get("cpu") or (rec.versions or {}).get("platform")
    if rec.host is None and what is None:
        return None
    return f"{rec.host or '?'} ({what})" if what else str(rec.host)


def _other_axes(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k not in (SEED_KEY, CONV_KEY)}


def _complete(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "complete"] if len(df) and "status" in df.columns else df.iloc[0:0]


def _seed_values(df: pd.DataFrame, col: str = "value", scale: float = 100.0) -> dict[str, dict[Any, float]]:
    """variant -> {seed: scale * col} over the complete records with a finite value."""
    out: dict[str, dict[Any, float]] = {}
    c = _complete(df)
    for _, r in c.iterrows():
        x = pd.to_numeric(r.get(col), errors="coerce")
        if pd.notna(x) and math.isfinite(float(x)):
            out.setdefault(r["variant"], {})[r["seed"]] = scale * float(x)
    return out


def bench_header(path: str | os.PathLike | None, key: str) -> str:
    """The value of the ``- <key>:`` line of the ``.md`` table beside a bench CSV (the run's
    machine, device, date...); empty when the file or the line is missing."""
    md = Path(path).with_suffix(".md") if path is not None else None
    lines = md.read_text().splitlines() if md is not None and md.exists() else []
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(f"- {key}:")), "")


def bench_machine(path: str | os.PathLike | None) -> str:
    """The machine a bench CSV's times were taken on: its ``cpu`` header line, else its
    ``device``; empty when unknown."""
    return bench_header(path, "cpu") or bench_header(path, "device")


def load_bench(path: str | os.PathLike | None) -> pd.DataFrame | None:
    """``results/bench/models.csv`` (``make bench``), or None when it is absent or lacks the
    columns used here (model, width, conv, strategy, train_vs_static, latency_vs_static,
    mem_vs_static). Without a ``precision`` column its rows are fp32; without a ``device``
    column the device is the ``- device:`` line of ``models.md`` beside it (else unknown)."""
    if path is None or not Path(path).exists():
        return None
    b = pd.read_csv(path)
    need = {"model", "width", "conv", "strategy", "train_vs_static", "latency_vs_static", "mem_vs_static"}
    if not need <= set(b.columns):
        return None
    if "precision" not in b.columns:
        b["precision"] = "fp32"
    if "device" not in b.columns:
        b["device"] = bench_header(path, "device")
    return b


def _device_kind(device: Any) -> str:
    return str(device or "").split(":")[0].strip().lower()


def _bench_row(bench: pd.DataFrame | None, model: Any, width: Any, conv: Any, precision: Any = "fp32",
               device: Any = None) -> pd.Series | None:
    """The bench row of (model, width, conv, precision) with the default strategy (``auto``;
    ``-`` for static), on the same kind of device as the trials (cpu / cuda) when both are known."""
    if bench is None or not isinstance(model, str) or width is None or pd.isna(width) or conv is None:
        return None
    try:
        from odconv import parse_conv_spec
        conv = str(parse_conv_spec(str(conv)))
    except (ImportError, ValueError):
        return None
    m = bench[(bench["model"] == model) & np.isclose(bench["width"].astype(float), float(width))
              & (bench["conv"].astype(str) == conv) & bench["strategy"].astype(str).isin(["auto", "-"])
              & (bench["precision"].astype(str) == str(precision or "fp32"))]
    kind = _device_kind(device)
    if kind:
        m = m[[_device_kind(d) in ("", kind) for d in m["device"].fillna("")]]
    return m.iloc[0] if len(m) else None


# --- tables ----------------------------------------------------------------------------

def summary_table(sweep: SweepDef, df: pd.DataFrame, bench: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per grid variant (grid order): accuracy over seeds, paired and Welch differences
    vs its ``static`` reference, Holm-adjusted paired p-values across the rows, cost columns.

    ``df``: :func:`records_frame`; ``bench``: :func:`load_bench` (cost ratios from one
    ``make bench`` run where it has the variant's model, width and conv)."""
    variants: dict[str, dict[str, Any]] = {}
    for p in sweep.grid_points():
        v = variants.setdefault(p.variant, {"params": {k: x for k, x in p.params.items() if k != SEED_KEY},
                                            "seeds": []})
        v["seeds"].append(p.seed)
    complete = _complete(df)
    failed = df[df["status"] != "complete"] if len(df) else df
    by_seed = _seed_values(df)

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
            d, lo, hi = welch_ci(top1, list(rseeds.values()))
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
        b = _bench_row(bench, r["model_name"], r["model_width"], r["conv"], r["model_precision"], r["measure_device"])
        b_ref = _bench_row(bench, by.loc[ref, "model_name"], by.loc[ref, "model_width"], by.loc[ref, "conv"],
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


def _blocked_groups(summary: pd.DataFrame) -> dict[str, list[str]]:
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
    for ref, members in _blocked_groups(out).items():
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


def planned_blocked_halfwidth(seeds: dict[str, list[Any]], members: list[str], variant: str, resid_sd: float,
                              extra: int = 0) -> float:
    """Half-width of the 95% interval of ``variant`` minus ``members[0]`` (the reference) that
    the blocked model gives on the planned design (``seeds``: variant -> grid seeds, over
    ``members``), with ``extra`` more seeds for the variant and the reference, at ``resid_sd``."""
    design = []
    for v in members:
        planned = list(seeds.get(v, [])) + ([f"new{i}" for i in range(extra)] if v in (variant, members[0]) else [])
        design += [{"variant": v, "seed": str(x)} for x in planned]
    planned_se = stats.blocked_standard_errors(pd.DataFrame(design), members[0]) if design else None
    if planned_se is None or variant not in planned_se[0].index or not np.isfinite(resid_sd):
        return np.nan
    se_unit, df_res = planned_se
    return stats.t_ppf(1 - ALPHA / 2, df_res) * float(se_unit[variant]) * resid_sd


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
    :func:`sweeps.stats.factorial_effects` on every complete trial of each full factorial."""
    groups, why = factorial_groups(sweep)
    if not groups:
        return EffectsResult(pd.DataFrame(columns=EFFECT_TABLE_COLUMNS), [f"n/a: {why}"], {}, [])
    by_seed = _seed_values(df)
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


# --- precision of the design ----------------------------------------------------------------

def _grid_seeds(sweep: SweepDef) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for p in sweep.grid_points():
        out.setdefault(p.variant, []).append(p.seed)
    return out


def power_summary(sweep: SweepDef, df: pd.DataFrame, summary: pd.DataFrame, effects: EffectsResult) -> dict[str, Any]:
    """Seed-to-seed spread and the smallest differences this design detects (80% power,
    two-sided 5%): a row vs ``static`` for each number of seeds a row shares with its
    reference in the grid (paired, and unpaired), and a main effect of the factorial as the
    grid plans it (every cell at its grid seeds), with the fit's residual SD; and the half-widths
    of the 95% intervals the same design gives (``halfwidth_rows``, ``halfwidth_main_effect``,
    which is ``halfwidth_per_sd`` times the residual SD: known before any SD is)."""
    by_seed = _seed_values(df)
    grid_seeds = _grid_seeds(sweep)
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
        planned = stats.effect_standard_errors(design, ATTS, block="seed")
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
    members = _blocked_groups(summary).get("static")
    if not members:
        return None
    data = pd.DataFrame([{"variant": v, "seed": str(seed), "y": y} for v in members
                         for seed, y in by_seed.get(v, {}).items() if (v, str(seed)) not in drop])
    fit = stats.blocked_contrasts(data, "static") if len(data) else None
    if fit is None:
        return None
    return {"resid_sd": float(fit["resid_sd"].iloc[0]), "df_resid": float(fit["df_resid"].iloc[0]),
            "halfwidths": {r["treatment"]: (r["ci_high"] - r["ci_low"]) / 2 for _, r in fit.iterrows()}}


MAX_PLANNED_SEEDS = 12


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
        planned = stats.effect_standard_errors(_factorial_design(cells, seeds, k), ATTS, block="seed")
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
        members = _blocked_groups(summary).get(ref, [ref, variant]) if len(summary) else [ref, variant]
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


RERUN_TABLE_COLUMNS = ["variant", "seed", "changed", "original", "rerun", "difference", "original_key", "rerun_key"]


def rerun_table(sweep: SweepDef, df: pd.DataFrame) -> pd.DataFrame:
    """One row per rerun (``reruns:`` of the sweep file): the grid point's value and the
    rerun's (%, NaN until both are done) and their difference (rerun - original, pp).
    ``df``: :func:`records_frame` with every point's record, reruns included."""
    value: dict[str, float] = {}
    for _, r in _complete(df).iterrows():
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


def _rerun_lines(reruns: pd.DataFrame, pw: dict[str, Any] | None) -> list[str]:
    if not len(reruns):
        return []
    sd, df = rerun_spread(reruns)
    lines = ["## Run-to-run spread", "",
             f"Grid points run again with the same seed and `{reruns['changed'].iloc[0]}`, which should not change "
             f"the result: how far apart two runs of one configuration land.", ""]
    seed_sd = pw.get("pooled_sd") if pw else np.nan
    if df:
        lines += [f"- run-to-run standard deviation of top-1: {_f(sd)} pp ({df} pair(s), RMS difference / √2), "
                  f"against a seed-to-seed standard deviation of {_f(seed_sd)} pp", ""]
    else:
        lines += ["- run-to-run standard deviation: n/a (no rerun and its grid point both done yet)", ""]
    shown = reruns.assign(original=reruns["original"].map(_f), rerun=reruns["rerun"].map(_f),
                          difference=reruns["difference"].map(lambda x: _f(x, "{:+.2f}")))
    lines += [_md(shown[["variant", "seed", "original", "rerun", "difference"]].rename(
        columns={"original": "top-1 (grid)", "rerun": "top-1 (rerun)", "difference": "rerun − grid (pp)"})), ""]
    return lines


# --- markdown --------------------------------------------------------------------------

def _f(x: Any, fmt: str = "{:.2f}", nan: str = "n/a") -> str:
    if x is None or (isinstance(x, (float, np.floating)) and math.isnan(x)):
        return nan
    return fmt.format(x)


def _md(frame: pd.DataFrame) -> str:
    """A GitHub markdown table of ``frame`` (strings as given; pandas + tabulate)."""
    return frame.to_markdown(index=False, disable_numparse=True)


def _ci(m: Any, lo: Any, hi: Any) -> str:
    if m is None or pd.isna(m):
        return "n/a"
    return f"{_f(m, '{:+.2f}')} [{_f(lo, '{:+.2f}')}, {_f(hi, '{:+.2f}')}]"


def _p(p: Any) -> str:
    if p is None or pd.isna(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _blocked_without_text(pw: dict[str, Any]) -> str:
    b = pw.get("blocked_without_outliers")
    if not b:
        return ""
    rows = [v for v in pw.get("goal_rows", []) if v in b["halfwidths"]]
    shown = "".join(f"; `{v}` vs `static` ± {_f(b['halfwidths'][v])} pp" for v in rows)
    return (f"; the blocked model's residual SD is {_f(b['resid_sd'])} pp on {_f(b['df_resid'], '{:g}')} df"
            + (f" (its intervals{shown.replace('; ', ': ', 1)})" if shown else ""))


def _precision_lines(pw: dict[str, Any], effects: EffectsResult) -> list[str]:
    ns = pw["n_seeds"]
    lines = ["## Precision of this design", ""]
    lines.append(f"- seeds per variant in the grid: {', '.join(str(n) for n in ns) or 'none'}")
    lines.append(f"- pooled seed-to-seed standard deviation of top-1: {_f(pw['pooled_sd'])} pp "
                 f"({pw['pooled_sd_df']} df" + (", no variant has 2 results" if not pw["pooled_sd_df"] else "") + ")")
    if not pd.isna(pw["paired_diff_sd"]):
        lines.append(f"- pooled standard deviation of the paired differences (row − `static`, same seed): "
                     f"{_f(pw['paired_diff_sd'])} pp ({pw['paired_diff_sd_df']} df)")
    for n, (paired, unpaired) in pw["mdd_rows"].items():
        hw_paired, hw_unpaired, hw_per_sd = pw.get("halfwidth_rows", {}).get(n, (np.nan,) * 3)
        lines.append(f"- a row vs `static` with {n} seed(s) on both: 95% interval ± {_f(hw_paired)} pp paired "
                     f"({_f(hw_per_sd)} × the SD of paired differences; ± {_f(hw_unpaired)} unpaired); smallest "
                     f"difference detected (80% power, two-sided 5%): paired {_f(paired)} pp, unpaired "
                     f"{_f(unpaired)} pp")
    if effects.groups:
        lines.append(f"- a main effect of the factorial ({pw['effect_n_obs']} planned results, "
                     f"{_f(pw['effect_df'], '{:g}')} residual df, residual SD {_f(pw['effect_sd'])} pp): 95% interval "
                     f"± {_f(pw.get('halfwidth_main_effect'))} pp ({_f(pw.get('halfwidth_per_sd'))} × the residual "
                     f"SD); smallest main effect the factorial detects (80% power, two-sided 5%): "
                     f"{_f(pw['mdd_main_effect'])} pp")
    else:
        lines.append(f"- smallest main effect: n/a ({effects.notes[0][5:] if effects.notes else 'no factorial'})")
    if ns and max(ns) < 2:
        lines.append("- one seed per variant: no interval, p-value or detectable difference for a row; read "
                     "differences as single runs")
    lines.append("")
    if pw.get("goals"):
        lines += ["Precision goals of the sweep file (half-widths of 95% intervals, pp): *measured* is the "
                  "interval the results gave (the widest of the four main effects'), *planned* what the design "
                  "gives at the pooled SDs above (n/a until a variant has 2 results), *seeds to meet it* the "
                  "fewest seeds that would give the aim at those SDs (themselves estimates: read it as a "
                  "guide).", ""]
        table = pd.DataFrame([{"goal": g["goal"], "aim": f"± {_f(g['aim'])}", "measured": f"± {_f(g['measured'])}",
                               "planned": f"± {_f(g['planned'])}", "verdict": g["verdict"],
                               "seeds to meet it": g["seeds_needed"]} for g in pw["goals"]])
        lines += [_md(table), ""]
    if len(effects.outliers) and effects.groups:
        label = effects.groups[0].label
        wo = effects.without_outliers[effects.without_outliers["group"] == label].set_index("term")
        n_out = int((effects.outliers["group"] == label).sum())
        if n_out and len(wo):
            widest = float(((wo["ci_high"] - wo["ci_low"]) / 2).loc[[a for a in ATTS if a in wo.index]].max())
            one = n_out == 1
            lines += [f"{n_out} outlying result{'' if one else 's'} (listed under *Factorial effects*) "
                      f"{'is' if one else 'are'} part of the factorial's residual SD: "
                      f"without {'it' if one else 'them'}, "
                      f"the residual SD is {_f(wo['resid_sd'].iloc[0])} pp and the widest main-effect interval "
                      f"± {_f(widest)} pp" + _blocked_without_text(pw) + ".", ""]
    return lines


def summary_markdown(sweep: SweepDef, summary: pd.DataFrame, att: pd.DataFrame, df: pd.DataFrame, metric: str,
                     effects: EffectsResult | None = None, power: dict[str, Any] | None = None,
                     reruns: pd.DataFrame | None = None) -> str:
    """``summary.md``: precision, the run-to-run spread (with ``reruns``), the per-variant
    table, attention pairs, factorial effects, failed trials, plots. ``df``: the grid points'
    records."""
    effects = effects or EffectsResult(pd.DataFrame(columns=EFFECT_TABLE_COLUMNS), [], {}, [])
    n_points = len(sweep.grid_points())
    n_done = int((df["status"] == "complete").sum()) if len(df) else 0
    synthetic = bool(len(df) and "synthetic" in df.columns and df["synthetic"].fillna(False).astype(bool).any())
    parts = [f"# Sweep `{sweep.name}`", ""]
    if sweep.description:
        parts += [sweep.description, ""]
    parts += [f"Base config `{sweep.base_config}`; metric: **{metric}** (%, mean ± std over seeds). "
              f"{n_done}/{n_points} grid points done"
              + (" — **partial sweep**: see `missing`." if n_done < n_points else "."),
              ""]
    if synthetic:
        parts += ["> **Synthetic data**: these numbers test the machinery; they are not benchmark results.", ""]
    if power is not None:
        parts += _precision_lines(power, effects)
    if reruns is not None:
        parts += _rerun_lines(reruns, power)
    rows = []
    for _, r in summary.iterrows():
        is_ref = r["variant"] == r.get("reference")
        no_ref = not r.get("reference")
        miss = ", ".join(x for x in (f"missing {r['missing_seeds']}" if r["missing_seeds"] else "",
                                     f"failed {r['failed_seeds']}" if r["failed_seeds"] else "") if x)
        bench = r.get("cost_source") == "bench"
        tr = r.get("bench_train_time_ratio") if bench else r.get("train_time_ratio")
        lat = r.get("bench_latency_b1_ratio") if bench else r.get("latency_b1_ratio")
        mem = r.get("bench_memory_ratio") if bench else r.get("memory_ratio")
        rows.append({
            "variant": f"`{r['variant']}`",
            "top-1 %": f"{_f(r['top1_mean'])} ± {_f(r['top1_std'])}",
            "seeds": f"{r['n_seeds']}/{r['n_grid_seeds']}" + (f" ({miss})" if miss else ""),
            "paired Δ vs static [95% CI]": "reference" if is_ref else "n/a (no `static` with these axes)" if no_ref
            else _ci(r["paired_delta"], r["paired_ci_low"], r["paired_ci_high"]) + f" (n={r['paired_n']})",
            "Holm p": "" if is_ref or no_ref else _p(r["paired_p_holm"]),
            "blocked Δ [95% CI]": "" if is_ref or no_ref else _ci(r.get("blocked_delta"), r.get("blocked_ci_low"),
                                                                 r.get("blocked_ci_high")),
            "blocked Holm p": "" if is_ref or no_ref else _p(r.get("blocked_p_holm")),
            "Welch Δ [95% CI]": "" if is_ref or no_ref else _ci(r["delta_vs_static"], r["delta_ci_low"],
                                                               r["delta_ci_high"]),
            "params (M)": _f(r["params_count"] / 1e6 if not pd.isna(r["params_count"]) else np.nan, "{:.3f}"),
            "MACs (M)": _f(r["macs"] / 1e6 if not pd.isna(r["macs"]) else np.nan, "{:.1f}"),
            "train ms/img": _f(r.get("bench_train_ms_per_image") if bench else r.get("train_ms_per_image"),
                               "{:.3f}"),
            "train time vs static": _f(tr, "{:.2f}x"), "latency b1 vs static": _f(lat, "{:.2f}x"),
            "peak mem vs static": _f(mem, "{:.2f}x"), "cost from": r.get("cost_source") or ""})
    if rows:
        parts += [_md(pd.DataFrame(rows)), ""]
    hosts = sorted({h for hs in summary.get("hosts", pd.Series(dtype=str)).fillna("") for h in str(hs).split(",") if h})
    n_sig = int((summary["paired_p_holm"] < ALPHA).sum()) if len(summary) else 0
    n_sig_b = int((summary["blocked_p_holm"] < ALPHA).sum()) if len(summary) and "blocked_p_holm" in summary else 0
    b_sd = summary["blocked_resid_sd"].dropna() if len(summary) and "blocked_resid_sd" in summary else pd.Series()
    b_df = summary["blocked_df_resid"].dropna() if len(summary) and "blocked_df_resid" in summary else pd.Series()
    pooled = (f" (here {_f(b_sd.iloc[0])} pp on {_f(b_df.iloc[0], '{:g}')} df)" if len(b_sd) and len(b_df) else "")
    parts += ["**Reading.** Paired Δ: mean over the seeds both have of (row − `static` with the same other axes), "
              "in percentage points, with its paired-t 95% interval (n = pairs); a seed fixes data order and "
              "augmentation for every variant. Holm p: the paired t-test's p-value, Holm-adjusted across the rows. "
              "Blocked Δ: the same difference in one linear model of every variant that shares the reference, "
              "with the seed as a block (variant + seed, statsmodels OLS); its interval uses the residual SD "
              f"pooled over all those variants{pooled}, so it is narrower than the paired one when each row has "
              "few seeds, and it assumes that SD is common to the variants (the paired interval does not); "
              "blocked Holm p likewise. Welch Δ: difference of means with Welch's unpaired interval, for "
              "comparison. n/a: fewer than 2 pairs (or seeds on a side; or a residual df for the blocked model). "
              f"{n_sig} row(s) differ from `static` at Holm-adjusted 5% (paired), {n_sig_b} in the blocked model; "
              "the order of the other rows is not supported by these data.", ""]
    parts += ["**Cost.** Each row's cost columns come from one source (`cost from`). bench: one benchmark run "
              "on one machine, the sweep's own `results/<sweep>/bench/models.csv` (`make sweep-bench`) or else "
              "`results/bench/models.csv` (`make bench`): train ms/img = its training step (forward + backward + "
              "step) / batch, and the ratios vs `static` (> 1x is slower / larger) of its training step, batch-1 "
              "latency and training peak memory. trials: train ms/img = median over seeds of 1000 / the trial's "
              "measured training throughput on the host it ran on"
              + (f" ({', '.join(hosts)})" if hosts else "") + ", and the ratios of the trials' medians"
              + (" — trials ran on several hosts, compare with care" if len(hosts) > 1 else "") + ".", ""]
    if len(att):
        parts += ["## Effect of each attention", ""]
        arows = [{"attention": r["attention"], "pairs": f"{r['n_pairs_with_results']}/{r['n_pairs']}",
                  "top-1 effect (pp) [95% CI over pairs]": _ci(r["effect_mean"], r["effect_ci_low"],
                                                                r["effect_ci_high"]),
                  "range": f"{_f(r['effect_min'], '{:+.2f}')} … {_f(r['effect_max'], '{:+.2f}')}",
                  "Δ params (M)": _f(r["params_delta_mean"] / 1e6 if not pd.isna(r["params_delta_mean"]) else np.nan,
                                     "{:+.3f}"),
                  "MACs ratio": _f(r["macs_ratio_mean"], "{:.3f}x"),
                  "train img/s ratio": _f(r["throughput_ratio_mean"], "{:.2f}x"), "pairs (off -> on)": r["pairs"]}
                 for _, r in att.iterrows()]
        parts += [_md(pd.DataFrame(arows)), ""]
        parts += ["Each pair is two variants that differ only in that attention (same other axes); `static` counts as "
                  "ODConv with no attention, and switching `kernel` on goes from 1 to n kernels. The interval is a "
                  "one-sample t over the pairs' differences of means (n/a with one pair); the factorial effects "
                  "below (when the grid has the full factorial) use every trial and the seed pairing.", ""]
    parts += ["## Factorial effects of the attentions", ""] + _effects_body(effects)
    if len(df):
        bad = df[df["status"] != "complete"]
        if len(bad):
            parts += ["## Failed / pruned trials", ""]
            parts += [_md(pd.DataFrame([{"variant": f"`{r['variant']}`", "seed": str(r["seed"]), "status": r["status"],
                                         "reason": str(r["reason"] or "").replace("|", "/")}
                                        for _, r in bad.iterrows()])), ""]
    parts += ["## Plots", "", "![accuracy](accuracy_bars.png)", "",
              "![accuracy vs train time per image](accuracy_vs_train_time.png)", "",
              "![accuracy vs params](accuracy_vs_params.png)", "", "![accuracy vs MACs](accuracy_vs_macs.png)", ""]
    if len(effects.table):
        parts += ["![factorial effects](effects.png)", ""]
    return "\n".join(parts)


EFFECTS_DEFINITION = (
    "Linear model (statsmodels OLS) of top-1 (%) on the four attentions, each coded −1 (off) / +1 (on), "
    "and their six two-way interactions, with the seed as a block (a categorical term: a seed's data order "
    "and augmentation shift every variant alike). `static` is the cell with all four off; `kernel` on is n "
    "kernels with kernel attention, off is 1 kernel. **Main effect** = 2 × coefficient = the average change "
    "in top-1 (percentage points) from switching that attention on, averaged over the other attentions' "
    "settings. **Interaction `a:b`** = 2 × coefficient = half the difference between a's effect with b on "
    "and a's effect with b off. Three- and four-way interactions are left in the residual. 95% CI: t "
    "interval on the residual degrees of freedom; p: two-sided t-test of effect = 0 (not adjusted).")


def _effects_body(effects: EffectsResult) -> list[str]:
    lines = [EFFECTS_DEFINITION, ""]
    if not len(effects.table):
        return lines + [f"{effects.notes[0] if effects.notes else 'n/a'}", ""]
    for g in effects.groups:
        note = next((x for x in effects.notes if x.startswith((g.label or "all") + ":")), "")
        t = effects.table[effects.table["group"] == g.label]
        lines += [f"### {g.label or 'all'}", "", note, ""]
        if len(t):
            lines += [_effects_md(t), ""]
        lines += _outlier_lines(effects, g.label)
    return lines


def _effects_md(t: pd.DataFrame) -> str:
    return _md(pd.DataFrame([{"term": r["term"], "effect (pp) [95% CI]": _ci(r["estimate"], r["ci_low"], r["ci_high"]),
                              "SE": _f(r["se"]), "p": _p(r["p_value"])} for _, r in t.iterrows()]))


def _outlier_lines(effects: EffectsResult, label: str) -> list[str]:
    """The group's outlying results and the effects refitted without them (nothing if none)."""
    out = effects.outliers[effects.outliers["group"] == label]
    if not len(out):
        return []
    fit = effects.fits[label]
    lines = [f"**Outlying results.** {len(out)} of the {fit.n_obs} results {'lies' if len(out) == 1 else 'lie'} "
             "farther from what the model "
             "predicts for their cell and seed than chance explains (externally studentized residual, "
             f"Bonferroni-adjusted p < {OUTLIER_ALPHA:g} over the {fit.n_obs}; statsmodels `outlier_test`):", "",
             _md(pd.DataFrame([{"variant": f"`{r['variant']}`", "seed": str(r["seed"]), "top-1 %": _f(r["top1"]),
                                "residual (pp)": _f(r["residual"], "{:+.2f}"),
                                "studentized residual": _f(r["student_resid"], "{:+.1f}"),
                                "Bonferroni p": _p(r["p_bonferroni"])} for _, r in out.iterrows()])), "",
             "They stay in the estimates above (a run that trains badly is part of what its variant does); "
             "refitted without them, as a check of how much the reading rests on them:", ""]
    t = effects.without_outliers[effects.without_outliers["group"] == label]
    if not len(t):
        return lines + ["n/a: without them the model cannot be estimated.", ""]
    r0 = t.iloc[0]
    return lines + [f"without the outlying results: {int(r0['n_obs'])} results, residual SD {_f(r0['resid_sd'])} pp "
                    f"on {_f(r0['df_resid'], '{:g}')} df", "", _effects_md(t), ""]


def _effects_plot_table(effects: EffectsResult) -> pd.DataFrame:
    """The effects to plot: each group's, and beside them its refit without outlying results."""
    if not len(effects.without_outliers):
        return effects.table
    n_out = effects.outliers.groupby("group").size()

    def name(g: str, what: str) -> str:
        return f"{g}: {what}" if g else what
    return pd.concat([effects.table.assign(group=[name(g, f"all {int(n)} results") for g, n in
                                                  zip(effects.table["group"], effects.table["n_obs"])]),
                      effects.without_outliers.assign(group=[
                          name(g, f"without the {n_out[g]} outlying result{'s' if n_out[g] > 1 else ''}")
                          for g in effects.without_outliers["group"]])], ignore_index=True)


def effects_markdown(sweep: SweepDef, effects: EffectsResult, power: dict[str, Any]) -> str:
    """``effects.md``: definition, precision and one table per factorial group (or why n/a)."""
    parts = [f"# Sweep `{sweep.name}`: factorial effects of the ODConv attentions", ""]
    parts += _effects_body(effects)
    if effects.groups:
        parts += [f"Smallest effect this design detects (80% power, two-sided 5%): "
                  f"{_f(power.get('mdd_main_effect'))} pp.", ""]
    if len(effects.table):
        parts += ["![factorial effects](effects.png)", ""]
    return "\n".join(parts)


def aggregate(sweep_name: str, results_root: str | os.PathLike = "results", sweep: SweepDef | None = None,
              study=None, bench_csv: str | os.PathLike | None = None) -> dict[str, Any]:
    """Write the tables and plots; ``study``: also use records stored in the Optuna study;
    ``bench_csv``: the benchmark table for cost ratios (default: the sweep's own,
    ``<results_root>/<sweep>/bench/models.csv`` from ``odconv-sweep bench``, else
    ``<results_root>/bench/models.csv`` from ``make bench``)."""
    from .plots import curves_plot, effects_plot, make_plots

    sweep = sweep or load_sweep_for_results(sweep_name, results_root)
    out_dir = Path(results_root) / sweep.name
    out_dir.mkdir(parents=True, exist_ok=True)
    df = records_frame(sweep.name, results_root, records_from_study(study) if study is not None else None)
    keys = {p.key for p in sweep.points()}
    if len(df):
        df = df[df["grid_key"].isin(keys)].copy()
    else:
        df = pd.DataFrame(columns=["variant", "status", "seed", "value", "grid_key", "host", "reason"])
    reruns = rerun_table(sweep, df)
    df = df[df["grid_key"].isin({p.key for p in sweep.grid_points()})].copy()  # the tables: grid points only
    metric = (df[df["status"] == "complete"]["metric"].dropna().iloc[0]
              if len(df) and (df["status"] == "complete").any() else (sweep.metric or "top-1"))
    if bench_csv is None:  # the sweep's own `odconv-sweep bench` table, else the general `make bench` one
        own = bench_path(sweep.name, results_root)
        bench_csv = own if own.exists() else Path(results_root) / "bench" / "models.csv"
    bench = load_bench(bench_csv)
    summary = summary_table(sweep, df, bench)
    time_col = train_time_column(summary)
    if len(summary):
        summary["pareto_train_time"] = stats.pareto_front(summary[time_col], summary["top1_mean"])
        summary["pareto_params"] = stats.pareto_front(summary["params_count"], summary["top1_mean"])
    att = attention_table(sweep, summary)
    effects = effects_table(sweep, df)
    power = power_summary(sweep, df, summary, effects)
    summary.to_csv(out_dir / "summary.csv", index=False)
    att.to_csv(out_dir / "attention.csv", index=False)
    effects.table.to_csv(out_dir / "effects.csv", index=False)
    for name, table in (("outliers.csv", effects.outliers), ("effects_without_outliers.csv", effects.without_outliers)):
        if len(table):
            table.to_csv(out_dir / name, index=False)
        elif (out_dir / name).exists():
            (out_dir / name).unlink()  # from earlier results: no longer describes these
    md = summary_markdown(sweep, summary, att, df, metric, effects, power, reruns if sweep.reruns else None)
    reruns_csv = out_dir / "reruns.csv"
    if sweep.reruns:
        reruns.to_csv(reruns_csv, index=False)
    elif reruns_csv.exists():
        reruns_csv.unlink()  # from an earlier definition with reruns
    (out_dir / "summary.md").write_text(md)
    if len(att):
        amd = md.split("## Effect of each attention", 1)[1].split("## ", 1)[0]
        (out_dir / "attention.md").write_text(f"# Sweep `{sweep.name}`: effect of each attention\n" + amd)
    (out_dir / "effects.md").write_text(effects_markdown(sweep, effects, power))
    hosts = sorted({h for hs in summary.get("hosts", pd.Series(dtype=str)).fillna("") for h in str(hs).split(",") if h})
    if time_col == "bench_train_ms_per_image":
        cpu = bench_machine(bench_csv)
        where = f"{Path(bench_csv).parent.name}/{Path(bench_csv).name}"
        time_note = f"one benchmark run ({where})" + (f" on {cpu}" if cpu else "")
    elif len(hosts) > 2:
        time_note = f"measured in the trials on {len(hosts)} hosts (see summary.md)"
    else:
        time_note = f"measured in the trials on {', '.join(hosts)}" if hosts else ""
    plots = make_plots(summary, out_dir, sweep.name, metric, time_note=time_note,
                       time_col=time_col) if len(summary) else []
    curves = curves_table(df, dict(zip(summary["variant"], summary["reference"])) if len(summary) else {})
    curves.to_csv(out_dir / "val_curves.csv", index=False)
    if len(curves):
        plots.append(curves_plot(curves, out_dir / "val_curves.png", sweep.name))
    stale = out_dir / "effects.png"
    if len(effects.table):
        plots.append(effects_plot(_effects_plot_table(effects), stale, sweep.name))
    elif stale.exists():
        stale.unlink()  # from an earlier run that had a factorial: no longer describes these results
    return {"summary_csv": out_dir / "summary.csv", "summary_md": out_dir / "summary.md",
            "attention_csv": out_dir / "attention.csv", "effects_csv": out_dir / "effects.csv",
            "effects_md": out_dir / "effects.md", "val_curves_csv": out_dir / "val_curves.csv", "plots": plots,
            "summary": summary, "attention": att, "effects": effects.table, "power": power, "records": df,
            "reruns": reruns, "val_curves": curves}


__all__ = ["aggregate", "load_sweep_for_results", "records_frame", "summary_table", "attention_table",
           "effects_table", "factorial_groups", "power_summary", "seeds_for_main_effect", "seeds_for_row",
           "train_time_column", "bench_machine", "rerun_table", "rerun_spread", "load_bench", "t_ppf",
           "welch_ci", "grid_key"]
