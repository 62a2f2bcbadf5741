"""The statistics of ``odconv-sweep results`` on plain numbers (nothing here knows a sweep);
the linear models (factorial effects, seed blocks) are :mod:`sweeps.reporting.linear_models`'s.

Every test and interval comes from scipy or statsmodels:

- :func:`welch_ci` / :func:`mean_ci` / :func:`paired_diff`: ``scipy.stats.ttest_ind``
  (``equal_var=False``), ``ttest_1samp`` and ``ttest_rel`` with their ``confidence_interval``.
- :func:`holm`: ``statsmodels.stats.multitest.multipletests(method="holm")``.
- :func:`mdd_paired`, :func:`mdd_two_sample`, :func:`mdd_t`: the smallest true difference
  detected with a given power, from ``statsmodels.stats.power``
  (:func:`sweeps.reporting.linear_models.effect_standard_errors` gives a planned factorial's
  effect standard errors for :func:`mdd_t`).
- :func:`ci_halfwidth_paired`, :func:`ci_halfwidth_two_sample`: the planned half-width of an
  interval from a standard deviation and a number of seeds (``scipy.stats.t``).
- :func:`pooled_sd`, :func:`pareto_front`.

Values missing or too few for a statistic give NaN, never an exception.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import optimize, stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower, TTestPower

NAN = float("nan")


def _finite(xs: Iterable[float | None]) -> np.ndarray:
    a = np.asarray([np.nan if x is None else float(x) for x in xs], dtype=float)
    return a[np.isfinite(a)]


@contextmanager
def _quiet():
    """scipy's t-tests warn on constant or near-constant samples (a RuntimeWarning, "Precision
    loss occurred in moment calculation due to catastrophic cancellation"), where they still
    return the right answer (a zero-width interval; p = 0 or NaN): keep the tables' output clean
    of that one warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Precision loss occurred in moment calculation",
                                category=RuntimeWarning)
        yield


def t_ppf(q: float, df: float) -> float:
    """Quantile ``q`` of Student's t with ``df`` degrees of freedom (``scipy.stats.t.ppf``)."""
    return float(stats.t.ppf(q, df))


def t_sf(x: float, df: float) -> float:
    """Upper tail ``P(T > x)`` of Student's t with ``df`` degrees of freedom (``scipy.stats.t.sf``)."""
    return float(stats.t.sf(x, df))


def welch_ci(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean(a) - mean(b), CI low, CI high) from Welch's unequal-variance t.

    NaN bounds when a side has fewer than 2 values."""
    a, b = _finite(a), _finite(b)
    if len(a) == 0 or len(b) == 0:
        return NAN, NAN, NAN
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return diff, NAN, NAN
    with _quiet():
        ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(confidence_level=level)
    return diff, float(ci.low), float(ci.high)


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of Welch's t-test (NaN with fewer than 2 values on a side)."""
    a, b = _finite(a), _finite(b)
    if len(a) < 2 or len(b) < 2:
        return NAN
    with _quiet():
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def mean_ci(x: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, CI low, CI high) of the mean from the one-sample t; NaN bounds with < 2 values."""
    x = _finite(x)
    if len(x) == 0:
        return NAN, NAN, NAN
    m = float(x.mean())
    if len(x) < 2:
        return m, NAN, NAN
    with _quiet():
        ci = stats.ttest_1samp(x, 0.0).confidence_interval(confidence_level=level)
    return m, float(ci.low), float(ci.high)


@dataclass(frozen=True)
class Paired:
    """Paired comparison of a row with its reference over the seeds both have."""

    n: int            # seeds with a value on both sides
    mean: float       # mean of (row - reference) over those seeds
    sd: float         # standard deviation of the differences (ddof=1)
    ci_low: float
    ci_high: float
    p: float          # two-sided p-value of the paired t-test


def paired_diff(a: Mapping[object, float], b: Mapping[object, float], level: float = 0.95) -> Paired:
    """Paired t of ``a`` minus ``b``: both map a seed to a value; only seeds in both count.

    The interval and p-value are ``scipy.stats.ttest_rel``'s (NaN with fewer than 2 pairs; when
    every difference is the same, a zero-width interval and p = 0, or NaN if they are all 0)."""
    seeds = [s for s in a if s in b and np.isfinite(_f(a[s])) and np.isfinite(_f(b[s]))]
    x = np.asarray([_f(a[s]) for s in seeds])
    y = np.asarray([_f(b[s]) for s in seeds])
    n = len(seeds)
    if n == 0:
        return Paired(0, NAN, NAN, NAN, NAN, NAN)
    d = x - y
    m = float(d.mean())
    if n < 2:
        return Paired(1, m, NAN, NAN, NAN, NAN)
    with _quiet():
        r = stats.ttest_rel(x, y)
        ci = r.confidence_interval(confidence_level=level)
    return Paired(n, m, float(d.std(ddof=1)), float(ci.low), float(ci.high), float(r.pvalue))


def _f(x: object) -> float:
    try:
        return float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return NAN


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values (family = the finite entries; NaN entries stay NaN)."""
    p = np.asarray([_f(x) for x in pvalues], dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="holm")[1]
    return out


def pooled_sd(groups: Iterable[Sequence[float]]) -> tuple[float, int]:
    """(pooled standard deviation, its degrees of freedom) over groups with >= 2 values:
    sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1)). (NaN, 0) when no group has 2 values."""
    ss, df = 0.0, 0
    for g in groups:
        x = _finite(g)
        if len(x) >= 2:
            ss += float(((x - x.mean()) ** 2).sum())
            df += len(x) - 1
    return (math.sqrt(ss / df), df) if df else (NAN, 0)


# --- power: the smallest detectable difference -----------------------------------------------

def mdd_paired(sd_diff: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true mean difference a two-sided paired t-test over ``n`` pairs detects with
    ``power`` at level ``alpha``, when the differences have standard deviation ``sd_diff``."""
    if n < 2 or not np.isfinite(sd_diff):
        return NAN
    es = TTestPower().solve_power(effect_size=None, nobs=n, alpha=alpha, power=power, alternative="two-sided")
    return float(es) * sd_diff


def mdd_two_sample(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true difference of means a two-sided two-sample t-test with ``n`` values per
    side detects with ``power`` at level ``alpha`` (common standard deviation ``sd``)."""
    if n < 2 or not np.isfinite(sd):
        return NAN
    es = TTestIndPower().solve_power(effect_size=None, nobs1=n, ratio=1.0, alpha=alpha, power=power,
                                     alternative="two-sided")
    return float(es) * sd


def ci_halfwidth_paired(sd_diff: float, n: int, level: float = 0.95) -> float:
    """Half-width of the ``level`` t interval of a mean paired difference over ``n`` pairs whose
    differences have standard deviation ``sd_diff`` (what :func:`paired_diff` reports)."""
    if n < 2 or not np.isfinite(sd_diff):
        return NAN
    return t_ppf(0.5 + level / 2, n - 1) * sd_diff / math.sqrt(n)


def ci_halfwidth_two_sample(sd: float, n: int, level: float = 0.95) -> float:
    """Half-width of the ``level`` t interval of a difference of two means of ``n`` values each
    with common standard deviation ``sd`` (pooled, 2n - 2 df; Welch's equals it when the two
    sample SDs are equal)."""
    if n < 2 or not np.isfinite(sd):
        return NAN
    return t_ppf(0.5 + level / 2, 2 * n - 2) * sd * math.sqrt(2.0 / n)


def mdd_t(se: float, df: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true value of an estimate with standard error ``se`` on ``df`` degrees of
    freedom (e.g. a factorial effect) that a two-sided t-test at level ``alpha`` detects with
    ``power``: the noncentrality ``value / se`` at which statsmodels' ``TTestPower`` (one
    observation, ``effect_size = value / se``, the estimate's ``df``) reaches ``power``."""
    if not df or df < 1 or not np.isfinite(se) or not np.isfinite(df):
        return NAN
    tp = TTestPower()

    def gap(nc: float) -> float:
        pw = float(tp.power(nc, nobs=1, alpha=alpha, df=df, alternative="two-sided"))
        # the noncentral t's far tail comes back NaN where the power is 1 to machine precision
        # (statsmodels 0.15 / scipy 1.17); power rises with the effect, so NaN here means 1
        return (1.0 if math.isnan(pw) else pw) - power

    hi = 1.0  # grows from below the answer: the bracket never reaches that far tail
    while gap(hi) < 0:
        hi *= 2
        if hi > 1e6:
            return NAN
    return float(optimize.brentq(gap, 1e-9, hi, xtol=1e-12)) * se


# --- cost -----------------------------------------------------------------------------------

def pareto_front(cost: Sequence[float], value: Sequence[float]) -> np.ndarray:
    """Boolean mask of the points no other point dominates (lower-or-equal cost and
    higher-or-equal value, one of them strictly). NaN points are never on the front."""
    c = np.asarray([_f(x) for x in cost], dtype=float)
    v = np.asarray([_f(x) for x in value], dtype=float)
    ok = np.isfinite(c) & np.isfinite(v)
    front = np.zeros(len(c), dtype=bool)
    for i in np.flatnonzero(ok):
        dominated = ok & (c <= c[i]) & (v >= v[i]) & ((c < c[i]) | (v > v[i]))
        front[i] = not dominated.any()
    return front


__all__ = ["NAN", "t_ppf", "welch_ci", "welch_p", "mean_ci", "Paired", "paired_diff", "holm", "pooled_sd",
           "mdd_paired", "mdd_two_sample", "mdd_t", "ci_halfwidth_paired", "ci_halfwidth_two_sample", "pareto_front"]
