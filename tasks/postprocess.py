"""Answer post-processing of raw generations, exactly as OpenFlamingo's evaluation does it
(open_flamingo/eval: ``postprocess_vqa_generation``, ``postprocess_captioning_generation``)."""

from __future__ import annotations

import re

_VQA_CUT = re.compile("Question|Answer|Short")


def vqa_answer(raw: str) -> str:
    """Cut a generated VQA answer at the first 'Question'/'Answer'/'Short', then at the first ", ",
    and trim it. A newline does not end the answer (OpenFlamingo does not cut there; the VQA
    metric turns it into a space). Trimming comes last, as the metric's own strip does: trimming
    first would change where ", " is found ("x, " must give "x")."""
    text = _VQA_CUT.split(raw, maxsplit=1)[0]
    return text.split(", ", 1)[0].strip()


def caption(raw: str) -> str:
    """Cut a generated caption at the next 'Output', strip quotes and whitespace (OpenFlamingo)."""
    text = raw.split("Output", 1)[0]
    return text.replace('"', "").strip()
