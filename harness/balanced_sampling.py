"""Class-balanced demonstrations for classification tasks (ImageNet, Kinetics-700, ...).

From the same random support set as :class:`~harness.sampling.RandomSampler`, a query's
``shots`` demos cover as many distinct classes as possible: ``shots`` different classes
when the support set has that many (one example each), otherwise every class
``shots // n`` or ``shots // n + 1`` times. Classes, examples and order are a pure function
of (seed, task, query id, shots); the query itself is never its own demo.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import ClassVar

from harness.sampling import RandomSampler, rng_for
from harness.types import Example


@dataclass
class ClassBalancedSampler(RandomSampler):
    """Demos spread evenly over the classes (an example's class is its ``target``)."""

    name: ClassVar[str] = "class_balanced"

    def draw(self, query: Example, shots: int) -> list[Example]:
        self.check_shots(shots, [query])
        by_class: dict[str, list[Example]] = defaultdict(list)
        for ex in self.pool:
            if ex.id != query.id:
                by_class[ex.target].append(ex)
        classes = sorted(by_class)
        rng = rng_for("balanced-demos", self.seed, self.task, query.id, shots)
        chosen: list[Example] = []
        # Rounds over the classes in a random order: each round takes one unused example per class.
        remaining = {c: [by_class[c][i] for i in rng.permutation(len(by_class[c]))] for c in classes}
        while len(chosen) < shots:
            live = [c for c in classes if remaining[c]]
            for i in rng.permutation(len(live)):
                if len(chosen) == shots:
                    break
                chosen.append(remaining[live[i]].pop())
        return [chosen[i] for i in rng.permutation(len(chosen))]
