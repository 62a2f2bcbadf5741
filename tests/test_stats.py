"""sweeps.reporting.stats and sweeps.reporting.linear_models against independent computations:
textbook formulas in numpy, hand-worked examples, published power tables, and a 2^4 design whose
effects are known by construction."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as ss

from sweeps.reporting import linear_models as LM
from sweeps.reporting import stats as S
from tests.conftest import lstsq_vs_reference

FACTORS = ("channel", "filter", "spatial", "kernel")


# --- t intervals -----------------------------------------------------------------------------

def test_t_quantiles_match_printed_tables():
    for df, q in [(1, 12.7062), (2, 4.3027), (4, 2.7764), (10, 2.2281), (30, 2.0423)]:
        assert S.t_ppf(0.975, df) == pytest.approx(q, abs=1e-4)


def test_welch_matches_the_formula():
    a, b = [71.2, 70.4, 72.9, 71.8], [69.9, 70.3, 68.2]
    va, vb = np.var(a, ddof=1) / 4, np.var(b, ddof=1) / 3
    df = (va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 2)  # Welch-Satterthwaite
    d = np.mean(a) - np.mean(b)
    h = ss.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert S.welch_ci(a, b) == pytest.approx((d, d - h, d + h), rel=1e-10)
    assert S.welch_p(a, b) == pytest.approx(2 * ss.t.sf(d / math.sqrt(va + vb), df), rel=1e-10)
    assert math.isnan(S.welch_ci([1.0], [0.0, 1.0])[1]) and S.welch_ci([1.0], [0.0, 1.0])[0] == 0.5
    assert all(math.isnan(x) for x in S.welch_ci([], [1.0, 2.0]))
    assert math.isnan(S.welch_p([1.0], [2.0, 3.0]))


def test_mean_ci_matches_the_formula_and_ignores_nan():
    x = [1.0, 2.5, 4.0, float("nan"), None]
    m, lo, hi = S.mean_ci(x)
    h = ss.t.ppf(0.975, 2) * np.std([1, 2.5, 4], ddof=1) / math.sqrt(3)
    assert (m, lo, hi) == pytest.approx((2.5, 2.5 - h, 2.5 + h))
    assert math.isnan(S.mean_ci([3.0])[1]) and S.mean_ci([3.0])[0] == 3.0


def test_paired_difference_matches_the_formula_on_the_common_seeds():
    a = {0: 75.1, 1: 76.0, 2: 74.2, 3: 75.5}
    b = {0: 74.0, 1: 75.2, 2: 73.9, 4: 70.0}  # seed 3 only in a, seed 4 only in b: not pairs
    d = np.array([75.1 - 74.0, 76.0 - 75.2, 74.2 - 73.9])
    se = d.std(ddof=1) / math.sqrt(3)
    h = ss.t.ppf(0.975, 2) * se
    r = S.paired_diff(a, b)
    assert r.n == 3 and r.mean == pytest.approx(d.mean()) and r.sd == pytest.approx(d.std(ddof=1))
    assert (r.ci_low, r.ci_high) == pytest.approx((d.mean() - h, d.mean() + h))
    assert r.p == pytest.approx(2 * ss.t.sf(d.mean() / se, 2))
    # pairing removes the shared seed offset: the same data unpaired is far less precise
    w = S.welch_ci(list(a.values())[:3], list(b.values())[:3])
    assert w[2] - w[1] > r.ci_high - r.ci_low
    one = S.paired_diff({0: 1.0}, {0: 0.5, 1: 2.0})
    assert one.n == 1 and one.mean == 0.5 and math.isnan(one.ci_low) and math.isnan(one.p)
    assert S.paired_diff({}, {0: 1.0}).n == 0


def test_holm_matches_a_hand_worked_example():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    p = [0.01, 0.04, 0.03, 0.005]
    assert S.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # NaN entries are not in the family and stay NaN; adjusted p-values cap at 1
    out = S.holm([0.5, float("nan"), 0.4, None])
    assert out[0] == pytest.approx(0.8) and out[2] == pytest.approx(0.8)
    assert math.isnan(out[1]) and math.isnan(out[3])
    assert S.holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])
    assert len(S.holm([])) == 0


def test_pooled_sd_is_the_one_way_anova_residual_sd():
    groups = [[1.0, 2.0, 4.0], [10.0, 11.0], [5.0], [3.0, 3.5, 2.0, 4.0]]
    resid = np.concatenate([np.asarray(g) - np.mean(g) for g in groups if len(g) > 1])
    df = sum(len(g) - 1 for g in groups)
    sd, got_df = S.pooled_sd(groups)
    assert got_df == df == 6 and sd == pytest.approx(math.sqrt((resid ** 2).sum() / df))
    assert math.isnan(S.pooled_sd([[1.0], []])[0])


# --- power -----------------------------------------------------------------------------------

def _power_nct(delta_over_se: float, df: float) -> float:
    """Two-sided 5% t-test power from the noncentral t (independent of statsmodels)."""
    c = ss.t.ppf(0.975, df)
    return ss.nct.sf(c, df, delta_over_se) + ss.nct.cdf(-c, df, delta_over_se)


def test_two_sample_mdd_matches_cohens_table():
    # Cohen (1988), Table 2.4.1: 80% power, two-sided 5%: d = 0.8 needs 26 per group, 0.5 -> 64, 0.2 -> 393
    for d, n in [(0.8, 26), (0.5, 64), (0.2, 393)]:
        assert S.mdd_two_sample(1.0, n) == pytest.approx(d, rel=0.01)
    assert S.mdd_two_sample(3.0, 64) == pytest.approx(3 * S.mdd_two_sample(1.0, 64))
    assert math.isnan(S.mdd_two_sample(1.0, 1)) and math.isnan(S.mdd_two_sample(float("nan"), 5))


def test_paired_mdd_has_80_percent_power_by_the_noncentral_t():
    for n, sd in [(2, 1.0), (3, 0.7), (5, 2.0), (20, 1.0)]:
        mdd = S.mdd_paired(sd, n)
        assert _power_nct(mdd / (sd / math.sqrt(n)), n - 1) == pytest.approx(0.8, abs=1e-6)
    # large n: the normal approximation (z_.975 + z_.8) sd / sqrt(n)
    assert S.mdd_paired(1.0, 2000) == pytest.approx((1.959964 + 0.841621) / math.sqrt(2000), rel=2e-3)
    assert math.isnan(S.mdd_paired(1.0, 1))


def test_planned_halfwidths_match_scipys_intervals_on_data_with_that_sd():
    rng = np.random.default_rng(3)
    for n in (2, 3, 4, 9):
        a, b = rng.normal(80, 0.5, n), rng.normal(80.3, 0.5, n)
        d = a - b
        ci = ss.ttest_rel(a, b).confidence_interval(0.95)
        assert S.ci_halfwidth_paired(float(d.std(ddof=1)), n) == pytest.approx((ci.high - ci.low) / 2)
        # two samples of one common SD: the pooled-variance interval
        b = b - b.mean() + a.mean() + 0.3
        b = (b - b.mean()) * a.std(ddof=1) / b.std(ddof=1) + b.mean()  # same sample SD as a
        ci = ss.ttest_ind(a, b, equal_var=True).confidence_interval(0.95)
        assert S.ci_halfwidth_two_sample(float(a.std(ddof=1)), n) == pytest.approx((ci.high - ci.low) / 2)
    assert S.ci_halfwidth_paired(1.0, 4, level=0.9) == pytest.approx(ss.t.ppf(0.95, 3) / 2)
    assert math.isnan(S.ci_halfwidth_paired(1.0, 1)) and math.isnan(S.ci_halfwidth_two_sample(float("nan"), 3))


def test_mdd_t_has_80_percent_power_by_the_noncentral_t():
    for se, df in [(0.3, 5), (1.0, 20), (2.5, 65), (0.1, 200)]:
        mdd = S.mdd_t(se, df)
        assert _power_nct(mdd / se, df) == pytest.approx(0.8, abs=1e-6)
    assert math.isnan(S.mdd_t(1.0, 0)) and math.isnan(S.mdd_t(float("nan"), 20))


# --- factorial effects -----------------------------------------------------------------------

MAIN = {"channel": 1.2, "filter": -0.4, "spatial": 0.0, "kernel": 2.0}
INTER = {("channel", "kernel"): -0.8, ("filter", "spatial"): 0.5}
SEED_SHIFT = {0: 0.0, 1: 1.5, 2: -0.7}


def _design(seeds=(0, 1, 2), noise=0.0, rng=None) -> pd.DataFrame:
    """y of a 2^4 design: 70 + main/2 * x + inter/2 * x_a x_b + seed shift (+ noise), x = -1/+1,
    so each effect (mean change from off to on; half the change of a's effect with b) is as given."""
    rows = []
    for seed in seeds:
        for cell in itertools.product([0, 1], repeat=4):
            x = {f: 2 * v - 1 for f, v in zip(FACTORS, cell)}
            y = 70 + SEED_SHIFT[seed] + sum(MAIN[f] / 2 * x[f] for f in FACTORS)
            y += sum(e / 2 * x[a] * x[b] for (a, b), e in INTER.items())
            if noise:
                y += rng.normal(0, noise)
            rows.append({"y": y, "seed": seed, **{f: bool(v) for f, v in zip(FACTORS, cell)}})
    return pd.DataFrame(rows)


def _truth(term: str) -> float:
    if ":" in term:
        a, b = term.split(":")
        return INTER.get((a, b), INTER.get((b, a), 0.0))
    return MAIN[term]


def test_factorial_recovers_known_effects_exactly_without_noise():
    d = _design()
    # the definition, straight from the data: mean(on) - mean(off), and the interaction contrast
    assert d[d.channel].y.mean() - d[~d.channel].y.mean() == pytest.approx(MAIN["channel"])
    ck = [d[(d.channel == c) & (d.kernel == k)].y.mean() for c in (True, False) for k in (True, False)]
    assert ((ck[0] - ck[2]) - (ck[1] - ck[3])) / 2 == pytest.approx(INTER[("channel", "kernel")])
    fit = LM.factorial_effects(d, FACTORS)
    terms = list(fit.effects["term"])
    assert terms[:4] == list(FACTORS) and len(terms) == 10
    assert set(terms[4:]) == {f"{a}:{b}" for a, b in itertools.combinations(FACTORS, 2)}
    for _, r in fit.effects.iterrows():
        assert r["estimate"] == pytest.approx(_truth(r["term"]), abs=1e-9)
    assert fit.n_obs == 48 and fit.df_resid == 48 - 1 - 2 - 10


def _numpy_factorial_fit(d):
    """The 2^4 model with seed blocks and two-way interactions by hand (+-1 coding), fitted by
    numpy least squares: (coefficients, residual variance, their covariance, residual df, the
    interaction pairs)."""
    x = {f: np.where(d[f], 1.0, -1.0) for f in FACTORS}
    pairs = list(itertools.combinations(FACTORS, 2))
    cols = [np.ones(len(d)), (d.seed == 1).astype(float).to_numpy(), (d.seed == 2).astype(float).to_numpy()]
    cols += [x[f] for f in FACTORS] + [x[a] * x[b] for a, b in pairs]
    X = np.column_stack(cols)
    beta, rss, *_ = np.linalg.lstsq(X, d.y.to_numpy(), rcond=None)
    dof = len(d) - X.shape[1]
    s2 = float(rss[0]) / dof
    return beta, s2, s2 * np.linalg.inv(X.T @ X), dof, pairs


def test_factorial_with_noise_and_its_intervals_match_numpy_least_squares():
    rng = np.random.default_rng(7)
    d = _design(noise=0.05, rng=rng)
    fit = LM.factorial_effects(d, FACTORS)
    # independent: the design matrix by hand, numpy least squares, scipy's t quantile
    beta, s2, cov, dof, pairs = _numpy_factorial_fit(d)
    se = np.sqrt(np.diag(cov))
    q = ss.t.ppf(0.975, dof)
    names = list(FACTORS) + [f"{a}:{b}" for a, b in pairs]
    got = fit.effects.set_index("term")
    for i, name in enumerate(names, start=3):
        assert got.loc[name, "estimate"] == pytest.approx(2 * beta[i], abs=1e-9)
        assert got.loc[name, "ci_low"] == pytest.approx(2 * (beta[i] - q * se[i]), abs=1e-9)
        assert got.loc[name, "ci_high"] == pytest.approx(2 * (beta[i] + q * se[i]), abs=1e-9)
        assert got.loc[name, "se"] == pytest.approx(2 * se[i], rel=1e-9)
        # and the known truth is recovered to within the noise, inside the interval
        assert abs(got.loc[name, "estimate"] - _truth(name)) < 0.1
        assert got.loc[name, "ci_low"] < _truth(name) < got.loc[name, "ci_high"]
    assert fit.resid_sd == pytest.approx(math.sqrt(s2)) and fit.df_resid == dof
    # balanced: every effect has the same standard error, 2 sd / sqrt(N)
    assert got["se"].to_numpy() == pytest.approx(np.full(10, 2 * math.sqrt(s2) / math.sqrt(len(d))))


def test_conditional_effects_are_the_cell_mean_differences_without_noise():
    d = _design()
    fit = LM.factorial_effects(d, FACTORS)
    c = fit.conditional.set_index(["factor", "given", "given_on"])
    assert len(c) == 6 * 4 and set(fit.conditional["interaction"]) == set(fit.effects["term"][4:])
    # the definition, straight from the data: on minus off among the results with `given` at that level
    for (factor, given, given_on), r in c.iterrows():
        at = d[d[given] == given_on]
        assert r["estimate"] == pytest.approx(at[at[factor]].y.mean() - at[~at[factor]].y.mean(), abs=1e-9)
    # and from the known truth: channel helps by 1.2 - (-0.8) with kernel off, by 1.2 + (-0.8) with it on
    assert c.loc[("channel", "kernel", False), "estimate"] == pytest.approx(2.0)
    assert c.loc[("channel", "kernel", True), "estimate"] == pytest.approx(0.4)
    assert c.loc[("kernel", "channel", True), "estimate"] == pytest.approx(1.2)
    assert c.loc[("spatial", "filter", False), "estimate"] == pytest.approx(-0.5)


def test_conditional_effects_and_their_intervals_match_numpy_least_squares():
    rng = np.random.default_rng(11)
    d = _design(noise=0.3, rng=rng)
    d = d.drop(index=[5, 17, 40])  # unbalanced: the contrasts' SEs differ
    fit = LM.factorial_effects(d, FACTORS)
    # independent: the design matrix by hand, numpy least squares, the contrast's variance L' V L
    beta, _, cov, dof, pairs = _numpy_factorial_fit(d)
    q = ss.t.ppf(0.975, dof)
    got = fit.conditional.set_index(["factor", "given", "given_on"])
    for k, (a, b) in enumerate(pairs):
        for factor, given in ((a, b), (b, a)):
            for on in (False, True):
                L = np.zeros(len(beta))
                L[3 + FACTORS.index(factor)] = 2.0
                L[7 + k] = 2.0 if on else -2.0
                est, se = float(L @ beta), math.sqrt(float(L @ cov @ L))
                r = got.loc[(factor, given, on)]
                assert r["interaction"] == f"{a}:{b}"
                assert (r["estimate"], r["se"]) == pytest.approx((est, se), rel=1e-9)
                assert (r["ci_low"], r["ci_high"]) == pytest.approx((est - q * se, est + q * se), rel=1e-9)
                assert r["p_value"] == pytest.approx(2 * ss.t.sf(abs(est) / se, dof), rel=1e-6)


def test_factorial_without_replication_and_with_missing_cells():
    one = LM.factorial_effects(_design(seeds=(1,)), FACTORS)  # one seed: error from 3-/4-way terms
    assert one is not None and one.df_resid == 5 and one.n_obs == 16
    assert one.effects.set_index("term").loc["kernel", "estimate"] == pytest.approx(2.0)
    d = _design(seeds=(0, 1))
    lost = d[~(d["channel"] & d["filter"] & d["spatial"] & d["kernel"])]  # one cell failed in both seeds
    fit = LM.factorial_effects(lost, FACTORS)
    assert fit is not None and fit.n_obs == 30
    # no noise: the model still holds exactly, so every effect is recovered from 15 cells
    for _, r in fit.effects.iterrows():
        assert r["estimate"] == pytest.approx(_truth(r["term"]), abs=1e-9)
    assert LM.factorial_effects(_design(seeds=(0,)).iloc[:10], FACTORS) is None  # 10 results, 11 terms
    assert LM.factorial_effects(_design().iloc[0:0], FACTORS) is None
    with pytest.raises(ValueError, match="kernel"):
        LM.factorial_effects(d.drop(columns="kernel"), FACTORS)


def test_outlying_result_is_flagged_with_the_textbook_studentized_residual():
    rng = np.random.default_rng(3)
    d = _design(noise=0.05, rng=rng)
    assert LM.factorial_effects(d, FACTORS).outliers.empty  # normal noise only: nothing flagged
    bad = d.index[(d.seed == 1) & d.channel & d.spatial & d.kernel & ~d["filter"]][0]
    d.loc[bad, "y"] -= 2.0  # one run that trained badly
    # and a result alone in its seed block: the model fits it exactly whatever its value
    alone = d.iloc[[0]].assign(seed=9, y=d.y.iloc[0] - 50.0)
    d = pd.concat([d, alone], ignore_index=True)
    fit = LM.factorial_effects(d, FACTORS)
    assert list(fit.outliers.index) == [bad]
    assert list(fit.outliers.columns) == LM.OUTLIER_COLUMNS
    # independent: the externally studentized residual from the hat matrix and the
    # leave-one-out variance (numpy), its two-sided t p-value times n (scipy)
    x = {f: np.where(d[f], 1.0, -1.0) for f in FACTORS}
    pairs = list(itertools.combinations(FACTORS, 2))
    cols = [np.ones(len(d))] + [(d.seed == s).astype(float).to_numpy() for s in (1, 2, 9)]
    cols += [x[f] for f in FACTORS] + [x[a] * x[b] for a, b in pairs]
    X = np.column_stack(cols)
    y = d.y.to_numpy()
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    e = y - X @ beta
    h = np.diag(X @ np.linalg.inv(X.T @ X) @ X.T)
    n, k = X.shape
    s2_loo = (e @ e - e[bad] ** 2 / (1 - h[bad])) / (n - k - 1)
    r = e[bad] / math.sqrt(s2_loo * (1 - h[bad]))
    got = fit.outliers.loc[bad]
    assert got["residual"] == pytest.approx(e[bad], abs=1e-9)
    assert got["student_resid"] == pytest.approx(r, rel=1e-6) and r < -5
    assert got["p_bonferroni"] == pytest.approx(min(1.0, n * 2 * ss.t.sf(abs(r), n - k - 1)), rel=1e-6)
    assert h[-1] == pytest.approx(1.0)  # the lone result: leverage 1, never flagged
    # a stricter level flags nothing
    assert LM.factorial_effects(d, FACTORS, outlier_alpha=1e-30).outliers.empty


def test_the_warnings_silenced_are_only_the_named_ones():
    """Constant samples (scipy's precision-loss warning) and a result alone in its seed block
    (statsmodels' rank-deficient leave-one-out fit, the square root of 1 - leverage 1) warn
    nothing, even with every warning an error; any other warning in the same scope still shows."""
    d = _design(noise=0.05, rng=np.random.default_rng(3))
    alone = d.iloc[[0]].assign(seed=9, y=d.y.iloc[0] - 50.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert S.paired_diff({0: 1.0, 1: 2.0, 2: 3.0}, {0: 0.5, 1: 1.5, 2: 2.5}).p == 0.0
        assert S.welch_ci([80.0, 80.0], [79.0, 79.0]) == (1.0, 1.0, 1.0)
        assert S.mean_ci([0.3, 0.3, 0.3])[1] == pytest.approx(0.3)
        assert LM.factorial_effects(pd.concat([d, alone], ignore_index=True), FACTORS).outliers.empty
    with pytest.warns(RuntimeWarning, match="invalid value encountered in divide"):
        with S._quiet():
            warnings.warn("invalid value encountered in divide", RuntimeWarning, stacklevel=1)


# --- Pareto front ------------------------------------------------------------------------------

def test_pareto_front_matches_brute_force():
    cost = [1.0, 2.0, 3.0, 2.0, 4.0, float("nan"), 1.0, 5.0]
    acc = [70.0, 72.0, 71.0, 72.0, 75.0, 99.0, 69.0, 75.0]
    # 0: cheapest best-at-1; 1 and 3 tie (neither strictly dominates the other); 2 dominated by 1;
    # 4: best; 5: NaN cost; 6: dominated by 0; 7: same accuracy as 4 but costlier
    assert S.pareto_front(cost, acc).tolist() == [True, True, False, True, True, False, False, False]
    rng = np.random.default_rng(0)
    c, v = rng.random(30), rng.random(30)
    brute = [not any(c[j] <= c[i] and v[j] >= v[i] and (c[j] < c[i] or v[j] > v[i]) for j in range(30))
             for i in range(30)]
    assert S.pareto_front(c, v).tolist() == brute


def test_effect_standard_errors_of_a_planned_design():
    # balanced 2^4, 3 seeds: every effect's standard error is 2 sigma / sqrt(N)
    d = _design().drop(columns="y")
    se, df = LM.effect_standard_errors(d, FACTORS)
    assert df == 48 - 1 - 2 - 10 and len(se) == 10
    assert se.to_numpy() == pytest.approx(np.full(10, 2 / math.sqrt(48)))
    # unbalanced (two extra seeds for the all-off and all-on cells): numpy's (X'X)^-1
    extra = d[(d.seed == 0) & ((d[list(FACTORS)].all(axis=1)) | (~d[list(FACTORS)].any(axis=1)))]
    extra = pd.concat([extra.assign(seed=s) for s in (3, 4)])
    u = pd.concat([d[d.seed < 2], extra], ignore_index=True)
    se, df = LM.effect_standard_errors(u, FACTORS)
    x = {f: np.where(u[f], 1.0, -1.0) for f in FACTORS}
    pairs = list(itertools.combinations(FACTORS, 2))
    X = np.column_stack([np.ones(len(u))] + [(u.seed == s).astype(float).to_numpy() for s in (1, 3, 4)]
                        + [x[f] for f in FACTORS] + [x[a] * x[b] for a, b in pairs])
    want = 2 * np.sqrt(np.diag(np.linalg.inv(X.T @ X)))[4:]
    assert df == len(u) - X.shape[1]
    assert se[list(FACTORS) + [f"{a}:{b}" for a, b in pairs]].to_numpy() == pytest.approx(want)
    assert LM.effect_standard_errors(d.iloc[:8], FACTORS) is None


# --- treatments against a reference in seed blocks --------------------------------------------

def _block_data(seeds_of: dict[str, list[int]], rng) -> pd.DataFrame:
    truth = {"static": 0.0, "a": 0.8, "b": -0.4, "c": 0.1}
    shift = {0: 0.0, 1: 0.6, 2: -0.3, 3: 0.2}
    return pd.DataFrame([{"variant": v, "seed": s, "y": 80 + truth[v] + shift[s] + rng.normal(0, 0.4)}
                         for v, seeds in seeds_of.items() for s in seeds])


def test_blocked_contrasts_of_a_complete_design_match_the_two_way_anova_by_hand():
    d = _block_data({v: [0, 1, 2, 3] for v in ("static", "a", "b", "c")}, np.random.default_rng(1))
    y = d.pivot(index="variant", columns="seed", values="y").loc[["static", "a", "b", "c"]].to_numpy()
    resid = y - y.mean(1, keepdims=True) - y.mean(0, keepdims=True) + y.mean()
    dof = 3 * 3
    mse = (resid ** 2).sum() / dof
    se = math.sqrt(2 * mse / 4)
    got = LM.blocked_contrasts(d, "static").set_index("treatment")
    assert list(got.index) == ["a", "b", "c"]
    for i, v in enumerate(("a", "b", "c"), start=1):
        est = y[i].mean() - y[0].mean()
        h = ss.t.ppf(0.975, dof) * se
        assert got.loc[v, ["estimate", "ci_low", "ci_high", "se"]].tolist() == pytest.approx(
            [est, est - h, est + h, se])
        assert got.loc[v, "p_value"] == pytest.approx(2 * ss.t.sf(abs(est) / se, dof))
        assert got.loc[v, "n"] == 4
    assert (got["df_resid"] == dof).all() and got["resid_sd"].iloc[0] == pytest.approx(math.sqrt(mse))
    se_unit, df = LM.blocked_standard_errors(d[["variant", "seed"]], "static")
    assert df == dof and se_unit.to_dict() == pytest.approx({v: math.sqrt(2 / 4) for v in "abc"})


def test_blocked_contrasts_of_an_unbalanced_design_match_numpy_least_squares():
    # the study's shape: the reference and one treatment with 4 seeds, the others with 2, one result missing
    d = _block_data({"static": [0, 1, 2, 3], "a": [0, 1, 2, 3], "b": [0, 1], "c": [1]}, np.random.default_rng(2))
    ref = lstsq_vs_reference(d, "static")
    got = LM.blocked_contrasts(d, "static").set_index("treatment")
    for t, (est, se, dof, sd) in ref.items():
        h = ss.t.ppf(0.975, dof) * se
        assert got.loc[t, ["estimate", "se", "ci_low", "ci_high", "resid_sd"]].tolist() == pytest.approx(
            [est, se, est - h, est + h, sd])
    assert got.loc["c", "n"] == 1 and got.loc["b", "n"] == 2 and (got["df_resid"] == dof).all()
    se_unit, df = LM.blocked_standard_errors(d[["variant", "seed"]], "static")
    assert df == dof and se_unit["a"] == pytest.approx(ref["a"][1] / ref["a"][3])


def test_blocked_contrasts_without_a_reference_or_residual_df_are_none():
    d = _block_data({"static": [0, 1], "a": [0, 1]}, np.random.default_rng(3))
    assert LM.blocked_contrasts(d[d["variant"] == "a"], "static") is None
    assert LM.blocked_contrasts(d[d["seed"] == 0], "static") is None  # 2 results, 2 parameters
    assert LM.blocked_contrasts(d, "static") is not None  # 4 results, 3 parameters: 1 df
    with pytest.raises(ValueError, match=r"'seed'.*not in the data"):
        LM.blocked_contrasts(d.drop(columns="seed"), "static")
