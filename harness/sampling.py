"""Which demonstrations each query sees.

Every random choice is a pure function of named keys hashed together (never a
global random state), so a query's demos depend only on (seed, task, query id,
shots): the same whatever the batch size, order, or number of processes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np

from harness.data.split_cache import example_ids
from harness.errors import HarnessError
from harness.types import Example


def rng_for(*keys: object) -> np.random.Generator:
    """A generator seeded by a stable hash of ``keys`` (stable across runs, machines and processes)."""
    digest = hashlib.sha256("\x1f".join(str(k) for k in keys).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


@dataclass
class RandomSampler:
    """Random demonstrations from a support set, as Flamingo and OpenFlamingo do.

    The support set is ``support_size`` examples drawn once per (seed, task)
    from the task's support split (OpenFlamingo's "query set", 2048 by default).
    Demos for a query are drawn without replacement from it, never including the
    query itself (same id).
    """

    task: str
    support: Sequence[Example]
    seed: int
    support_size: int = 2048
    #: 0: each shot count draws its own demos (OpenFlamingo). N: nested demos, every k <= N shots takes
    #: the first k of the query's N-shot draw, so a shot-scaling curve compares like with like.
    nested_shots: int = 0
    pool: list[Example] = field(init=False)
    #: recorded in the cell's config (subclasses name themselves, e.g. ``class_balanced``).
    name: ClassVar[str] = "random"

    def __post_init__(self) -> None:
        n = len(self.support)
        if n == 0:
            raise HarnessError(f"task {self.task}: the support split is empty, so no demonstrations can be drawn")
        if self.support_size <= 0 or self.support_size >= n:
            self.pool = list(self.support)
        else:
            idx = rng_for("support", self.seed, self.task).choice(n, size=self.support_size, replace=False)
            self.pool = [self.support[i] for i in sorted(idx)]
        self._pool_ids = frozenset(e.id for e in self.pool)  # per query, "is it in the pool?" is a lookup

    def check_shots(self, shots: int, queries: Sequence[Example] | None = None) -> None:
        """Refuse more shots than the pool holds. A query in the pool is never its own demo, so then
        one fewer; ``queries`` (None: assume they overlap) disjoint from the pool can use all of it."""
        limit = max_shots(self.pool, queries, getattr(self, "_pool_ids", None))
        if shots > limit and shots > 0:
            overlap = limit < len(self.pool)
            raise HarnessError(
                f"task {self.task}: {shots} shots asked for, but the support set has only {len(self.pool)} "
                f"examples{' (a query in it is never its own demo: at most ' + str(limit) + ')' if overlap else ''}; "
                f"use fewer shots or a larger support set (task option support_size)"
            )

    def demos(self, query: Example, shots: int) -> list[Example]:
        """``shots`` demos for ``query``: its own draw, or with ``nested_shots`` the first ``shots`` of the
        query's ``nested_shots`` draw (the same whatever shot count asks)."""
        if shots == 0:
            return []
        if self.nested_shots:
            if shots > self.nested_shots:
                raise HarnessError(f"task {self.task}: {shots} shots asked for, but nested_shots={self.nested_shots} "
                                   f"(the largest shot count of the nested draw); set nested_shots >= {shots}")
            return self.draw(query, self.nested_shots)[:shots]
        return self.draw(query, shots)

    def draw(self, query: Example, shots: int) -> list[Example]:
        """``shots`` distinct demos for ``query``; the most recently drawn is placed last."""
        self.check_shots(shots, [query])
        rng = rng_for("demos", self.seed, self.task, query.id, shots)
        # Draw one spare so the query can be dropped if drawn, without a second draw.
        picks = rng.choice(len(self.pool), size=min(shots + 1, len(self.pool)), replace=False)
        chosen = [self.pool[i] for i in picks if self.pool[i].id != query.id][:shots]
        return chosen


    def config(self) -> dict:
        out = {"name": self.name, "support_size": len(self.pool), "seed": self.seed}
        if self.nested_shots:  # only when set: results from before the option keep their identity
            out["nested_shots"] = self.nested_shots
        return out


def max_shots(pool: Sequence[Example], queries: Sequence[Example] | None = None,
              pool_ids: frozenset[str] | None = None) -> int:
    """The most demos a query can get from ``pool``: all of it, less one when a query may be in it."""
    if queries is not None:
        ids = pool_ids if pool_ids is not None and len(pool_ids) == len(pool) else {e.id for e in pool}
        if not any(q in ids for q in example_ids(queries)):
            return len(pool)
    return len(pool) - 1


def sampler_config(sampler) -> dict:
    """What the sampler is, for the cell's config (and so its result key): random and RICES never mix."""
    return sampler.config()


def sampler_inputs(task, seed: int, queries: Sequence[Example]) -> tuple:
    """What :func:`build_sampler`'s sampler is a function of, besides the task: RICES is a pure
    function of the query set (not the seed); the others of the seed (the query set too when
    they look at it, e.g. class-balanced: both are kept, to be safe)."""
    query_ids = tuple(q.id for q in queries)
    if getattr(task.options, "sampler", "random") == "rices":
        return ("rices", query_ids)
    return ("seeded", seed, query_ids)


# what ``rices_encoder`` names to use the evaluated model's own vision encoder
OWN_ENCODER = "model"


def check_encoder_path(value: str) -> None:
    """Fail early (before any model loads) if ``rices_encoder`` names no model folder."""
    if value == OWN_ENCODER:
        return
    p = Path(value)
    if not (p / "config.json").is_file():
        raise HarnessError(
            f"rices_encoder {value!r}: not a Hugging Face model folder (no config.json there); give the local path "
            f"of a vision model (e.g. a CLIP checkpoint with its preprocessor_config.json), or "
            f"rices_encoder={OWN_ENCODER} to use the evaluated model's own vision encoder"
        )
