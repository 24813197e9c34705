"""Null baselines and the predictions replayer.

They run instantly and show what a real model must beat: a model that scores
no better than ``demo-majority`` is copying its demonstrations, one no better
than ``support-prior`` answers from the question alone.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Sequence

from harness.errors import HarnessError, SampleError
from harness.model import Model, checkpoint_fingerprint
from harness.data.predictions import load_predictions
from harness.registry import register_model
from harness.types import Example, GenerateRequest, LoglikelihoodRequest


def question_type(example: Example) -> str:
    """The official question_type where the data has one, else the question's first three words."""
    qt = example.meta.get("question_type")
    if qt:
        return str(qt)
    question = str(example.fields.get("question", ""))
    return " ".join(question.lower().rstrip("?").split()[:3])


def _most_common_last_wins(answers: Sequence[str]) -> str:
    """Most frequent answer; ties go to the one nearest the end (nearest the query in the prompt)."""
    if not answers:
        return ""
    counts = Counter(answers)
    best = max(counts.values())
    return next(a for a in reversed(answers) if counts[a] == best)


@register_model("demo-majority")
class DemoMajority(Model):
    """Answers with the most common answer among the query's demonstrations.

    Ties go to the tied answer shown closest to the query. At 0 shots it sees
    the text-only demos; with none it answers the empty string.
    """

    media_kinds = frozenset({"image", "video"})  # answers from the data, never looks at media

    def generate(self, requests: Sequence[GenerateRequest]) -> list[str]:
        return [_most_common_last_wins([d.target for d in r.demos]) for r in requests]

    def count_tokens(self, text: str) -> int:
        return 1  # scores are vote counts, not log-probabilities: length normalisation leaves them as they are

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[float]:
        # Rank candidates by how many demos gave them.
        return [float(sum(d.target.strip() == r.continuation.strip() for d in r.demos)) for r in requests]


@register_model("support-prior")
class SupportPrior(Model):
    """Answers with the most common support-set answer for the question's type.

    The type is the data's ``question_type`` (VQAv2, OK-VQA) or the question's
    first three words; unseen types get the most common answer overall.
    """

    media_kinds = frozenset({"image", "video"})  # answers from the data, never looks at media

    def __init__(self, options=None):
        super().__init__(options)
        self._by_type: dict[str, str] | None = None
        self._overall = ""

    def observe_support(self, task: str, support: Sequence[Example]) -> None:
        counts: dict[str, Counter] = defaultdict(Counter)
        for ex in support:
            counts[question_type(ex)][ex.target] += 1
        self._by_type = {t: c.most_common(1)[0][0] for t, c in counts.items()}
        overall = Counter(ex.target for ex in support)
        self._overall = overall.most_common(1)[0][0] if overall else ""

    def _answer(self, ex: Example) -> str:
        if self._by_type is None:
            raise HarnessError("support-prior: no support set observed (observe_support was not called)")
        return self._by_type.get(question_type(ex), self._overall)

    def generate(self, requests: Sequence[GenerateRequest]) -> list[str]:
        return [self._answer(r.query) for r in requests]

    def count_tokens(self, text: str) -> int:
        return 1  # scores are 0/1 matches, not log-probabilities: length normalisation leaves them as they are

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[float]:
        return [float(self._answer(r.query).strip() == r.continuation.strip()) for r in requests]


@dataclass(frozen=True)
class PredictionsOptions:
    """path: a predictions file (official results format or a harness predictions.jsonl)."""

    path: str = ""


@register_model("predictions")
class Predictions(Model):
    """Replays a predictions file, to score or re-score existing outputs with the harness's metrics.

    Accepts ``[{"question_id": ..., "answer": ...}]``, ``[{"image_id": ..., "caption": ...}]``
    or a harness ``predictions.jsonl`` (its ``raw_output`` is post-processed again).
    A query with no prediction fails that sample (recorded, counted wrong).
    """

    media_kinds = frozenset({"image", "video"})  # answers from the data, never looks at media

    Options = PredictionsOptions

    def __init__(self, options=None):
        super().__init__(options)
        if not self.options.path:
            raise HarnessError("model predictions needs --model-arg path=PREDICTIONS_FILE")
        self.table = load_predictions(self.options.path)

    @property
    def fingerprint(self) -> str:
        return f"predictions-{checkpoint_fingerprint(self.options.path)}"

    def generate(self, requests: Sequence[GenerateRequest]) -> list[str]:
        out = []
        for r in requests:
            if r.query.id not in self.table:
                raise SampleError(f"no prediction for id {r.query.id} in {self.options.path}")
            out.append(self.table[r.query.id])
        return out
