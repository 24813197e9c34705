"""Caches: the one place for how the harness keeps things it can recompute.

- :func:`cache_root`: where caches live between runs (``$HARNESS_CACHE`` or ``~/.cache/harness``).
- :func:`file_stamp` / :func:`stamped`: the one key rule for a file's content without reading it,
  (size, mtime_ns) beside its path: a file replaced in place is never served stale.
- :class:`ByteLRU`: least-recently-used values bounded in bytes (and optionally in count).
- :func:`atomic_write`: write a file so that readers and a killed run never see half of it.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator


def cache_root() -> Path:
    """Where the harness keeps caches between runs: ``$HARNESS_CACHE`` or ``~/.cache/harness``."""
    return Path(os.environ.get("HARNESS_CACHE") or Path.home() / ".cache" / "harness")


def file_stamp(path: str | os.PathLike) -> tuple[int, int] | None:
    """(size, mtime_ns) of a local file, or None when it cannot be stat'ed (its load then fails and says so)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_size, st.st_mtime_ns


def stamped(identity: str) -> str:
    """A media identity as a key for caches: a local file's path plus its :func:`file_stamp`; identities
    with a scheme (``hfds://<fingerprint>/...``) name their content already and stay as they are."""
    if "://" in identity:
        return identity
    stamp = file_stamp(identity)
    return identity if stamp is None else f"{identity}|{stamp[0]}:{stamp[1]}"


class ByteLRU:
    """Least-recently-used values, at most ``max_bytes`` in all (``size`` measures a value) and, if
    given, ``max_items`` of them. Thread-safe. ``hits``/``misses``/``evictions`` count lookups."""

    def __init__(self, max_bytes: int, size: Callable[[Any], int], max_items: int | None = None):
        self.max_bytes = max(0, int(max_bytes))
        self.max_items = max_items
        self.size = size
        self._items: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Any) -> bool:
        return key in self._items

    @property
    def nbytes(self) -> int:
        return self._bytes

    def lookup(self, key: Any, default: Any = None) -> Any:
        """The value under ``key`` (now the most recent), or ``default``; counts a hit or a miss."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key][0]
            self.misses += 1
            return default

    def put(self, key: Any, value: Any) -> None:
        """Keep ``value`` unless it alone exceeds the budget (then keep nothing of it, and evict
        nothing else); evict the least recent beyond the budget."""
        n = self.size(value)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return
            if n > self.max_bytes:  # dropped at once (counted as an eviction): it never fits
                self.evictions += 1
                return
            self._items[key] = (value, n)
            self._bytes += n
            while self._items and (self._bytes > self.max_bytes
                                   or (self.max_items is not None and len(self._items) > self.max_items)):
                self._bytes -= self._items.popitem(last=False)[1][1]
                self.evictions += 1

    def get(self, key: Any, load: Callable[[], Any]) -> Any:
        """The value under ``key``, loading (and keeping) it on a miss."""
        missing = object()
        value = self.lookup(key, missing)
        if value is missing:
            value = load()
            self.put(key, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0
            self.hits = self.misses = self.evictions = 0


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file beside ``path`` (one per process: two runs may write one file) and
    rename it over ``path`` when the block ends, so a kill or a full disk leaves the old file whole.
    An OSError raised while writing names ``path`` (a full disk fails a write() whose error names no
    file), so the command line can say which file failed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
