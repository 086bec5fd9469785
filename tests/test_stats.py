"""qbench.stats against the libraries (scipy, statsmodels) and the textbook formulas, on synthetic
per-item data with known effects."""
import math

import numpy as np
import pytest
import scipy.stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from qbench import stats


def _pair(n=2000, agree=0.9, effect=0.03, p_a=0.5, seed=0):
    """Two 0/1 vectors on the same n items: A correct on p_a of them, B agrees with A on `agree` of
    them and is `effect` more often correct (exactly, by construction)."""
    rng = np.random.default_rng(seed)
    a = np.zeros(n, dtype=int)
    a[rng.permutation(n)[: int(p_a * n)]] = 1
    discordant = int(round((1 - agree) * n))
    n_ba = (discordant + int(round(effect * n))) // 2      # A wrong, B right
    n_ab = discordant - n_ba                               # A right, B wrong
    b = a.copy()
    right, wrong = rng.permutation(np.flatnonzero(a == 1)), rng.permutation(np.flatnonzero(a == 0))
    b[right[:n_ab]] = 0
    b[wrong[:n_ba]] = 1
    return a, b


def test_mcnemar_equals_statsmodels():
    for seed, (agree, effect) in enumerate([(0.9, 0.03), (0.8, 0.0), (0.95, -0.02), (0.99, 0.01)]):
        a, b = _pair(500, agree, effect, seed=seed)
        table = [[np.sum((a == 1) & (b == 1)), np.sum((a == 1) & (b == 0))],
                 [np.sum((a == 0) & (b == 1)), np.sum((a == 0) & (b == 0))]]
        assert stats.mcnemar_exact(a, b) == pytest.approx(mcnemar(table, exact=True).pvalue, rel=1e-12)
    assert stats.mcnemar_exact([1, 0, 1], [1, 0, 1]) == 1.0


@pytest.mark.parametrize("aggregation", ["mean", "perplexity", "weighted_perplexity", "bits_per_byte"])
def test_paired_bootstrap_equals_scipy(aggregation):
    """Same Generator, same resamples: our interval and standard error are scipy's (paired=True)."""
    rng = np.random.default_rng(3)
    n = 300
    if aggregation == "mean":
        a, b = (x.astype(float) for x in _pair(n, 0.85, 0.05, seed=1))
        data, stat = (a, b), lambda a, b, axis=-1: b.mean(axis) - a.mean(axis)
    else:
        ll_a = -rng.gamma(5.0, 2.0, n)
        ll_b = ll_a - rng.normal(0.3, 1.0, n)
        w = rng.integers(10, 60, n).astype(float)
        if aggregation == "perplexity":
            a, b = ll_a, ll_b
            data, stat = (a, b), lambda a, b, axis=-1: -b.mean(axis) + a.mean(axis)
        else:
            a, b = np.c_[ll_a, w], np.c_[ll_b, w]
            f = (lambda ll, w, axis: -ll.sum(axis) / w.sum(axis)) if aggregation == "weighted_perplexity" else \
                (lambda ll, w, axis: np.log(-ll.sum(axis) / w.sum(axis) / math.log(2)))
            data, stat = (ll_a, ll_b, w), lambda la, lb, w, axis=-1: f(lb, w, axis) - f(la, w, axis)
    r = stats.Resampler(n, 1000, seed=11)
    est = stats.Estimate.combine([(-1, r.estimate(aggregation, a)), (+1, r.estimate(aggregation, b))])
    ours = stats.summarize(est)
    ref = scipy.stats.bootstrap(data, stat, paired=True, vectorized=True, n_resamples=1000, method="percentile",
                                rng=np.random.default_rng(11))
    assert ours.estimate == pytest.approx(float(stat(*data)), rel=1e-12)
    assert ours.low == pytest.approx(ref.confidence_interval.low, rel=1e-9)
    assert ours.high == pytest.approx(ref.confidence_interval.high, rel=1e-9)
    assert ours.se == pytest.approx(ref.standard_error, rel=1e-9)
    assert ours.p == pytest.approx(2 * scipy.stats.norm.sf(abs(ours.estimate) / ref.standard_error), rel=1e-9)


def test_statistic_is_the_lm_eval_aggregate():
    rng = np.random.default_rng(0)
    ll, w = -rng.gamma(4.0, 3.0, 50), rng.integers(5, 40, 50).astype(float)
    r = stats.Resampler(50)
    assert stats.metric_value("weighted_perplexity", r.estimate("weighted_perplexity", np.c_[ll, w]).value) == \
        pytest.approx(math.exp(-ll.sum() / w.sum()), rel=1e-12)
    assert stats.metric_value("bits_per_byte", r.estimate("bits_per_byte", np.c_[ll, w]).value) == \
        pytest.approx(-ll.sum() / w.sum() / math.log(2), rel=1e-12)
    assert stats.metric_value("perplexity", r.estimate("perplexity", ll).value) == pytest.approx(math.exp(-ll.mean()))
    with pytest.raises(ValueError, match="expected 2 value"):
        stats.columns("weighted_perplexity", ll)


def test_small_paired_effect_found_by_the_paired_test_missed_by_the_independent_one():
    """2000 items, 90 % agreement, B +3 points: McNemar and the paired interval see it; the old
    rule (difference > 2 x sqrt(se_a^2 + se_b^2), binomial stderrs) does not."""
    a, b = _pair(2000, 0.9, 0.03)
    paired = stats.paired_difference(a, b, "mean", seed=1)
    assert paired.estimate == pytest.approx(0.03, abs=1e-12)
    assert paired.test == "mcnemar" and paired.p < 1e-3
    assert 0 < paired.low < 0.03 < paired.high
    se = [math.sqrt(x.mean() * (1 - x.mean()) / (len(x) - 1)) for x in (a, b)]
    independent_se = math.hypot(*se)
    assert abs(paired.estimate) < 2 * independent_se          # the old test: not significant
    assert 2 * scipy.stats.norm.sf(paired.estimate / independent_se) > 0.05
    assert paired.se < independent_se / 2                     # pairing removes most of the error


def test_difference_of_drops_known_effect():
    """A loses 6 points from FP to quantized, B loses 1: difference of drops = +5 points."""
    rng = np.random.default_rng(5)
    n = 1500
    fp_a = (rng.random(n) < 0.6).astype(int)
    fp_b = fp_a.copy()
    fp_b[rng.choice(np.flatnonzero(fp_a == 0), 30, replace=False)] = 1       # B's FP +2 points
    q_a, q_b = fp_a.copy(), fp_b.copy()
    q_a[rng.choice(np.flatnonzero(fp_a == 1), 90, replace=False)] = 0        # -6 points
    q_b[rng.choice(np.flatnonzero(fp_b == 1), 15, replace=False)] = 0        # -1 point
    r = stats.difference_of_drops(fp_a, q_a, fp_b, q_b, "mean", seed=2)
    assert r.estimate == pytest.approx(0.05, abs=1e-12)
    assert r.test == "bootstrap" and r.p < 1e-6 and r.low < 0.05 < r.high and r.low > 0
    # no difference: the same drop on both arms -> estimate 0, p 1
    r0 = stats.difference_of_drops(fp_a, q_a, fp_a, q_a, "mean")
    assert r0.estimate == 0 and r0.p == 1.0
    # perplexity: B's log-likelihoods drop by 0.1 nats per word less than A's
    ll, w = -rng.gamma(4.0, 3.0, 200), rng.integers(10, 40, 200).astype(float)
    r = stats.difference_of_drops(np.c_[ll, w], np.c_[ll - 0.3 * w, w], np.c_[ll, w], np.c_[ll - 0.2 * w, w],
                                  "weighted_perplexity")
    assert r.estimate == pytest.approx(-0.1, rel=1e-9) and r.high < 0


def test_bootstrap_is_deterministic():
    a, b = _pair(800, 0.9, 0.02, seed=4)
    r1, r2 = (stats.paired_difference(a, b, seed=stats.seed_for("qb_arc_easy")) for _ in range(2))
    assert r1 == r2
    assert stats.seed_for("qb_arc_easy") == stats.seed_for("qb_arc_easy") != stats.seed_for("qb_piqa")


def _bh(p):
    """Benjamini-Hochberg by the textbook: p_(i) * m / i, made monotone from the top, capped at 1."""
    p = np.asarray(p, dtype=float)
    order = np.argsort(p)
    m = len(p)
    adj = np.minimum.accumulate((p[order] * m / np.arange(1, m + 1))[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(adj, 1)
    return out


def _holm(p):
    p = np.asarray(p, dtype=float)
    order = np.argsort(p)
    m = len(p)
    adj = np.maximum.accumulate(p[order] * (m - np.arange(m)))
    out = np.empty(m)
    out[order] = np.minimum(adj, 1)
    return out


def test_corrections_equal_statsmodels_and_the_formulas():
    p = list(np.random.default_rng(7).uniform(0, 0.2, 40)) + [1e-5, 0.5, 0.049]
    for method, sm_name, formula in (("bh", "fdr_bh", _bh), ("holm", "holm", _holm)):
        ours = stats.adjust(p, method)
        assert ours == pytest.approx(list(multipletests(p, method=sm_name)[1]), rel=1e-12)
        assert ours == pytest.approx(list(formula(p)), rel=1e-12)
    # entries without a test stay None and do not enlarge the family
    with_gaps = stats.adjust([0.01, None, 0.04, math.nan], "bh")
    assert with_gaps[1] is None and with_gaps[3] is None
    assert with_gaps[0] == pytest.approx(0.02) and with_gaps[2] == pytest.approx(0.04)
    with pytest.raises(ValueError, match="unknown correction"):
        stats.adjust([0.1], "bonferroni")
