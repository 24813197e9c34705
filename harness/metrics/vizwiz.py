"""VizWiz-VQA metrics as the official VizWiz evaluation (the VizWiz API's ``vqaEval``) computes them.

Accuracy: the prediction is always normalised (punctuation, number words, articles,
contractions: the VQA normaliser), the ten reference answers are compared *as written*
(the VizWiz annotations are already normalised), and the score is the mean over the ten
leave-one-out subsets of min(1, matches / 3). Unanswerable questions are ordinary VQA
questions whose references say ``unanswerable``: answering "unanswerable" scores like any
other answer, and the accuracy is also reported per answer type, ``unanswerable`` included.

Answerability (the challenge's second track): a question is predicted unanswerable when the
normalised prediction is ``unanswerable``; the official evaluation reports the average
precision and the F1 score of that prediction against the data's ``answerable`` flag
(positive class: unanswerable).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from harness.metrics.vqa import normalize_answer

UNANSWERABLE = "unanswerable"


def vizwiz_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Accuracy of one prediction in [0, 1]: normalised prediction vs. the references as written."""
    if not answers:
        raise ValueError("vizwiz_accuracy needs at least one reference answer")
    pred = normalize_answer(prediction)
    scores = []
    for i in range(len(answers)):
        matches = sum(1 for j, a in enumerate(answers) if j != i and a == pred)
        scores.append(min(1.0, matches / 3.0))
    return sum(scores) / len(scores)


def predicts_unanswerable(prediction: str) -> bool:
    return normalize_answer(prediction) == UNANSWERABLE


def average_precision(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Average precision as scikit-learn's ``average_precision_score`` (step-wise, no interpolation):
    sum over distinct score thresholds, highest first, of (R_n - R_{n-1}) * P_n. NaN with no positives."""
    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=float)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    ap, prev_recall = 0.0, 0.0
    for t in np.unique(s)[::-1]:
        chosen = s >= t
        tp = int((y[chosen] == 1).sum())
        recall, precision = tp / n_pos, tp / int(chosen.sum())
        ap += (recall - prev_recall) * precision
        prev_recall = recall
    return float(ap)


def f1(labels: Sequence[int], predicted: Sequence[int]) -> float:
    y, p = np.asarray(labels, dtype=int), np.asarray(predicted, dtype=int)
    tp = int(((y == 1) & (p == 1)).sum())
    denom = int((y == 1).sum()) + int((p == 1).sum())
    return 2.0 * tp / denom if denom else 0.0


def unanswerability(answerable: Sequence[int], predictions: Sequence[str]) -> dict[str, float]:
    """Average precision and F1 (0-100) of predicting 'unanswerable', positives = ``answerable == 0``."""
    gt = [1 - int(a) for a in answerable]
    pred = [int(predicts_unanswerable(p)) for p in predictions]
    return {"average_precision": average_precision(gt, pred) * 100.0, "f1": f1(gt, pred) * 100.0}
