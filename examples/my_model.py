"""A worked example of a plug-in model: the constant-answer null baseline.

    harness run --include examples/my_model.py --model constant --model-arg answer=yes --tasks easyvqa

A real adapter renders ``request.prompt`` (interleaved media and text chunks) into its own
tokens; see models/idefics.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.model import Model
from harness.registry import register_model


@dataclass(frozen=True)
class ConstantOptions:
    """answer: what to answer to every question."""

    answer: str = "yes"


@register_model("constant")
class Constant(Model):
    """Answers every question with the same text (on VQAv2 'yes' scores about 25)."""

    Options = ConstantOptions

    @property
    def fingerprint(self) -> str:
        return f"constant-{self.options.answer}"

    def generate(self, requests):
        return [self.options.answer for _ in requests]
