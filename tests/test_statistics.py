"""Per-cell intervals, paired differences and Holm, against independent computations (scipy, by hand)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from harness.metrics.stats import bootstrap_mean_interval, holm, mean_with_ci, paired_difference, wilson_interval


@pytest.mark.parametrize("k,n", [(0, 1), (1, 1), (7, 10), (0, 10), (10, 10), (1, 3), (517, 1000)])
def test_binary_cell_interval_is_wilson_as_scipy(k, n):
    ci = mean_with_ci([1.0] * k + [0.0] * (n - k))
    ref = sps.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert ci["mean"] == pytest.approx(100 * k / n)
    assert ci["ci95_low"] == pytest.approx(100 * ref.low, abs=1e-9)
    assert ci["ci95_high"] == pytest.approx(100 * ref.high, abs=1e-9)
    assert 0.0 <= ci["ci95_low"] < ci["ci95_high"] <= 100.0  # never zero-width, never outside 0-100
    assert ci["ci_method"] == "wilson"


def test_the_issues_bad_cases_are_fixed():
    # The old normal approximation gave [40.1, 99.9] for 7/10 and a zero-width interval for n=1 / all right.
    seven = mean_with_ci([1] * 7 + [0] * 3)
    assert (round(seven["ci95_low"], 1), round(seven["ci95_high"], 1)) == (39.7, 89.2)
    one = mean_with_ci([1.0])
    assert one["ci95_low"] == pytest.approx(20.65, abs=0.01) and one["ci95_high"] == 100.0


def test_vqa_fractional_scores_stay_in_range_and_are_conservative():
    rng = np.random.default_rng(3)
    for n in (1, 2, 5, 50, 3000):
        vals = rng.choice([0.0, 1 / 3, 2 / 3, 1.0], size=n, p=[0.3, 0.1, 0.1, 0.5])
        ci = mean_with_ci(vals)
        assert 0.0 <= ci["ci95_low"] <= ci["mean"] <= ci["ci95_high"] <= 100.0
    vals = np.array([1.0] * 6 + [2 / 3] * 4)  # all high, none zero: a naive interval would cross 100
    ci = mean_with_ci(vals)
    assert ci["ci95_high"] <= 100.0 and ci["ci_method"] == "wilson (bernoulli variance bound)"
    # Large n: at least as wide as the normal interval with the sample's own variance (a [0,1] variable's
    # variance is at most m(1-m)), and not much wider for mostly-binary VQA scores.
    vals = rng.choice([0.0, 1 / 3, 2 / 3, 1.0], size=4000, p=[0.35, 0.05, 0.1, 0.5])
    ci = mean_with_ci(vals)
    normal_half = 100 * 1.96 * vals.std(ddof=1) / math.sqrt(len(vals))
    half = (ci["ci95_high"] - ci["ci95_low"]) / 2
    assert normal_half <= half <= 1.15 * normal_half
    odd = mean_with_ci([0.5, 1.5, 1.0])  # a plug-in task scoring outside [0, 1]: an interval, not a crash
    assert odd["ci_method"] == "percentile bootstrap" and 50.0 <= odd["ci95_low"] <= odd["ci95_high"] <= 150.0
    assert math.isnan(mean_with_ci([])["mean"])


def test_unbounded_scores_use_a_reproducible_percentile_bootstrap():
    rng = np.random.default_rng(0)
    cider = rng.gamma(2.0, 40.0, size=2000)  # per-image CIDEr-like, 0-100 scale, unbounded above
    a = mean_with_ci(cider, scale=1.0, bounded=False)
    assert a == mean_with_ci(cider, scale=1.0, bounded=False)  # fixed seed: same interval
    se = cider.std(ddof=1) / math.sqrt(len(cider))
    assert a["ci95_low"] == pytest.approx(cider.mean() - 1.96 * se, abs=0.15 * se * 1.96)
    assert a["ci95_high"] == pytest.approx(cider.mean() + 1.96 * se, abs=0.15 * se * 1.96)
    lo, hi = bootstrap_mean_interval(np.array([3.0, 3.0, 3.0]))
    assert lo == hi == 3.0  # never leaves the observed range
    assert a["ci_method"] == "percentile bootstrap"


def _discordant_pair(n: int, a_only: int, b_only: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two checkpoints' 0/1 scores on n queries: mostly agreeing, with a_only / b_only discordant queries."""
    rng = np.random.default_rng(seed)
    a = (rng.random(n) < 0.6).astype(float)
    b = a.copy()
    idx = rng.permutation(n)
    b[idx[:b_only]], a[idx[:b_only]] = 1.0, 0.0
    b[idx[b_only:b_only + a_only]], a[idx[b_only:b_only + a_only]] = 0.0, 1.0
    return a, b


def test_planted_five_point_difference_is_detected():
    a, b = _discordant_pair(2000, a_only=50, b_only=150, seed=1)
    res = paired_difference([a], [b])
    assert res.delta == pytest.approx(5.0)
    assert res.p < 0.01
    assert 0.0 < res.ci_low < 5.0 < res.ci_high
    # Against the normal approximation of the paired mean difference (independent formula).
    d = b - a
    half = 100 * 1.96 * d.std(ddof=1) / math.sqrt(len(d))
    assert res.ci_low == pytest.approx(5.0 - half, abs=0.15) and res.ci_high == pytest.approx(5.0 + half, abs=0.15)
    assert paired_difference([a], [b]) == res  # reproducible


def test_sign_flip_p_matches_exact_mcnemar_from_scipy():
    # For 0/1 scores the sign-flip permutation test is the exact McNemar test: a binomial test on the
    # discordant queries. 9,999 random flips estimate it to about +-0.005.
    a, b = _discordant_pair(2000, a_only=40, b_only=60, seed=2)
    res = paired_difference([a], [b])
    exact = sps.binomtest(60, 100, 0.5).pvalue
    assert res.p == pytest.approx(exact, abs=0.012)
    assert res.delta == pytest.approx(1.0)


def test_seeds_are_paired_per_query():
    # Three seeds on the same queries: the delta is the mean of the per-seed deltas, the interval comes
    # from resampling queries (their seeds together).
    rng = np.random.default_rng(5)
    a = [(rng.random(500) < 0.5).astype(float) for _ in range(3)]
    b = [np.where(rng.random(500) < 0.1, 1.0, x) for x in a]
    res = paired_difference(a, b)
    assert res.delta == pytest.approx(100 * np.mean([y.mean() - x.mean() for x, y in zip(a, b)]))
    assert res.n_seeds == 3 and res.n_queries == 500 and res.p < 0.01
    # Seeds with different query sets: each seed is its own stratum.
    res2 = paired_difference([a[0], a[1][:300]], [b[0], b[1][:300]])
    assert res2.delta == pytest.approx(100 * ((b[0] - a[0]).mean() + (b[1][:300] - a[1][:300]).mean()) / 2)
    with pytest.raises(ValueError):
        paired_difference([a[0]], [b[0][:10]])


def test_identical_distributions_are_not_flagged():
    """100 seeded simulations of two checkpoints with the same accuracy on 2,000 queries x 3 seeds.

    A calibrated test at 0.05 flags about 5 of 100 (binomial); the issue asks that at least 95 are not
    flagged. The sign-flip test is exact, so this holds by construction, not by luck of one seed.
    """
    flagged = 0
    for sim in range(100):
        rng = np.random.default_rng(1000 + sim)
        easy = rng.random(2000)  # per-query difficulty shared by both checkpoints (and all seeds)
        a = [(rng.random(2000) < 0.3 + 0.5 * easy).astype(float) for _ in range(3)]
        b = [(rng.random(2000) < 0.3 + 0.5 * easy).astype(float) for _ in range(3)]
        res = paired_difference(a, b, n_boot=200, n_perm=999, seed=sim)
        flagged += res.p < 0.05
    assert flagged <= 5, f"{flagged} of 100 identical-distribution pairs flagged at p < 0.05"


def test_holm_by_hand():
    # p sorted 0.005, 0.01, 0.03, 0.04 (m=4): x4, x3, x2, x1 -> 0.02, 0.03, 0.06, 0.04 -> running max 0.06.
    adj = holm([0.01, 0.04, 0.03, float("nan"), 0.005])
    assert np.allclose(adj[[0, 1, 2, 4]], [0.03, 0.06, 0.06, 0.02]) and math.isnan(adj[3])
    assert np.allclose(holm([0.5, 0.9]), [1.0, 1.0])
    assert np.all(np.isnan(holm([float("nan")])))


def test_wilson_edges():
    assert all(math.isnan(x) for x in wilson_interval(0.0, 0))
    lo, hi = wilson_interval(1.0, 1000)
    assert lo == pytest.approx(sps.binomtest(1000, 1000).proportion_ci(method="wilson").low) and hi == 1.0
