"""The linear models of ``odconv-sweep results`` (statsmodels OLS), on plain frames (nothing
here knows a sweep):

- :func:`factorial_effects`: OLS of a 2^k design with effect-coded (-1/+1) factors, their
  two-way interactions and a seed block; each factor's conditional effect at either level of
  another from the same fit (linear contrasts, ``OLSResults.t_test``);
  :func:`effect_standard_errors` gives a planned factorial's effect standard errors.
- :func:`outlying_observations`: ``outlier_test`` (externally studentized residuals,
  Bonferroni): the results a fit cannot explain, e.g. a run that trained badly.
- :func:`blocked_contrasts`: OLS of treatment + seed block (a randomized complete block
  design): each treatment against a reference on the pooled residual variance;
  :func:`blocked_standard_errors` gives a planned design's standard errors.

A design that cannot be estimated with a residual degree of freedom gives None.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from statsmodels.tools.sm_exceptions import SingularMatrixWarning


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
        # a leverage-1 observation (alone in its block): its leave-one-out fit is rank-deficient and
        # its studentized residual takes the square root of 1 - leverage, which rounds below 0
        warnings.filterwarnings("ignore", message="The design matrix is rank-deficient",
                                category=SingularMatrixWarning)
        warnings.filterwarnings("ignore", message="invalid value encountered in sqrt", category=RuntimeWarning)
        test = fit.outlier_test(method="bonf")
    leverage = np.asarray(fit.get_influence().hat_matrix_diag)
    out = pd.DataFrame({"residual": np.asarray(fit.resid), "student_resid": test["student_resid"].to_numpy(),
                        "p_bonferroni": test["bonf(p)"].to_numpy()}, index=test.index)
    p = out["p_bonferroni"].to_numpy()
    return out[(leverage < 1 - 1e-9) & np.isfinite(p) & (p < alpha)]


def _factorial_model(data: pd.DataFrame, factors: Sequence[str], response: str, block: str | None):
    """statsmodels OLS model ``y ~ [C(block) +] (x0 + ... + xk)**2`` with factors coded -1/+1,
    and the map x<i> -> factor name; None without rows."""
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


# --- treatments against a reference in seed blocks -------------------------------------------

BLOCKED_COLUMNS = ["treatment", "estimate", "ci_low", "ci_high", "se", "p_value", "n", "df_resid", "resid_sd"]


def _blocked_model(data: pd.DataFrame, reference: object, response: str, treatment: str, block: str):
    """statsmodels OLS ``y ~ C(t) [+ C(b)]`` with the reference as the baseline level, and
    the map of its parameter names to treatments; (None, {}) when not estimable."""
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


__all__ = ["FactorialFit", "factorial_effects", "outlying_observations", "effect_standard_errors", "EFFECT_COLUMNS",
           "OUTLIER_COLUMNS", "CONDITIONAL_COLUMNS", "blocked_contrasts", "blocked_standard_errors", "BLOCKED_COLUMNS"]
