"""RareAct's metric: mean Weighted Average Precision (mWAP, Miech et al. 2020).

Follows the official ``compute_score.py`` (github.com/antoine77340/RareAct): for each
(verb, noun) action with at least one positive clip, the clips ranked by the action's
score are its positives (annotation 1), its negatives (annotation 0, plus clips positive
for an action sharing neither verb nor noun) and its hard negatives (annotations 2-4,
plus clips positive for an action sharing exactly one of verb or noun). Each clip is
weighted by 1 / (number of clips of the same YouTube video in its group), and the
action's AP is scikit-learn's ``average_precision_score`` with those weights. mWAP is the
mean over actions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


def weighted_average_precision(labels: Sequence[int], scores: Sequence[float], weights: Sequence[float]) -> float:
    """Average precision with sample weights, as scikit-learn's ``average_precision_score``.

    AP = sum over distinct score thresholds (high to low) of (R_k - R_{k-1}) * P_k, where
    precision and recall count weights; tied scores form one threshold.
    """
    y = np.asarray(labels, dtype=float)
    s = np.asarray(scores, dtype=float)
    w = np.asarray(weights, dtype=float)
    order = np.argsort(-s, kind="mergesort")
    y, s, w = y[order], s[order], w[order]
    tps = np.cumsum(w * y)
    fps = np.cumsum(w * (1.0 - y))
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the end of each group of equal scores
    tps, fps = tps[last_of_tie], fps[last_of_tie]
    if tps[-1] <= 0:
        return float("nan")
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


@dataclass(frozen=True)
class RareActRow:
    """One line of ``rareact.csv``: a clip annotated for one (verb, noun) action."""

    video_id: str
    class_id: int
    verb: str
    noun: str
    annotation: int


def _by_video_weights(video_ids: Sequence[str]) -> np.ndarray:
    ids = list(video_ids)
    counts = {v: ids.count(v) for v in set(ids)}
    return np.array([1.0 / counts[v] for v in ids])


def mean_weighted_ap(rows: Sequence[RareActRow], scores: np.ndarray) -> tuple[float, dict[tuple[str, str], float]]:
    """mWAP (0-1) and the WAP of each action; ``scores[i, c]`` is row i's clip scored for class c."""
    groups: dict[tuple[str, str], dict[str, list[int]]] = {}
    class_of: dict[tuple[str, str], int] = {}
    for r in rows:
        action = (r.verb, r.noun)
        class_of[action] = r.class_id
        groups.setdefault(action, {"positive": [], "negative": [], "hard negative": []})
    for i, r in enumerate(rows):
        own = groups[(r.verb, r.noun)]
        if r.annotation == 0:
            own["negative"].append(i)
        elif r.annotation == 1:
            own["positive"].append(i)
            for (verb, noun), g in groups.items():
                if (verb == r.verb) != (noun == r.noun):
                    g["hard negative"].append(i)
                elif verb != r.verb and noun != r.noun:
                    g["negative"].append(i)
        else:
            own["hard negative"].append(i)
    per_action: dict[tuple[str, str], float] = {}
    for action, g in groups.items():
        if not g["positive"]:
            continue
        idx = g["positive"] + g["negative"] + g["hard negative"]
        weights = np.concatenate([_by_video_weights([rows[i].video_id for i in g[k]])
                                  for k in ("positive", "negative", "hard negative")])
        labels = [1] * len(g["positive"]) + [0] * (len(idx) - len(g["positive"]))
        per_action[action] = weighted_average_precision(labels, scores[idx, class_of[action]], weights)
    if not per_action:
        return float("nan"), per_action
    return float(np.mean(list(per_action.values()))), per_action
