"""A worked example: a plug-in task whose data is a Hugging Face dataset.

Your data: ``<data root>/my_hf_vqa/``, a ``DatasetDict`` saved with ``save_to_disk`` (or parquet files
``<split>-00000-of-00001.parquet``), splits ``train`` and ``test``, columns::

    question_id (int or str), image (Image feature), question (str), answers (list of str, or of {"answer": ...})

Run it like a built-in task (``--task-arg columns=question:q,...`` maps other column names)::

    harness run --include examples/my_hf_task.py --tasks my_hf_vqa --data-dir DATA \\
        --model idefics --model-arg path=/models/idefics-9b --shots 0 4

Images stay in the dataset and are decoded only when a prompt uses them; results record the
dataset's fingerprint. Prompts, post-processing and the official VQA accuracy come from VQATask.
"""

from __future__ import annotations

from harness.data.hf_data import Columns
from harness.registry import register_task
from harness.types import Example
from tasks.vqa import VQATask


@register_task("my_hf_vqa")
class MyHFVQA(VQATask):
    """My VQA benchmark read from a Hugging Face dataset (a plug-in example)."""

    default_support_split = "train"
    default_eval_split = "test"
    # field -> column; VQATask.example_from_row turns a row into an Example (override it for other schemas)
    hf_columns = Columns(required={"id": "question_id", "image": "image", "question": "question", "answers": "answers"})

    def load(self, split: str) -> list[Example]:
        return self.load_source(f"hf:{self.root}@{split}", split)
