"""Reporting for ``odconv-sweep results``: the markdown text, CSV tables and plots written from
the frames :mod:`sweeps.reporting.analysis` and :mod:`sweeps.reporting.precision` computed (nothing is computed
here but the layout; the plots' drawing is :mod:`sweeps.reporting.plots`'s).

Each ``write_*`` function writes one group of files under a sweep's results folder and returns
the paths it wrote; a file that no longer describes the results (e.g. ``outliers.csv`` once no
result is flagged) is removed. How to read each file: ``docs/results.md``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..definition import SweepDef
from .analysis import (
    ALPHA,
    ATTS,
    EFFECT_TABLE_COLUMNS,
    INTERACTION_SCREEN_P,
    OUTLIER_ALPHA,
    EffectsResult,
    rerun_spread,
)
from .loading import SweepData, bench_machine
from .plots import curves_plot, effects_plot, make_plots

# --- markdown helpers ------------------------------------------------------------------

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
        lines += [f"- run-to-run standard deviation of top-1: {_f(sd)} pp ({df} pair(s), RMS difference / √2), "
                  f"against a seed-to-seed standard deviation of {_f(seed_sd)} pp", ""]
    else:
        lines += ["- run-to-run standard deviation: n/a (no rerun and its grid point both done yet)", ""]
    shown = reruns.assign(original=reruns["original"].map(_f), rerun=reruns["rerun"].map(_f),
                          difference=reruns["difference"].map(lambda x: _f(x, "{:+.2f}")))
    lines += [_md(shown[["variant", "seed", "original", "rerun", "difference"]].rename(
        columns={"original": "top-1 (grid)", "rerun": "top-1 (rerun)", "difference": "rerun − grid (pp)"})), ""]
    return lines



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


def _attention_lines(att: pd.DataFrame) -> list[str]:
    """The table of :func:`sweeps.reporting.analysis.attention_table` and how to read it (``summary.md``'s
    section and ``attention.md``)."""
    arows = [{"attention": r["attention"], "pairs": f"{r['n_pairs_with_results']}/{r['n_pairs']}",
              "top-1 effect (pp) [95% CI over pairs]": _ci(r["effect_mean"], r["effect_ci_low"], r["effect_ci_high"]),
              "range": f"{_f(r['effect_min'], '{:+.2f}')} … {_f(r['effect_max'], '{:+.2f}')}",
              "Δ params (M)": _f(r["params_delta_mean"] / 1e6 if not pd.isna(r["params_delta_mean"]) else np.nan,
                                 "{:+.3f}"),
              "MACs ratio": _f(r["macs_ratio_mean"], "{:.3f}x"),
              "train img/s ratio": _f(r["throughput_ratio_mean"], "{:.2f}x"), "pairs (off -> on)": r["pairs"]}
             for _, r in att.iterrows()]
    return [_md(pd.DataFrame(arows)), "",
            "Each pair is two variants that differ only in that attention (same other axes); `static` counts as "
            "ODConv with no attention, and switching `kernel` on goes from 1 to n kernels. The interval is a "
            "one-sample t over the pairs' differences of means (n/a with one pair); the factorial effects "
            "below (when the grid has the full factorial) use every trial and the seed pairing.", ""]


def attention_markdown(sweep: SweepDef, att: pd.DataFrame) -> str:
    """``attention.md``: the attention-pairs section of ``summary.md`` on its own."""
    return "\n".join([f"# Sweep `{sweep.name}`: effect of each attention", ""] + _attention_lines(att))


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
        parts += ["## Effect of each attention", ""] + _attention_lines(att)
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



# --- effects.md ----------------------------------------------------------------------

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


CONDITIONAL_DEFINITION = (
    "A main effect averages an attention's effect over the other attentions' settings; where two attentions "
    "interact, their main effects hide an effect that differs, possibly in sign, with the other one off and on. "
    "For every two-way interaction with unadjusted p < {screen:.2f} (a screen, not a finding: an interaction that "
    "is truly zero passes it one time in {one_in:g}), each of its two attentions' **conditional effects**: the "
    "change in top-1 (pp) from switching it on, with the other attention off and with it on, averaged over the "
    "remaining two attentions, like the main effect. They come from the same fit, as linear contrasts of its "
    "coefficients (statsmodels `t_test`): main effect − interaction with the other off, main effect + "
    "interaction with it on, so the main effect is their mean. 95% CI: t interval on the fit's residual df; p: "
    "two-sided, not adjusted. Every row, unrounded: `conditional_effects.csv`.")


def _conditional_lines(effects: EffectsResult, conditional: pd.DataFrame) -> list[str]:
    """``effects.md``'s section on conditional effects (nothing without a factorial fit)."""
    if not effects.fits:
        return []
    lines = ["## Conditional effects where two attentions interact", "",
             CONDITIONAL_DEFINITION.format(screen=INTERACTION_SCREEN_P, one_in=1 / INTERACTION_SCREEN_P), ""]
    if not len(conditional):
        return lines + [f"No two-way interaction has p < {INTERACTION_SCREEN_P:.2f}: each main effect stands for "
                        "its attention at either setting of the others, as far as this design can tell.", ""]
    several = conditional["group"].nunique() > 1
    rows = []
    for (group, interaction, factor), c in conditional.groupby(["group", "interaction", "factor"], sort=False):
        off, on = c[~c["given_on"].astype(bool)].iloc[0], c[c["given_on"].astype(bool)].iloc[0]
        rows.append({**({"group": group or "all"} if several else {}),
                     "interaction (p)": f"`{interaction}` ({_p(off['interaction_p'])})",
                     "effect of": factor, "given": off["given"],
                     "given off [95% CI]": _ci(off["estimate"], off["ci_low"], off["ci_high"]),
                     "given on [95% CI]": _ci(on["estimate"], on["ci_low"], on["ci_high"]),
                     "p (off / on)": f"{_p(off['p_value'])} / {_p(on['p_value'])}",
                     "main effect": _f(off["main_effect"], "{:+.2f}")})
    return lines + [_md(pd.DataFrame(rows)), ""]


def effects_markdown(sweep: SweepDef, effects: EffectsResult, power: dict[str, Any],
                     conditional: pd.DataFrame | None = None) -> str:
    """``effects.md``: definition, precision and one table per factorial group (or why n/a), then
    the conditional effects of the interactions that pass the screen (``conditional``:
    :func:`sweeps.reporting.analysis.conditional_effects_table`)."""
    parts = [f"# Sweep `{sweep.name}`: factorial effects of the ODConv attentions", ""]
    parts += _effects_body(effects)
    if effects.groups:
        parts += [f"Smallest effect this design detects (80% power, two-sided 5%): "
                  f"{_f(power.get('mdd_main_effect'))} pp.", ""]
    if conditional is not None:
        parts += _conditional_lines(effects, conditional)
    if len(effects.table):
        parts += ["![factorial effects](effects.png)", ""]
    return "\n".join(parts)


# --- writing ---------------------------------------------------------------------------

def _write_or_remove(table: pd.DataFrame, path: Path, keep: bool) -> list[Path]:
    """Write ``table`` to ``path`` when ``keep``; else remove an earlier run's file there, which
    no longer describes these results."""
    if keep:
        table.to_csv(path, index=False)
        return [path]
    path.unlink(missing_ok=True)
    return []


def write_summary(out_dir: Path, sweep: SweepDef, data: SweepData, summary: pd.DataFrame, att: pd.DataFrame,
                  effects: EffectsResult, power: dict[str, Any], reruns: pd.DataFrame) -> list[Path]:
    """``summary.csv``, ``summary.md`` and, with a ``reruns:`` section, ``reruns.csv``."""
    summary.to_csv(out_dir / "summary.csv", index=False)
    md = summary_markdown(sweep, summary, att, data.records, data.metric, effects, power,
                          reruns if sweep.reruns else None)
    (out_dir / "summary.md").write_text(md)
    return [out_dir / "summary.csv", out_dir / "summary.md",
            *_write_or_remove(reruns, out_dir / "reruns.csv", bool(sweep.reruns))]


def write_attention(out_dir: Path, sweep: SweepDef, att: pd.DataFrame) -> list[Path]:
    """``attention.csv`` and, when the grid has a pair of variants, ``attention.md``."""
    att.to_csv(out_dir / "attention.csv", index=False)
    if not len(att):
        return [out_dir / "attention.csv"]
    (out_dir / "attention.md").write_text(attention_markdown(sweep, att))
    return [out_dir / "attention.csv", out_dir / "attention.md"]


def write_effects(out_dir: Path, sweep: SweepDef, effects: EffectsResult, conditional: pd.DataFrame,
                  power: dict[str, Any]) -> list[Path]:
    """``effects.csv``, ``conditional_effects.csv`` (header only without a factorial or a
    screened interaction), ``effects.md``, ``effects.png`` (with a factorial fit), and while a
    result is flagged ``outliers.csv`` and ``effects_without_outliers.csv``."""
    effects.table.to_csv(out_dir / "effects.csv", index=False)
    conditional.to_csv(out_dir / "conditional_effects.csv", index=False)
    (out_dir / "effects.md").write_text(effects_markdown(sweep, effects, power, conditional))
    written = [out_dir / "effects.csv", out_dir / "conditional_effects.csv", out_dir / "effects.md"]
    for name, table in (("outliers.csv", effects.outliers), ("effects_without_outliers.csv", effects.without_outliers)):
        written += _write_or_remove(table, out_dir / name, bool(len(table)))
    plot = out_dir / "effects.png"
    if len(effects.table):
        written.append(effects_plot(_effects_plot_table(effects), plot, sweep.name))
    else:
        plot.unlink(missing_ok=True)  # from an earlier run that had a factorial
    return written


def _time_note(summary: pd.DataFrame, time_col: str, bench_csv: Path) -> str:
    """Where the accuracy-vs-time plot's times come from: the bench run, or the trials' hosts."""
    hosts = sorted({h for hs in summary.get("hosts", pd.Series(dtype=str)).fillna("") for h in str(hs).split(",") if h})
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
    curves.to_csv(out_dir / "val_curves.csv", index=False)
    written = [out_dir / "val_curves.csv"]
    if len(curves):
        written.append(curves_plot(curves, out_dir / "val_curves.png", sweep.name))
    return written


__all__ = ["summary_markdown", "attention_markdown", "effects_markdown", "write_summary", "write_attention",
           "write_effects", "write_accuracy_plots", "write_curves", "EFFECTS_DEFINITION", "CONDITIONAL_DEFINITION"]
