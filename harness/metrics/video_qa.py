"""Open-ended video QA metrics: top-1 exact match (MSVD/MSRVTT-QA) and iVQA accuracy."""

from __future__ import annotations

from typing import Sequence

from harness.metrics.vqa import normalize_answer


def exact_match(prediction: str, answer: str) -> float:
    """1.0 when prediction and answer are equal after the VQA normalisation, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(answer))


def ivqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """iVQA (Yang et al. 2021): min(1, #annotators who gave the prediction / 2), after VQA normalisation.

    Empty annotator slots (fewer than five answers) never match.
    """
    pred = normalize_answer(prediction)
    if not pred:
        return 0.0
    matches = sum(1 for a in answers if a and normalize_answer(a) == pred)
    return min(1.0, matches / 2.0)
