"""The typed objects that flow between the stages of an evaluation.

Task -> Example; Sampler -> demos (Examples); PromptBuilder -> Prompt;
runner -> GenerateRequest / LoglikelihoodRequest -> Model; results -> SampleRecord.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Union


@dataclass(frozen=True)
class Image:
    """An image on local disk. Loaded lazily by the model adapter (see harness.data.media)."""

    path: str
    kind: str = field(default="image", init=False)

    @property
    def identity(self) -> str:
        """Stable identity used by every cache (features, RICES, frames) and in result keys."""
        return self.path


@dataclass(frozen=True)
class DatasetImage(Image):
    """An image stored in a row of a Hugging Face dataset (harness.data.hf_data), decoded only when used.

    ``path`` is its identity, ``hfds://<dataset fingerprint>/<row>/<column>``: stable across runs of
    the same data, so feature caches, resume keys and ``demo_ids`` treat it like a file. Load it with
    ``harness.data.media.load_image`` (which takes the item or its ``path``), as any image.
    """


@dataclass(frozen=True)
class Video:
    """A video on local disk: one media item of several frames."""

    path: str
    kind: str = field(default="video", init=False)

    @property
    def identity(self) -> str:
        """Stable identity used by every cache (features, RICES, frames) and in result keys."""
        return self.path


Media = Union[Image, Video]  # DatasetImage is an Image


@dataclass(frozen=True)
class Example:
    """One sample of a task split.

    id:       unique within the task (question_id, image id, ...), as a string.
    media:    the sample's media, in order.
    fields:   template variables (e.g. ``question``), and anything a prompt needs.
    answers:  every reference answer (all annotators), used for scoring.
    target:   the answer written into a demonstration (task option decides which).
    meta:     extra per-sample data (answer_type, question_type, ...), copied into records.
    """

    id: str
    media: tuple[Media, ...]
    fields: Mapping[str, Any]
    answers: tuple[str, ...] = ()
    target: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Chunk:
    """Media followed by text: one demonstration, or the query (the last chunk).

    A model renders a chunk as ``<media>... text`` and closes demonstration
    chunks with its end-of-chunk marker, so per-media masking holds: text
    attends only to the last media before it.
    """

    media: tuple[Media, ...]
    text: str
    #: Demonstrations: the end of ``text`` that the demo's answer adds after its query stem
    #: (``text == stem + answer``), so chat adapters can split a demo into a user turn (media, stem)
    #: and an assistant turn (answer). None for the query, and where the template does not end with it.
    answer: str | None = None

    @property
    def stem(self) -> str:
        """``text`` without its answer: the question part of a demo (all of ``text`` for the query)."""
        return self.text[: len(self.text) - len(self.answer)] if self.answer else self.text


@dataclass(frozen=True)
class Prompt:
    """A model-agnostic interleaved prompt: demonstration chunks, then the query chunk.

    ``separator`` is text placed after each demonstration's end-of-chunk marker (template
    data: OpenFlamingo's current evaluation puts ``"\n"`` there for VQA and captioning).
    """

    chunks: tuple[Chunk, ...]
    separator: str = ""

    @property
    def demos(self) -> tuple[Chunk, ...]:
        return self.chunks[:-1]

    @property
    def query(self) -> Chunk:
        return self.chunks[-1]

    @property
    def media(self) -> tuple[Media, ...]:
        return tuple(m for c in self.chunks for m in c.media)

    def segments(self) -> list[Media | str]:
        """The flat interleaved sequence ``[media, text, media, text, ...]``."""
        out: list[Media | str] = []
        for chunk in self.chunks:
            out.extend(chunk.media)
            out.append(chunk.text)
        return out

    def render(self, media_token: str = "<image>", end_of_chunk: str = "<|endofchunk|>",
               separator: str | None = None) -> str:
        """The text form (OpenFlamingo's tokens by default), stored with each prediction: each
        demonstration is ``media text end_of_chunk separator``; ``separator`` None means the prompt's own."""
        sep = self.separator if separator is None else separator
        parts = []
        for i, chunk in enumerate(self.chunks):
            text = media_token * len(chunk.media) + chunk.text
            if i < len(self.chunks) - 1:
                text += end_of_chunk + sep
            parts.append(text)
        return "".join(parts)


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings for open-ended tasks (OpenFlamingo's defaults for VQA)."""

    max_new_tokens: int = 5
    num_beams: int = 3
    length_penalty: float = 0.0
    min_new_tokens: int = 0


@dataclass(frozen=True)
class GenerateRequest:
    """Generate a continuation of ``prompt``.

    ``query`` and ``demos`` are carried so that models which answer from the
    data itself (null baselines, replayed predictions) can do so.
    """

    prompt: Prompt
    config: GenerationConfig
    query: Example
    demos: tuple[Example, ...] = ()


@dataclass(frozen=True)
class LoglikelihoodRequest:
    """Score ``continuation`` after ``prompt``: the sum of its tokens' log-probabilities."""

    prompt: Prompt
    continuation: str
    query: Example
    demos: tuple[Example, ...] = ()


@dataclass(frozen=True)
class RankRequest:
    """Score every one of ``continuations`` after the one shared ``prompt`` (a close-ended query's
    candidates). Grouping them lets a model compute the prompt once (shared-prefix scoring)."""

    prompt: Prompt
    continuations: tuple[str, ...]
    query: Example
    demos: tuple[Example, ...] = ()

    def requests(self) -> list[LoglikelihoodRequest]:
        """The same work as one LoglikelihoodRequest per candidate (for models without prefix sharing)."""
        return [LoglikelihoodRequest(self.prompt, c, self.query, self.demos) for c in self.continuations]


@dataclass
class SampleRecord:
    """One evaluated sample, as written to the predictions journal.

    ``score`` is None for a query without reference answers (a test-server split): its prediction
    is kept, unscored (``Task.sample_score``)."""

    query_id: str
    demo_ids: list[str]
    prompt: str
    raw_output: str
    prediction: str
    score: float | None
    fields: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = {
            "query_id": self.query_id,
            "demo_ids": self.demo_ids,
            "prompt": self.prompt,
            "raw_output": self.raw_output,
            "prediction": self.prediction,
            "score": self.score,
        }
        out.update(self.fields)
        if self.error is not None:
            out["error"] = self.error
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "SampleRecord":
        core = {"query_id", "demo_ids", "prompt", "raw_output", "prediction", "score", "error"}
        return cls(
            query_id=str(obj["query_id"]),
            demo_ids=[str(x) for x in obj.get("demo_ids", [])],
            prompt=obj.get("prompt", ""),
            raw_output=obj.get("raw_output", ""),
            prediction=obj.get("prediction", ""),
            score=None if obj["score"] is None else float(obj["score"]),
            fields={k: v for k, v in obj.items() if k not in core},
            error=obj.get("error"),
        )
