"""Close-ended tasks: rank candidates by log-likelihood, with prompt ensembling.

Prompt ensembling (Flamingo, close-ended tasks): the same demos in P orders;
each candidate's log-likelihood is averaged over the P prompts. The orders are a
pure function of (seed, task, query id, shots), so they do not depend on
batching or process count.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Literal, Sequence

from harness.errors import HarnessError
from harness.prompts import PromptTemplate
from harness.sampling import rng_for
from harness.types import Example

LengthNorm = Literal["none", "bytes", "tokens"]


@dataclass(frozen=True)
class RankingOptions:
    """Mixed into a close-ended task's options.

    ensemble:              number of demo orders averaged (Flamingo used 6); 1 = the sampler's order only.
    length_normalization:  ``none`` ranks by the summed log-likelihood; ``bytes`` by it divided by the
                           candidate's UTF-8 length (model-agnostic, as lm-evaluation-harness's acc_norm);
                           ``tokens`` by the mean over the candidate's tokens (OpenFlamingo's
                           classification; the model counts them, ``Model.count_tokens``).
    """

    ensemble: int = 1
    length_normalization: LengthNorm = "none"


def demo_orders(demos: Sequence[Example], ensemble: int, seed: int, task: str, query_id: str) -> list[list[Example]]:
    """Up to ``ensemble`` distinct orders of ``demos``, the sampler's order first.

    Fewer than ``ensemble`` when fewer distinct orders exist (k! < P; one at 0 or 1 shot).
    """
    k = len(demos)
    if math.factorial(min(k, 13)) <= ensemble and k <= 12:
        perms = list(itertools.permutations(range(k)))[:ensemble]
    else:
        rng = rng_for("ensemble", seed, task, query_id, k)
        perms, seen = [tuple(range(k))], {tuple(range(k))}
        while len(perms) < ensemble:
            p = tuple(int(i) for i in rng.permutation(k))
            if p not in seen:
                seen.add(p)
                perms.append(p)
    return [[demos[i] for i in p] for p in perms]


def continuation_for(template: PromptTemplate, query: Example, candidate: str) -> str:
    """The text a candidate adds after the query stem, as the demos write it.

    E.g. demo ``Answer: {answer}`` and query ``Answer:`` give ``" yes"``; the
    candidate alone when the template does not extend the stem.
    """
    as_demo = Example(query.id, query.media, query.fields, target=candidate)
    added = template.answer_part(as_demo, template.format_demo(as_demo))
    return candidate if added is None else added


def rank(candidates: Sequence[str], continuations: Sequence[str], logprobs: Sequence[Sequence[float]],
         normalization: LengthNorm = "none",
         token_counts: Sequence[int] | None = None) -> tuple[str, dict[str, float], dict[str, float]]:
    """The prediction, each candidate's mean log-likelihood over orders, and its ranking score.

    ``logprobs[p][c]`` is candidate c's log-likelihood under order p. Ties go to the first candidate.
    """
    means = {c: float(sum(lp[i] for lp in logprobs) / len(logprobs)) for i, c in enumerate(candidates)}
    if normalization == "tokens":
        if token_counts is None:
            raise HarnessError("length_normalization=tokens needs the candidates' token counts")
        scores = {c: means[c] / max(1, n) for c, n in zip(candidates, token_counts)}
    elif normalization == "bytes":
        scores = {c: means[c] / max(1, len(cont.encode("utf-8"))) for c, cont in zip(candidates, continuations)}
    else:
        scores = dict(means)
    best = max(candidates, key=lambda c: scores[c])
    return best, means, scores
