"""Score a predictions file against a task's references, without any model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from harness.errors import DataError
from harness.data.predictions import journal_task, load_journal, load_predictions
from harness.task import Task
from harness.types import Example, SampleRecord

log = logging.getLogger(__name__)


def score_predictions(task: Task, path: str | Path, split: str | None = None) -> dict[str, Any]:
    """Metrics of the predictions in ``path`` on ``split`` (default: the task's eval split).

    As the official VQA evaluation, it scores the questions that have a prediction;
    questions of the split without one are reported (``n_missing``) and logged.
    Official-format answers are scored as they are. A harness ``predictions.jsonl`` is
    scored as its run scored it: its ``raw_output`` post-processed, its model outputs
    (e.g. candidate log-likelihoods for ROC-AUC) and failed samples kept, and the
    references always read from the task's data, never from the journal.
    """
    recorded_task = journal_task(path)
    if recorded_task is not None and recorded_task != task.name:
        raise DataError(f"{path} holds predictions of task {recorded_task} (its journal.json says so), not "
                        f"{task.name}; pass --task {recorded_task}")
    journal = load_journal(path)
    if journal is None:
        id_key, text_key = task.prediction_keys
        preds: dict[str, Any] = load_predictions(path, id_key, text_key)
    else:
        preds = journal
    examples = task.eval_examples(split)
    if examples and not any(task.has_answers(e) for e in examples):
        raise DataError(f"task {task.name} split {split or task.eval_split} has no answers (a test-server split): "
                        f"there is nothing to score here; `python run_eval.py export CELL` writes the server's "
                        f"submission file from a run on it")
    by_id = {e.id: e for e in examples}
    unknown = [k for k in preds if k not in by_id]
    if unknown:
        raise DataError(
            f"{path}: {len(unknown)} predictions have ids not in task {task.name} split "
            f"{split or task.eval_split} (first: {unknown[0]}); is this the right task and split?"
        )
    records = [_record(task, ex, preds[ex.id]) for ex in examples if ex.id in preds]
    if not records:
        raise DataError(f"{path}: no predictions to score")
    missing = len(examples) - len(records)
    if missing:
        log.warning("%d of %d examples of %s have no prediction in %s; they are not scored",
                    missing, len(examples), task.name, path)
    metrics = task.aggregate(records)
    metrics["n_missing"] = missing
    return metrics


def _record(task: Task, ex: Example, pred: str | SampleRecord) -> SampleRecord:
    if isinstance(pred, str):  # official format: the answer as given
        return SampleRecord(query_id=ex.id, demo_ids=[], prompt="", raw_output=pred, prediction=pred,
                            score=task.score(pred, ex), fields=task.record_fields(ex))
    # The journal's own fields are the model's outputs; the task's data overrides any reference in them.
    fields = {**pred.fields, **task.record_fields(ex)}
    if pred.error:
        return SampleRecord(query_id=ex.id, demo_ids=pred.demo_ids, prompt="", raw_output="", prediction="",
                            score=0.0, fields=fields, error=pred.error)
    prediction = task.postprocess(pred.raw_output, ex)
    return SampleRecord(query_id=ex.id, demo_ids=pred.demo_ids, prompt="", raw_output=pred.raw_output,
                        prediction=prediction, score=task.score(prediction, ex), fields=fields)
