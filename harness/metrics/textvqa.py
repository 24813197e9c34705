"""TextVQA accuracy as TextVQA's own evaluator computes it: facebookresearch/mmf
``mmf/utils/m4c_evaluators.py``, ``TextVQAAccuracyEvaluator`` with its ``EvalAIAnswerProcessor``
(the evaluator TextVQA numbers are reported with, and the EvalAI server's answer processing).

It differs from the official VQA script (harness.metrics.vqa) in its normaliser, applied to the
prediction and to all ten answers every time (there is no "only when the answers disagree"):

1. lower case; remove every ``,`` and ``?``; ``'s`` becomes `` 's``; strip;
2. newlines and tabs become spaces; strip;
3. the VQA punctuation step (its digit-comma test can no longer fire: the commas are gone) and
   the VQA period strip (the same first-32-periods quirk);
4. number words, articles and contractions as the VQA script.

So ``ten`` against ten ``10`` scores 1 (the VQA script's quirk leaves identical answers alone, but
here the prediction is normalised too, and ``1,000`` meets ``1000``). The score is the mean, over
the leave-one-out subsets of the answers, of min(1, matches / 3).
"""

from __future__ import annotations

from typing import Sequence

from harness.metrics.vqa import leave_one_out_accuracy, process_digit_article, process_punctuation


def normalize_textvqa(text: str) -> str:
    """mmf's ``EvalAIAnswerProcessor``: word_tokenize, whitespace, punctuation, digits/articles/contractions."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def textvqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Accuracy of one prediction in [0, 1] against the (ten) annotators' answers, all normalised.

    mmf asserts ten answers; any number of at least one is scored the same way here.
    """
    if not answers:
        raise ValueError("textvqa_accuracy needs at least one reference answer")
    return leave_one_out_accuracy(normalize_textvqa(prediction), [normalize_textvqa(a) for a in answers])
