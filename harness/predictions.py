"""Reading predictions files: the official results format or the harness's own journal."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import DataError

#: id and text keys tried in order, so the official formats and our journals all read.
_ID_KEYS = ("query_id", "question_id", "image_id", "id")
_TEXT_KEYS = ("raw_output", "answer", "caption", "prediction")


def load_predictions(path: str | Path, id_key: str | None = None, text_key: str | None = None) -> dict[str, str]:
    """Map id -> predicted text.

    Accepts a JSON list (``[{"question_id": ..., "answer": ...}]`` for VQA,
    ``[{"image_id": ..., "caption": ...}]`` for captioning) or JSON lines
    (a harness ``predictions.jsonl``, whose ``raw_output`` is re-post-processed).
    """
    p = Path(path)
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
    out: dict[str, str] = {}
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise DataError(f"{p}: entry #{i} is not an object")
        ik = id_key if id_key in rec else next((k for k in _ID_KEYS if k in rec), None)
        tk = text_key if text_key in rec else next((k for k in _TEXT_KEYS if k in rec), None)
        if ik is None or tk is None:
            want = f"{id_key or 'question_id'!r} and {text_key or 'answer'!r}"
            raise DataError(f"{p}: entry #{i} needs the fields {want}; it has {sorted(rec)}")
        key = str(rec[ik])
        if key in out:
            raise DataError(f"{p}: id {key} appears twice (entry #{i})")
        out[key] = str(rec[tk])
    return out
