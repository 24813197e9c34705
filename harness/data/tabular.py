"""Reading CSV and JSON-lines data files, with errors that name the file, the row and the field."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence

from harness.errors import DataError


def read_csv(path: Path, what: str, layout: str, columns: Sequence[str]) -> list[dict[str, str]]:
    """The rows of a CSV file with a header; every name in ``columns`` must be a column."""
    if not path.is_file():
        raise DataError(f"{what}: file not found: {path}\nExpected layout: {layout}")
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in columns if c not in header]
        if missing:
            raise DataError(f"{what}: {path} has no column(s) {', '.join(missing)} (header: {', '.join(header) or 'empty'})"
                            f"\nExpected layout: {layout}")
        return [dict(row) for row in reader]


def read_jsonl(path: Path, what: str, layout: str) -> list[dict]:
    """The objects of a JSON-lines file (blank lines skipped)."""
    from harness.store.journal import read_text

    if not path.is_file():
        raise DataError(f"{what}: file not found: {path}\nExpected layout: {layout}")
    out = []
    try:
        text = read_text(path, f"{what}: data file")
    except DataError as exc:
        raise DataError(f"{exc}\nExpected layout: {layout}") from None
    for n, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                # the file's line number; json's own "line 1" would name the line within the line
                raise DataError(f"{what}: {path} line {n} is not valid JSON ({exc.msg} at column {exc.colno})"
                                f"\nExpected layout: {layout}") from None
            if not isinstance(obj, dict):
                raise DataError(f"{what}: {path} line {n} is not a JSON object\nExpected layout: {layout}")
            out.append(obj)
    return out
