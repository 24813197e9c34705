"""A worked example: a new benchmark in one file, registered without touching the package.

Your data: ``<data root>/my_vqa/{train,test}.jsonl``, one object per line::

    {"id": "17", "image": "images/17.jpg", "question": "What is on the table?", "answers": ["cup", "mug"]}

(``image`` relative to ``<data root>/my_vqa/``). Run it like a built-in task::

    harness run --include examples/my_task.py --tasks my_vqa --data-dir DATA \
        --model idefics --model-arg path=/models/idefics-9b --shots 0 4

Everything else comes from the harness: demo sampling, prompts (both template styles),
OpenFlamingo answer post-processing, the VQA accuracy, results, tables. A question with exactly ten
answers is scored by the official ten-annotator formula; one with other than ten (``["cup", "mug"]`` above) by
the task option ``non_ten_answers``: ``exact`` (default: 1 if the prediction equals any answer, so "mug"
scores 1) or ``min3`` (min(1, matches/3) over the answers given).

Bump the class attribute ``version`` when you change how outputs are post-processed or scored: it is
part of every cell's identity, so a rerun computes new cells instead of reusing the old numbers.
"""

from __future__ import annotations

from harness.errors import DataError
from harness.registry import register_task
from harness.data.tabular import read_jsonl
from harness.types import Example, Image
from tasks.vqa import VQATask, choose_answer

LAYOUT = '<data root>/my_vqa/<split>.jsonl, lines {"id", "image", "question", "answers": [...]}'


@register_task("my_vqa")
class MyVQA(VQATask):
    """My VQA benchmark (a JSONL example of a plug-in task)."""

    default_support_split = "train"
    default_eval_split = "test"

    def load(self, split: str) -> list[Example]:
        path = self.root / f"{split}.jsonl"
        examples = []
        for n, rec in enumerate(read_jsonl(path, "task my_vqa", LAYOUT), 1):
            try:
                answers = tuple(rec["answers"])
                examples.append(Example(
                    id=str(rec["id"]),
                    media=(Image(str(self.root / rec["image"])),),
                    fields={"question": rec["question"]},
                    answers=answers,
                    target=choose_answer(answers, self.options.answer_choice),
                ))
            except (KeyError, TypeError) as exc:
                raise DataError(f"{path}, record {n}: {type(exc).__name__}: {exc}\nExpected layout: {LAYOUT}") from None
        return examples
