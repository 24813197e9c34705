"""The results store: one folder per evaluation cell, written as samples finish.

    <output>/<label>/<task>/<shots>shot_seed<seed>/
        predictions.jsonl   one SampleRecord per line, appended as each batch finishes
        journal.json        the cell's configuration; a rerun with the same one resumes
        metrics.json        written last: metrics plus the complete configuration
    <output>/<label>/summary.json   mean/std over seeds per task x shots
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from .types import SampleRecord

log = logging.getLogger(__name__)


def cell_dir(output: Path, label: str, task: str, shots: int, seed: int) -> Path:
    return output / safe_name(label) / task / f"{shots}shot_seed{seed}"


def safe_name(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.@+" else "_" for c in label)


def write_json(path: Path, obj: Any) -> None:
    """Write atomically so a killed run never leaves half a metrics file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f"{path.suffix}.{os.getpid()}.tmp")  # own temp file: shards write the same file at once
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _read_records(path: Path) -> list[SampleRecord]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                out.append(SampleRecord.from_json(json.loads(line)))
            except (json.JSONDecodeError, KeyError):
                break  # a torn last line from a kill: redo from there
    return out


class Journal:
    """Append-only predictions file of one cell, resumable when its configuration matches.

    With ``shard=(k, n)`` the journal is ``shards/<config key>/<k>of<n>.jsonl``: n processes
    each evaluate every n-th query; a later unsharded run of the same cell merges the
    shards (only those of its own configuration key) and writes the metrics.
    """

    def __init__(self, directory: Path, config_key: str, config: dict[str, Any],
                 shard: tuple[int, int] | None = None):
        self.dir = directory
        self.meta_path = directory / "journal.json"
        self.shard_dir = directory / "shards" / config_key
        self.shard = shard
        self.path = self.shard_dir / f"{shard[0]}of{shard[1]}.jsonl" if shard else directory / "predictions.jsonl"
        self.config_key = config_key
        self.config = config

    def completed_metrics(self) -> dict[str, Any] | None:
        """The finished cell's metrics if it already ran with this exact configuration."""
        mpath = self.dir / "metrics.json"
        if mpath.is_file():
            try:
                metrics = read_json(mpath)
            except (OSError, json.JSONDecodeError):
                return None
            if metrics.get("config_key") == self.config_key:
                return metrics
        return None

    def resume(self) -> list[SampleRecord]:
        """Records already written with this configuration (by an interrupted run, or by shards)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.shard:
            # Shards never delete: other processes write beside them; the key keeps configs apart.
            own = _read_records(self.path) if self.path.is_file() else []
            self.rewrite(own)
            write_json(self.shard_dir / "config.json", {"config_key": self.config_key, "config": self.config})
            merged = self._merged()
            seen = {r.query_id for r in merged}
            return merged + [r for r in own if r.query_id not in seen]
        done: list[SampleRecord] = []
        same = False
        if self.meta_path.is_file():
            try:
                same = read_json(self.meta_path).get("config_key") == self.config_key
            except (OSError, json.JSONDecodeError):
                same = False
        if same and self.path.is_file():
            done = _read_records(self.path)
        elif self.path.is_file() or (self.dir / "metrics.json").exists():
            log.warning("%s holds results of another configuration; starting this cell afresh", self.dir)
        (self.dir / "metrics.json").unlink(missing_ok=True)
        seen = {r.query_id for r in done}
        n_own = len(done)
        shard_files = sorted(self.shard_dir.glob("*.jsonl")) if self.shard_dir.is_dir() else []
        for f in shard_files:
            for r in _read_records(f):
                if r.query_id not in seen:
                    seen.add(r.query_id)
                    done.append(r)
        if done:
            log.info("resuming %s: %d samples already done%s", self.dir, len(done),
                     f" ({len(done) - n_own} from {len(shard_files)} shard journals)" if shard_files else "")
        write_json(self.meta_path, {"config_key": self.config_key, "config": self.config})
        self.rewrite(done)
        for f in [*shard_files, self.shard_dir / "config.json"]:  # merged into predictions.jsonl
            f.unlink(missing_ok=True)
        for d in (self.shard_dir, self.shard_dir.parent):
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        return done

    def _merged(self) -> list[SampleRecord]:
        """What predictions.jsonl holds for this configuration (read-only: for shards)."""
        try:
            same = read_json(self.meta_path).get("config_key") == self.config_key
        except (OSError, json.JSONDecodeError):
            return []
        main = self.dir / "predictions.jsonl"
        return _read_records(main) if same and main.is_file() else []

    def recorded(self) -> list[SampleRecord]:
        """Every record of this configuration on disk, predictions.jsonl first, then the shard
        journals (read-only; the first record of a query wins, as in resume)."""
        by_id: dict[str, SampleRecord] = {}
        shard_files = sorted(self.shard_dir.glob("*.jsonl")) if self.shard_dir.is_dir() else []
        for r in [*self._merged(), *(r for f in shard_files for r in _read_records(f))]:
            by_id.setdefault(r.query_id, r)
        return list(by_id.values())

    def prepare(self) -> dict[str, Any] | None:
        """Before shards start: the finished cell's metrics, or None after merging earlier
        journals into predictions.jsonl (what every shard then treats as done)."""
        finished = self.completed_metrics()
        if finished is None:
            self.resume()
        return finished

    def rewrite(self, records: list[SampleRecord]) -> None:
        """Replace the journal's content (resume, merge, and final per-sample scores)."""
        with open(self.path, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r.to_json(), default=str) + "\n")

    def append(self, records: Iterable[SampleRecord]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r.to_json(), default=str) + "\n")
            f.flush()


def iter_metrics(paths: Iterable[str | Path]) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every finished cell's metrics.json under the given result folders (or files)."""
    for p in map(Path, paths):
        files = [p] if p.is_file() else sorted(p.rglob("metrics.json"))
        for f in files:
            yield f, read_json(f)
