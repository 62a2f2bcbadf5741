"""How the report writes its numbers, so that a file changes only when a result does.

- CSVs: every float in one format, :data:`CSV_FLOAT_FORMAT` (:func:`write_csv`); the plots
  draw the numbers at that precision (:func:`rounded`).
- PNGs: no metadata that names the software's version (:func:`save_png`); with the rounding
  above, the same results give the same bytes.
- Markdown: numbers in the tables' text formats (:func:`fmt`, :func:`ci_text`, :func:`p_text`)
  and GitHub tables (:func:`md_table`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: The format of every float a CSV of the report holds: 10 significant digits (``82.35250115``,
#: ``176402``, ``3.318055139e-13``). Floating-point rounding makes the same computation differ
#: between CPUs and BLAS builds by up to ~1e-11 relative (an effect of 0.011 pp computed from
#: means near 80 carries an absolute error of ~1e-13), so 10 digits absorb it, while a p-value of
#: 1e-12 keeps its digits (a fixed number of decimals would not). -0 is written 0.
CSV_FLOAT_FORMAT = "%.10g"


def format_float(x: float) -> str:
    """``x`` in :data:`CSV_FLOAT_FORMAT` (a negative zero written as 0)."""
    return CSV_FLOAT_FORMAT % (float(x) + 0.0)


def round_float(x: Any) -> Any:
    """``x`` at the precision of :data:`CSV_FLOAT_FORMAT` when it is a finite float; anything
    else (NaN, inf, other types) as is."""
    if isinstance(x, (float, np.floating)) and math.isfinite(x):
        return float(format_float(x))
    return x


def rounded(table: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``table`` with every float (in float columns and among an object column's
    values) at the CSVs' precision (:func:`round_float`): what a plot draws."""
    out = table.copy()
    for col in out.columns:
        kind = out[col].dtype.kind
        if kind == "f":
            out[col] = out[col].map(round_float).astype(out[col].dtype)
        elif kind == "O":
            out[col] = out[col].map(round_float)
    return out


def write_csv(table: pd.DataFrame, path: Path) -> Path:
    """Write ``table`` (no index) to ``path``, every float in :data:`CSV_FLOAT_FORMAT` (float
    columns, and floats among an object column's values); returns the path."""
    out = table.copy()
    for col in out.columns:
        kind = out[col].dtype.kind
        if kind == "f":
            out[col] = out[col] + 0.0  # no negative zero
        elif kind == "O":
            out[col] = out[col].map(lambda x: format_float(x) if isinstance(x, (float, np.floating))
                                    and math.isfinite(x) else x)
    out.to_csv(path, index=False, float_format=CSV_FLOAT_FORMAT)
    return path


def write_or_remove(table: pd.DataFrame, path: Path, keep: bool) -> list[Path]:
    """Write ``table`` to ``path`` (:func:`write_csv`) when ``keep``; else remove an earlier
    run's file there, which no longer describes these results."""
    if keep:
        return [write_csv(table, path)]
    path.unlink(missing_ok=True)
    return []


def save_png(fig: Any, path: Path, **kwargs: Any) -> Path:
    """Save matplotlib figure ``fig`` as a PNG at 120 dpi without the ``Software`` text chunk
    (matplotlib's version), so that the bytes depend on the drawing only; returns the path."""
    fig.savefig(path, dpi=120, metadata={"Software": None}, **kwargs)
    return path


# --- markdown -------------------------------------------------------------------------------

def fmt(x: Any, spec: str = "{:.2f}", nan: str = "n/a") -> str:
    """``x`` in format ``spec``; ``nan`` for None or NaN."""
    if x is None or (isinstance(x, (float, np.floating)) and math.isnan(x)):
        return nan
    return spec.format(x)


def md_table(frame: pd.DataFrame) -> str:
    """A GitHub markdown table of ``frame`` (strings as given; pandas + tabulate)."""
    return frame.to_markdown(index=False, disable_numparse=True)


def ci_text(m: Any, lo: Any, hi: Any) -> str:
    """``+0.52 [-0.10, +1.14]``: an estimate and its interval, signed, in pp; n/a without it."""
    if m is None or pd.isna(m):
        return "n/a"
    return f"{fmt(m, '{:+.2f}')} [{fmt(lo, '{:+.2f}')}, {fmt(hi, '{:+.2f}')}]"


def p_text(p: Any) -> str:
    """A p-value for a table: ``0.053``, ``<0.001``, n/a."""
    if p is None or pd.isna(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


__all__ = ["CSV_FLOAT_FORMAT", "format_float", "round_float", "rounded", "write_csv", "write_or_remove", "save_png",
           "fmt", "md_table", "ci_text", "p_text"]
