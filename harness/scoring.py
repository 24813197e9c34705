"""Score a predictions file against a task's references, without any model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .errors import DataError
from .predictions import load_predictions
from .task import Task
from .types import SampleRecord

log = logging.getLogger(__name__)


def score_predictions(task: Task, path: str | Path, split: str | None = None) -> dict[str, Any]:
    """Metrics of the predictions in ``path`` on ``split`` (default: the task's eval split).

    As the official VQA evaluation, it scores the questions that have a prediction;
    questions of the split without one are reported (``n_missing``) and logged.
    Official-format answers are scored as they are; a harness ``predictions.jsonl``
    has its ``raw_output`` post-processed as in a run.
    """
    id_key, text_key = task.prediction_keys
    preds = load_predictions(path, id_key, text_key)
    is_journal = Path(path).suffix == ".jsonl"
    examples = task.eval_examples(split)
    by_id = {e.id: e for e in examples}
    unknown = [k for k in preds if k not in by_id]
    if unknown:
        raise DataError(
            f"{path}: {len(unknown)} predictions have ids not in task {task.name} split "
            f"{split or task.eval_split} (first: {unknown[0]}); is this the right task and split?"
        )
    records = []
    for ex in examples:
        if ex.id not in preds:
            continue
        raw = preds[ex.id]
        prediction = task.postprocess(raw, ex) if is_journal else raw
        records.append(SampleRecord(query_id=ex.id, demo_ids=[], prompt="", raw_output=raw,
                                    prediction=prediction, score=task.score(prediction, ex),
                                    fields=task.record_fields(ex)))
    if not records:
        raise DataError(f"{path}: no predictions to score")
    missing = len(examples) - len(records)
    if missing:
        log.warning("%d of %d examples of %s have no prediction in %s; they are not scored",
                    missing, len(examples), task.name, path)
    metrics = task.aggregate(records)
    metrics["n_missing"] = missing
    return metrics
