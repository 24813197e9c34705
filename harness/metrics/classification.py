"""Binary classification metrics from ranked candidates: ROC-AUC, P(positive)."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve, by ranks (Mann-Whitney U); tied scores get their average rank.

    Equals the probability that a random positive scores above a random negative
    (ties count one half). NaN when only one class is present.
    """
    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=float)
    if y.shape != s.shape:
        raise ValueError(f"roc_auc: {len(y)} labels but {len(s)} scores")
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if n_pos + n_neg != len(y):
        raise ValueError("roc_auc: labels must be 0 or 1")
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=float)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average rank (1-based) over each run of ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def prob_of(logprobs: Mapping[str, float], positive: str) -> float:
    """P(positive) by a softmax over the candidates' log-likelihoods."""
    values = np.asarray(list(logprobs.values()), dtype=float)
    top = values.max()
    return float(math.exp(logprobs[positive] - top) / np.exp(values - top).sum())


def top_k_correct(scores: Mapping[str, float], target: str, k: int) -> bool:
    """Whether ``target`` is among the ``k`` highest-scoring candidates (ties as ``torch.topk``
    breaks them, over the candidates in the mapping's order: harness.metrics.ties)."""
    from harness.metrics.ties import top_k

    names = list(scores)
    return target in [names[i] for i in top_k([scores[c] for c in names], k)]
