"""VizWiz-VQA metrics as the official VizWiz evaluation (the VizWiz API's ``vqaEval``) computes them.

Accuracy: the prediction is always normalised (punctuation, number words, articles,
contractions: the VQA normaliser, but with the VizWiz API's own contraction table, whose
apostrophes are mostly the typographic U+2019: ``wont`` becomes ``won’t``, not ``won't``), the
ten reference answers are compared *as written*
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

from harness.metrics.vqa import CONTRACTIONS, _clean, leave_one_out_accuracy, process_digit_article, process_punctuation

UNANSWERABLE = "unanswerable"
_CURLY = "\u2019"
#: Entries of the VizWiz API's table (vqaEval.py) that kept the ASCII apostrophe: these values
#: entirely, and these keys (their values are curly like the rest).
_ASCII_VALUES = {"aint", "arent", "cant", "couldve", "couldnt", "weve", "wheres", "whove"}
_ASCII_KEYS = {"couldn'tve", "hadn'tve"}
#: The VizWiz API's contraction table: the VQA table with every apostrophe typographic (U+2019),
#: except the entries above. So a prediction "wont" normalises to "won’t", which matches an
#: annotator's "won’t" (VizWiz answers are written that way) and never "won't".
VIZWIZ_CONTRACTIONS = {
    (k if k in _ASCII_KEYS or k in _ASCII_VALUES else k.replace("'", _CURLY)):
        (v if k in _ASCII_VALUES else v.replace("'", _CURLY))
    for k, v in CONTRACTIONS.items()
}


def normalize_vizwiz(text: str) -> str:
    """The VizWiz evaluation's normalisation of a prediction: the VQA steps with its own contractions."""
    return process_digit_article(process_punctuation(_clean(text)), VIZWIZ_CONTRACTIONS)


def vizwiz_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Accuracy of one prediction in [0, 1]: normalised prediction vs. the references as written."""
    if not answers:
        raise ValueError("vizwiz_accuracy needs at least one reference answer")
    return leave_one_out_accuracy(normalize_vizwiz(prediction), list(answers))


def predicts_unanswerable(prediction: str) -> bool:
    return normalize_vizwiz(prediction) == UNANSWERABLE


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
