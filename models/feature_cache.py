"""A cache of per-media vision features, bounded in bytes, optionally persisted on disk.

Demo images recur across thousands of prompts (a 32-shot cell shows every image of a
2,048-example support set ~15 times), and the same support and query images come back
for the next seed and the next shot count. The vision encoder + resampler treat each
media item independently, so caching their output per item is exact.

- Memory: least-recently-used eviction once the tensors' bytes exceed ``budget_bytes``
  (and, if given, ``max_items``, the old item-count bound).
- Disk (optional): one file per item under ``directory/<model fingerprint>/``, named
  by a hash of the item's key (``Media.identity`` plus anything else its features depend
  on, e.g. a video's frame selection), so another process, seed or shot count reuses it.
- Counters (:meth:`stats`): memory hits and misses (a miss is then a disk hit or a vision
  encode), evictions.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Callable, Sequence

from harness.cache import ByteLRU, atomic_write

log = logging.getLogger(__name__)

#: ceiling of the default budget; the default is this or a quarter of physical memory, the smaller.
DEFAULT_BUDGET_CAP = 8 << 30


def default_budget_bytes() -> int:
    """A quarter of physical memory, at most 8 GiB: room for a 2,048-image support set and
    several thousand queries at OpenFlamingo-9B's 256 KiB per image."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        physical = 4 * DEFAULT_BUDGET_CAP
    return int(min(DEFAULT_BUDGET_CAP, physical // 4))


def budget_from_mb(mb: float | None) -> int:
    """The ``feature_cache_mb`` option in bytes (None: :func:`default_budget_bytes`)."""
    return default_budget_bytes() if mb is None else int(mb * (1 << 20))


def tensor_bytes(t) -> int:
    return t.numel() * t.element_size()


class FeatureCache:
    """Per-media feature tensors keyed by string; see the module docstring."""

    def __init__(self, budget_bytes: int, fingerprint: str, directory: str | Path | None = None,
                 max_items: int | None = None, device=None):
        self.budget_bytes = max(0, int(budget_bytes))
        self.max_items = max_items
        self.directory = Path(directory) / fingerprint if directory else None
        self.device = device
        self._memory = ByteLRU(self.budget_bytes, tensor_bytes, max_items)
        self.counts = {"disk_hits": 0, "encodes": 0}

    def __len__(self) -> int:
        return len(self._memory)

    def __contains__(self, key: str) -> bool:
        return key in self._memory

    @property
    def nbytes(self) -> int:
        return self._memory.nbytes

    def stats(self) -> dict[str, int]:
        """Cumulative counters (the runner records each cell's difference)."""
        m, c = self._memory, self.counts
        return {"feature_cache_hits": m.hits, "feature_cache_misses": m.misses,
                "feature_cache_disk_hits": c["disk_hits"], "vision_encodes": c["encodes"],
                "feature_cache_evictions": m.evictions}

    def get(self, keys: Sequence[str], compute: Callable[[list[int]], Sequence[object]]) -> list[object]:
        """Features for ``keys``, in order. ``compute(indices)`` encodes the items at those
        positions of ``keys`` (each distinct missing key once) and returns their tensors."""
        found: dict[str, object] = {}
        todo: list[int] = []
        for i, key in enumerate(keys):
            if key in found:
                continue
            hit = self._memory.lookup(key)  # a miss is then read from disk or encoded
            if hit is not None:
                found[key] = hit
                continue
            disk = self._load(key)
            if disk is not None:
                self.counts["disk_hits"] += 1
                found[key] = disk
            else:
                todo.append(i)
                found[key] = None
        if todo:
            feats = compute(todo)
            self.counts["encodes"] += len(todo)
            for i, f in zip(todo, feats):
                found[keys[i]] = f
                self._save(keys[i], f)
        for key, f in found.items():
            self._memory.put(key, f)
        return [found[k] for k in keys]

    # ---- disk ---------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        return self.directory / (hashlib.sha256(key.encode()).hexdigest()[:40] + ".pt")

    def _load(self, key: str):
        if self.directory is None:
            return None
        path = self._path(key)
        if not path.is_file():
            return None
        import torch

        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a torn or foreign file: recompute (and overwrite) rather than fail
            log.warning("feature cache: ignoring unreadable %s (%s)", path, exc)
            return None
        if not isinstance(stored, dict) or stored.get("key") != key:
            return None  # hash collision or another layout: recompute
        t = stored["features"]
        return t.to(self.device) if self.device is not None else t

    def _save(self, key: str, value) -> None:
        if self.directory is None:
            return
        import torch

        with atomic_write(self._path(key), "wb") as f:  # readers never see a half-written file
            torch.save({"key": key, "features": value.detach().cpu().clone()}, f)
