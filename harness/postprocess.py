"""Answer post-processing of raw generations, as OpenFlamingo's evaluation does it."""

from __future__ import annotations

import re

_VQA_CUT = re.compile("Question|Answer|Short")


def vqa_answer(raw: str) -> str:
    """Cut a generated VQA answer at the next 'Question'/'Answer'/'Short' or newline, and trim it."""
    text = _VQA_CUT.split(raw, maxsplit=1)[0]
    return text.split("\n", 1)[0].strip()


def caption(raw: str) -> str:
    """Cut a generated caption at the next 'Output', strip quotes and whitespace (OpenFlamingo)."""
    text = raw.split("Output", 1)[0]
    return text.replace('"', "").strip()
