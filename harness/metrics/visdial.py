"""Visual Dialog metrics as the official VisDial evaluation (visdial-challenge-starter, metrics.py)
defines them.

Every round ranks its 100 candidate answers (rank 1 = highest score; equal scores in the order of
the reference's ``scores_to_ranks``, torch's descending sort: harness.metrics.ties).

- Sparse metrics, from the rank of the ground-truth answer (``gt_index``): R@1, R@5, R@10
  (is it in the top k), mean rank, MRR (mean of 1 / rank).
- NDCG, on the rounds with dense annotations (``gt_relevance``: one relevance in [0, 1] per
  candidate): with k = the number of candidates of non-zero relevance, NDCG@k = DCG@k of the
  predicted order / DCG@k of the ideal order, DCG@k = sum over the top k of
  relevance / log2(position + 1) (positions from 1).
"""

from __future__ import annotations

import math
from typing import Sequence

from harness.metrics.ties import descending_order


def ranks_from_scores(scores: Sequence[float]) -> list[int]:
    """1-based rank of each candidate, highest score first; ties as ``scores_to_ranks`` breaks them
    (``torch.sort(descending=True)``: candidate order up to 16 candidates, torch's own beyond)."""
    order = descending_order(scores)
    ranks = [0] * len(scores)
    for position, i in enumerate(order):
        ranks[i] = position + 1
    return ranks


def _dcg(relevance_in_order: Sequence[float]) -> float:
    return sum(r / math.log2(i + 2) for i, r in enumerate(relevance_in_order))


def ndcg(ranks: Sequence[int], relevance: Sequence[float]) -> float:
    """NDCG@k of one round: ``ranks[i]`` is candidate i's 1-based predicted rank, ``relevance[i]``
    its dense relevance; k = number of candidates with relevance != 0. NaN when none is relevant."""
    if len(ranks) != len(relevance):
        raise ValueError(f"ndcg: {len(ranks)} ranks but {len(relevance)} relevances")
    k = sum(1 for r in relevance if r != 0)
    if k == 0:
        return float("nan")
    predicted = sorted(range(len(ranks)), key=lambda i: ranks[i])[:k]
    ideal = sorted(relevance, reverse=True)[:k]
    return _dcg([relevance[i] for i in predicted]) / _dcg(ideal)


def sparse_metrics(gt_ranks: Sequence[int]) -> dict[str, float]:
    """R@1/5/10 and MRR (0-100) and mean rank, from each round's ground-truth rank."""
    n = len(gt_ranks)
    if n == 0:
        return {"r@1": math.nan, "r@5": math.nan, "r@10": math.nan, "mrr": math.nan, "mean_rank": math.nan}
    out = {f"r@{k}": 100.0 * sum(1 for r in gt_ranks if r <= k) / n for k in (1, 5, 10)}
    out["mrr"] = 100.0 * sum(1.0 / r for r in gt_ranks) / n
    out["mean_rank"] = sum(gt_ranks) / n
    return out
