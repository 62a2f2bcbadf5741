"""Learning curves of a sweep: validation top-1 after each epoch, per variant, from the
``val_history`` its trial records keep. They show whether the schedule was long enough: a
variant whose gap to ``static`` still moves in the last epochs would land elsewhere with
more of them, and one that fell behind early shows where."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

from lightning_modules.contract import VAL_TOP1

CURVE_COLUMNS = ["variant", "epoch", "n_seeds", "val_top1_mean", "val_top1_min", "val_top1_max", "reference",
                 "n_pairs", "paired_delta"]
VAL_KEY = VAL_TOP1  # the metric a record's ``val_history`` holds per epoch


def _per_seed(df: pd.DataFrame) -> dict[str, dict[Any, dict[int, float]]]:
    """variant -> seed -> epoch -> validation top-1 (%), from complete records' histories."""
    out: dict[str, dict[Any, dict[int, float]]] = {}
    if not len(df) or "val_history" not in df.columns:
        return out
    for _, r in df[df["status"] == "complete"].iterrows():
        hist = r["val_history"] if isinstance(r["val_history"], list) else []
        points = {int(h["epoch"]): 100.0 * float(h[VAL_KEY]) for h in hist
                  if isinstance(h, Mapping) and "epoch" in h and h.get(VAL_KEY) is not None
                  and np.isfinite(float(h[VAL_KEY]))}
        if points:
            out.setdefault(r["variant"], {})[r["seed"]] = points
    return out


def curves_table(df: pd.DataFrame, references: Mapping[str, str | None]) -> pd.DataFrame:
    """One row per (variant, epoch) with a validation result: over the seeds that reached that
    epoch, the mean, min and max of validation top-1 (%), and the mean difference to the
    variant's reference (``references``: variant -> e.g. ``static``; same seed, same epoch;
    ``n_pairs`` seeds), in percentage points. Variants in the order of ``references``, then any
    others. ``df``: the sweep's records frame, with the
    ``val_history`` column (a list of ``{"epoch", VAL_TOP1, ...}`` per record, ``VAL_TOP1`` =
    ``"val/acc_top1"`` of :mod:`lightning_modules.contract`)."""
    per = _per_seed(df)
    order = [v for v in references if v in per] + [v for v in per if v not in references]
    rows = []
    for variant in order:
        seeds = per[variant]
        ref = references.get(variant)
        ref_seeds = per.get(ref, {}) if ref and ref != variant else {}
        for epoch in sorted({e for hist in seeds.values() for e in hist}):
            vals = [h[epoch] for h in seeds.values() if epoch in h]
            diffs = [h[epoch] - ref_seeds[s][epoch] for s, h in seeds.items()
                     if epoch in h and s in ref_seeds and epoch in ref_seeds[s]]
            rows.append({"variant": variant, "epoch": epoch, "n_seeds": len(vals),
                         "val_top1_mean": float(np.mean(vals)), "val_top1_min": float(np.min(vals)),
                         "val_top1_max": float(np.max(vals)), "reference": ref if ref != variant else None,
                         "n_pairs": len(diffs), "paired_delta": float(np.mean(diffs)) if diffs else np.nan})
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


__all__ = ["curves_table", "CURVE_COLUMNS"]
