"""``export``: a finished cell's predictions as the exact file a benchmark's evaluation server takes.

Test-server splits (VQAv2 test-dev, VizWiz test, HatefulMemes test_seen, STAR test, ...) have no public
answers: a run on them keeps every prediction unscored (``Task.compute_metrics``), and this module writes the
submission. Each task names its format (``Task.server_format``); each format here documents its schema
(``schema``, also in docs/benchmarks.md) and writes it:

============================  ===========================================================================
format                        file
============================  ===========================================================================
``vqa``                       ``[{"question_id": int, "answer": str}, ...]``: the official VQA results
                              format (OK-VQA, TextVQA on EvalAI)
``vqav2``                     the same, plus every test2015 question the run did not predict with answer
                              ``""``: EvalAI's VQAv2 challenge takes all of test2015 even for test-dev
                              (as OpenFlamingo's ``fill_vqa_testdev_results.py``); needs
                              ``v2_OpenEnded_mscoco_test2015_questions.json`` beside the test-dev file
``vizwiz``                    ``[{"image": "VizWiz_test_00000000.jpg", "answer": str}, ...]`` (VizWiz API)
``hateful_memes``             CSV ``id,proba,label``: P(hateful) and the 0/1 label (the challenge's format)
``star``                      ``{"Interaction": [{"question_id": str, "answer": int}, ...], "Sequence": ...,
                              "Prediction": ..., "Feasibility": ...}``, ``answer`` the chosen choice's index
``visdial``                   ``[{"image_id": int, "round_id": int, "ranks": [100 ints]}, ...]`` (the
                              starter code's ``evaluate.py`` output, what EvalAI takes)
============================  ===========================================================================

A failed sample (its error recorded in the journal) still gets a row, with the neutral answer of its
format (``""``, P = 0.5 and label 0, the first choice, ranks in option order), and a warning naming how
many: the servers score every question, so a missing row would fail the submission.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from harness.errors import DataError, HarnessError
from harness.types import Example, SampleRecord

log = logging.getLogger(__name__)


@dataclass
class ExportInput:
    """What a format writes from: the task (built as the run built it), the cell's records in eval
    order, the split, and ``normalize`` (apply the VQA normaliser to answers first, as OpenFlamingo's
    fill script does)."""

    task: Any
    records: list[SampleRecord]
    split: str
    normalize: bool = False

    def examples(self) -> dict[str, Example]:
        """The split's examples by id, read once from the data."""
        if not hasattr(self, "_examples"):
            self._examples = {e.id: e for e in self.task.eval_examples(self.split)}
        return self._examples


@dataclass(frozen=True)
class ServerFormat:
    name: str
    server: str
    schema: str
    suffix: str
    write: Callable[[ExportInput], str]


FORMATS: dict[str, ServerFormat] = {}


def define_format(fmt: ServerFormat) -> ServerFormat:
    """Register a submission format (built-in below; a plug-in task may add its own)."""
    FORMATS[fmt.name] = fmt
    return fmt


def _int_or_str(value: str) -> int | str:
    return int(value) if value.lstrip("-").isdigit() else value


def _answer(record: SampleRecord, normalize: bool) -> str:
    if record.error:
        return ""
    if normalize:
        from harness.metrics.vqa import normalize_answer

        return normalize_answer(record.prediction)
    return record.prediction


def _vqa(inp: ExportInput) -> str:
    return json.dumps([{"question_id": _int_or_str(r.query_id), "answer": _answer(r, inp.normalize)}
                       for r in inp.records])


def _vqav2(inp: ExportInput) -> str:
    rows = [{"question_id": _int_or_str(r.query_id), "answer": _answer(r, inp.normalize)} for r in inp.records]
    task = inp.task
    if not inp.split.startswith("test"):
        return json.dumps(rows)
    full = task.root / task.questions_file.format(split="test2015")
    if not full.is_file():
        raise DataError(f"export vqav2 ({inp.split}): EvalAI takes an answer for every test2015 question, "
                        f"also for test-dev; put {full.name} (the test2015 questions) in {full.parent}, and "
                        f"the export fills the questions the run did not predict with \"\"")
    predicted = {row["question_id"] for row in rows}
    questions = json.loads(full.read_text(encoding="utf-8")).get("questions", [])
    filled = [{"question_id": q["question_id"], "answer": ""} for q in questions if q["question_id"] not in predicted]
    log.info("export vqav2: %d predictions, %d other test2015 questions filled with \"\"", len(rows), len(filled))
    return json.dumps(rows + filled)


def _vizwiz(inp: ExportInput) -> str:
    return json.dumps([{"image": r.query_id, "answer": _answer(r, inp.normalize)} for r in inp.records])


def _hateful_memes(inp: ExportInput) -> str:
    from harness.metrics.classification import prob_of

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", "proba", "label"])
    positive = inp.task.POSITIVE
    for r in inp.records:
        logprobs = r.fields.get("candidate_logprobs")
        if r.error:
            proba, label = 0.5, 0
        elif logprobs:
            proba = prob_of(logprobs, positive)
            label = int(r.prediction.strip().lower() == positive)
        else:  # hard labels only
            label = int(r.prediction.strip().lower() in (positive, "1"))
            proba = float(label)
        writer.writerow([_int_or_str(r.query_id), f"{proba:.6f}", label])
    return out.getvalue()


def _star(inp: ExportInput) -> str:
    examples = inp.examples()
    out: dict[str, list[dict[str, Any]]] = {c: [] for c in inp.task.CATEGORIES}
    for r in inp.records:
        choices = list(examples[r.query_id].fields["choices"])
        index = choices.index(r.prediction) if not r.error and r.prediction in choices else 0
        category = r.query_id.split("_")[0]
        if category not in out:
            raise DataError(f"export star: question_id {r.query_id} is not in one of the categories "
                            f"{', '.join(out)}")
        out[category].append({"question_id": r.query_id, "answer": index})
    return json.dumps(out)


def _visdial(inp: ExportInput) -> str:
    rows = []
    for r in inp.records:
        ranks = r.fields.get("option_ranks")
        if ranks is None and not r.error:
            raise DataError(f"export visdial: round {r.query_id} has no option_ranks (a run writes them)")
        rows.append({"image_id": int(r.fields["image_id"]), "round_id": int(r.fields["round_id"]),
                     "ranks": [int(x) for x in ranks] if ranks is not None else list(range(1, 101))})
    return json.dumps(rows)


define_format(ServerFormat("vqa", "the official VQA evaluation (OK-VQA); EvalAI (TextVQA)",
                           '[{"question_id": int, "answer": str}, ...]', ".json", _vqa))
define_format(ServerFormat("vqav2", "EvalAI VQA challenge (test-dev2015, test-std2015)",
                           '[{"question_id": int, "answer": str}, ...] covering every test2015 question',
                           ".json", _vqav2))
define_format(ServerFormat("vizwiz", "EvalAI VizWiz-VQA challenge",
                           '[{"image": "VizWiz_<split>_<n:08d>.jpg", "answer": str}, ...]', ".json", _vizwiz))
define_format(ServerFormat("hateful_memes", "the Hateful Memes challenge (test_seen / test_unseen)",
                           "CSV with header id,proba,label", ".csv", _hateful_memes))
define_format(ServerFormat("star", "EvalAI STAR challenge (test)",
                           '{"Interaction"|"Sequence"|"Prediction"|"Feasibility": [{"question_id": str, '
                           '"answer": choice index}, ...]}', ".json", _star))
define_format(ServerFormat("visdial", "EvalAI Visual Dialog challenge",
                           '[{"image_id": int, "round_id": int, "ranks": [100 ints]}, ...]', ".json", _visdial))


# ---- the command ----------------------------------------------------------------------------------------
def read_cell(cell: str | Path) -> tuple[Path, dict[str, Any], list[SampleRecord]]:
    """A finished cell's folder (or its metrics.json), configuration and records in eval order."""
    from harness.store.journal import read_records
    from harness.store.layout import METRICS, PREDICTIONS, read_json
    from harness.store.results import check_cell

    path = Path(cell)
    directory = path.parent if path.name == METRICS else path
    metrics_file, journal = directory / METRICS, directory / PREDICTIONS
    if not metrics_file.is_file() or not journal.is_file():
        raise HarnessError(f"export {cell}: not a finished cell (needs {METRICS} and {PREDICTIONS} "
                           f"in it, as `run` writes under <output>/<label>/<task>/<shots>shot_seed<seed>/)")
    try:
        result = read_json(metrics_file)
        check_cell(result)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise HarnessError(f"export {cell}: {metrics_file} is not a finished harness cell's metrics "
                           f"({type(exc).__name__}: {exc})") from None
    return directory, result["config"], read_records(journal, torn_tail_ok=False)


def check_coverage(inp: ExportInput, directory: Path, partial: bool) -> None:
    """The cell must hold a prediction for every question of its split (a server scores them all; a run
    with --limit or --sample does not), and none of another split (a different data root)."""
    ids = inp.examples()
    done = {r.query_id for r in inp.records}
    foreign = sorted(done - set(ids))
    if foreign:
        raise HarnessError(f"export {directory}: {len(foreign)} of its predictions (e.g. {foreign[0]}) are not questions "
                           f"of split {inp.split} under this data root; pass the run's --data-dir")
    missing = len(ids) - len(done)
    if missing and not partial:
        raise HarnessError(f"export {directory}: the cell predicts {len(done)} of the {len(ids)} questions of split "
                           f"{inp.split} (a run with --limit/--sample?); the server scores all of them: rerun the cell "
                           f"without --limit, or pass --partial to write the {len(done)} anyway")
    if missing:
        log.warning("export %s: %d of %d questions of split %s have no prediction (--partial)", directory, missing,
                    len(ids), inp.split)


def export_cell(cell: str | Path, data_dir: str | None = None, output: str | Path | None = None,
                normalize: bool = False, overwrite: bool = False, partial: bool = False
                ) -> tuple[Path, ServerFormat, int]:
    """Write ``cell``'s submission file; returns (path, format, number of rows' predictions)."""
    from harness.registry import get_task_class

    directory, config, records = read_cell(cell)
    name = config["task"]["name"]
    cls = get_task_class(name)
    fmt_name = getattr(cls, "server_format", None)
    if fmt_name is None:
        known = ", ".join(sorted(FORMATS))
        raise HarnessError(f"export: task {name} has no evaluation server format (formats: {known}); "
                           f"its metrics are in {directory / 'metrics.json'}")
    fmt = FORMATS[fmt_name]
    options = {k: v for k, v in config["task"]["options"].items() if v is not None}
    task = cls(data_dir, options)
    split = config["task"].get("eval_split") or task.eval_split
    failed = sum(1 for r in records if r.error)
    if failed:
        log.warning("export %s: %d of %d samples failed in the run; they get the format's neutral answer "
                    "(rerun the cell to compute them)", directory, failed, len(records))
    inp = ExportInput(task, records, split, normalize)
    check_coverage(inp, directory, partial)
    text = fmt.write(inp)
    target = Path(output) if output else directory / f"submission_{name}_{split}{fmt.suffix}"
    if target.exists() and not overwrite:
        raise HarnessError(f"export: {target} exists; pass --output elsewhere or --overwrite to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(target)
    return target, fmt, len(records)


def describe_formats() -> list[tuple[str, str, str]]:
    return [(f.name, f.server, f.schema) for f in FORMATS.values()]


__all__ = ["FORMATS", "ServerFormat", "define_format", "export_cell", "read_cell", "describe_formats"]
