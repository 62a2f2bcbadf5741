"""The statistics of ``odconv-sweep results``, on plain numbers (nothing here knows a sweep).

Every test and interval comes from scipy or statsmodels:

- :func:`welch_ci` / :func:`mean_ci` / :func:`paired_diff`: ``scipy.stats.ttest_ind``
  (``equal_var=False``), ``ttest_1samp`` and ``ttest_rel`` with their ``confidence_interval``.
- :func:`holm`: ``statsmodels.stats.multitest.multipletests(method="holm")``.
- :func:`factorial_effects`: ``statsmodels`` OLS of a 2^k design with effect-coded (-1/+1)
  factors, their two-way interactions and a seed block; each factor's conditional effect at
  either level of another from the same fit (linear contrasts, ``OLSResults.t_test``).
- :func:`outlying_observations`: ``statsmodels`` ``outlier_test`` (externally studentized
  residuals, Bonferroni): the results a fit cannot explain, e.g. a run that trained badly.
- :func:`mdd_paired`, :func:`mdd_two_sample`, :func:`mdd_t`: the smallest true difference
  detected with a given power, from ``statsmodels.stats.power``; :func:`effect_standard_errors`
  gives a planned factorial's effect standard errors for :func:`mdd_t`.
- :func:`ci_halfwidth_paired`, :func:`ci_halfwidth_two_sample`: the planned half-width of an
  interval from a standard deviation and a number of seeds (``scipy.stats.t``).
- :func:`blocked_contrasts`: ``statsmodels`` OLS of treatment + seed block (a randomized
  complete block design): each treatment against a reference on the pooled residual variance;
  :func:`blocked_standard_errors` gives a planned design's standard errors.

Values missing or too few for a statistic give NaN, never an exception.
"""

from __future__ import annotations

import itertools
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import optimize, stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower, TTestPower

NAN = float("nan")


def _finite(xs: Iterable[float | None]) -> np.ndarray:
    a = np.asarray([np.nan if x is None else float(x) for x in xs], dtype=float)
    return a[np.isfinite(a)]


@contextmanager
def _quiet():
    """scipy warns (RuntimeWarning) on constant or near-constant samples, where it still returns
    the right answer (a zero-width interval; p = 0 or NaN): keep the tables' output clean."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def t_ppf(q: float, df: float) -> float:
    """Quantile ``q`` of Student's t with ``df`` degrees of freedom (``scipy.stats.t.ppf``)."""
    return float(stats.t.ppf(q, df))


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


# --- 2^k factorial effects ------------------------------------------------------------------

@dataclass(frozen=True)
class FactorialFit:
    """Effects of a two-level factorial: one row per term (main effects, then two-way
    interactions), columns ``term, estimate, ci_low, ci_high, se, p_value``; plus the fit's
    residual standard deviation, residual degrees of freedom, number of observations, the
    observations :func:`outlying_observations` flags (indexed like the data; they stay in the
    fit), and ``conditional``: every factor's effect at each level of every other factor
    (:data:`CONDITIONAL_COLUMNS`, see :func:`factorial_effects`)."""

    effects: pd.DataFrame
    resid_sd: float
    df_resid: float
    n_obs: int
    outliers: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=OUTLIER_COLUMNS))
    conditional: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=CONDITIONAL_COLUMNS))


EFFECT_COLUMNS = ["term", "estimate", "ci_low", "ci_high", "se", "p_value"]
OUTLIER_COLUMNS = ["residual", "student_resid", "p_bonferroni"]
# interaction: the term ``a:b``; factor: a or b; given: the other one, at ``given_on`` (off / on)
CONDITIONAL_COLUMNS = ["interaction", "factor", "given", "given_on", "estimate", "ci_low", "ci_high", "se",
                       "p_value"]


def outlying_observations(fit, alpha: float = 0.05) -> pd.DataFrame:
    """The observations of a fitted statsmodels OLS whose externally studentized residual is
    significant at ``alpha`` after a Bonferroni correction over all observations
    (``OLSResults.outlier_test(method="bonf")``): a result far from what the rest of the model
    predicts for it, e.g. a run that trained badly. Indexed like the model's data; columns
    ``residual`` (observed - fitted), ``student_resid``, ``p_bonferroni``. An observation the
    model fits exactly whatever its value (leverage 1, e.g. alone in its block) is never flagged."""
    with warnings.catch_warnings():
        # the leave-one-out fit of a leverage-1 observation is rank-deficient (statsmodels warns)
        warnings.simplefilter("ignore")
        test = fit.outlier_test(method="bonf")
        leverage = np.asarray(fit.get_influence().hat_matrix_diag)
    out = pd.DataFrame({"residual": np.asarray(fit.resid), "student_resid": test["student_resid"].to_numpy(),
                        "p_bonferroni": test["bonf(p)"].to_numpy()}, index=test.index)
    p = out["p_bonferroni"].to_numpy()
    return out[(leverage < 1 - 1e-9) & np.isfinite(p) & (p < alpha)]


def _factorial_model(data: pd.DataFrame, factors: Sequence[str], response: str, block: str | None):
    """statsmodels OLS model ``y ~ [C(block) +] (x0 + ... + xk)**2`` with factors coded -1/+1,
    and the map x<i> -> factor name; None without rows."""
    import statsmodels.formula.api as smf

    bad = [c for c in [response, *factors] if c not in data.columns]
    if bad:
        raise ValueError(f"factorial_effects: column(s) {bad} not in the data; columns: {list(data.columns)}")
    d = data[[response, *factors] + ([block] if block and block in data.columns else [])].dropna()
    if not len(d):
        return None, {}
    coded = pd.DataFrame({f"x{i}": np.where(d[f].astype(float) > 0, 1.0, -1.0) for i, f in enumerate(factors)},
                         index=d.index)
    coded["y"] = d[response].astype(float)
    rhs = "(" + " + ".join(coded.columns[:len(factors)]) + ")**2"
    if block and block in d.columns and d[block].nunique() > 1:
        coded["b"] = d[block].astype(str)
        rhs = "C(b) + " + rhs
    model = smf.ols("y ~ " + rhs, coded)
    if np.linalg.matrix_rank(model.exog) < model.exog.shape[1] or model.df_resid < 1:
        return None, {}
    return model, {f"x{i}": f for i, f in enumerate(factors)}


def _term(name: str, names: dict[str, str]) -> str | None:
    parts = name.split(":")
    return ":".join(names[p] for p in parts) if all(p in names for p in parts) else None


def _conditional_effects(fit, names: dict[str, str], level: float) -> pd.DataFrame:
    """For each two-way interaction ``a:b`` of a fitted :func:`_factorial_model`: the effect of a
    with b off and with b on, and of b with a off and with a on, each a linear contrast of the
    coefficients (``fit.t_test``) with its ``level`` t interval on the fit's residual df. With
    -1/+1 coding the effect of a at b = s (s = -1 off, +1 on) is 2 (beta_a + s beta_ab): the main
    effect minus or plus the interaction, averaged like it over the remaining factors."""
    params = list(fit.params.index)
    rows = []
    for xa, xb in itertools.combinations(names, 2):
        inter = next((n for n in params if sorted(n.split(":")) == sorted((xa, xb))), None)
        if inter is None:
            continue
        for x, other in ((xa, xb), (xb, xa)):
            for on in (False, True):
                contrast = np.zeros(len(params))
                contrast[params.index(x)] = 2.0
                contrast[params.index(inter)] = 2.0 if on else -2.0
                t = fit.t_test(contrast)
                lo, hi = t.conf_int(alpha=1 - level)[0]
                rows.append({"interaction": f"{names[xa]}:{names[xb]}", "factor": names[x], "given": names[other],
                             "given_on": on, "estimate": float(np.squeeze(t.effect)), "ci_low": float(lo),
                             "ci_high": float(hi), "se": float(np.squeeze(t.sd)),
                             "p_value": float(np.squeeze(t.pvalue))})
    return pd.DataFrame(rows, columns=CONDITIONAL_COLUMNS)


def factorial_effects(data: pd.DataFrame, factors: Sequence[str], response: str = "y", block: str | None = "seed",
                      level: float = 0.95, outlier_alpha: float = 0.05) -> FactorialFit | None:
    """Fit ``response ~ block + (f1 + ... + fk)**2`` by OLS (statsmodels) with every factor
    coded -1 (off) / +1 (on) and ``block`` (e.g. the seed) as a categorical, and return each
    term's effect with its ``level`` t interval.

    An effect is twice its coefficient: for a main effect the average change of ``response``
    from switching the factor on (mean over the other factors' levels); for ``a:b`` half the
    difference between a's effect with b on and a's effect with b off (the usual 2^k
    definition). ``data`` has one row per observation: ``response``, the factors as booleans
    or 0/1, and ``block``. None when the design cannot estimate every term and leave at least
    one residual degree of freedom (cells missing, too few observations). ``outliers``: the
    observations :func:`outlying_observations` flags at ``outlier_alpha``; they stay in the fit.
    ``conditional``: for every interaction ``a:b``, a's effect with b off and with b on (and b's
    with a off / on), in the main effects' units: main effect -/+ the interaction."""
    model, names = _factorial_model(data, factors, response, block)
    if model is None:
        return None
    fit = model.fit()
    ci = fit.conf_int(alpha=1 - level)
    rows = []
    for name in fit.params.index:
        term = _term(name, names)
        if term is None:
            continue  # intercept, block
        rows.append({"term": term, "estimate": 2 * float(fit.params[name]),
                     "ci_low": 2 * float(ci.loc[name, 0]), "ci_high": 2 * float(ci.loc[name, 1]),
                     "se": 2 * float(fit.bse[name]), "p_value": float(fit.pvalues[name])})
    return FactorialFit(pd.DataFrame(rows, columns=EFFECT_COLUMNS), float(np.sqrt(fit.scale)), float(fit.df_resid),
                        int(fit.nobs), outlying_observations(fit, outlier_alpha),
                        _conditional_effects(fit, names, level))


def effect_standard_errors(design: pd.DataFrame, factors: Sequence[str], block: str | None = "seed"
                           ) -> tuple[pd.Series, float] | None:
    """(standard error of each effect per unit residual SD, residual df) of the model
    :func:`factorial_effects` would fit to ``design`` (one row per planned observation: the
    factors and ``block``; no response needed): 2 sqrt(diag (X'X)^-1) from statsmodels. For a
    balanced 2^k with N observations every effect's is 2 / sqrt(N). None when not estimable."""
    d = design.assign(_y=0.0)
    model, names = _factorial_model(d, factors, "_y", block)
    if model is None:
        return None
    cov = model.fit().normalized_cov_params
    se = {_term(n, names): 2 * math.sqrt(float(cov.loc[n, n])) for n in cov.index if _term(n, names)}
    return pd.Series(se), float(model.df_resid)


# --- treatments against a reference in seed blocks ----------------------------------------

BLOCKED_COLUMNS = ["treatment", "estimate", "ci_low", "ci_high", "se", "p_value", "n", "df_resid", "resid_sd"]


def _blocked_model(data: pd.DataFrame, reference: object, response: str, treatment: str, block: str):
    """statsmodels OLS ``y ~ C(t) [+ C(b)]`` with the reference as the baseline level, and
    the map of its parameter names to treatments; (None, {}) when not estimable."""
    import statsmodels.formula.api as smf

    bad = [c for c in (response, treatment, block) if c not in data.columns]
    if bad:
        raise ValueError(f"blocked_contrasts: column(s) {bad} not in the data; columns: {list(data.columns)}")
    d = data[[response, treatment, block]].dropna()
    d = d[np.isfinite(d[response].astype(float))]
    levels = [reference] + [t for t in dict.fromkeys(d[treatment]) if t != reference]
    if reference not in set(d[treatment]) or len(levels) < 2:
        return None, {}
    # treatment and block values become safe level names (t000 < t001 < ...: the reference first)
    code = {t: f"t{i:03d}" for i, t in enumerate(levels)}
    coded = pd.DataFrame({"y": d[response].astype(float), "t": d[treatment].map(code),
                          "b": d[block].astype(str)}, index=d.index)
    rhs = "C(t)" + (" + C(b)" if coded["b"].nunique() > 1 else "")
    model = smf.ols("y ~ " + rhs, coded)
    if np.linalg.matrix_rank(model.exog) < model.exog.shape[1] or model.df_resid < 1:
        return None, {}
    return model, {f"C(t)[T.{code[t]}]": t for t in levels[1:]}


def blocked_contrasts(data: pd.DataFrame, reference: object, response: str = "y", treatment: str = "variant",
                      block: str = "seed", level: float = 0.95) -> pd.DataFrame | None:
    """Each treatment against ``reference`` in a randomized complete block design: OLS (statsmodels)
    of ``response ~ treatment + block`` over every treatment's results, each seed a block (it
    fixes data order and augmentation for all), so that each difference's interval uses the
    residual variance pooled over all treatments (many more degrees of freedom than one
    treatment's paired differences) at the price of assuming that variance is common.

    ``data``: one row per result. Returns one row per treatment other than the reference:
    ``treatment, estimate`` (its mean minus the reference's, adjusted for blocks), ``ci_low,
    ci_high`` (``level`` t interval on the residual df), ``se, p_value, n`` (its results),
    ``df_resid, resid_sd``. None when the model cannot be estimated with a residual df."""
    model, names = _blocked_model(data, reference, response, treatment, block)
    if model is None:
        return None
    fit = model.fit()
    ci = fit.conf_int(alpha=1 - level)
    counts = data.dropna(subset=[response]).groupby(treatment)[response].size()
    rows = [{"treatment": t, "estimate": float(fit.params[n]), "ci_low": float(ci.loc[n, 0]),
             "ci_high": float(ci.loc[n, 1]), "se": float(fit.bse[n]), "p_value": float(fit.pvalues[n]),
             "n": int(counts.get(t, 0)), "df_resid": float(fit.df_resid), "resid_sd": float(np.sqrt(fit.scale))}
            for n, t in names.items()]
    return pd.DataFrame(rows, columns=BLOCKED_COLUMNS)


def blocked_standard_errors(design: pd.DataFrame, reference: object, treatment: str = "variant",
                            block: str = "seed") -> tuple[pd.Series, float] | None:
    """(standard error of each treatment's difference to ``reference`` per unit residual SD,
    residual df) of the model :func:`blocked_contrasts` would fit to ``design`` (one row per
    planned result: ``treatment`` and ``block``; no response needed). For a complete design
    of n blocks it is sqrt(2 / n) on (treatments - 1)(n - 1) df. None when not estimable."""
    model, names = _blocked_model(design.assign(_y=0.0), reference, "_y", treatment, block)
    if model is None:
        return None
    cov = model.fit().normalized_cov_params
    return pd.Series({t: math.sqrt(float(cov.loc[n, n])) for n, t in names.items()}), float(model.df_resid)


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


__all__ = ["t_ppf", "welch_ci", "welch_p", "mean_ci", "Paired", "paired_diff", "holm", "pooled_sd", "mdd_paired",
           "mdd_two_sample", "mdd_t", "FactorialFit", "factorial_effects",
           "outlying_observations", "OUTLIER_COLUMNS", "CONDITIONAL_COLUMNS", "effect_standard_errors",
           "EFFECT_COLUMNS",
           "pareto_front", "blocked_contrasts", "blocked_standard_errors", "BLOCKED_COLUMNS"]
