"""The iso-cost files of ``make results`` from :mod:`sweeps.reporting.isocost`'s frames: ``isocost.csv``
(one row per axis and variant), ``isocost_frontier.csv`` (the ladder's widths: mean, fitted,
residual), ``isocost.md`` (a table per axis and what it means) and ``isocost_<axis>.png``
(top-1 against cost, the frontier with its band, each variant with its interval); the
paths are :class:`sweeps.layout.SweepLayout`'s, the number formats
:mod:`sweeps.reporting.formats`'."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from ..layout import report_layout
from . import stats
from .formats import round_float, rounded, save_png, write_csv
from .isocost import AXES, LACK_OF_FIT_ALPHA, ORDER_RULE_SET, AxisFit, IsoCostResult, frontier_band
from .plan_status import PlanStatus
from .plots import SHORT_KEY, label_points, short_label
from .wording import axis_sentence

FILES = ("isocost.csv", "isocost_frontier.csv", "isocost.md")
PLOT_GLOB = "isocost_*.png"  # the plots, one per axis compared: plot_name(axis)
NO_LADDER = "no iso-cost comparison: the results have no static ladder (static at 3 or more widths)"


def plot_name(axis: str) -> str:
    """The report file of the plot of cost axis ``axis``: ``isocost_<axis>.png``."""
    return f"isocost_{axis}.png"


def _num(x: Any, fmt: str = "{:.2f}") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def _interval(m: float, lo: float, hi: float) -> str:
    return "n/a" if math.isnan(m) else f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def _pval(p: float) -> str:
    return "n/a" if p is None or math.isnan(p) else ("<0.001" if p < 0.001 else f"{p:.3f}")


def _p_is(p: float) -> str:
    """``p = 0.053``, ``p < 0.001``: a p-value for a sentence."""
    text = _pval(p)
    return f"p < {text[1:]}" if text.startswith("<") else f"p = {text}"


def rung_label(width: Any) -> str:
    return f"static w={width:g}" if isinstance(width, (int, float)) and not math.isnan(width) else "static"


def _frontier_line(fit: AxisFit) -> str:
    t = stats.t_ppf(0.975, fit.df_resid)
    se_b = math.sqrt(fit.coef_cov[1, 1])
    shape = "a line" if fit.order == 1 else "a quadratic"
    line_tests = [(f"{name} test", p) for name, p in (("quadratic term's", fit.line_next_order_p),
                                                        ("lack-of-fit", fit.line_lack_of_fit_p))]
    rejected = [f"{name}, {_p_is(p)}" for name, p in line_tests if p < LACK_OF_FIT_ALPHA]
    passed = [f"{name}: {_p_is(p)}" for name, p in line_tests if not p < LACK_OF_FIT_ALPHA]
    why = (" (order fixed by the analysis plan)" if fit.order_rule == "fixed" else "" if fit.order == 1 else
           f" (the line was rejected at the {LACK_OF_FIT_ALPHA:g} level by its {' and its '.join(rejected)}"
           + (f" ({passed[0]})" if passed else "") + ", so a quadratic was fitted)")
    b_lo, b_hi = fit.coef[1] - t * se_b, fit.coef[1] + t * se_b
    slope = (f"{fit.coef[1]:+.2f} pp per doubling of cost [{b_lo:+.2f}, {b_hi:+.2f}]"
             if fit.order == 1 else f"{fit.coef[1]:+.2f} pp per doubling at the narrowest, curvature "
                                    f"{fit.coef[2]:+.2f} pp per doubling squared")
    misfit = ("" if not fit.lack_of_fit_p < LACK_OF_FIT_ALPHA else
              f" **The frontier still departs from the ladder's width means (lack of fit p < {LACK_OF_FIT_ALPHA}):"
              " the Δs on this axis carry an error the intervals do not include; the residuals below show"
              " where.**")
    return (f"Frontier: {shape} in log2(cost ratio){why}: {slope}. Its fit to the ladder alone: lack of fit "
            f"(against one mean per width) {_p_is(fit.lack_of_fit_p)}, next-order term "
            f"{_p_is(fit.next_order_p)}; residual SD {fit.resid_sd:.2f} pp on {fit.df_resid:.0f} df (the joint fit)."
            + misfit)


def _verdicts(fit: AxisFit) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[str]]:
    """(compared rows, rows above the frontier at Holm 5%, rows below it, variants outside the ladder)."""
    t = fit.table
    comp = t[t["delta"].notna()]
    sig = comp["p_holm"] < 0.05
    outside = t[~t["inside_ladder"].astype(bool) & t["cost"].notna()]["variant"].tolist()
    return comp, comp[sig & (comp["delta"] > 0)], comp[sig & (comp["delta"] < 0)], outside


def _reading(fit: AxisFit) -> str:
    return axis_sentence(fit.axis, fit.table)


def _curve_offsets(result: IsoCostResult) -> pd.Series:
    """Per compared variant and axis: its "frontier at its cost" minus the plotted curve at its
    cost (the seed effects of the variant's own seeds, averaged; 0 for a variant with every seed)."""
    out = []
    for fit in result.axes.values():
        t = fit.table[fit.table["frontier_top1"].notna()]
        curve = np.polyval(fit.coef[::-1], np.log2(t["cost_ratio"].astype(float)))
        out.append(t["frontier_top1"].astype(float) - curve)
    return pd.concat(out) if out else pd.Series(dtype=float)


def _rule_lines(result: IsoCostResult, status: PlanStatus | None) -> list[str]:
    """The frontier's order rule and where it came from; the plan's status."""
    fixed = any(f.order_rule == "fixed" for f in result.axes.values())
    rule = ("the order the analysis plan fixed before the runs" if fixed else
            f"a line in log2(cost ratio), replaced by a quadratic when either of the line's tests on the ladder "
            f"(lack of fit against one mean per width, or its quadratic term) has p < {LACK_OF_FIT_ALPHA:g} and the "
            f"ladder has 4 or more widths ({ORDER_RULE_SET})")
    off = _curve_offsets(result).abs()
    lines = [f"**Frontier order rule.** {rule[0].upper() + rule[1:]}.", "",
             "**The *frontier at its cost* column** is the frontier's top-1 at the variant's cost for the "
             "variant's own seeds (the fit's seed effects averaged over those seeds), so it is what Δ is measured "
             "from; the plotted curve is drawn at the mean seed of the ladder, and the two differ for a variant "
             f"missing some seeds (here by up to {off.max():.2f} pp)." if len(off) else "", ""]
    if status is not None:
        lines = [f"**Status: {status.label}.** {status.reason[0].upper() + status.reason[1:]}.", ""] + lines
    return lines


def _glance(result: IsoCostResult) -> list[str]:
    """One row per axis: the frontier's slope, how many variants were compared, which lie above
    or below the frontier at Holm 5% (with Δ and interval), how many the design cannot tell from
    it, how many lie outside the ladder, and the axis's MDD range."""
    def named(rows: pd.DataFrame) -> str:
        return "; ".join(f"`{v}` {_interval(m, lo, hi)}" for v, m, lo, hi in
                         zip(rows["variant"], rows["delta"], rows["ci_low"], rows["ci_high"])) or "none"

    table = []
    for fit in result.axes.values():
        comp, above, below, outside = _verdicts(fit)
        mdd = comp["mdd"].dropna()
        table.append({
            "axis": AXES[fit.axis][1],
            "frontier, pp per doubling": (f"{fit.coef[1]:+.2f}" if fit.order == 1 else
                                          f"quadratic: {fit.coef[1]:+.2f} at the narrowest, {fit.coef[2]:+.2f} "
                                          "curvature") + (" (lack of fit)" if fit.lack_of_fit_p < LACK_OF_FIT_ALPHA
                                                          else ""),
            "compared": str(len(comp)),
            "above the frontier": named(above),
            "below the frontier": named(below),
            "not distinguishable": str(len(comp) - len(above) - len(below)),
            "outside the ladder": str(len(outside)),
            "MDD (pp)": f"{_num(mdd.min())}-{_num(mdd.max())}" if len(mdd) else "n/a",
        })
    return ["## At a glance", "",
            "Above / below: Δ's Holm-adjusted p < 0.05 on that axis (Δ [95% CI, unadjusted], pp); "
            "not distinguishable: Holm p >= 0.05, which is no proof of equality (a true Δ below the MDD is "
            "missed more often than not); outside the ladder: not compared.", "",
            pd.DataFrame(table).to_markdown(index=False, disable_numparse=True), ""]


def _axis_section(fit: AxisFit) -> list[str]:
    _, label, unit = AXES[fit.axis]
    lines = [f"## {label} ({unit})", "", _frontier_line(fit), ""]
    f = fit.frontier
    lines += [pd.DataFrame({"ladder": [rung_label(w) for w in f["width"]],
                            "cost ratio": [f"{x:.2f}x" for x in f["cost_ratio"]],
                            "seeds": f["n_seeds"].astype(str), "top-1 %": [_num(x) for x in f["top1_mean"]],
                            "frontier": [_num(x) for x in f["fitted"]],
                            "residual (pp)": [_num(x, "{:+.2f}") for x in f["residual"]]}
                           ).to_markdown(index=False, disable_numparse=True), ""]
    t = fit.table
    lines += [pd.DataFrame({
        "variant": [f"`{v}`" for v in t["variant"]],
        "cost ratio": [_num(x, "{:.2f}x") for x in t["cost_ratio"]],
        "seeds": t["n_seeds"].astype(str),
        "top-1 %": [_num(x) for x in t["top1_mean"]],
        "frontier at its cost": [_num(x) for x in t["frontier_top1"]],
        "Δ [95% CI]": [_interval(m, lo, hi) for m, lo, hi in zip(t["delta"], t["ci_low"], t["ci_high"])],
        "Holm p": [_pval(p) for p in t["p_holm"]],
        "MDD (pp)": [_num(x) for x in t["mdd"]],
        "inside ladder": ["yes" if x else "no" for x in t["inside_ladder"]],
    }).to_markdown(index=False, disable_numparse=True), "", _reading(fit), ""]
    if fit.skipped:
        lines += [f"No {label} for: {', '.join(f'`{v}`' for v in fit.skipped)}.", ""]
    return lines


def isocost_markdown(result: IsoCostResult, title: str, metric: str, machine: str, bench_file: str,
                     status: PlanStatus | None = None) -> str:
    """``isocost.md``: what the comparison is, then a section per axis."""
    ladder = result.axes[next(iter(result.axes))].frontier if result.axes else pd.DataFrame()
    widths = ", ".join(f"{w:g}" for w in ladder.get("width", [])) if len(ladder) else "?"
    mdd = pd.concat([a.table["mdd"] for a in result.axes.values()]).dropna() if result.axes else pd.Series()
    lines = [f"# {title}: each variant against the static ladder at its own cost", "",
             f"Ladder: `static` at widths {widths}. Metric: {metric} (%).", "",
             *_rule_lines(result, status),
             "**How to read it.** On each cost axis the static ladder's top-1 is fitted as a function of "
             "log2(cost / the narrowest static's): the *frontier*, what a static network of that cost gets. "
             "Δ is a variant's mean top-1 minus the frontier at the variant's own cost, for the same seeds "
             "(one least-squares fit of every result: the frontier, the seed as a block, and one term per "
             "variant). Its 95% interval carries both the variant's seed-to-seed spread and the frontier's "
             "uncertainty, with the residual SD pooled over the ladder and the variants. Holm p is adjusted "
             "over the variants compared on that axis. An interval that contains 0 says the design cannot "
             "tell the variant from a static network of the same cost; it does not say they are the same.",
             "",
             f"**Precision.** MDD is the smallest true Δ the design detects with 80% power at the 5% level "
             f"(two-sided): {_num(mdd.min())}-{_num(mdd.max())} pp across variants and axes." if len(mdd) else
             "**Precision.** No variant was compared.",
             "",
             "A variant whose cost lies outside the ladder's range is not compared (`inside ladder: no`): the "
             "frontier is never extrapolated. Parameters and MACs are counted; training time per image, "
             f"batch-1 latency and training peak memory come from one benchmark run (`{bench_file}`, "
             f"{machine or 'machine unknown'}): their ratios are that machine's.", ""]
    if result.axes:
        lines += _glance(result)
    for fit in result.axes.values():
        lines += _axis_section(fit)
    if result.missing_axes:
        lines += ["## Axes not compared", ""]
        lines += [f"- {AXES[a][1]}: {why}" for a, why in result.missing_axes.items()]
        lines += [""]
    return "\n".join(lines)


def isocost_plot(fit: AxisFit, path: Path, title: str, metric: str) -> Path:
    """Top-1 against cost ratio (log axis): the ladder's means, the frontier with its 95% band,
    each compared variant at its mean with its Δ interval drawn around it (outside the ladder:
    hollow, no interval). Drawn from the numbers at the CSVs' precision."""
    _, label, unit = AXES[fit.axis]
    fig = Figure(figsize=(7.0, 5.0))
    ax = fig.subplots()
    xs = np.linspace(fit.x_range[0], fit.x_range[1], 100)
    mean, lo, hi = ([round_float(y) for y in a] for a in frontier_band(fit, xs))
    ax.fill_between(2 ** xs, lo, hi, color="#bbbbbb", alpha=0.5, lw=0, label="static frontier, 95% band")
    ax.plot(2 ** xs, mean, "-", color="#555555", lw=1.2)
    f = rounded(fit.frontier)
    ax.scatter(f["cost_ratio"], f["top1_mean"], color="#333333", zorder=3, s=22, label="static ladder (mean)")
    t = rounded(fit.table[fit.table["cost"].notna()])
    inside = t[t["delta"].notna()]
    err = np.vstack([inside["delta"] - inside["ci_low"], inside["ci_high"] - inside["delta"]])
    ax.errorbar(inside["cost_ratio"], inside["top1_mean"], yerr=err, fmt="o", color="#1f77b4", capsize=3, ms=4,
                zorder=4, label="variant: mean, Δ's 95% interval")
    out = t[t["delta"].isna()]
    if len(out):
        ax.scatter(out["cost_ratio"], out["top1_mean"], facecolors="none", edgecolors="#1f77b4", s=24, zorder=4,
                   label="outside the ladder (not compared)")
    labels = [short_label(v) for v in t["variant"]]
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.set_xlabel(f"{label} as a multiple of the narrowest static (log scale)")
    ax.set_ylabel(f"{metric} (%)")
    note = SHORT_KEY if any(lab != str(v) for lab, v in zip(labels, t["variant"])) else ""
    ax.set_title(f"{title}: top-1 vs {label} ({unit})" + (f"\n{note}" if note else ""), fontsize=10)
    ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    rungs = [f"w={w:g}" for w in f["width"]]
    label_points(ax, [*f["cost_ratio"], *t["cost_ratio"]], [*f["top1_mean"], *t["top1_mean"]], rungs + labels,
                 colors=["#333333"] * len(rungs) + ["black"] * len(labels))
    return save_png(fig, path)


def write_isocost(out_dir: Path, result: IsoCostResult | None, title: str, metric: str, machine: str,
                  bench_file: str, status: PlanStatus | None = None) -> tuple[list[Path], str]:
    """Write (or, without a ladder, remove stale) iso-cost files; returns (the files written,
    one line for the console)."""
    files = report_layout(out_dir)
    plots = sorted(files.dir.glob(PLOT_GLOB))
    if result is None:
        for p in [files.report(n) for n in FILES] + plots:
            p.unlink(missing_ok=True)
        return [], NO_LADDER
    for p in plots:
        p.unlink()
    paths = [write_csv(result.table(), files.report("isocost.csv")),
             write_csv(result.frontier_table(), files.report("isocost_frontier.csv")), files.report("isocost.md")]
    paths[2].write_text(isocost_markdown(result, title, metric, machine, bench_file, status))
    for axis, fit in result.axes.items():
        paths.append(isocost_plot(fit, files.report(plot_name(axis)), title, metric))
    compared = result.table()
    n = compared["delta"].notna().sum()
    return paths, (f"iso-cost: {n} comparison(s) on {len(result.axes)} axis/axes against a ladder of "
                   f"{len(result.ladder)} widths -> {paths[2]}")
