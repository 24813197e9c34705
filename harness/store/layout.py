"""Where results live: ``<output>/<label>/<task>/<shots>shot_seed<seed>/``; safe names; atomic writes."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from harness.cache import atomic_write
from harness.errors import HarnessError

#: files of one cell folder
PREDICTIONS = "predictions.jsonl"
JOURNAL_META = "journal.json"
METRICS = "metrics.json"
PARTS = "parts.jsonl"
SUMMARY = "summary.json"


def safe_name(label: str) -> str:
    """A label or task name as one path component: anything but [alnum -_.@+] becomes ``_``."""
    return "".join(c if c.isalnum() or c in "-_.@+" else "_" for c in label)


def check_label(label: str) -> str:
    """Refuse a label that is not one safe path component (``..`` would write outside --output,
    ``.`` into its root, ``a/b`` into a nested folder); returns it unchanged."""
    if not label or label in (".", "..") or safe_name(label) != label or label.startswith("."):
        raise HarnessError(
            f"--label {label!r} is not a usable folder name: a label is one path component of letters, digits "
            f"and -_.@+ (not starting with '.'), e.g. {safe_name(label).strip('.') or 'my-model'!r}")
    return label


def label_dir(output: Path, label: str) -> Path:
    return Path(output) / safe_name(label)


def cell_dir(output: Path, label: str, task: str, shots: int, seed: int) -> Path:
    return label_dir(output, label) / safe_name(task) / f"{shots}shot_seed{seed}"


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Name ``path`` in an OSError raised while writing it (a full disk fails a write() or close(),
    whose error names no file), so the CLI can say which path failed."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def write_json(path: Path, obj: Any) -> None:
    """Write atomically so a killed run never leaves half a metrics file."""
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=str)
        f.write("\n")


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ---- evaluations along a training run: <output>/step-<N>/<label>/... ------------------------------
#: the folder of one training step's results (harness.training, ``watch``); ``compare --series`` reads it
STEP_PREFIX = "step-"


def step_dir(output: Path, step: int) -> Path:
    return Path(output) / f"{STEP_PREFIX}{int(step)}"


def step_of(cell_file: str | Path) -> int | None:
    """The training step of a cell (its metrics.json or folder): the name of the folder above its
    label, ``<output>/step-<N>/<label>/<task>/<cell>/``, when that is ``step-<N>``; else None."""
    p = Path(cell_file)
    folder = p.parent if p.suffix == ".json" else p
    if len(folder.parts) < 4:
        return None
    name = folder.parents[2].name
    if name.startswith(STEP_PREFIX) and name[len(STEP_PREFIX):].isdigit():
        return int(name[len(STEP_PREFIX):])
    return None
