"""``summary.md``, ``attention.md`` and the other files of ``odconv-sweep results`` but the
factorial's (:mod:`sweeps.reporting.effects_report`) and the iso-cost comparison's
(:mod:`sweeps.reporting.isocost_report`): the markdown text, CSV tables and plots written from
the frames :mod:`sweeps.reporting.analysis`, :mod:`sweeps.reporting.attentions` and
:mod:`sweeps.reporting.precision` computed (nothing is computed here but the layout; the plots'
drawing is :mod:`sweeps.reporting.plots`'s, the number formats :mod:`sweeps.reporting.formats`').

Each ``write_*`` function writes one group of files under a sweep's results folder (named by
:class:`sweeps.layout.SweepLayout`) and returns the paths it wrote; a file that no longer
describes the results (e.g. ``reruns.csv`` once the sweep has no reruns) is removed. How to
read each file: ``docs/results.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..definition import SweepDef
from ..layout import report_layout
from .analysis import ALPHA, rerun_spread
from .attentions import ATTS, EFFECT_TABLE_COLUMNS, EffectsResult
from .effects_report import effects_body
from .formats import ci_text, fmt, md_table, p_text, write_csv, write_or_remove
from .loading import SweepData, bench_machine
from .plots import curves_plot, make_plots

# --- summary.md ----------------------------------------------------------------------

def _rerun_lines(reruns: pd.DataFrame, pw: dict[str, Any] | None) -> list[str]:
    if not len(reruns):
        return []
    sd, df = rerun_spread(reruns)
    lines = ["## Run-to-run spread", "",
             f"Grid points run again with the same seed and `{reruns['changed'].iloc[0]}`, which should not change "
             f"the result: how far apart two runs of one configuration land.", ""]
    seed_sd = pw.get("pooled_sd") if pw else np.nan
    if df:
        lines += [f"- run-to-run standard deviation of top-1: {fmt(sd)} pp ({df} pair(s), RMS difference / √2), "
                  f"against a seed-to-seed standard deviation of {fmt(seed_sd)} pp", ""]
    else:
        lines += ["- run-to-run standard deviation: n/a (no rerun and its grid point both done yet)", ""]
    shown = reruns.assign(original=reruns["original"].map(fmt), rerun=reruns["rerun"].map(fmt),
                          difference=reruns["difference"].map(lambda x: fmt(x, "{:+.2f}")))
    lines += [md_table(shown[["variant", "seed", "original", "rerun", "difference"]].rename(
        columns={"original": "top-1 (grid)", "rerun": "top-1 (rerun)", "difference": "rerun − grid (pp)"})), ""]
    return lines


def _blocked_without_text(pw: dict[str, Any]) -> str:
    b = pw.get("blocked_without_outliers")
    if not b:
        return ""
    rows = [v for v in pw.get("goal_rows", []) if v in b["halfwidths"]]
    shown = "".join(f"; `{v}` vs `static` ± {fmt(b['halfwidths'][v])} pp" for v in rows)
    return (f"; the blocked model's residual SD is {fmt(b['resid_sd'])} pp on {fmt(b['df_resid'], '{:g}')} df"
            + (f" (its intervals{shown.replace('; ', ': ', 1)})" if shown else ""))


def _precision_lines(pw: dict[str, Any], effects: EffectsResult) -> list[str]:
    ns = pw["n_seeds"]
    lines = ["## Precision of this design", ""]
    lines.append(f"- seeds per variant in the grid: {', '.join(str(n) for n in ns) or 'none'}")
    lines.append(f"- pooled seed-to-seed standard deviation of top-1: {fmt(pw['pooled_sd'])} pp "
                 f"({pw['pooled_sd_df']} df" + (", no variant has 2 results" if not pw["pooled_sd_df"] else "") + ")")
    if not pd.isna(pw["paired_diff_sd"]):
        lines.append(f"- pooled standard deviation of the paired differences (row − `static`, same seed): "
                     f"{fmt(pw['paired_diff_sd'])} pp ({pw['paired_diff_sd_df']} df)")
    for n, (paired, unpaired) in pw["mdd_rows"].items():
        hw_paired, hw_unpaired, hw_per_sd = pw.get("halfwidth_rows", {}).get(n, (np.nan,) * 3)
        lines.append(f"- a row vs `static` with {n} seed(s) on both: 95% interval ± {fmt(hw_paired)} pp paired "
                     f"({fmt(hw_per_sd)} × the SD of paired differences; ± {fmt(hw_unpaired)} unpaired); smallest "
                     f"difference detected (80% power, two-sided 5%): paired {fmt(paired)} pp, unpaired "
                     f"{fmt(unpaired)} pp")
    if effects.groups:
        lines.append(f"- a main effect of the factorial ({pw['effect_n_obs']} planned results, "
                     f"{fmt(pw['effect_df'], '{:g}')} residual df, residual SD {fmt(pw['effect_sd'])} pp): 95% "
                     f"interval ± {fmt(pw.get('halfwidth_main_effect'))} pp "
                     f"({fmt(pw.get('halfwidth_per_sd'))} × the residual SD); smallest main effect the factorial "
                     f"detects (80% power, two-sided 5%): "
                     f"{fmt(pw['mdd_main_effect'])} pp")
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
        table = pd.DataFrame([{"goal": g["goal"], "aim": f"± {fmt(g['aim'])}", "measured": f"± {fmt(g['measured'])}",
                               "planned": f"± {fmt(g['planned'])}", "verdict": g["verdict"],
                               "seeds to meet it": g["seeds_needed"]} for g in pw["goals"]])
        lines += [md_table(table), ""]
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
                      f"the residual SD is {fmt(wo['resid_sd'].iloc[0])} pp and the widest main-effect interval "
                      f"± {fmt(widest)} pp" + _blocked_without_text(pw) + ".", ""]
    return lines


def _attention_lines(att: pd.DataFrame) -> list[str]:
    """The table of :func:`sweeps.reporting.attentions.attention_table` and how to read it
    (``summary.md``'s section and ``attention.md``)."""
    arows = [{"attention": r["attention"], "pairs": f"{r['n_pairs_with_results']}/{r['n_pairs']}",
              "top-1 effect (pp) [95% CI over pairs]": ci_text(r["effect_mean"], r["effect_ci_low"],
                                                               r["effect_ci_high"]),
              "range": f"{fmt(r['effect_min'], '{:+.2f}')} … {fmt(r['effect_max'], '{:+.2f}')}",
              "Δ params (M)": fmt(r["params_delta_mean"] / 1e6 if not pd.isna(r["params_delta_mean"]) else np.nan,
                                 "{:+.3f}"),
              "MACs ratio": fmt(r["macs_ratio_mean"], "{:.3f}x"),
              "train img/s ratio": fmt(r["throughput_ratio_mean"], "{:.2f}x"), "pairs (off -> on)": r["pairs"]}
             for _, r in att.iterrows()]
    return [md_table(pd.DataFrame(arows)), "",
            "Each pair is two variants that differ only in that attention (same other axes); `static` counts as "
            "ODConv with no attention, and switching `kernel` on goes from 1 to n kernels. The interval is a "
            "one-sample t over the pairs' differences of means (n/a with one pair); the factorial effects "
            "below (when the grid has the full factorial) use every trial and the seed pairing.", ""]


def attention_markdown(sweep: SweepDef, att: pd.DataFrame) -> str:
    """``attention.md``: the attention-pairs section of ``summary.md`` on its own."""
    return "\n".join([f"# Sweep `{sweep.name}`: effect of each attention", ""] + _attention_lines(att))


def _header_lines(sweep: SweepDef, df: pd.DataFrame, metric: str) -> list[str]:
    """The title, the sweep's description, how many grid points are done, synthetic data."""
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
    return parts


def _variant_row(r: pd.Series) -> dict[str, str]:
    """One row of ``summary.md``'s table from a row of the summary."""
    is_ref = r["variant"] == r.get("reference")
    no_ref = not r.get("reference")
    vs_ref = not (is_ref or no_ref)
    miss = ", ".join(x for x in (f"missing {r['missing_seeds']}" if r["missing_seeds"] else "",
                                 f"failed {r['failed_seeds']}" if r["failed_seeds"] else "") if x)
    bench = r.get("cost_source") == "bench"
    tr = r.get("bench_train_time_ratio") if bench else r.get("train_time_ratio")
    lat = r.get("bench_latency_b1_ratio") if bench else r.get("latency_b1_ratio")
    mem = r.get("bench_memory_ratio") if bench else r.get("memory_ratio")
    return {
        "variant": f"`{r['variant']}`",
        "top-1 %": f"{fmt(r['top1_mean'])} ± {fmt(r['top1_std'])}",
        "seeds": f"{r['n_seeds']}/{r['n_grid_seeds']}" + (f" ({miss})" if miss else ""),
        "paired Δ vs static [95% CI]": "reference" if is_ref else "n/a (no `static` with these axes)" if no_ref
        else ci_text(r["paired_delta"], r["paired_ci_low"], r["paired_ci_high"]) + f" (n={r['paired_n']})",
        "Holm p": p_text(r["paired_p_holm"]) if vs_ref else "",
        "blocked Δ [95% CI]": ci_text(r.get("blocked_delta"), r.get("blocked_ci_low"), r.get("blocked_ci_high"))
        if vs_ref else "",
        "blocked Holm p": p_text(r.get("blocked_p_holm")) if vs_ref else "",
        "Welch Δ [95% CI]": ci_text(r["delta_vs_static"], r["delta_ci_low"], r["delta_ci_high"]) if vs_ref else "",
        "params (M)": fmt(r["params_count"] / 1e6 if not pd.isna(r["params_count"]) else np.nan, "{:.3f}"),
        "MACs (M)": fmt(r["macs"] / 1e6 if not pd.isna(r["macs"]) else np.nan, "{:.1f}"),
        "train ms/img": fmt(r.get("bench_train_ms_per_image") if bench else r.get("train_ms_per_image"), "{:.3f}"),
        "train time vs static": fmt(tr, "{:.2f}x"), "latency b1 vs static": fmt(lat, "{:.2f}x"),
        "peak mem vs static": fmt(mem, "{:.2f}x"), "cost from": r.get("cost_source") or ""}


def _hosts(summary: pd.DataFrame) -> list[str]:
    """Every machine the summary's trials ran on."""
    return sorted({h for hs in summary.get("hosts", pd.Series(dtype=str)).fillna("") for h in str(hs).split(",")
                   if h})


def _reading_lines(summary: pd.DataFrame) -> list[str]:
    """How to read the table's comparisons, and how many rows differ from ``static``."""
    n_sig = int((summary["paired_p_holm"] < ALPHA).sum()) if len(summary) else 0
    n_sig_b = int((summary["blocked_p_holm"] < ALPHA).sum()) if len(summary) and "blocked_p_holm" in summary else 0
    b_sd = summary["blocked_resid_sd"].dropna() if len(summary) and "blocked_resid_sd" in summary else pd.Series()
    b_df = summary["blocked_df_resid"].dropna() if len(summary) and "blocked_df_resid" in summary else pd.Series()
    pooled = (f" (here {fmt(b_sd.iloc[0])} pp on {fmt(b_df.iloc[0], '{:g}')} df)" if len(b_sd) and len(b_df) else "")
    return ["**Reading.** Paired Δ: mean over the seeds both have of (row − `static` with the same other axes), "
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


def _cost_lines(summary: pd.DataFrame) -> list[str]:
    """Where the table's cost columns come from."""
    hosts = _hosts(summary)
    return ["**Cost.** Each row's cost columns come from one source (`cost from`). bench: one benchmark run "
            "on one machine, the sweep's own `results/<sweep>/bench/models.csv` (`make sweep-bench`) or else "
            "`results/bench/models.csv` (`make bench`): train ms/img = its training step (forward + backward + "
            "step) / batch, and the ratios vs `static` (> 1x is slower / larger) of its training step, batch-1 "
            "latency and training peak memory. trials: train ms/img = median over seeds of 1000 / the trial's "
            "measured training throughput on the host it ran on"
            + (f" ({', '.join(hosts)})" if hosts else "") + ", and the ratios of the trials' medians"
            + (" — trials ran on several hosts, compare with care" if len(hosts) > 1 else "") + ".", ""]


def _failed_lines(df: pd.DataFrame) -> list[str]:
    """The grid points whose trial failed or was pruned, with why (nothing when none)."""
    bad = df[df["status"] != "complete"] if len(df) else df
    if not len(bad):
        return []
    return ["## Failed / pruned trials", "",
            md_table(pd.DataFrame([{"variant": f"`{r['variant']}`", "seed": str(r["seed"]), "status": r["status"],
                                    "reason": str(r["reason"] or "").replace("|", "/")} for _, r in bad.iterrows()])),
            ""]


def summary_markdown(sweep: SweepDef, summary: pd.DataFrame, att: pd.DataFrame, df: pd.DataFrame, metric: str,
                     effects: EffectsResult | None = None, power: dict[str, Any] | None = None,
                     reruns: pd.DataFrame | None = None) -> str:
    """``summary.md``: precision, the run-to-run spread (with ``reruns``), the per-variant
    table, attention pairs, factorial effects, failed trials, plots. ``df``: the grid points'
    records."""
    effects = effects or EffectsResult(pd.DataFrame(columns=EFFECT_TABLE_COLUMNS), [], {}, [])
    parts = _header_lines(sweep, df, metric)
    if power is not None:
        parts += _precision_lines(power, effects)
    if reruns is not None:
        parts += _rerun_lines(reruns, power)
    if len(summary):
        parts += [md_table(pd.DataFrame([_variant_row(r) for _, r in summary.iterrows()])), ""]
    parts += _reading_lines(summary) + _cost_lines(summary)
    if len(att):
        parts += ["## Effect of each attention", ""] + _attention_lines(att)
    parts += ["## Factorial effects of the attentions", ""] + effects_body(effects)
    parts += _failed_lines(df)
    parts += ["## Plots", "", "![accuracy](accuracy_bars.png)", "",
              "![accuracy vs train time per image](accuracy_vs_train_time.png)", "",
              "![accuracy vs params](accuracy_vs_params.png)", "", "![accuracy vs MACs](accuracy_vs_macs.png)", ""]
    if len(effects.table):
        parts += ["![factorial effects](effects.png)", ""]
    return "\n".join(parts)


# --- writing ---------------------------------------------------------------------------

def write_summary(out_dir: Path, sweep: SweepDef, data: SweepData, summary: pd.DataFrame, att: pd.DataFrame,
                  effects: EffectsResult, power: dict[str, Any], reruns: pd.DataFrame) -> list[Path]:
    """``summary.csv``, ``summary.md`` and, with a ``reruns:`` section, ``reruns.csv``."""
    files = report_layout(out_dir)
    md = files.report("summary.md")
    md.write_text(summary_markdown(sweep, summary, att, data.records, data.metric, effects, power,
                                   reruns if sweep.reruns else None))
    return [write_csv(summary, files.report("summary.csv")), md,
            *write_or_remove(reruns, files.report("reruns.csv"), bool(sweep.reruns))]


def write_attention(out_dir: Path, sweep: SweepDef, att: pd.DataFrame) -> list[Path]:
    """``attention.csv`` and, when the grid has a pair of variants, ``attention.md``."""
    files = report_layout(out_dir)
    written = [write_csv(att, files.report("attention.csv"))]
    if len(att):
        files.report("attention.md").write_text(attention_markdown(sweep, att))
        written.append(files.report("attention.md"))
    return written


def _time_note(summary: pd.DataFrame, time_col: str, bench_csv: Path) -> str:
    """Where the accuracy-vs-time plot's times come from: the bench run, or the trials' hosts."""
    hosts = _hosts(summary)
    if time_col == "bench_train_ms_per_image":
        cpu = bench_machine(bench_csv)
        return f"one benchmark run ({bench_csv.parent.name}/{bench_csv.name})" + (f" on {cpu}" if cpu else "")
    if len(hosts) > 2:
        return f"measured in the trials on {len(hosts)} hosts (see summary.md)"
    return f"measured in the trials on {', '.join(hosts)}" if hosts else ""


def write_accuracy_plots(out_dir: Path, sweep: SweepDef, data: SweepData, summary: pd.DataFrame,
                         time_col: str) -> list[Path]:
    """``accuracy_bars.png`` and the accuracy-vs-cost plots (training time per image from
    ``time_col``: :func:`sweeps.reporting.analysis.train_time_column`); none without a grid variant."""
    if not len(summary):
        return []
    return make_plots(summary, out_dir, sweep.name, data.metric,
                      time_note=_time_note(summary, time_col, data.bench_csv), time_col=time_col)


def write_curves(out_dir: Path, sweep: SweepDef, curves: pd.DataFrame) -> list[Path]:
    """``val_curves.csv`` and, with a learning curve, ``val_curves.png``."""
    files = report_layout(out_dir)
    written = [write_csv(curves, files.report("val_curves.csv"))]
    if len(curves):
        written.append(curves_plot(curves, files.report("val_curves.png"), sweep.name))
    return written


__all__ = ["summary_markdown", "attention_markdown", "write_summary", "write_attention", "write_accuracy_plots",
           "write_curves"]
