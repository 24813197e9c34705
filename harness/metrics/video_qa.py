"""Open-ended video QA metrics: top-1 exact match (MSVD/MSRVTT-QA) and iVQA accuracy."""

from __future__ import annotations

from typing import Literal, Sequence

from harness.metrics.vqa import normalize_answer

IVQAMatch = Literal["exact", "vqa"]


def exact_match(prediction: str, answer: str) -> float:
    """1.0 when prediction and answer are equal after the VQA normalisation, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(answer))


def ivqa_accuracy(prediction: str, answers: Sequence[str], match: IVQAMatch = "exact") -> float:
    """iVQA (Yang et al. 2021): min(1, #annotators who gave the prediction / 2).

    ``exact`` (default) is the official evaluation (antoyang/just-ask: the dataloader counts the
    five raw ``answer1..answer5`` strings, ``eval_videoqa.py`` clamps count / 2 at 1 and
    ``compute_aggreeings`` reads the predicted answer's value): the prediction must equal an
    annotator's answer character for character. ``vqa`` compares after the VQA normalisation
    instead (``two`` meets ``2``), the harness's behaviour before task version 2. Empty annotator
    slots never match.
    """
    if match == "exact":
        return min(1.0, sum(1 for a in answers if a and a == prediction) / 2.0)
    if match != "vqa":
        raise ValueError(f"unknown iVQA match {match!r} (exact or vqa)")
    pred = normalize_answer(prediction)
    if not pred:
        return 0.0
    return min(1.0, sum(1 for a in answers if a and normalize_answer(a) == pred) / 2.0)
