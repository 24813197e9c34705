"""Prompt templates (task data) and the PromptBuilder that interleaves demos and query."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from harness.errors import HarnessError
from harness.types import Chunk, Example, Prompt


@dataclass(frozen=True)
class PromptTemplate:
    """How one example becomes text.

    ``demo`` is formatted with the example's fields plus ``answer`` (its target);
    ``query`` is the stem the model continues; ``separator`` follows each demonstration,
    after the model's end-of-chunk marker. Example (OpenFlamingo VQA):
    ``demo="Question:{question} Short answer:{answer}"``, ``query="Question:{question} Short answer:"``,
    ``separator="\n"``, which a model renders as
    ``<image>Question:q1 Short answer:a1<|endofchunk|>\n<image>Question:q Short answer:``.
    """

    demo: str
    query: str
    separator: str = ""

    def format_demo(self, example: Example) -> str:
        return self._format(self.demo, example, with_answer=True)

    def format_query(self, example: Example) -> str:
        return self._format(self.query, example, with_answer=False)

    def answer_part(self, example: Example, demo_text: str) -> str | None:
        """The end of ``demo_text`` (the formatted demo) that follows the query stem: what the answer adds
        (e.g. ``" red"``); None when the demo does not start with the stem or adds nothing."""
        stem = self.format_query(example)
        return demo_text[len(stem):] if demo_text.startswith(stem) and len(demo_text) > len(stem) else None

    @staticmethod
    def _format(template: str, example: Example, with_answer: bool) -> str:
        values: dict[str, Any] = dict(example.fields)
        if with_answer:
            values["answer"] = example.target
        try:
            return template.format(**values)
        except KeyError as exc:
            raise HarnessError(
                f"prompt template {template!r} uses {{{exc.args[0]}}}, which example {example.id} does not have "
                f"(fields: {', '.join(sorted(values))})"
            ) from None


@dataclass(frozen=True)
class PromptBuilder:
    """Turns (demos, query) into an interleaved Prompt.

    Demos with ``text_only=True`` (Flamingo's zero-shot setting) keep their text
    and lose their media.
    """

    template: PromptTemplate

    def build(self, demos: Sequence[Example], query: Example, text_only_demos: bool = False) -> Prompt:
        chunks = []
        for d in demos:
            text = self.template.format_demo(d)
            media = () if text_only_demos else tuple(d.media)
            chunks.append(Chunk(media=media, text=text, answer=self.template.answer_part(d, text)))
        chunks.append(Chunk(media=tuple(query.media), text=self.template.format_query(query)))
        return Prompt(chunks=tuple(chunks), separator=self.template.separator)


def pick_template(templates: Mapping[str, PromptTemplate], name: str, owner: str) -> PromptTemplate:
    if name not in templates:
        raise HarnessError(f"{owner}: unknown template {name!r}; available: {', '.join(sorted(templates))}")
    return templates[name]
