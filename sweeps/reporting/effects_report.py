"""``effects.md`` and the factorial's files of ``odconv-sweep results``, from the frames of
:mod:`sweeps.reporting.attentions`: the main effects and interactions of ODConv's attentions
per factorial group, the results flagged as outlying and the refit without them, and the
conditional effects where two attentions interact (:func:`write_effects`). ``summary.md``
repeats the effects (:func:`effects_body`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ..definition import SweepDef
from ..layout import report_layout
from .attentions import INTERACTION_SCREEN_P, OUTLIER_ALPHA, EffectsResult
from .formats import ci_text, fmt, md_table, p_text, write_csv, write_or_remove
from .plots import effects_plot

EFFECTS_DEFINITION = (
    "Linear model (statsmodels OLS) of top-1 (%) on the four attentions, each coded −1 (off) / +1 (on), "
    "and their six two-way interactions, with the seed as a block (a categorical term: a seed's data order "
    "and augmentation shift every variant alike). `static` is the cell with all four off; `kernel` on is n "
    "kernels with kernel attention, off is 1 kernel. **Main effect** = 2 × coefficient = the average change "
    "in top-1 (percentage points) from switching that attention on, averaged over the other attentions' "
    "settings. **Interaction `a:b`** = 2 × coefficient = half the difference between a's effect with b on "
    "and a's effect with b off. Three- and four-way interactions are left in the residual. 95% CI: t "
    "interval on the residual degrees of freedom; p: two-sided t-test of effect = 0 (not adjusted).")


def effects_body(effects: EffectsResult) -> list[str]:
    """The definition of the effects and a table per factorial group (``effects.md`` and a section
    of ``summary.md``)."""
    lines = [EFFECTS_DEFINITION, ""]
    if not len(effects.table):
        return lines + [f"{effects.notes[0] if effects.notes else 'n/a'}", ""]
    for g in effects.groups:
        note = next((x for x in effects.notes if x.startswith((g.label or "all") + ":")), "")
        t = effects.table[effects.table["group"] == g.label]
        lines += [f"### {g.label or 'all'}", "", note, ""]
        if len(t):
            lines += [_effects_table_md(t), ""]
        lines += _outlier_lines(effects, g.label)
    return lines


def _effects_table_md(t: pd.DataFrame) -> str:
    return md_table(pd.DataFrame([{"term": r["term"],
                                   "effect (pp) [95% CI]": ci_text(r["estimate"], r["ci_low"], r["ci_high"]),
                                   "SE": fmt(r["se"]), "p": p_text(r["p_value"])} for _, r in t.iterrows()]))


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
             md_table(pd.DataFrame([{"variant": f"`{r['variant']}`", "seed": str(r["seed"]), "top-1 %": fmt(r["top1"]),
                                     "residual (pp)": fmt(r["residual"], "{:+.2f}"),
                                     "studentized residual": fmt(r["student_resid"], "{:+.1f}"),
                                     "Bonferroni p": p_text(r["p_bonferroni"])} for _, r in out.iterrows()])), "",
             "They stay in the estimates above (a run that trains badly is part of what its variant does); "
             "refitted without them, as a check of how much the reading rests on them:", ""]
    t = effects.without_outliers[effects.without_outliers["group"] == label]
    if not len(t):
        return lines + ["n/a: without them the model cannot be estimated.", ""]
    r0 = t.iloc[0]
    return lines + [f"without the outlying results: {int(r0['n_obs'])} results, residual SD {fmt(r0['resid_sd'])} pp "
                    f"on {fmt(r0['df_resid'], '{:g}')} df", "", _effects_table_md(t), ""]


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
    "two-sided, not adjusted. Every row, to 10 significant digits: `conditional_effects.csv`.")


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
                     "interaction (p)": f"`{interaction}` ({p_text(off['interaction_p'])})",
                     "effect of": factor, "given": off["given"],
                     "given off [95% CI]": ci_text(off["estimate"], off["ci_low"], off["ci_high"]),
                     "given on [95% CI]": ci_text(on["estimate"], on["ci_low"], on["ci_high"]),
                     "p (off / on)": f"{p_text(off['p_value'])} / {p_text(on['p_value'])}",
                     "main effect": fmt(off["main_effect"], "{:+.2f}")})
    return lines + [md_table(pd.DataFrame(rows)), ""]


def effects_markdown(sweep: SweepDef, effects: EffectsResult, power: dict[str, Any],
                     conditional: pd.DataFrame | None = None) -> str:
    """``effects.md``: definition, precision and one table per factorial group (or why n/a), then
    the conditional effects of the interactions that pass the screen (``conditional``:
    :func:`sweeps.reporting.attentions.conditional_effects_table`)."""
    parts = [f"# Sweep `{sweep.name}`: factorial effects of the ODConv attentions", ""]
    parts += effects_body(effects)
    if effects.groups:
        parts += [f"Smallest effect this design detects (80% power, two-sided 5%): "
                  f"{fmt(power.get('mdd_main_effect'))} pp.", ""]
    if conditional is not None:
        parts += _conditional_lines(effects, conditional)
    if len(effects.table):
        parts += ["![factorial effects](effects.png)", ""]
    return "\n".join(parts)


def write_effects(out_dir: Path, sweep: SweepDef, effects: EffectsResult, conditional: pd.DataFrame,
                  power: dict[str, Any]) -> list[Path]:
    """``effects.csv``, ``conditional_effects.csv`` (header only without a factorial or a
    screened interaction), ``effects.md``, ``effects.png`` (with a factorial fit), and while a
    result is flagged ``outliers.csv`` and ``effects_without_outliers.csv``."""
    files = report_layout(out_dir)
    written = [write_csv(effects.table, files.report("effects.csv")),
               write_csv(conditional, files.report("conditional_effects.csv"))]
    md = files.report("effects.md")
    md.write_text(effects_markdown(sweep, effects, power, conditional))
    written.append(md)
    for name, table in (("outliers.csv", effects.outliers), ("effects_without_outliers.csv", effects.without_outliers)):
        written += write_or_remove(table, files.report(name), bool(len(table)))
    plot = files.report("effects.png")
    if len(effects.table):
        written.append(effects_plot(_effects_plot_table(effects), plot, sweep.name))
    else:
        plot.unlink(missing_ok=True)  # from an earlier run that had a factorial
    return written


__all__ = ["EFFECTS_DEFINITION", "CONDITIONAL_DEFINITION", "effects_body", "effects_markdown", "write_effects"]
