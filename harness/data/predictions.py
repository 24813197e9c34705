"""Reading predictions files: the official results format or the harness's own journal."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from harness.errors import DataError
from harness.store.journal import parse_lines, read_text, record_from_json
from harness.store.layout import JOURNAL_META, METRICS, PREDICTIONS, read_json
from harness.types import SampleRecord

log = logging.getLogger(__name__)

#: id and text keys tried in order, so the official formats all read.
_ID_KEYS = ("query_id", "question_id", "image_id", "id")
_TEXT_KEYS = ("raw_output", "answer", "caption", "prediction")


def _read_records(p: Path) -> list[tuple[int | None, int, dict[str, Any]]]:
    """(file line or None, index, object) of each entry: a JSON list, or JSON lines (errors name the line)."""
    text = read_text(p)  # a folder, a symlink loop, UTF-16 or other bytes: each said as it is
    try:
        records = json.loads(text)
    except json.JSONDecodeError as whole:
        if text.lstrip().startswith("["):
            raise DataError(f"{p}: not valid JSON ({whole.msg} at line {whole.lineno} column {whole.colno}); "
                            f'expected [{{"question_id": ..., "answer": ...}}, ...]') from None
        numbered = parse_lines(text, p)  # line N named, and how many lines after it
        for n, rec in numbered:
            if not isinstance(rec, dict):
                raise DataError(f"{p}: line {n} is a JSON {type(rec).__name__}, not an object")
        return [(n, i, rec) for i, (n, rec) in enumerate(numbered)]
    if not isinstance(records, list):
        raise DataError(f"{p}: expected a JSON list of objects, got {type(records).__name__}")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise DataError(f"{p}: entry #{i} is not an object")
    return [(None, i, rec) for i, rec in enumerate(records)]


def _where(line: int | None, i: int) -> str:
    return f"line {line}" if line is not None else f"entry #{i}"


def is_journal(records: list[dict[str, Any]]) -> bool:
    """A harness predictions.jsonl: every record has query_id, raw_output and score."""
    return bool(records) and all({"query_id", "raw_output", "score"} <= set(r) for r in records)


def load_journal(path: str | Path) -> dict[str, SampleRecord] | None:
    """id -> SampleRecord if ``path`` is a harness ``predictions.jsonl``, else None."""
    p = Path(path)
    entries = _read_records(p)
    if not is_journal([rec for _, _, rec in entries]):
        return None
    out: dict[str, SampleRecord] = {}
    for line, i, rec in entries:
        r = record_from_json(rec, p, line if line is not None else i + 1)  # the journal's own field checks
        if r.query_id in out:
            raise DataError(f"{p}: query_id {r.query_id} appears twice ({_where(line, i)})")
        out[r.query_id] = r
    return out


def journal_task(path: str | Path) -> str | None:
    """The task a run's predictions.jsonl was computed for (its journal.json / metrics.json beside it), or None."""
    p = Path(path)
    if p.name != PREDICTIONS:
        return None
    for name in (JOURNAL_META, METRICS):
        meta = p.parent / name
        if meta.is_file():
            try:
                return str(read_json(meta)["config"]["task"]["name"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
    return None


def load_predictions(path: str | Path, id_key: str | None = None, text_key: str | None = None) -> dict[str, str]:
    """Map id -> predicted text, from an official results file.

    Accepts a JSON list (``[{"question_id": ..., "answer": ...}]`` for VQA,
    ``[{"image_id": ..., "caption": ...}]`` for captioning) or JSON lines. A harness
    journal reads with :func:`load_journal` instead (its own fields, never task fields).
    An integer answer reads as its text (a label 0/1, a count 2), with a warning; NaN/inf is an error.
    """
    p = Path(path)
    out: dict[str, str] = {}
    numbers = 0
    for line, i, rec in _read_records(p):
        where = _where(line, i)
        ik = id_key if id_key in rec else next((k for k in _ID_KEYS if k in rec), None)
        tk = text_key if text_key in rec else next((k for k in _TEXT_KEYS if k in rec), None)
        if ik is None or tk is None:
            want = f"{id_key or 'question_id'!r} and {text_key or 'answer'!r}"
            raise DataError(f"{p}: {where} needs the fields {want}; it has {sorted(rec)}")
        value = rec[tk]
        if isinstance(value, float) and not math.isfinite(value):
            raise DataError(f"{p}: {where} ({ik} {rec[ik]}): {tk!r} is {value}, not an answer; write each answer "
                            f"as a string (an empty string for no answer)")
        if isinstance(value, float) and not value.is_integer():
            raise DataError(f"{p}: {where} ({ik} {rec[ik]}): {tk!r} is the number {value}, whose text is ambiguous; "
                            f"write each answer as a string")
        # Null, lists, objects and booleans are mistakes.
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise DataError(f"{p}: {where} ({ik} {rec[ik]}): {tk!r} must be a string, got {json.dumps(value)}")
        if not isinstance(value, str):
            numbers += 1
            value = int(value)
        key = str(rec[ik])
        if key in out:
            raise DataError(f"{p}: id {key} appears twice ({where})")
        out[key] = str(value)
    if numbers:
        log.warning("%s: %d %s are JSON numbers, not strings; each is scored as its text (2 -> \"2\")", p, numbers,
                    f"{tk!r} values" if numbers > 1 else f"{tk!r} value")
    return out
