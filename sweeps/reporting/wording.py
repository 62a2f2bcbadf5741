"""The sentences a report makes from its numbers, with fixed wording rules, so that no sentence
says more than its interval allows:

- a comparison is *above* or *below* only when its adjusted p-value is under the family's alpha;
  otherwise it is *not distinguishable*, always with the smallest effect the design detects at
  80% power ("not distinguishable (the design detects 0.63 pp)"), never "no effect", "no gain",
  "equal" or "beats" (:data:`FORBIDDEN` lists what no generated sentence contains);
- counts are computed ("2 unadjusted 95% intervals exclude 0"), never typed;
- every number is written as the tables write it (two decimals for pp, three for p).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable

import pandas as pd

ABOVE, BELOW, NOT_DISTINGUISHABLE = "above", "below", "not distinguishable"
#: Words no generated sentence uses: each claims more than "not shown to differ".
FORBIDDEN = ("beats", "beat ", "no gain", "no effect", "no benefit", "equal to", "same as", "outperform",
             "proves", "no difference")
AXIS_WORDS = {"params": "parameters", "macs": "MACs", "train_time": "training time",
              "latency_b1": "batch-1 latency", "train_memory": "training memory"}


def pp(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:+.2f}"


def p_text(p: float) -> str:
    if p is None or math.isnan(p):
        return "p n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def interval(est: float, lo: float, hi: float) -> str:
    return f"{pp(est)} pp [{pp(lo)}, {pp(hi)}]"


def verdict(estimate: float, p_adjusted: float, alpha: float) -> str:
    """:data:`ABOVE`, :data:`BELOW` or :data:`NOT_DISTINGUISHABLE` (also without a test)."""
    if p_adjusted is None or math.isnan(p_adjusted) or not p_adjusted < alpha:
        return NOT_DISTINGUISHABLE
    return ABOVE if estimate > 0 else BELOW


def detects(mdd: float | Iterable[float]) -> str:
    """``the design detects 0.63 pp`` or ``... 0.63-1.30 pp`` (80% power)."""
    vals = [m for m in ([mdd] if isinstance(mdd, float) else list(mdd)) if m is not None and not math.isnan(m)]
    if not vals:
        return "the design's detectable effect is unknown"
    lo, hi = min(vals), max(vals)
    span = f"{lo:.2f}" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f}-{hi:.2f}"
    return f"the design detects {span} pp at 80% power"


def excluding_zero(table: pd.DataFrame) -> list[str]:
    """The rows whose unadjusted interval excludes 0 (``ci_low`` > 0 or ``ci_high`` < 0)."""
    t = table[table["ci_low"].notna()]
    return t[(t["ci_low"] > 0) | (t["ci_high"] < 0)]["variant"].tolist()


def _names(vs: list[str]) -> str:
    return ", ".join(f"`{v}`" for v in vs)


def count(n: int, one: str, many: str) -> str:
    """``1 is`` / ``3 are``: a count with the verb or noun that agrees with it."""
    return f"{n} {one if n == 1 else many}"


def axis_sentence(axis: str, table: pd.DataFrame, alpha: float = 0.05, correction: str = "Holm") -> str:
    """What one iso-cost axis's comparison says (``table``: its rows of ``isocost.csv``)."""
    comp = table[table["delta"].notna()]
    words = AXIS_WORDS.get(axis, axis)
    if not len(comp):
        return f"At equal {words}, no variant lies inside the static ladder's cost range: none is compared."
    v = [verdict(d, p, alpha) for d, p in zip(comp["delta"], comp["p_holm"])]
    above = comp[[x == ABOVE for x in v]]["variant"].tolist()
    below = comp[[x == BELOW for x in v]]["variant"].tolist()
    rest = comp[[x == NOT_DISTINGUISHABLE for x in v]]
    excl = excluding_zero(comp)
    hints = [r for r in rest.itertuples() if r.variant in excl]
    positive = int((comp["delta"] > 0).sum())
    parts = [f"At equal {words}, of {count(len(comp), 'variant', 'variants')} compared with the static frontier, "
             f"{count(len(above), 'lies', 'lie')} above it" + (f" ({_names(above)})" if above else "")
             + f" and {len(below)} below it at {correction} {alpha:.0%}"]
    if len(rest):
        parts.append(f"{count(len(rest), 'is', 'are')} not distinguishable from it ({detects(rest['mdd'])})")
    parts.append(f"{positive} of {len(comp)} Δs are positive")
    parts.append(f"{count(len(excl), 'unadjusted 95% interval excludes', 'unadjusted 95% intervals exclude')} 0"
                 + (f", {len(hints)} of them of variants not distinguishable after adjustment: " + ", ".join(
                     f"`{r.variant}` {interval(r.delta, r.ci_low, r.ci_high)} (adjusted {p_text(r.p_holm)})"
                     for r in hints) if hints else ""))
    outside = table[~table["inside_ladder"].astype(bool) & table["cost"].notna()]
    if len(outside):
        parts.append(f"{count(len(outside), 'lies', 'lie')} outside the ladder's range and "
                     f"{'is' if len(outside) == 1 else 'are'} not compared ({_names(outside['variant'].tolist())})")
    return "; ".join(parts) + "."


def study_lead(per_axis: dict[str, pd.DataFrame], alpha: float = 0.05) -> str:
    """One sentence over every axis: where any variant lies above the frontier, or that none does,
    with what the design can detect."""
    found, mdds = [], []
    for axis, t in per_axis.items():
        comp = t[t["delta"].notna()]
        mdds += comp["mdd"].dropna().tolist()
        above = [r.variant for r in comp.itertuples() if verdict(r.delta, r.p_holm, alpha) == ABOVE]
        if above:
            found.append(f"at equal {AXIS_WORDS.get(axis, axis)}: {_names(above)}")
    if found:
        return "Above the static frontier at Holm 5%: " + "; ".join(found) + "."
    span = detects(mdds).removeprefix("the design detects ")
    return (f"On none of the {len(per_axis)} cost axes compared does any variant lie above the static frontier "
            f"at Holm {alpha:.0%}; a gain smaller than the design detects ({span}) would go unseen.")


def contrast_variants(value: str | list[str]) -> list[str]:
    """The variants of a contrast as ``contrasts.csv`` holds them (a JSON list of labels)."""
    if isinstance(value, list):
        return list(value)
    try:
        names = json.loads(value)
    except (TypeError, ValueError):
        names = None
    if not isinstance(names, list) or not names:
        raise ValueError(f"contrasts.csv 'variants' must be a JSON list of variant labels, e.g. "
                         f'["odconv1x-channel", "odconv1x"]; got {value!r} (rerun `make results` to rewrite it)')
    return [str(v) for v in names]


def contrast_sentence(row: pd.Series | dict) -> str:
    """What one planned contrast says (a row of ``contrasts.csv``)."""
    r = dict(row)
    against = "the static frontier" if r["against"] == "frontier" else f"`{r['against']}`"
    names = contrast_variants(r["variants"])
    what = " and ".join([", ".join(f"`{v}`" for v in names[:-1]), f"`{names[-1]}`"] if len(names) > 1
                        else [f"`{names[0]}`"])
    pooled = " (pooled mean)" if len(names) > 1 else ""
    head = (f"{r['contrast']} ({r['role']}, {'pre-specified' if r['prespecified'] else 'exploratory'}): "
            f"{what}{pooled} against {against} at equal {AXIS_WORDS.get(r['axis'], r['axis'])}, "
            f"{int(r['n_seeds'])} seeds")
    if r.get("note") or r.get("estimate") is None or math.isnan(float(r.get("estimate", math.nan))):
        return f"{head}: not estimated ({r.get('note') or 'no estimate'})."
    adj = "" if r["correction"] == "none" else f", {r['correction'].capitalize()}-adjusted {p_text(r['p_adjusted'])}"
    v = verdict(float(r["estimate"]), float(r["p_adjusted"]), 0.05 if r.get("alpha") is None else r["alpha"])
    tail = v if v != NOT_DISTINGUISHABLE else f"{v} from it ({detects(float(r['mdd']))})"
    done, planned = (float(r.get(k, math.nan)) for k in ("n_results", "n_results_planned"))
    if done < planned:  # an interim look: the plan's test is on all its results, so no verdict yet
        tail = f"interim ({int(done)} of the {int(planned)} results the plan names), no verdict before the last"
    return f"{head}: {interval(r['estimate'], r['ci_low'], r['ci_high'])}, {p_text(r['p'])}{adj}: {tail}."


def family_sentence(title: str, per_axis: dict[str, pd.DataFrame], alpha: float = 0.05,
                    correction: str = "Holm") -> str:
    """Where one conv family's variants lie against the static frontier, axis by axis
    (``per_axis``: each axis's rows of ``isocost.csv`` for this family's variants only), with
    the same verdict rule as :func:`axis_sentence`."""
    variants: list[str] = list(dict.fromkeys(v for t in per_axis.values() for v in t["variant"]))
    seeds = sorted({int(n) for t in per_axis.values() for n in t["n_seeds"].dropna()})
    n = len(variants)
    seed_text = ("seeds n/a" if not seeds else count(seeds[0], "seed", "seeds") + (" each" if n > 1 else "")
                 if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]} seeds")

    def group(names: list[str], what: str, note: str = "") -> str:
        """``2 below it (`a`, `b`)``; ``all 3 below it`` (``both below it``) when the whole family
        is there; ``below it`` for a family of one variant."""
        listed = [] if len(names) == n else [_names(names)]
        inner = "; ".join(listed + ([note] if note else []))
        whole = what if n == 1 else f"both {what}" if n == 2 else f"all {n} {what}"
        head = whole if not listed else f"{len(names)} {what}"
        return head + (f" ({inner})" if inner else "")

    parts, any_above = [], False
    for axis, t in per_axis.items():
        comp = t[t["delta"].notna()]
        v = {r.variant: verdict(r.delta, r.p_holm, alpha) for r in comp.itertuples()}
        above = [x for x, w in v.items() if w == ABOVE]
        below = [x for x, w in v.items() if w == BELOW]
        rest = [x for x, w in v.items() if w == NOT_DISTINGUISHABLE]
        outside = t[~t["inside_ladder"].astype(bool) & t["cost"].notna()]["variant"].tolist()
        any_above = any_above or bool(above)
        bits = []
        if above:
            bits.append(group(above, "above it"))
        if below:
            bits.append(group(below, "below it"))
        if rest:
            mdd = comp[comp["variant"].isin(rest)]["mdd"]
            bits.append(group(rest, "not distinguishable from it", detects(mdd)))
        if outside:
            bits.append(group(outside, "outside the ladder's range, not compared"))
        if bits:
            parts.append(f"at equal {AXIS_WORDS.get(axis, axis)}, " + ", ".join(bits))
    head = f"{title} ({_names(variants)}{', ' if n == 1 else '; '}{seed_text})"
    if not parts:
        return f"{head}: not compared on any axis."
    tail = "" if any_above else "; above it on no axis"
    return (f"{head}, against the static frontier at {correction} {alpha:.0%}: " + "; ".join(parts) + tail + ".")
