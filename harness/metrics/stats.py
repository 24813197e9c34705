"""Statistics: per-cell confidence intervals, mean/std over seeds, paired differences, Holm.

What each number means, with formulas: docs/statistics.md. Everything random here takes an
explicit seed (numpy Generator), so the same results give the same intervals and p-values.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)

Z95 = 1.959963984540054
#: resamples for bootstrap intervals and sign flips for permutation p-values (defaults).
N_BOOT = 2000
N_PERM = 9999
_CHUNK = 256  # resamples drawn at once: bounds memory at _CHUNK x n


def wilson_interval(mean: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion ``mean`` over ``n`` trials, within [0, 1].

    Stays inside [0, 1] and has non-zero width at n = 1 or at 0% / 100%, where the normal
    approximation collapses or leaves the range.
    """
    if n <= 0:
        return math.nan, math.nan
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (mean + z2 / (2 * n)) / denom
    half = z * math.sqrt(max(mean * (1.0 - mean), 0.0) / n + z2 / (4 * n * n)) / denom
    lo = 0.0 if mean <= 0.0 else max(0.0, center - half)  # exact ends at 0% / 100% (no rounding dust)
    hi = 1.0 if mean >= 1.0 else min(1.0, center + half)
    return lo, hi


def bootstrap_mean_interval(values: np.ndarray, n_boot: int = N_BOOT, seed: int = 0,
                            level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (resampling values with replacement).

    The interval lies within [min(values), max(values)], so it never leaves the scores' range.
    """
    means = _bootstrap_means(np.asarray(values, dtype=float), n_boot, np.random.default_rng(seed))
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _bootstrap_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    n = len(values)
    out = np.empty(n_boot)
    for start in range(0, n_boot, _CHUNK):
        stop = min(start + _CHUNK, n_boot)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = values[idx].mean(axis=1)
    return out


def mean_with_ci(values: Sequence[float], scale: float = 100.0, bounded: bool = True,
                 seed: int = 0) -> dict[str, float]:
    """Mean of per-sample scores and its 95% interval, times ``scale``.

    ``bounded=True`` (scores in [0, 1], as ``Task.score`` returns): the Wilson score interval.
    For 0/1 scores it is the usual Wilson interval; for scores in between (VQA accuracy:
    0, 1/3, 2/3, 1) it uses the Bernoulli variance mean*(1-mean), an upper bound on the variance
    of any [0, 1] variable, so the interval is conservative. ``bounded=False`` (e.g. per-image
    CIDEr), or scores that turn out to leave [0, 1] (logged): a percentile bootstrap (fixed
    ``seed``). Neither leaves the scores' range.
    """
    arr = np.asarray(values, dtype=float)
    n = len(arr)
    if n == 0:
        return {"mean": math.nan, "ci95_low": math.nan, "ci95_high": math.nan, "n": 0, "ci_method": "none"}
    mean = float(arr.mean())
    if bounded and (arr.min() < 0.0 or arr.max() > 1.0):
        # A (plug-in) task whose scores leave [0, 1]: still an interval, never a crash after the run.
        log.warning("per-sample scores outside [0, 1] (%g..%g): using a bootstrap interval; Task.score should "
                    "return values in [0, 1]", arr.min(), arr.max())
        bounded = False
    if bounded:
        lo, hi = wilson_interval(mean, n)
        binary = bool(np.all((arr == 0.0) | (arr == 1.0)))
        method = "wilson" if binary else "wilson (bernoulli variance bound)"
    else:
        lo, hi = bootstrap_mean_interval(arr, seed=seed)
        method = "percentile bootstrap"
    return {"mean": mean * scale, "ci95_low": lo * scale, "ci95_high": hi * scale, "n": n, "ci_method": method}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard deviation over seeds.

    The std is the population std (ddof=0), as OpenFlamingo's evaluate.py
    reports it (``np.nanstd``), so numbers compare with its tables.
    """
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if len(arr) == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std())


# ---- paired comparison ---------------------------------------------------------------------
@dataclass(frozen=True)
class PairedResult:
    """B - A over the same queries: the difference, its 95% bootstrap interval, a two-sided p."""

    delta: float
    ci_low: float
    ci_high: float
    p: float
    n_queries: int
    n_seeds: int


def paired_difference(
    a: Sequence[np.ndarray],
    b: Sequence[np.ndarray],
    scale: float = 100.0,
    n_boot: int = N_BOOT,
    n_perm: int = N_PERM,
    seed: int = 0,
) -> PairedResult:
    """Paired comparison of two checkpoints scored on the same queries under several seeds.

    ``a[s]`` and ``b[s]`` are the per-query scores of seed ``s``, aligned query by query. The
    statistic is the mean over seeds of (mean_B - mean_A), as the table's mean over seeds.

    If every seed has the same queries (the usual case: ``--limit`` takes the same queries for
    every seed), the query is the resampled unit: each query's difference is averaged over
    seeds first (its seeds are correlated: same image and question), then

    - the interval is a percentile bootstrap over queries (``n_boot`` resamples, fixed seed);
    - the p-value is a paired sign-flip permutation test (``n_perm`` random flips of which
      checkpoint each query's scores belong to, fixed seed): exact under the null that A and B
      are exchangeable per query, so it is not anti-conservative for small n or skewed scores.

    If seeds have different queries, each seed is a stratum, resampled / flipped on its own.
    """
    if len(a) != len(b) or not a:
        raise ValueError("paired_difference needs the same number (>= 1) of seeds on both sides")
    diffs = []
    for sa, sb in zip(a, b):
        sa, sb = np.asarray(sa, dtype=float), np.asarray(sb, dtype=float)
        if sa.shape != sb.shape or sa.ndim != 1 or len(sa) == 0:
            raise ValueError("each seed needs two aligned, non-empty 1-D score arrays")
        diffs.append(sb - sa)
    joint = len({len(d) for d in diffs}) == 1
    strata = [np.mean(diffs, axis=0)] if joint else diffs
    rng = np.random.default_rng(seed)
    observed = float(np.mean([d.mean() for d in strata]))
    boots = np.mean([_bootstrap_means(d, n_boot, rng) for d in strata], axis=0)
    lo, hi = np.quantile(boots, [0.025, 0.975])
    flips = np.mean([_sign_flip_means(d, n_perm, rng) for d in strata], axis=0)
    tol = 1e-12 * max(1.0, abs(observed))
    extreme = int(np.count_nonzero(np.abs(flips) >= abs(observed) - tol))
    p = (1 + extreme) / (1 + n_perm)
    return PairedResult(observed * scale, float(lo) * scale, float(hi) * scale, min(1.0, p),
                        max(len(d) for d in diffs), len(diffs))


def _sign_flip_means(d: np.ndarray, n_perm: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``d`` with each element's sign flipped at random, ``n_perm`` times."""
    n, total = len(d), float(d.sum())
    out = np.empty(n_perm)
    for start in range(0, n_perm, _CHUNK):
        stop = min(start + _CHUNK, n_perm)
        keep = rng.random((stop - start, n)) < 0.5
        out[start:stop] = (2.0 * (keep @ d) - total) / n  # sum(kept) - sum(flipped)
    return out


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaN entries are left out of the family and stay NaN)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out[order] = adjusted
    return out


# ---- the mean over seeds: queries and demonstration draws --------------------------------------
@dataclass(frozen=True)
class TwoLevelInterval:
    """95% interval of the mean over seeds and queries of a (seeds x queries) score matrix."""

    mean: float
    ci_low: float
    ci_high: float
    #: the variance of the mean from each source (scale of the scores squared): seeds (demo draws),
    #: queries, and the seed x query residual, as estimated from the two-way layout.
    var_seeds: float
    var_queries: float
    n_seeds: int
    n_queries: int
    method: str


def two_level_interval(scores: np.ndarray, scale: float = 100.0, n_boot: int = N_BOOT, seed: int = 0,
                       level: float = 0.95) -> TwoLevelInterval:
    """Interval for the table's mean over seeds that counts both sources of variance: which queries were
    asked (the eval set is a sample) and which demonstrations were drawn (each seed is one draw).

    ``scores[s, q]`` is query q's score under seed s (the seeds share their queries). A two-level
    bootstrap: each resample draws S seeds and Q queries with replacement, independently (the crossed
    "pigeonhole" bootstrap, Owen 2007), and takes the mean of the S x Q sub-matrix, computed for all
    resamples at once as ``(w_seeds @ X) . w_queries / (S Q)`` with resampling counts ``w``. Resampling
    S seeds out of S underestimates their variance by (S-1)/S (3 seeds: by a third), so the seed part of
    each resample's deviation is scaled by sqrt(S/(S-1)); and the percentile interval of a bootstrap over
    few seeds is too short, so the interval is ``mean +- t * sd_boot`` with the t quantile at the
    Welch-Satterthwaite degrees of freedom of the two variance components (S-1 for the seeds, Q-1 for the
    queries). docs/statistics.md has the derivation and the simulated coverage.
    """
    x = np.asarray(scores, dtype=float)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError("two_level_interval needs a (seeds x queries) matrix with at least one of each")
    n_s, n_q = x.shape
    mean = float(x.mean())
    rng = np.random.default_rng(seed)
    seed_means = x.mean(axis=1)
    query_effects = x - seed_means[:, None]  # each seed's queries around that seed's mean
    boots = np.empty(n_boot)
    inflate = math.sqrt(n_s / (n_s - 1)) if n_s > 1 else 0.0
    for start in range(0, n_boot, _CHUNK):
        stop = min(start + _CHUNK, n_boot)
        b = stop - start
        ws = _counts(rng, b, n_s) / n_s  # (b, S) seed weights summing to 1
        wq = _counts(rng, b, n_q) / n_q  # (b, Q) query weights summing to 1
        seed_part = ws @ seed_means - seed_means.mean()
        query_part = np.einsum("bq,bq->b", ws @ query_effects, wq)
        boots[start:stop] = mean + inflate * seed_part + query_part
    # variance components of the mean (two-way layout without replication): seeds, queries
    var_s = float(seed_means.var(ddof=1) / n_s) if n_s > 1 else 0.0
    var_q = float(x.mean(axis=0).var(ddof=1) / n_q) if n_q > 1 else 0.0
    sd = float(boots.std(ddof=1))
    df = _satterthwaite([(var_s, n_s - 1), (var_q, n_q - 1)])
    from scipy.stats import t as student_t

    half = float(student_t.ppf(0.5 + level / 2.0, df)) * sd if sd > 0 else 0.0
    return TwoLevelInterval(mean * scale, (mean - half) * scale, (mean + half) * scale, var_s * scale ** 2,
                            var_q * scale ** 2, n_s, n_q, "two-level bootstrap (seeds x queries)")


def _counts(rng: np.random.Generator, b: int, n: int) -> np.ndarray:
    """How often each of ``n`` units is drawn in each of ``b`` resamples with replacement: (b, n)."""
    idx = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(float)


def _satterthwaite(parts: Sequence[tuple[float, int]]) -> float:
    """Welch-Satterthwaite degrees of freedom of a sum of variance estimates (estimate, its df)."""
    total = sum(v for v, _ in parts)
    denom = sum(v * v / d for v, d in parts if d > 0 and v > 0)
    if total <= 0 or denom <= 0:
        return float("inf")
    return total * total / denom
