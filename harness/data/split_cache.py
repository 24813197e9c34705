"""Splits parsed once: their columns kept as Arrow files, keyed by the source files' contents.

A task's loader turns its files into columns (validated as columns, not field by field) and hands
them to :func:`load_or_build`; later runs memory-map the Arrow file instead of parsing the JSON
again. :class:`LazyExamples` serves the split as a sequence of Examples built only when asked for
(the demos' pool, the queries), and keeps values computed from the whole split (its data
fingerprint) beside the cache, so they too are computed once.

The cache key (:func:`split_key`) is the one rule for when a cached split may be used: the parser
(``kind`` and its ``version``), this module's format, and the sha256 of every byte of every source
file (read once, then reused while the file's size, mtime, ctime and inode are unchanged; see
harness.store.identity.file_digests). A cache file that cannot be read, or whose bytes do not match
the checksum recorded when it was written, is rebuilt from the sources: never wrong data.

Files: ``<cache root>/splits/<label>-<key>.arrow`` and ``.json`` (key, checksum, memo), where
the cache root is ``$HARNESS_CACHE`` or ``~/.cache/harness`` (harness.cache). When files change, the cache of their
earlier contents is deleted as the new one is written. Deleting the folder is always safe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pyarrow as pa

from harness.cache import atomic_write, cache_root
from harness.store.identity import config_hash, file_digests
from harness.types import Example

log = logging.getLogger(__name__)

#: bump when the cache files' layout changes: every cached split is then rebuilt.
FORMAT = 1


def split_key(kind: str, version: int, files: Sequence[Path]) -> str:
    """The key of a split's cache: the parser (``kind``, its ``version``), the format, and the
    contents of the source files (their paths are not part of it: a copy of the data hits)."""
    return config_hash([kind, version, FORMAT, file_digests(files)])


class CachedSplit:
    """A split's columns (``table``) and the values memoised with its cache file."""

    def __init__(self, table: pa.Table, meta_path: Path | None = None, meta: dict | None = None):
        self.table = table
        self._meta_path = meta_path
        self._meta = meta if meta is not None else {"memo": {}}

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()``, kept in the cache's metadata (JSON) so later runs reuse it."""
        memo = self._meta.setdefault("memo", {})
        if key not in memo:
            memo[key] = compute()
            if self._meta_path is not None:
                _write_atomic(self._meta_path, json.dumps(self._meta).encode())
        return memo[key]


def load_or_build(kind: str, version: int, files: Sequence[Path], label: str,
                  build: Callable[[], Any]) -> Any:
    """The split's :class:`CachedSplit`: from the cache if it holds these files' contents, else
    ``build()`` (which parses the files, raising their errors) written to the cache. A ``build()``
    that returns anything but a ``pyarrow.Table`` (data the columns cannot hold) is returned as it is,
    uncached."""
    key = split_key(kind, version, files)
    directory = cache_root() / "splits"
    stem = f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', label)}-{key}"
    arrow, meta_path = directory / f"{stem}.arrow", directory / f"{stem}.json"
    hit = _read(arrow, meta_path, key)
    if hit is not None:
        return hit
    table = build()
    if not isinstance(table, pa.Table):
        return table
    try:
        directory.mkdir(parents=True, exist_ok=True)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        data = sink.getvalue().to_pybytes()
        meta = {"key": key, "format": FORMAT, "kind": kind, "files": [str(f) for f in files], "rows": table.num_rows,
                "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "memo": {}}
        with atomic_write(arrow, "wb") as f:
            f.write(data)
        with atomic_write(meta_path, "wb") as f:  # last: it vouches for the Arrow file
            f.write(json.dumps(meta).encode())
        _drop_older_versions(directory, stem, label, meta["files"])
    except OSError as exc:  # a read-only cache only costs parsing again next time
        log.debug("split cache %s not written: %s", arrow, exc)
        return CachedSplit(table)
    return CachedSplit(table, meta_path, meta)


def _drop_older_versions(directory: Path, stem: str, label: str, files: list[str]) -> None:
    """Delete this label's caches of earlier contents of the same files (the files changed since):
    a cache of other files (another data root) stays."""
    prefix = re.sub(r"[^A-Za-z0-9_.-]+", "_", label) + "-"
    for meta_path in directory.glob(f"{prefix}*.json"):
        if meta_path.stem == stem or len(meta_path.stem) != len(stem):
            continue
        try:
            if json.loads(meta_path.read_text(encoding="utf-8")).get("files") != files:
                continue
        except (OSError, ValueError, AttributeError):
            continue
        for path in (meta_path.with_suffix(".arrow"), meta_path):
            try:
                path.unlink()
            except OSError:
                pass
        log.debug("split cache: removed %s (an earlier version of %s)", meta_path.stem, ", ".join(files))


def _read(arrow: Path, meta_path: Path, key: str) -> CachedSplit | None:
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or meta.get("key") != key or meta.get("format") != FORMAT:
            raise ValueError("its metadata does not match")
        if arrow.stat().st_size != meta.get("bytes"):
            raise ValueError("its size differs from the one recorded")
        h = hashlib.sha256()
        with open(arrow, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
        if h.hexdigest() != meta.get("sha256"):
            raise ValueError("its checksum differs from the one recorded")
        table = pa.ipc.open_file(pa.memory_map(str(arrow))).read_all()  # zero-copy: pages load when used
        if table.num_rows != meta.get("rows"):
            raise ValueError("its row count differs from the one recorded")
        if not isinstance(meta.get("memo"), dict):
            meta["memo"] = {}
        return CachedSplit(table, meta_path, meta)
    except (OSError, ValueError, pa.ArrowException) as exc:
        log.warning("split cache %s is unusable (%s); parsing the data files again", arrow, exc)
        return None


def _write_atomic(path: Path, data: bytes) -> None:
    try:
        with atomic_write(path, "wb") as f:
            f.write(data)
    except OSError as exc:
        log.debug("split cache %s not written: %s", path, exc)


class LazyExamples(Sequence[Example]):
    """A split's Examples, built from its columns when asked for (an index, a slice, iteration).

    ``make(table)`` builds the Examples of a slice of the columns, in order; ``params`` are whatever
    else it depends on (image folder, answer choice...): values memoised with the cache are keyed by
    them. ``media_per_example``: how many media each example has, when it is the same for all (lets
    checks on the largest prompt skip building every example).
    """

    CHUNK = 8192

    def __init__(self, split: CachedSplit, make: Callable[[pa.Table], list[Example]], params: Sequence[Any],
                 media_per_example: int | None = None, start: int = 0, stop: int | None = None):
        self._split, self._make, self._params = split, make, list(params)
        self.media_per_example = media_per_example
        self._start = start
        self._stop = split.table.num_rows if stop is None else stop

    def __len__(self) -> int:
        return self._stop - self._start

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            return LazyExamples(self._split, self._make, self._params, self.media_per_example,
                                self._start + start, self._start + max(start, stop))
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError("example index out of range")
        return self._make(self._split.table.slice(self._start + index, 1))[0]

    def __iter__(self) -> Iterator[Example]:
        for offset in range(self._start, self._stop, self.CHUNK):
            yield from self._make(self._split.table.slice(offset, min(self.CHUNK, self._stop - offset)))

    def ids(self) -> list[str]:
        """The examples' ids, in order, without building the examples."""
        return self._split.table.column("id").slice(self._start, len(self)).to_pylist()

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` for these examples, kept with the split's cache."""
        return self._split.memo(config_hash([key, self._params, self._start, self._stop]), compute)


def example_ids(examples: Sequence[Example]) -> list[str]:
    """The ids of ``examples`` (without building lazily served ones)."""
    return examples.ids() if isinstance(examples, LazyExamples) else [e.id for e in examples]


class ExampleIndex:
    """The examples of one or more splits by id (the first split that has an id wins), each built
    only when looked up: ``score`` and ``view`` touch the examples they show, not a whole split."""

    def __init__(self, *splits: Sequence[Example]):
        self._splits = splits
        self._where: dict[str, tuple[int, int]] = {}
        for n, examples in enumerate(splits):
            for i, eid in enumerate(example_ids(examples)):
                self._where.setdefault(eid, (n, i))

    def __contains__(self, eid: object) -> bool:
        return eid in self._where

    def __len__(self) -> int:
        return len(self._where)

    def get(self, eid: str, default: Example | None = None) -> Example | None:
        where = self._where.get(eid)
        return default if where is None else self._splits[where[0]][where[1]]

    def select(self, wanted) -> list[Example]:
        """The examples whose id is in ``wanted``, in split order (the first split's first)."""
        out = []
        for n, examples in enumerate(self._splits):
            positions = sorted(i for eid, (m, i) in self._where.items() if m == n and eid in wanted)
            if len(positions) > len(examples) // 8:  # most of it: one pass builds them in bulk
                keep = set(positions)
                out.extend(e for i, e in enumerate(examples) if i in keep)
            else:
                out.extend(examples[i] for i in positions)
        return out
