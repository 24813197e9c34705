"""The journal: the ONE reader and writer of ``predictions.jsonl``.

Every reader (runner, merge, score, paired statistics, viewer) goes through :func:`read_records`,
which is strict: a line in the middle that is not JSON, a JSON line that is not a record, a field
of the wrong type, or a file that is not UTF-8 is an error naming the file, the line and how many
records it affects. Only a torn LAST line (a run killed mid-write) is dropped, with a warning,
and redone on resume. Nothing rewrites records away without saying so.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from harness.cache import atomic_write
from harness.errors import DataError, HarnessError
from harness.store.identity import config_diff, config_hash
from harness.store.layout import JOURNAL_META, METRICS, PARTS, PREDICTIONS, read_json, write_json, writing
from harness.store.locks import CellLock
from harness.types import SampleRecord

log = logging.getLogger(__name__)


class JournalError(DataError):
    """A predictions file that cannot be read without losing or inventing records."""


class CellConflict(HarnessError):
    """A cell folder holds results of another configuration."""


# ---- reading ----------------------------------------------------------------------------
def check_file(path: Path, what: str) -> None:
    """A clear error if ``path`` is not a readable regular file (missing, a folder, a dangling
    symlink or a symlink loop)."""
    if path.is_file():
        return
    if path.is_dir():
        raise DataError(f"{what} {path} is a folder, not a file; pass the file inside it")
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except RuntimeError:
            raise DataError(f"{what} {path} is a symlink loop; point it at the real file") from None
        except OSError:
            pass
        raise DataError(f"{what} {path} is a symlink to {os.readlink(path)}, which does not exist")
    if path.exists():
        raise DataError(f"{what} {path} is not a regular file")
    raise DataError(f"{what} not found: {path}")


def read_text(path: Path, what: str = "predictions file") -> str:
    """The file as text: UTF-8 (a UTF-8 BOM is dropped); UTF-16 or other bytes are a clear error."""
    check_file(path, what)
    data = path.read_bytes()
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise DataError(f"{what} {path} is UTF-16 text; the harness reads UTF-8: convert it "
                        f"(e.g. iconv -f UTF-16 -t UTF-8 {path.name} > fixed.jsonl)")
    if data[:3] == b"\xef\xbb\xbf":
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        hint = " (it looks like UTF-16)" if b"\x00" in data[:200] else ""
        raise DataError(f"{what} {path}: line {line} is not UTF-8 text (byte {exc.start}){hint}; "
                        f"save it as UTF-8") from None


def parse_lines(text: str, path: Path, what: str = "predictions file",
                torn_tail_ok: bool = False) -> list[tuple[int, Any]]:
    """(line number, JSON value) of each non-blank line. A bad line is an error naming its number
    and how many lines after it would be lost; with ``torn_tail_ok`` an unterminated bad LAST line
    (a kill mid-write) is dropped with a warning."""
    lines = text.split("\n")
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    out = []
    for k, (n, line) in enumerate(numbered):
        try:
            out.append((n, json.loads(line)))
        except json.JSONDecodeError as exc:
            last = k == len(numbered) - 1
            if last and torn_tail_ok and not text.endswith("\n"):
                log.warning("%s: line %d is cut off (a run killed mid-write); it is dropped and redone", path, n)
                break
            after = len(numbered) - k - 1
            raise JournalError(
                f"{what} {path}: line {n} is not valid JSON ({exc.msg} at column {exc.colno}); "
                f"{after} record line(s) after it{' and the line itself' if after else ''} would be lost. "
                f"Fix or delete line {n} (a run's own journal: or rerun with --overwrite to recompute the cell)"
            ) from None
    return out


def _bad(path: Path, n: int, what: str) -> JournalError:
    return JournalError(f"{path}: line {n}: {what}; fix the line, or rerun the cell with --overwrite")


def record_from_json(obj: Any, path: Path, n: int) -> SampleRecord:
    """One journal line as a record, every field type checked."""
    if not isinstance(obj, Mapping):
        raise _bad(path, n, f"a JSON {type(obj).__name__} is not a prediction record (an object with query_id, "
                            f"raw_output, score...)")
    for key in ("query_id", "score"):
        if key not in obj:
            raise _bad(path, n, f"the record has no {key!r}")
    qid = obj["query_id"]
    if isinstance(qid, bool) or not isinstance(qid, (str, int)):
        raise _bad(path, n, f"query_id must be a string, got {json.dumps(qid)}")
    score = obj["score"]  # null: a query without reference answers (a test-server split), kept unscored
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float)) or math.isinf(score)):
        raise _bad(path, n, f"score must be a number, got {json.dumps(score)} (null: unscored)")
    for key in ("prompt", "raw_output", "prediction"):
        if key in obj and not isinstance(obj[key], str):
            raise _bad(path, n, f"{key} must be a string, got {json.dumps(obj[key])[:80]}")
    demos = obj.get("demo_ids", [])
    if not isinstance(demos, list) or any(isinstance(d, bool) or not isinstance(d, (str, int)) for d in demos):
        raise _bad(path, n, f"demo_ids must be a list of ids, got {json.dumps(demos)[:80]}")
    if obj.get("error") is not None and not isinstance(obj["error"], str):
        raise _bad(path, n, f"error must be a string or null, got {json.dumps(obj['error'])[:80]}")
    return SampleRecord.from_json(obj)


def read_records(path: Path, torn_tail_ok: bool = True) -> list[SampleRecord]:
    """Every record of a harness journal, strictly (see the module docstring)."""
    text = read_text(path)
    return [record_from_json(obj, path, n) for n, obj in parse_lines(text, path, torn_tail_ok=torn_tail_ok)]


def predictions_digest(records: Iterable[SampleRecord]) -> str:
    """What a cell's metrics were computed from: each record's id, outputs, score and error."""
    return config_hash([[r.query_id, r.raw_output, r.prediction, r.score, r.error] for r in records])


def seal(result: Mapping[str, Any]) -> str:
    """A digest of a metrics.json's numbers, its key and its predictions' digest: a hand edit breaks it."""
    return config_hash({k: result.get(k) for k in ("metrics", "primary_metric", "n", "n_failed", "config_key",
                                                   "predictions_digest")})


def seal_problem(result: Mapping[str, Any]) -> str | None:
    """Why a metrics.json cannot be trusted as written by the harness, or None."""
    if "seal" not in result:
        return "it has no seal (written by another version of the harness, or by hand)"
    if result.get("seal") != seal(result):
        return "its numbers do not match its seal (edited after the run?)"
    return None


# ---- one cell's journal ----------------------------------------------------------------
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
        self.meta_path = directory / JOURNAL_META
        self.shard_dir = directory / "shards" / config_key
        self.shard = shard
        self.path = self.shard_dir / f"{shard[0]}of{shard[1]}.jsonl" if shard else directory / PREDICTIONS
        self.parts_path = self.path.with_suffix(".parts.jsonl") if shard else directory / PARTS
        self.config_key = config_key
        self.config = config
        self._part = f"{socket.gethostname()}:{os.getpid()}:{time.time():.3f}" + (f":shard{shard[0]}of{shard[1]}" if shard else "")
        self._t0 = time.monotonic()
        self._n_new = 0

    def lock(self) -> CellLock:
        """The lock a process holds while it works on this journal (the cell, or its shard)."""
        return CellLock(self.path.with_suffix(".lock") if self.shard else self.dir / ".lock")

    def completed_metrics(self) -> dict[str, Any] | None:
        """The finished cell's metrics if it already ran with this exact configuration and its
        metrics.json still matches its seal and the predictions it was computed from (else the
        cell is scored again from its journal, with a warning)."""
        mpath = self.dir / METRICS
        if not mpath.is_file():
            return None
        try:
            metrics = read_json(mpath)
        except (OSError, ValueError):
            return None
        if not (isinstance(metrics, dict) and metrics.get("config_key") == self.config_key):
            return None
        problem = seal_problem(metrics)
        if problem is None and self.path.is_file():
            digest = predictions_digest(read_records(self.path))
            if digest != metrics.get("predictions_digest"):
                problem = f"the predictions in {self.path.name} are not those it was computed from"
        if problem:
            log.warning("%s: %s; scoring the cell again from its predictions", mpath, problem)
            return None
        return metrics

    def existing_config(self) -> tuple[str, dict[str, Any]] | None:
        """(key, config) of results of *another* configuration in this folder, if any.

        A journal.json that cannot be read (or names no key) beside predictions is of an unknown
        configuration: never adopted."""
        for path in (self.dir / METRICS, self.meta_path):
            if not path.is_file():
                continue
            try:
                meta = read_json(path)
            except (OSError, ValueError):
                meta = None  # a torn file of a killed run is not a result
            key = meta.get("config_key") if isinstance(meta, dict) else None
            if key and key != self.config_key:
                return key, meta.get("config") or {}
            if key == self.config_key:
                return None
        if self.shard or not (self.path.is_file() and self.path.stat().st_size):
            return None
        if self.meta_path.is_file():
            return f"unknown (predictions.jsonl beside a damaged {JOURNAL_META})", {}
        return f"unknown (predictions.jsonl without {JOURNAL_META})", {}

    def check_conflict(self) -> None:
        """Raise CellConflict if this folder holds results of another configuration."""
        other = self.existing_config()
        if other is None or self.shard:
            return  # shards are keyed by configuration: they never collide
        key, config = other
        what = config_diff(config, self.config) if config else "its configuration cannot be read"
        raise CellConflict(
            f"{self.dir} holds results of another configuration (key {key}, this run {self.config_key}): "
            f"{what}. Keep them: pass another --output or --label; "
            f"or replace them: --overwrite"
        )

    def replaceable(self) -> bool:
        """Whether ``--overwrite`` has something to replace: results of another configuration, or a
        journal that cannot be read without losing records (the cell is then recomputed)."""
        if self.existing_config() is not None:
            return True
        try:
            if self.path.is_file():
                read_records(self.path)
        except DataError as exc:
            log.warning("%s", exc)
            return True
        return False

    def clear(self) -> None:
        """Delete this cell's results of another configuration, or its unreadable journal (``--overwrite``)."""
        log.warning("--overwrite: deleting the results of another configuration (or an unreadable journal) in %s",
                    self.dir)
        for name in (METRICS, JOURNAL_META, PREDICTIONS, PARTS):
            (self.dir / name).unlink(missing_ok=True)

    def resume(self) -> list[SampleRecord]:
        """Records already written with this configuration (by an interrupted run, or by shards)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._t0 = time.monotonic()  # this part starts now (not while it waited for a lock)
        if self.shard:
            # Shards never delete: other processes write beside them; the key keeps configs apart.
            own = read_records(self.path) if self.path.is_file() else []
            self.rewrite(own)
            # what `merge` needs to rebuild the cell without the run's command line
            write_json(self.shard_dir / "config.json", {"config_key": self.config_key, "config": self.config})
            merged = self._merged()
            seen = {r.query_id for r in merged}
            return merged + [r for r in own if r.query_id not in seen]
        self.check_conflict()
        done = read_records(self.path) if self.meta_path.is_file() and self.path.is_file() else []
        (self.dir / METRICS).unlink(missing_ok=True)  # stale: this configuration's run is not finished
        seen = {r.query_id for r in done}
        n_own = len(done)
        shard_files = self.shard_files()
        shard_records = [read_records(f) for f in shard_files]  # all read before anything is deleted
        for records in shard_records:
            for r in records:
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
            meta = read_json(self.meta_path)
        except (OSError, ValueError):
            return []
        same = isinstance(meta, dict) and meta.get("config_key") == self.config_key
        main = self.dir / PREDICTIONS
        return read_records(main) if same and main.is_file() else []

    def recorded(self) -> list[SampleRecord]:
        """Every record of this configuration on disk, predictions.jsonl first, then the shard
        journals (read-only; the first record of a query wins, as in resume)."""
        by_id: dict[str, SampleRecord] = {}
        for r in [*self._merged(), *(r for f in self.shard_files() for r in read_records(f))]:
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
        with atomic_write(self.path) as f:
            for r in records:
                f.write(json.dumps(r.to_json(), default=str) + "\n")

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
