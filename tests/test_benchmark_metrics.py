"""Issue 14 metrics on hand-worked cases: VisDial NDCG / MRR / R@k, VizWiz accuracy and
unanswerability, top-k accuracy, and the class-balanced sampler."""

from __future__ import annotations

import math
from collections import Counter

import pytest

import conftest_benchmarks  # noqa: F401  (puts the repo on sys.path)
from harness.balanced_sampling import ClassBalancedSampler
from harness.metrics.classification import top_k_correct
from harness.metrics.visdial import ndcg, ranks_from_scores, sparse_metrics
from harness.metrics.vizwiz import average_precision, f1, unanswerability, vizwiz_accuracy
from harness.metrics.vqa import vqa_accuracy
from harness.types import Example


def test_ndcg_three_candidates_by_hand():
    # Scores 0.9, 0.1, 0.5 rank the candidates c0, c2, c1. Relevance 0.5, 1.0, 0: two are relevant, so k = 2.
    ranks = ranks_from_scores([0.9, 0.1, 0.5])
    assert ranks == [1, 3, 2]
    # DCG@2 = 0.5 / log2(2) + 0 / log2(3) = 0.5; ideal = 1.0 / log2(2) + 0.5 / log2(3) = 1.315465
    assert ndcg(ranks, [0.5, 1.0, 0.0]) == pytest.approx(0.5 / (1 + 0.5 / math.log2(3)))
    assert ndcg(ranks, [0.5, 1.0, 0.0]) == pytest.approx(0.380093, abs=1e-6)
    assert ndcg([2, 1, 3], [0.5, 1.0, 0.0]) == pytest.approx(1.0)  # the ideal order
    assert math.isnan(ndcg([1, 2, 3], [0, 0, 0]))  # no relevant candidate: undefined


def test_sparse_metrics_by_hand():
    m = sparse_metrics([1, 3, 7, 12])
    assert (m["r@1"], m["r@5"], m["r@10"]) == (25.0, 50.0, 75.0)
    assert m["mrr"] == pytest.approx(100 * (1 + 1 / 3 + 1 / 7 + 1 / 12) / 4)
    assert m["mean_rank"] == 5.75
    assert ranks_from_scores([0.0, 0.0, 1.0]) == [2, 3, 1]  # ties keep candidate order


def test_vizwiz_accuracy_and_unanswerable():
    # The prediction is normalised ("Unanswerable." -> "unanswerable"), as the VizWiz evaluation does.
    assert vizwiz_accuracy("Unanswerable.", ["unanswerable"] * 10) == 1.0
    # 2 x unanswerable, 8 x unsuitable: 2 subsets see one match (1/3), 8 see two (2/3) -> 0.6
    assert vizwiz_accuracy("unanswerable", ["unanswerable"] * 2 + ["unsuitable"] * 8) == pytest.approx(0.6)
    # References are compared as written (the official script does not normalise them), unlike VQA 'always'.
    assert vizwiz_accuracy("red", ["Red"] * 10) == 0.0 and vqa_accuracy("red", ["Red"] * 10, "always") == 1.0
    # Answerability: positives are the unanswerable questions (answerable == 0).
    got = unanswerability([0, 1, 0, 1], ["unanswerable", "unanswerable", "blue", "red"])
    # predicted [1, 1, 0, 0] vs truth [1, 0, 1, 0]: AP = 0.5 * 0.5 (threshold 1) + 0.5 * 0.5 (threshold 0) = 0.5
    assert got["average_precision"] == pytest.approx(50.0)
    assert got["f1"] == pytest.approx(50.0)  # tp 1, 2 true and 2 predicted positives: 2 / 4
    assert average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx((1 + 2 / 3) / 2)
    assert f1([1, 1], [0, 0]) == 0.0


def test_top_k():
    scores = {"tench": -1.0, "goldfish": -0.5, "shark": -3.0}
    assert top_k_correct(scores, "goldfish", 1) and not top_k_correct(scores, "tench", 1)
    assert top_k_correct(scores, "tench", 2) and not top_k_correct(scores, "shark", 2)


def test_class_balanced_sampler_spreads_demos_over_classes():
    pool = [Example(id=f"{c}{i}", media=(), fields={}, target=c) for c in "abc" for i in range(4)]
    query = pool[0]
    sampler = ClassBalancedSampler("imagenet", pool, seed=0)
    demos = sampler.demos(query, 6)
    assert Counter(d.target for d in demos) == {"a": 2, "b": 2, "c": 2}
    assert query not in demos and len({d.id for d in demos}) == 6
    assert len({d.target for d in sampler.demos(query, 3)}) == 3  # shots <= classes: all different
    assert [d.id for d in sampler.demos(query, 6)] == [d.id for d in demos]  # pure function of the keys
    others = {tuple(d.id for d in sampler.demos(q, 6)) for q in pool[1:6]}
    assert len(others) > 1  # ...of the query id too


def test_token_length_normalisation_ranks_by_mean_token_logprob():
    from harness.model import Model
    from harness.ranking import rank

    # Sums -2 (1 token) and -3 (3 tokens): the sum prefers "a", the per-token mean (-2 vs -1) prefers "b b b".
    assert rank(["a", "b b b"], ["a", "b b b"], [[-2.0, -3.0]])[0] == "a"
    pred, _, scores = rank(["a", "b b b"], ["a", "b b b"], [[-2.0, -3.0]], "tokens", [1, 3])
    assert pred == "b b b" and scores == {"a": -2.0, "b b b": -1.0}
    with pytest.raises(Exception, match="does not count tokens.*length_normalization=bytes"):
        Model().count_tokens("tench")
