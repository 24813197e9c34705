"""The results store: one folder per evaluation cell, written as samples finish.

    <output>/<label>/<task>/<shots>shot_seed<seed>/
        predictions.jsonl   one SampleRecord per line, appended as each batch finishes
        journal.json        the cell's configuration and its key; a rerun with the same key resumes
        metrics.json        written last: metrics plus the complete configuration
        parts.jsonl         time spent by each process that worked on the cell (resume, shards)
        .lock               held (fcntl.flock) by the process working on the cell
        shards/<key>/<k>of<n>.jsonl   the journals of ``--shard k/n`` processes, merged later
    <output>/<label>/summary.json   mean/std over seeds per task x shots

Result identity: a cell's identity is ``config_key``, the hash of its full configuration
(model fingerprint and options, task and its options and data, sampler, shots, seed,
limit, generation settings, harness version: the ``config`` dict built in
``Runner.plan``; options that only size a cache are left out, see ``Model.runtime_options``). A folder holds one identity. A run whose cell folder holds results of
another identity (finished or partial) refuses before computing anything, naming the
folder and what differs (:func:`config_diff`); ``--overwrite`` deletes the old cell
instead, or pick another ``--output`` / ``--label``. Nothing is deleted implicitly.

Concurrency: a process works on a cell only while it holds the cell's OS file lock
(:class:`CellLock`); the lock dies with the process, so a killed run never blocks. A
second run into the same output skips cells another live process holds and comes back
to them at the end (waiting for the lock, then reading the finished metrics).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from harness.errors import HarnessError
from harness.types import SampleRecord

log = logging.getLogger(__name__)


def cell_dir(output: Path, label: str, task: str, shots: int, seed: int) -> Path:
    return output / safe_name(label) / task / f"{shots}shot_seed{seed}"


def safe_name(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.@+" else "_" for c in label)


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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: two runs may write one file
    with writing(path):
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


class CellConflict(HarnessError):
    """A cell folder holds results of another configuration."""


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def config_diff(old: dict[str, Any], new: dict[str, Any], limit: int = 6) -> str:
    """What differs between two cell configurations, readable: ``limit: 1000 -> 9673; ...``."""
    a, b = _flatten(old), _flatten(new)

    def show(d: dict[str, Any], k: str) -> str:
        text = str(d.get(k, "(absent)"))
        return text if len(text) <= 60 else text[:57] + "..."

    diffs = [f"{k}: {show(a, k)} -> {show(b, k)}"
             for k in sorted(set(a) | set(b)) if a.get(k, "(absent)") != b.get(k, "(absent)")]
    more = f"; and {len(diffs) - limit} more" if len(diffs) > limit else ""
    return "; ".join(diffs[:limit]) + more if diffs else "(no visible difference: another harness version?)"


class CellLock:
    """An exclusive OS file lock (``fcntl.flock``) on one cell (or one shard of it).

    It dies with its process, so a killed run never leaves a lock that blocks; the file
    itself stays (a file lock is no marker) and records the holder for messages.
    """

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def acquire(self, wait: bool) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()} pid {os.getpid()}\n".encode())
        self._fd = fd
        return True

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "another process"
        except OSError:
            return "another process"

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class Journal:
    """Append-only predictions file of one cell, resumable when its configuration matches.

    With ``shard=(k, n)`` the journal is ``shards/<config key>/<k>of<n>.jsonl``: n processes
    each evaluate every n-th query; a later unsharded run of the same cell merges the
    shards (only those of its own configuration key) and writes the metrics.

    Each process that appends also records its elapsed time in a parts file next to the
    journal, so a resumed or merged cell reports the compute time of all its parts.
    """

    def __init__(self, directory: Path, config_key: str, config: dict[str, Any],
                 shard: tuple[int, int] | None = None):
        self.dir = directory
        self.meta_path = directory / "journal.json"
        self.shard_dir = directory / "shards" / config_key
        self.shard = shard
        self.path = self.shard_dir / f"{shard[0]}of{shard[1]}.jsonl" if shard else directory / "predictions.jsonl"
        self.parts_path = self.path.with_suffix(".parts.jsonl") if shard else directory / "parts.jsonl"
        self.config_key = config_key
        self.config = config
        self._part = f"{socket.gethostname()}:{os.getpid()}:{time.time():.3f}" + (f":shard{shard[0]}of{shard[1]}" if shard else "")
        self._t0 = time.monotonic()
        self._n_new = 0

    def lock(self) -> CellLock:
        """The lock a process holds while it works on this journal (the cell, or its shard)."""
        return CellLock(self.path.with_suffix(".lock") if self.shard else self.dir / ".lock")

    def completed_metrics(self) -> dict[str, Any] | None:
        """The finished cell's metrics if it already ran with this exact configuration."""
        mpath = self.dir / "metrics.json"
        if mpath.is_file():
            try:
                metrics = read_json(mpath)
            except (OSError, json.JSONDecodeError):
                return None
            if isinstance(metrics, dict) and metrics.get("config_key") == self.config_key:
                return metrics
        return None

    def existing_config(self) -> tuple[str, dict[str, Any]] | None:
        """(key, config) of results of *another* configuration in this folder, if any."""
        for path in (self.dir / "metrics.json", self.meta_path):
            if not path.is_file():
                continue
            try:
                meta = read_json(path)
            except (OSError, json.JSONDecodeError):
                continue  # a torn file of a killed run is not a result
            key = meta.get("config_key") if isinstance(meta, dict) else None
            if key and key != self.config_key:
                return key, meta.get("config") or {}
        if not self.meta_path.is_file() and self.path.is_file() and self.path.stat().st_size and not self.shard:
            return "unknown (predictions.jsonl without journal.json)", {}
        return None

    def check_conflict(self) -> None:
        """Raise CellConflict if this folder holds results of another configuration."""
        other = self.existing_config()
        if other is None or self.shard:
            return  # shards are keyed by configuration: they never collide
        key, config = other
        raise CellConflict(
            f"{self.dir} holds results of another configuration (key {key}, this run {self.config_key}): "
            f"{config_diff(config, self.config)}. Keep them: pass another --output or --label; "
            f"or replace them: --overwrite"
        )

    def clear(self) -> None:
        """Delete this cell's results of another configuration (``--overwrite``)."""
        log.warning("--overwrite: deleting the results of another configuration in %s", self.dir)
        for name in ("metrics.json", "journal.json", "predictions.jsonl", "parts.jsonl"):
            (self.dir / name).unlink(missing_ok=True)

    def resume(self) -> list[SampleRecord]:
        """Records already written with this configuration (by an interrupted run, or by shards)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._t0 = time.monotonic()  # this part starts now (not while it waited for a lock)
        if self.shard:
            # Shards never delete: other processes write beside them; the key keeps configs apart.
            own = _read_records(self.path) if self.path.is_file() else []
            self.rewrite(own)
            # what `merge` needs to rebuild the cell without the run's command line
            write_json(self.shard_dir / "config.json", {"config_key": self.config_key, "config": self.config})
            merged = self._merged()
            seen = {r.query_id for r in merged}
            return merged + [r for r in own if r.query_id not in seen]
        self.check_conflict()
        done = _read_records(self.path) if self.meta_path.is_file() and self.path.is_file() else []
        (self.dir / "metrics.json").unlink(missing_ok=True)  # stale: this configuration's run is not finished
        seen = {r.query_id for r in done}
        n_own = len(done)
        shard_files = self.shard_files()
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
        for f in shard_files:  # merged into predictions.jsonl, with their time records
            parts = f.with_suffix(".parts.jsonl")
            if parts.is_file():
                with open(self.parts_path, "a", encoding="utf-8") as out:
                    out.write(parts.read_text(encoding="utf-8"))
                parts.unlink()
            f.unlink()
        (self.shard_dir / "config.json").unlink(missing_ok=True)
        for d in (self.shard_dir, self.shard_dir.parent):
            if d.is_dir() and not any(p for p in d.iterdir() if p.suffix != ".lock"):
                for lock in d.glob("*.lock"):
                    lock.unlink(missing_ok=True)
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
        for r in [*self._merged(), *(r for f in self.shard_files() for r in _read_records(f))]:
            by_id.setdefault(r.query_id, r)
        return list(by_id.values())

    def shard_files(self) -> list[Path]:
        """This configuration's shard journals (not their time records)."""
        if not self.shard_dir.is_dir():
            return []
        return [f for f in sorted(self.shard_dir.glob("*of*.jsonl")) if not f.name.endswith(".parts.jsonl")]

    def prepare(self) -> dict[str, Any] | None:
        """Before shards start: the finished cell's metrics, or None after merging earlier
        journals into predictions.jsonl (what every shard then treats as done)."""
        finished = self.completed_metrics()
        if finished is None:
            self.resume()
        return finished

    def rewrite(self, records: list[SampleRecord]) -> None:
        """Replace the journal's content (resume, merge, and final per-sample scores)."""
        # Atomic: a full disk or a kill mid-rewrite leaves the old journal whole, never a truncated one.
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        with writing(self.path):
            with open(tmp, "w", encoding="utf-8") as f:
                for r in records:
                    f.write(json.dumps(r.to_json(), default=str) + "\n")
            os.replace(tmp, self.path)

    def append(self, records: Iterable[SampleRecord]) -> None:
        records = list(records)
        with writing(self.path), open(self.path, "a", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r.to_json(), default=str) + "\n")
            f.flush()
        self._n_new += len(records)
        self.record_time()

    def elapsed(self) -> float:
        """Seconds this process has worked on the journal."""
        return round(time.monotonic() - self._t0, 3)

    def record_time(self) -> float:
        """Append this process's elapsed time on the cell (the last line of a part counts); returns it."""
        line = {"part": self._part, "wall_time_s": self.elapsed(), "samples": self._n_new}
        with writing(self.parts_path), open(self.parts_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
        return line["wall_time_s"]

    def parts(self) -> list[dict[str, Any]]:
        """Each part's wall time and sample count (its last record), in order of first appearance."""
        out: dict[str, dict[str, Any]] = {}
        if self.parts_path.is_file():
            for line in self.parts_path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                    out[str(rec["part"])] = rec
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a torn line of a killed process
        return list(out.values())
