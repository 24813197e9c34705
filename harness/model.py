"""The model protocol: what the harness asks of a model adapter.

An adapter renders the model-agnostic :class:`~harness.types.Prompt` into its own
tokens and implements some of:

- ``generate_batch(prompts, config) -> list[str]``  open-ended tasks: prompts that share one
                                                  GenerationConfig (``generate(requests)`` groups a
                                                  batch by config and calls it per group; an adapter
                                                  may override ``generate`` itself instead)
- ``loglikelihood(requests) -> list[float]``     close-ended tasks (ranking candidates)
- ``rank_candidates(requests) -> list[list[float]]``  the same, grouped by shared prompt (optional)
- ``encode_media(media) -> features``            where the architecture separates it, for caching
- ``prefetch_media(media)``                       a cell's distinct media before its batches (optional)

Register one with ``@register_model("name")``; its ``Options`` dataclass lists the
``--model-arg key=value`` settings it takes.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Hashable, Iterable, Mapping, Sequence, TypeVar

from harness.errors import HarnessError
from harness.options import build_options
from harness.types import (Example, GenerateRequest, GenerationConfig, LoglikelihoodRequest, Media, Prompt,
                           RankRequest)

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def grouped(items: Sequence[T], key: Callable[[T], Hashable], call: Callable[[Any, list[T]], Sequence[R]]) -> list[R]:
    """``call(key, members)`` once per distinct ``key(item)`` (first seen first), its results put back
    in ``items``' order: the one grouping rule for a batch (requests by generation config, candidates
    by shared prompt)."""
    groups: dict[Hashable, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(key(item), []).append(i)
    out: list[Any] = [None] * len(items)
    for k, idx in groups.items():
        results = list(call(k, [items[i] for i in idx]))
        if len(results) != len(idx):
            raise RuntimeError(f"{len(results)} results for a group of {len(idx)}")
        for i, result in zip(idx, results):
            out[i] = result
    return out


def by_shared_prompt(requests: Sequence[LoglikelihoodRequest],
                     score: Callable[[Prompt, list[str]], Sequence[float]]) -> list[float]:
    """Log-likelihood requests scored per shared prompt: ``score(prompt, continuations)`` once per
    distinct prompt (encode it once, continue it with each candidate), results in request order."""
    return grouped(requests, lambda r: r.prompt, lambda prompt, rs: score(prompt, [r.continuation for r in rs]))


@dataclass(frozen=True)
class NoOptions:
    """This model takes no --model-arg options."""


class Model:
    """Base class of model adapters."""

    registry_name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    #: the task template style this model was trained with ("openflamingo", "flamingo").
    template_style: ClassVar[str | None] = None
    #: media kinds the model takes ("image", "video").
    media_kinds: ClassVar[frozenset[str]] = frozenset({"image"})
    media_token: ClassVar[str] = "<image>"
    end_of_chunk: ClassVar[str] = "<|endofchunk|>"
    #: text after each demonstration's end-of-chunk: None = the task template's separator; a string
    #: overrides it (a checkpoint trained on another rendering keeps it, e.g. the bundled flamingo).
    demo_separator: ClassVar[str | None] = None
    #: options that only size or place a cache (they never change an output): recorded with each
    #: cell's metrics, but not part of its identity, so changing one resumes a cell instead of
    #: refusing it as another configuration.
    runtime_options: ClassVar[frozenset[str]] = frozenset()
    #: bump it when this adapter's outputs change (a fix to decoding or prompt rendering): it is part
    #: of every cell's identity, so a rerun computes new cells instead of reusing the old outputs.
    version: ClassVar[int] = 1
    #: the option naming the checkpoint on disk (``path``, ``checkpoint``), or None: what ``watch``
    #: sets to each checkpoint folder it finds.
    checkpoint_option: ClassVar[str | None] = None

    def __init__(self, options: Mapping[str, Any] | None = None):
        self.name = self.registry_name or type(self).__name__
        self.options = build_options(self.Options, dict(options or {}), f"model {self.name}")

    @property
    def video_as_frames(self) -> bool:
        """Whether this image-only model takes a video as its frames, in order: the opt-in is a
        ``video_as_frames`` field in the adapter's Options (off by default)."""
        return bool(getattr(self.options, "video_as_frames", False))

    @property
    def device(self) -> str:
        """The torch device of this process for the ``device`` option: ``cuda`` and ``auto`` become
        ``cuda:$LOCAL_RANK`` (one GPU per torchrun rank; ``auto`` is the CPU without CUDA). The
        option itself, and so the result identity, stays as given."""
        from harness.devices import resolve_device

        return resolve_device(str(getattr(self.options, "device", "cpu")))

    @property
    def fingerprint(self) -> str:
        """Identity of the weights (or the rule) behind the outputs, used in result and cache keys."""
        return f"{self.name}"

    def config(self) -> dict[str, Any]:
        """The model's part of a cell's identity: name, weights fingerprint, options (but the
        ``runtime_options``)."""
        options = {k: v for k, v in dataclasses.asdict(self.options).items() if k not in self.runtime_options}
        out = {"name": self.name, "version": self.version, "fingerprint": self.fingerprint, "options": options}
        if self.demo_separator is not None:
            out["demo_separator"] = self.demo_separator
        return out

    def runtime_config(self) -> dict[str, Any]:
        """The ``runtime_options`` as set (recorded for information, outside the identity)."""
        return {k: v for k, v in dataclasses.asdict(self.options).items() if k in self.runtime_options}

    def separator_for(self, prompt: Prompt) -> str:
        """The text this model puts after each demonstration's end-of-chunk marker."""
        return prompt.separator if self.demo_separator is None else self.demo_separator

    def render_prompt(self, prompt: Prompt) -> str:
        """The prompt as this model sees it, in text form (stored with each prediction)."""
        return prompt.render(self.media_token, self.end_of_chunk, self.separator_for(prompt))

    def check_task(self, task: Any) -> None:
        """Called when a cell is planned, before any of its requests: raise a HarnessError naming the
        task if this model cannot evaluate it as configured (a served model without log-likelihoods and
        a close-ended task). The default takes every task."""

    def observe_support(self, task: str, support: Sequence[Example]) -> None:
        """Called once per evaluation cell with the support set. Only models that answer
        from the data itself (null baselines, retrieval) need it; the default ignores it."""

    def prefetch_media(self, media: Iterable[Media]) -> None:
        """Called once per cell before its batches with the media they will show (queries' and demos',
        lazily, with repeats): an adapter that caches vision features may encode the ones it lacks now,
        in large batches, instead of a few per query batch. The default does nothing (and draws none)."""

    def generate(self, requests: Sequence[GenerateRequest]) -> list[str]:
        """Each request's output, in order: requests grouped by their GenerationConfig (a batch from the
        runner has one), :meth:`generate_batch` called once per group."""
        return grouped(requests, lambda r: r.config,
                       lambda config, rs: self.generate_batch([r.prompt for r in rs], config))

    def generate_batch(self, prompts: Sequence[Prompt], config: GenerationConfig) -> list[str]:
        """Continue each prompt under ``config`` (shared by the whole batch)."""
        raise NotImplementedError(f"model {self.name} does not implement generate (open-ended tasks)")

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[float]:
        raise NotImplementedError(f"model {self.name} does not implement loglikelihood (close-ended tasks)")

    def rank_candidates(self, requests: Sequence[RankRequest]) -> list[list[float]]:
        """Each request's candidates' log-likelihoods after its shared prompt.

        The default scores one (prompt, candidate) pair at a time through ``loglikelihood``;
        adapters that can compute the prompt once and reuse its key/values for every
        candidate override it (the reference ``flamingo`` does: models/flamingo/scoring.py).
        """
        flat = [r for group in requests for r in group.requests()]
        scores = list(self.loglikelihood(flat))
        out, k = [], 0
        for group in requests:
            out.append(scores[k : k + len(group.continuations)])
            k += len(group.continuations)
        return out

    def count_tokens(self, text: str) -> int:
        """How many tokens ``text`` is as a continuation (for ``length_normalization=tokens``)."""
        raise HarnessError(
            f"model {self.name} does not count tokens, which length_normalization=tokens needs; "
            f"pass --task-arg length_normalization=bytes (or none)")

    def context_length(self) -> int | None:
        """The most tokens (prompt and generated together) this model takes, or None if unknown (then
        the harness cannot check prompts against it). HF adapters read ``max_position_embeddings``."""
        return None

    def prompt_length(self, prompt: Prompt) -> tuple[int, int] | None:
        """``(tokens, image tokens)`` of ``prompt`` as this model's tokenizer/processor turns it into
        input ids, or None where the adapter does not tokenize (recorded per sample, and used by the
        context-length check before any query)."""
        return None

    @classmethod
    def check_prompt_images(cls, options: Any, n_images: int, where: str) -> None:
        """Called before any model loads (harness.evaluation.validate) with the most images a
        prompt can hold (a video: its frames); raise a HarnessError naming the fix if this model,
        with these options, cannot take that many. The default takes any number."""

    def stats(self) -> dict[str, int]:
        """Cumulative counters of work done (e.g. feature-cache hits, vision encodes); the runner
        records each cell's increase in its metrics.json (``model_stats``)."""
        return {}

    def encode_media(self, media: Sequence[Media]) -> Any:
        """Vision features of ``media`` (vision encoder + resampler), where the architecture
        separates them from the language pass, so demo features can be cached and reused."""
        raise NotImplementedError(f"model {self.name} does not expose encode_media")


# Moved to harness.store.identity (the one owner of result identity); importable here as before.
from harness.store.identity import (_RACY_S, _read_cache, _write_cache, cache_dir, checkpoint_fingerprint,  # noqa: E402,F401
                                    config_hash, file_digest)
