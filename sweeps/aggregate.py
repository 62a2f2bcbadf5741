"""Aggregate a sweep's trial records into tables and plots (``odconv-sweep results <sweep>``).

Writes under ``results/<sweep>/``:

- ``summary.csv`` / ``summary.md``: one row per variant: top-1 mean ± std over seeds (in %),
  n seeds done of n in the grid (missing and failed seeds named), delta vs ``static`` (the
  variant with the same other axes and ``conv=static``) with a 95% Welch t confidence
  interval, params, MACs, and train-throughput / latency / peak-memory ratios vs ``static``.
- ``attention.csv`` / ``attention.md``: the effect of switching each ODConv attention on
  (channel, filter, spatial, kernel), averaged over every pair of grid variants that differ
  only in that attention (``static`` counts as ODConv with no attention; switching ``kernel``
  on goes from 1 kernel to n kernels).
- ``accuracy_bars.png``, ``accuracy_vs_params.png``, ``accuracy_vs_macs.png``.

Partial sweeps aggregate too: seeds not (yet) done are listed in the ``missing`` column.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .definition import CONV_KEY, SEED_KEY, SweepDef, find_sweep_file, grid_key, load_sweep, variant_label
from .record import TrialRecord, read_records

ATTS = ("channel", "filter", "spatial", "kernel")


# --- Student t quantiles without scipy -----------------------------------------------------

def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (Numerical Recipes, Lentz)."""
    tiny, eps = 1e-300, 3e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        de = d * c
        h *= de
        if abs(de - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(lbeta) * _betacf(a, b, x) / a
    return 1.0 - math.exp(lbeta) * _betacf(b, a, 1 - x) / b


def t_cdf(t: float, df: float) -> float:
    x = df / (df + t * t)
    p = 0.5 * _betainc(df / 2, 0.5, x)
    return 1 - p if t > 0 else p


def t_ppf(q: float, df: float) -> float:
    """Quantile of Student's t (scipy's ``t.ppf`` when scipy is installed, else bisection)."""
    try:
        from scipy.stats import t as _t  # type: ignore
        return float(_t.ppf(q, df))
    except ImportError:
        pass
    if not 0 < q < 1 or not df > 0:
        return float("nan")
    if q < 0.5:
        return -t_ppf(1 - q, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < q:
        hi *= 2
        if hi > 1e12:
            return float("inf")
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2


def welch_ci(a: list[float], b: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean(a) - mean(b), CI low, CI high) with Welch's t; NaN bounds when a side has < 2 values."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) == 0 or len(b) == 0:
        return float("nan"), float("nan"), float("nan")
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return diff, float("nan"), float("nan")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, diff, diff
    df = (va + vb) ** 2 / ((va ** 2) / (len(a) - 1) + (vb ** 2) / (len(b) - 1))
    h = t_ppf(0.5 + level / 2, df) * se
    return diff, diff - h, diff + h


def mean_ci(x: list[float], level: float = 0.95) -> tuple[float, float, float]:
    x = np.asarray(x, float)
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(x.mean())
    if len(x) < 2:
        return m, float("nan"), float("nan")
    h = t_ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return m, m - h, m + h


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
    by_key = {r.grid_key: r for r in read_records(Path(results_root) / sweep_name / "trials")}
    # a point's record from the study when its file is not here (or only a failed one is)
    for r in extra or []:
        cur = by_key.get(r.grid_key)
        if cur is None or (cur.status != "complete" and r.status == "complete"):
            by_key[r.grid_key] = r
    recs = list(by_key.values())
    rows = []
    for r in recs:
        d = r.to_dict()
        d.pop("config", None)
        d.pop("val_history", None)
        d.pop("cli_args", None)
        d.pop("data", None)
        d["key_params"] = json.dumps(r.params, sort_keys=True)
        rows.append(d)
    return pd.DataFrame(rows)


def _conv_of(params: dict[str, Any]) -> str | None:
    return params.get(CONV_KEY)


def _other_axes(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k not in (SEED_KEY, CONV_KEY)}


# --- tables ----------------------------------------------------------------------------

def summary_table(sweep: SweepDef, df: pd.DataFrame) -> pd.DataFrame:
    points = sweep.points()
    variants: dict[str, dict[str, Any]] = {}
    for p in points:
        v = variants.setdefault(p.variant, {"params": {k: x for k, x in p.params.items() if k != SEED_KEY}, "seeds": []})
        v["seeds"].append(p.seed)
    complete = df[df["status"] == "complete"] if len(df) else df
    failed = df[df["status"] != "complete"] if len(df) else df

    def vals(label: str, col: str) -> list[float]:
        if not len(complete):
            return []
        s = complete[complete["variant"] == label][col]
        return [float(x) for x in s if x is not None and not (isinstance(x, float) and math.isnan(x))]

    def ref_label(vparams: dict[str, Any]) -> str | None:
        if CONV_KEY not in vparams:
            return None
        ref = dict(vparams)
        ref[CONV_KEY] = "static"
        lab = variant_label(ref)
        return lab if lab in variants else None

    rows = []
    for label, v in variants.items():
        top1 = [100 * x for x in vals(label, "value")]
        done_seeds = set(complete[complete["variant"] == label]["seed"]) if len(complete) else set()
        failed_seeds = set(failed[failed["variant"] == label]["seed"]) - done_seeds if len(failed) else set()
        missing = [s for s in v["seeds"] if s not in done_seeds]
        ref = ref_label(v["params"])
        row: dict[str, Any] = {
            "variant": label, "conv": v["params"].get(CONV_KEY),
            "top1_mean": np.mean(top1) if top1 else np.nan,
            "top1_std": np.std(top1, ddof=1) if len(top1) > 1 else np.nan,
            "n_seeds": len(top1), "n_grid_seeds": len(v["seeds"]),
            "missing_seeds": ",".join(str(s) for s in missing if s not in failed_seeds),
            "failed_seeds": ",".join(str(s) for s in sorted(failed_seeds, key=str)),
            "reference": ref,
        }
        for col, name in (("best_val_top1", "best_val_top1_mean"), ("final_val_top1", "val_top1_mean"),
                          ("test_top5", "top5_test_mean"), ("final_val_top5", "val_top5_mean")):
            xs = vals(label, col)
            row[name] = 100 * np.mean(xs) if xs else np.nan
        for col in ("params_count", "macs", "train_throughput", "latency_b1_ms", "latency_b64_ms", "peak_memory_mb",
                    "wall_time_s"):
            xs = vals(label, col)
            row[col] = float(np.median(xs)) if xs else np.nan
        if ref is not None:
            rtop1 = [100 * x for x in vals(ref, "value")]
            d, lo, hi = welch_ci(top1, rtop1)
            row.update(delta_vs_static=d, delta_ci_low=lo, delta_ci_high=hi)
        rows.append(row)
    out = pd.DataFrame(rows)
    if not len(out):
        return out
    by = out.set_index("variant")
    for col, ratio in (("params_count", "params_ratio"), ("macs", "macs_ratio"), ("train_throughput", "throughput_ratio"),
                       ("latency_b1_ms", "latency_b1_ratio"), ("latency_b64_ms", "latency_b64_ratio"),
                       ("peak_memory_mb", "memory_ratio")):
        out[ratio] = [
            (r[col] / by.loc[r["reference"], col]) if r.get("reference") and r["reference"] in by.index
            and by.loc[r["reference"], col] and not pd.isna(by.loc[r["reference"], col]) else np.nan
            for _, r in out.iterrows()]
    return out


def _spec_atts(conv: str | None) -> tuple[int, frozenset[str]] | None:
    """(kernel count, attentions) of an ODConv-family spec; static = (1, {}); else None."""
    if conv is None:
        return None
    try:
        from odconv import parse_conv_spec
        s = parse_conv_spec(conv)
    except Exception:  # noqa: BLE001
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
    """Effect of switching each attention on, averaged over the grid pairs differing only in it."""
    if not len(summary):
        return pd.DataFrame()
    info = []
    for p_label, p in {pt.variant: pt for pt in sweep.points()}.items():
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
        m, lo, hi = mean_ci(effects)
        dparams = [rb["params_count"] - ra["params_count"] for _, _, ra, rb in pairs]
        pmacs = [rb["macs"] / ra["macs"] for _, _, ra, rb in pairs if ra["macs"] and not pd.isna(ra["macs"])]
        tput = [rb["train_throughput"] / ra["train_throughput"] for _, _, ra, rb in pairs
                if ra["train_throughput"] and not pd.isna(ra["train_throughput"])]
        rows.append({"attention": att, "n_pairs": len(pairs), "n_pairs_with_results": len(effects),
                     "effect_mean": m, "effect_ci_low": lo, "effect_ci_high": hi,
                     "effect_min": min(effects) if effects else np.nan, "effect_max": max(effects) if effects else np.nan,
                     "params_delta_mean": _nanmean(dparams), "macs_ratio_mean": _nanmean(pmacs),
                     "throughput_ratio_mean": _nanmean(tput),
                     "pairs": "; ".join(f"{a} -> {b}" for a, b, _, _ in pairs)})
    return pd.DataFrame(rows)


# --- markdown --------------------------------------------------------------------------

def _f(x: Any, fmt: str = "{:.2f}", nan: str = "–") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return nan
    return fmt.format(x)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def summary_markdown(sweep: SweepDef, summary: pd.DataFrame, att: pd.DataFrame, df: pd.DataFrame, metric: str) -> str:
    n_points = len(sweep.points())
    n_done = int((df["status"] == "complete").sum()) if len(df) else 0
    synthetic = bool(len(df) and df.get("synthetic", pd.Series([False])).fillna(False).astype(bool).any())
    parts = [f"# Sweep `{sweep.name}`", ""]
    if sweep.description:
        parts += [sweep.description, ""]
    parts += [f"Base config `{sweep.base_config}`; metric: **{metric}** (%, mean ± std over seeds). "
              f"{n_done}/{n_points} grid points done" + (" — **partial sweep**: see `missing`." if n_done < n_points else "."),
              ""]
    if synthetic:
        parts += ["> **Synthetic data**: these numbers test the machinery; they are not benchmark results.", ""]
    rows = []
    for _, r in summary.iterrows():
        ci = (f"{_f(r.get('delta_vs_static'), '{:+.2f}')} [{_f(r.get('delta_ci_low'), '{:+.2f}')}, "
              f"{_f(r.get('delta_ci_high'), '{:+.2f}')}]") if r.get("reference") and r["variant"] != r.get("reference") else "–"
        miss = ", ".join(x for x in (f"missing {r['missing_seeds']}" if r["missing_seeds"] else "",
                                     f"failed {r['failed_seeds']}" if r["failed_seeds"] else "") if x)
        rows.append([f"`{r['variant']}`",
                     f"{_f(r['top1_mean'])} ± {_f(r['top1_std'])}",
                     f"{r['n_seeds']}/{r['n_grid_seeds']}" + (f" ({miss})" if miss else ""),
                     ci,
                     _f(r["params_count"] / 1e6 if not pd.isna(r["params_count"]) else np.nan, "{:.3f}"),
                     _f(r["macs"] / 1e6 if not pd.isna(r["macs"]) else np.nan, "{:.1f}"),
                     _f(r.get("throughput_ratio"), "{:.2f}x"), _f(r.get("latency_b1_ratio"), "{:.2f}x"),
                     _f(r.get("latency_b64_ratio"), "{:.2f}x"), _f(r.get("memory_ratio"), "{:.2f}x")])
    parts += [_md_table(["variant", "top-1 %", "seeds", "Δ vs static [95% CI]", "params (M)", "MACs (M)",
                         "train img/s vs static", "latency b1 vs static", "latency b64 vs static", "peak mem vs static"],
                        rows), ""]
    parts += ["Δ: difference of means vs the `static` variant with the same other axes; 95% CI from Welch's t "
              "(– with fewer than 2 seeds on a side). Ratios: medians over seeds, measured in each trial's process "
              "(compare within one machine only); throughput > 1x is faster, latency > 1x is slower.", ""]
    if len(att):
        parts += ["## Effect of each attention", ""]
        arows = [[r["attention"], f"{r['n_pairs_with_results']}/{r['n_pairs']}",
                  f"{_f(r['effect_mean'], '{:+.2f}')} [{_f(r['effect_ci_low'], '{:+.2f}')}, {_f(r['effect_ci_high'], '{:+.2f}')}]",
                  f"{_f(r['effect_min'], '{:+.2f}')} … {_f(r['effect_max'], '{:+.2f}')}",
                  _f(r["params_delta_mean"] / 1e6 if not pd.isna(r["params_delta_mean"]) else np.nan, "{:+.3f}"),
                  _f(r["macs_ratio_mean"], "{:.3f}x"), _f(r["throughput_ratio_mean"], "{:.2f}x"), r["pairs"]]
                 for _, r in att.iterrows()]
        parts += [_md_table(["attention", "pairs", "top-1 effect (pp) [95% CI over pairs]", "range", "Δ params (M)",
                             "MACs ratio", "train img/s ratio", "pairs (off -> on)"], arows), ""]
        parts += ["Each pair is two variants that differ only in that attention (same other axes); `static` counts as "
                  "ODConv with no attention, and switching `kernel` on goes from 1 to n kernels.", ""]
    if len(df):
        bad = df[df["status"] != "complete"]
        if len(bad):
            parts += ["## Failed / pruned trials", ""]
            parts += [_md_table(["variant", "seed", "status", "reason"],
                                [[f"`{r['variant']}`", str(r["seed"]), r["status"], str(r["reason"] or "").replace("|", "/")]
                                 for _, r in bad.iterrows()]), ""]
    parts += ["## Plots", "", "![accuracy](accuracy_bars.png)", "", "![accuracy vs params](accuracy_vs_params.png)", "",
              "![accuracy vs MACs](accuracy_vs_macs.png)", ""]
    return "\n".join(parts)


# --- plots -----------------------------------------------------------------------------

def make_plots(summary: pd.DataFrame, out_dir: Path, title: str, metric: str) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    s = summary.dropna(subset=["top1_mean"])
    # bars with error bars
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(summary) + 2), 4.2))
    colors = ["#888888" if str(c) == "static" else "#1f77b4" if str(c).startswith("odconv") else "#ff7f0e"
              for c in summary["conv"]]
    ax.bar(range(len(summary)), summary["top1_mean"].fillna(0), yerr=summary["top1_std"].fillna(0), capsize=3,
           color=colors)
    ax.set_xticks(range(len(summary)))
    ax.set_xticklabels([str(v) + ("*" if n < g else "") for v, n, g in
                        zip(summary["variant"], summary["n_seeds"], summary["n_grid_seeds"])], rotation=60, ha="right",
                       fontsize=8)
    if len(s):
        lo, hi = (s["top1_mean"] - s["top1_std"].fillna(0)).min(), (s["top1_mean"] + s["top1_std"].fillna(0)).max()
        pad = max(0.5, 0.15 * (hi - lo))
        ax.set_ylim(max(0, lo - pad), min(100, hi + pad))
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(f"{title}: mean ± std over seeds (* = seeds missing)")
    fig.tight_layout()
    paths.append(out_dir / "accuracy_bars.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    for col, scale, label, fname in (("params_count", 1e6, "params (M)", "accuracy_vs_params.png"),
                                     ("macs", 1e6, "MACs per image (M)", "accuracy_vs_macs.png")):
        fig, ax = plt.subplots(figsize=(6.4, 4.6))
        t = s.dropna(subset=[col])
        ax.errorbar(t[col] / scale, t["top1_mean"], yerr=t["top1_std"].fillna(0), fmt="o", capsize=3)
        for _, r in t.iterrows():
            ax.annotate(str(r["variant"]), (r[col] / scale, r["top1_mean"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        ax.set_xlabel(label)
        ax.set_ylabel(f"{metric} (%)")
        ax.set_title(f"{title}: accuracy vs {label.split(' ')[0]}")
        if not len(t):
            ax.text(0.5, 0.5, f"no {label} recorded", transform=ax.transAxes, ha="center")
        fig.tight_layout()
        paths.append(out_dir / fname)
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


def aggregate(sweep_name: str, results_root: str | os.PathLike = "results", sweep: SweepDef | None = None,
              study=None) -> dict[str, Any]:
    """Write the tables and plots; ``study``: also use records stored in the Optuna study."""
    sweep = sweep or load_sweep_for_results(sweep_name, results_root)
    out_dir = Path(results_root) / sweep.name
    out_dir.mkdir(parents=True, exist_ok=True)
    df = records_frame(sweep.name, results_root, records_from_study(study) if study is not None else None)
    keys = {p.key for p in sweep.points()}
    if len(df):
        df = df[df["grid_key"].isin(keys)].copy()
    metric = (df[df["status"] == "complete"]["metric"].dropna().iloc[0]
              if len(df) and (df["status"] == "complete").any() else (sweep.metric or "top-1"))
    summary = summary_table(sweep, df if len(df) else pd.DataFrame(columns=["variant", "status", "seed", "value"]))
    att = attention_table(sweep, summary)
    summary.to_csv(out_dir / "summary.csv", index=False)
    att.to_csv(out_dir / "attention.csv", index=False)
    md = summary_markdown(sweep, summary, att, df, metric)
    (out_dir / "summary.md").write_text(md)
    if len(att):
        amd = md.split("## Effect of each attention", 1)[1].split("## ", 1)[0]
        (out_dir / "attention.md").write_text(f"# Sweep `{sweep.name}`: effect of each attention\n" + amd)
    plots = make_plots(summary, out_dir, sweep.name, metric)
    return {"summary_csv": out_dir / "summary.csv", "summary_md": out_dir / "summary.md",
            "attention_csv": out_dir / "attention.csv", "plots": plots, "summary": summary, "attention": att,
            "records": df}


__all__ = ["aggregate", "summary_table", "attention_table", "t_ppf", "welch_ci", "grid_key"]
