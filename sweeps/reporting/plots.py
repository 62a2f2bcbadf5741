"""Plots of ``odconv-sweep results`` (matplotlib figures drawn without pyplot, so no backend is
chosen or switched), drawn from the tables that :mod:`sweeps.reporting.analysis` and
:mod:`sweeps.reporting.attentions` computed (called from :mod:`sweeps.reporting.tables` and
:mod:`sweeps.reporting.effects_report`), at the precision of the CSVs
(:func:`sweeps.reporting.formats.rounded`) and saved without metadata
(:func:`sweeps.reporting.formats.save_png`); nothing is computed here but the layout.

- ``accuracy_bars.png``: top-1 mean ± std over seeds per variant (``*``: seeds missing).
- ``accuracy_vs_params.png`` / ``accuracy_vs_train_time.png``: top-1 against parameters and
  against measured training time per image, the Pareto front (no other variant is both at
  least as accurate and at most as costly) drawn as a line through ringed points.
- ``accuracy_vs_macs.png``: top-1 against MACs per image.
- ``effects.png``: each factorial effect with its 95% interval (:func:`effects_plot`).
- ``val_curves.png``: validation top-1 per epoch and its gap to ``static`` (:func:`curves_plot`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..layout import report_layout
from .formats import rounded, save_png

_ODCONV = re.compile(r"^odconv(\d+)x(?:-((?:channel|filter|spatial|kernel)(?:\+(?:channel|filter|spatial|kernel))*))?$")
_WIDTH = re.compile(r'model_options=\{"width":\s*([0-9.eE+-]+)\}')   # a static ladder's rung
SHORT_KEY = "nx = n kernels; c, f, s, k = channel, filter, spatial, kernel attention"


def short_label(variant: str) -> str:
    """A scatter label that fits beside its point: an ODConv spec as kernels and attention
    initials (``odconv4x-channel+kernel`` -> ``4x ck``, ``odconv1x`` -> ``1x cfs``) and a grid's
    width option as ``w=`` (``static model_options={"width":0.25}`` -> ``static w=0.25``); any
    other variant unchanged."""
    spec, _, rest = str(variant).partition(" ")
    rest = _WIDTH.sub(r"w=\1", rest)
    m = _ODCONV.match(spec)
    if m:
        n, atts = m.group(1), m.group(2)
        if atts is None:  # the full spec: every attention, kernel attention only with several kernels
            atts = "channel+filter+spatial" + ("+kernel" if n != "1" else "")
        spec = f"{n}x {''.join(a[0] for a in ('channel', 'filter', 'spatial', 'kernel') if a in atts.split('+'))}"
    return f"{spec} {rest}" if rest else spec


def label_points(ax: Any, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str], fontsize: float = 7,
                 gap: float = 1.0, colors: Sequence[str] | None = None) -> list[Any]:
    """Write each label beside its point (data coordinates) so that no two labels overlap: a
    lone label goes up and right of its point (left of it at the axes' right edge); labels
    that would collide are stacked in a column beside their points, in the order of the points'
    heights, each joined to its point by a thin line. Call it once the axes' limits, scales and
    layout are final (after ``fig.tight_layout()``): the offsets are computed from where the
    points are drawn. ``colors``: one text colour per label (default: matplotlib's). Returns
    the annotations."""
    fig = ax.figure
    n = len(labels)
    if n == 0:
        return []
    pts = ax.transData.transform(np.column_stack([np.asarray(xs, float), np.asarray(ys, float)])) * 72 / fig.dpi
    height = fontsize * 1.4 + gap                        # points: a label's box (descenders included) plus the gap
    widths = np.array([fontsize * 0.62 * len(str(lab)) + 2 for lab in labels])
    box = ax.get_window_extent()
    right, bottom, top = box.x1 * 72 / fig.dpi, box.y0 * 72 / fig.dpi, box.y1 * 72 / fig.dpi
    x0 = np.where(pts[:, 0] + 4 + widths > right, pts[:, 0] - 4 - widths, pts[:, 0] + 4)
    y0 = pts[:, 1] + 3
    stacked = np.zeros(n, bool)
    parent = list(range(n))                              # union-find: groups of colliding labels

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for _ in range(n):                                   # merge colliding groups, restack, until none collide
        merged = False
        for i in range(n):
            for j in range(i + 1, n):
                if root(i) != root(j) and abs(y0[i] - y0[j]) < height and \
                        x0[i] < x0[j] + widths[j] and x0[j] < x0[i] + widths[i]:
                    parent[root(j)] = root(i)
                    merged = True
        if not merged:
            break
        groups: dict[int, list[int]] = {}
        for i in range(n):
            groups.setdefault(root(i), []).append(i)
        for members in groups.values():
            if len(members) < 2:
                continue
            m = np.array(members)[np.argsort(pts[members, 1], kind="stable")]
            col = pts[m, 0].max() + 8
            if col + widths[m].max() > right:            # no room on the right: the column goes left
                col = pts[m, 0].min() - 8 - widths[m].max()
            want = pts[m, 1] - height / 2 + gap / 2
            stack = want.copy()
            for k in range(1, len(m)):
                stack[k] = max(want[k], stack[k - 1] + height)
            stack += (want - stack).mean()
            stack += max(0.0, bottom - stack[0]) - max(0.0, stack[-1] + height - top)   # inside the axes
            x0[m], y0[m], stacked[m] = col, stack, True
    return [ax.annotate(str(lab), (x, y), xytext=(x0[i] - pts[i, 0], y0[i] - pts[i, 1]), textcoords="offset points",
                        fontsize=fontsize, va="bottom", ha="left", color=None if colors is None else colors[i],
                        arrowprops=dict(arrowstyle="-", color="#999999", lw=0.5, shrinkA=0, shrinkB=2)
                        if stacked[i] else None)
            for i, (lab, x, y) in enumerate(zip(labels, xs, ys))]


def _bars(summary: pd.DataFrame, path: Path, title: str, metric: str) -> None:
    s = summary.dropna(subset=["top1_mean"])
    fig = Figure(figsize=(max(5.0, 0.45 * len(summary) + 2), 4.2))
    ax = fig.subplots()
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
    save_png(fig, path)


def _scatter(summary: pd.DataFrame, col: str, scale: float, xlabel: str, path: Path, title: str, metric: str,
             pareto_col: str | None = None, note: str = "") -> None:
    t = summary.dropna(subset=["top1_mean", col])
    fig = Figure(figsize=(6.6, 4.8))
    ax = fig.subplots()
    ax.errorbar(t[col] / scale, t["top1_mean"], yerr=t["top1_std"].fillna(0), fmt="o", capsize=3, zorder=2)
    labels = [short_label(v) for v in t["variant"]]
    if any(label != str(v) for label, v in zip(labels, t["variant"])):
        note = "\n".join(x for x in (note, SHORT_KEY) if x)
    if pareto_col and pareto_col in t.columns:
        front = t[t[pareto_col].astype(bool)].sort_values(col)
        if len(front):
            ax.plot(front[col] / scale, front["top1_mean"], "-", color="#d62728", lw=1, zorder=1)
            ax.scatter(front[col] / scale, front["top1_mean"], s=140, facecolors="none", edgecolors="#d62728",
                       label="Pareto front", zorder=3)
            ax.legend(loc="best", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{metric} (%, mean ± std)")
    ax.set_title(f"{title}: accuracy vs {xlabel}" + (f"\n{note}" if note else ""), fontsize=10)
    if not len(t):
        ax.text(0.5, 0.5, f"no {xlabel} recorded", transform=ax.transAxes, ha="center")
    fig.tight_layout()
    label_points(ax, t[col] / scale, t["top1_mean"], labels)
    save_png(fig, path)


def make_plots(summary: pd.DataFrame, out_dir: Path, title: str, metric: str, time_note: str = "",
               time_col: str = "train_ms_per_image") -> list[Path]:
    """Write the accuracy plots of ``summary`` (a :func:`sweeps.reporting.analysis.summary_table`) to
    ``out_dir``; the training-time plot uses column ``time_col`` (ms per image) and prints
    ``time_note`` (where the times were measured) under its title."""
    files = report_layout(out_dir)
    summary = rounded(summary)
    paths = [files.report("accuracy_bars.png")]
    _bars(summary, paths[-1], title, metric)
    for col, scale, label, fname, front, note in (
            ("params_count", 1e6, "params (M)", "accuracy_vs_params.png", "pareto_params", ""),
            (time_col, 1.0, "train time per image (ms)", "accuracy_vs_train_time.png",
             "pareto_train_time", time_note),
            ("macs", 1e6, "MACs per image (M)", "accuracy_vs_macs.png", None, "")):
        if col not in summary.columns:
            continue
        paths.append(files.report(fname))
        _scatter(summary, col, scale, label, paths[-1], title, metric, front, note)
    return paths


def curves_plot(curves: pd.DataFrame, path: Path, title: str) -> Path:
    """Learning curves (``curves``: :func:`sweeps.reporting.curves.curves_table`): validation top-1 per
    epoch, mean over seeds (left), and the mean paired difference to the reference (right),
    one line per variant, the reference in black."""
    curves = rounded(curves)
    fig = Figure(figsize=(12.5, 4.6))
    left, right = fig.subplots(1, 2, sharex=True)
    variants = list(dict.fromkeys(curves["variant"]))
    refs = set(curves["reference"].dropna())
    cmap = matplotlib.colormaps["tab20"]
    others = [v for v in variants if v not in refs]
    for v in variants:
        c = curves[curves["variant"] == v].sort_values("epoch")
        is_ref = v in refs
        style = dict(color="black", lw=2.2, zorder=3) if is_ref else dict(color=cmap(others.index(v) % 20), lw=1)
        left.plot(c["epoch"] + 1, c["val_top1_mean"], label=short_label(v), **style)
        if not is_ref and c["paired_delta"].notna().any():
            right.plot(c["epoch"] + 1, c["paired_delta"], **style)
    right.axhline(0, color="black", lw=2.2, zorder=3)
    left.set_xlabel("epochs trained")
    right.set_xlabel("epochs trained")
    left.set_ylabel("validation top-1 (%, mean over seeds)")
    right.set_ylabel("minus the reference's, same seed (pp)")
    ref_name = ", ".join(sorted(refs)) or "reference"
    left.set_title(f"{title}: validation top-1 per epoch", fontsize=10)
    right.set_title(f"gap to {ref_name} per epoch (mean over paired seeds)", fontsize=10)
    fig.legend(loc="center right", fontsize=7, title_fontsize=6,
               title="nx: n kernels\nc f s k: channel, filter,\nspatial, kernel attention")
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    return save_png(fig, path)


def effects_plot(effects: pd.DataFrame, path: Path, title: str) -> Path:
    """Horizontal interval plot of ``effects`` (columns ``term, estimate, ci_low, ci_high`` and
    optionally ``group``): one row per term, one marker per group, a line at zero."""
    effects = rounded(effects)
    terms = list(dict.fromkeys(effects["term"]))
    groups = list(dict.fromkeys(effects["group"])) if "group" in effects.columns else [""]
    fig = Figure(figsize=(6.6, 0.38 * len(terms) * max(1, len(groups)) + 1.6))
    ax = fig.subplots()
    step = 0.8 / max(1, len(groups))
    for gi, g in enumerate(groups):
        e = effects[effects["group"] == g] if "group" in effects.columns else effects
        y = [terms.index(t) + (gi - (len(groups) - 1) / 2) * step for t in e["term"]]
        ax.errorbar(e["estimate"], y, xerr=[e["estimate"] - e["ci_low"], e["ci_high"] - e["estimate"]], fmt="o",
                    capsize=3, label=g or None)
    ax.axvline(0, color="#888888", lw=1)
    ax.set_yticks(range(len(terms)))
    ax.set_yticklabels(terms, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("effect on top-1 (percentage points), 95% CI")
    ax.set_title(f"{title}: factorial effects of the ODConv attentions", fontsize=10)
    if len(groups) > 1:  # below the axes: inside, it would cover some term's interval
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=min(2, len(groups)))
    fig.tight_layout()
    return save_png(fig, path, bbox_inches="tight")


__all__ = ["make_plots", "effects_plot", "curves_plot", "short_label", "label_points", "SHORT_KEY"]
