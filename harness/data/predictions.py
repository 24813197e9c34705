"""Reading predictions files: the official results format or the harness's own journal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.errors import DataError
from harness.types import SampleRecord

#: id and text keys tried in order, so the official formats all read.
_ID_KEYS = ("query_id", "question_id", "image_id", "id")
_TEXT_KEYS = ("raw_output", "answer", "caption", "prediction")


def _read_records(p: Path) -> list[Any]:
    if not p.is_file():
        raise DataError(f"predictions file not found: {p}")
    text = p.read_text(encoding="utf-8")
    try:
        records = json.loads(text)
    except json.JSONDecodeError:
        try:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{p}: neither a JSON list nor JSON lines ({exc}); expected "
                f'[{{"question_id": ..., "answer": ...}}, ...]'
            ) from None
    if not isinstance(records, list):
        raise DataError(f"{p}: expected a JSON list of objects, got {type(records).__name__}")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise DataError(f"{p}: entry #{i} is not an object")
    return records


def is_journal(records: list[dict[str, Any]]) -> bool:
    """A harness predictions.jsonl: every record has query_id, raw_output and score."""
    return bool(records) and all({"query_id", "raw_output", "score"} <= set(r) for r in records)


def load_journal(path: str | Path) -> dict[str, SampleRecord] | None:
    """id -> SampleRecord if ``path`` is a harness ``predictions.jsonl``, else None."""
    p = Path(path)
    records = _read_records(p)
    if not is_journal(records):
        return None
    out: dict[str, SampleRecord] = {}
    for i, rec in enumerate(records):
        try:
            r = SampleRecord.from_json(rec)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{p}: line {i + 1} is not a harness record ({exc})") from None
        if not isinstance(rec["raw_output"], str):
            raise DataError(f"{p}: line {i + 1}: raw_output must be a string, got {rec['raw_output']!r}")
        if r.query_id in out:
            raise DataError(f"{p}: query_id {r.query_id} appears twice (line {i + 1})")
        out[r.query_id] = r
    return out


def load_predictions(path: str | Path, id_key: str | None = None, text_key: str | None = None) -> dict[str, str]:
    """Map id -> predicted text, from an official results file.

    Accepts a JSON list (``[{"question_id": ..., "answer": ...}]`` for VQA,
    ``[{"image_id": ..., "caption": ...}]`` for captioning) or JSON lines. A harness
    journal reads with :func:`load_journal` instead (its own fields, never task fields).
    """
    p = Path(path)
    records = _read_records(p)
    out: dict[str, str] = {}
    for i, rec in enumerate(records):
        ik = id_key if id_key in rec else next((k for k in _ID_KEYS if k in rec), None)
        tk = text_key if text_key in rec else next((k for k in _TEXT_KEYS if k in rec), None)
        if ik is None or tk is None:
            want = f"{id_key or 'question_id'!r} and {text_key or 'answer'!r}"
            raise DataError(f"{p}: entry #{i} needs the fields {want}; it has {sorted(rec)}")
        value = rec[tk]
        # Numbers read as text (a label 0/1, an answer 2); null, lists and objects are mistakes.
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise DataError(f"{p}: entry #{i} ({ik} {rec[ik]}): {tk!r} must be a string, got {json.dumps(value)}")
        key = str(rec[ik])
        if key in out:
            raise DataError(f"{p}: id {key} appears twice (entry #{i})")
        out[key] = str(value)
    return out
