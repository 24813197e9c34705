"""``watch DIR``: evaluate every checkpoint folder of a training run, and new ones as they appear.

A checkpoint folder is a direct sub-folder of DIR whose name ends in its step (``checkpoint-500``
as the Hugging Face Trainer writes them, ``step_500``, ``global_step500``, ``iter_0000500``); its
results go to ``<output>/step-<N>/<label>/`` (the layout ``compare --series`` reads). A folder is
taken once none of its files changed for ``settle`` seconds (a checkpoint being written is left
for the next poll); names starting with ``.`` or ``tmp`` are never taken.

Resumable: each checkpoint's cells are ordinary results cells (a rerun resumes or skips them),
and a finished checkpoint leaves ``<output>/step-<N>/<label>/watch.json`` recording what was evaluated
(the request and the checkpoint's fingerprint), so a restarted ``watch`` skips it without loading
the model. A checkpoint rewritten in place (another fingerprint) or a changed request is evaluated
again (its cells then follow the store's rules: another configuration is refused unless --overwrite).
A checkpoint that fails (a broken folder, a refused cell) is reported and skipped until it changes;
the others go on.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from harness.errors import HarnessError
from harness.store.identity import checkpoint_fingerprint
from harness.store.layout import label_dir, read_json, step_dir, write_json

log = logging.getLogger(__name__)

MARKER = "watch.json"
_STEP = re.compile(r"(\d+)$")


def checkpoint_step(folder: str | Path) -> int | None:
    """The step in a checkpoint folder's name (its trailing number), or None."""
    name = Path(folder).name
    if name.startswith((".", "tmp")):
        return None
    m = _STEP.search(name)
    return int(m.group(1)) if m else None


def _settled(folder: Path, settle: float) -> bool:
    """No file in ``folder`` modified in the last ``settle`` seconds (and at least one file)."""
    newest = 0.0
    seen = False
    for f in folder.rglob("*"):
        try:
            st = f.stat()
        except OSError:  # removed while we look: still being written
            return False
        newest = max(newest, st.st_mtime)
        seen = seen or f.is_file()
    return seen and time.time() - newest >= settle


@dataclass
class Watcher:
    """Find and evaluate the checkpoints of ``root``; ``evaluate(step, folder)`` does one checkpoint
    (writing its results under ``<output>/step-<step>/``) and ``request`` describes what it
    evaluates (recorded in watch.json: a checkpoint done with another request is done again)."""

    root: Path
    output: Path
    evaluate: Callable[[int, Path], Any]
    request: dict[str, Any]
    label: str
    settle: float = 30.0
    done: set[Path] = field(default_factory=set)
    #: checkpoints whose evaluation failed (a broken or incomplete folder): folder -> its fingerprint;
    #: skipped until the folder changes, so a long watch goes on with the next checkpoints
    failed: dict[Path, str] = field(default_factory=dict)
    _unnamed: set[str] = field(default_factory=set)

    def pending(self) -> list[tuple[int, Path]]:
        """The checkpoints to evaluate now, by step: settled, not done in this or an earlier watch."""
        if not self.root.is_dir():
            raise HarnessError(f"watch {self.root}: not a folder (give the folder the training run saves "
                               f"its checkpoints in)")
        found: dict[int, Path] = {}
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            step = checkpoint_step(folder)
            if step is None:
                if folder.name not in self._unnamed and not folder.name.startswith((".", "tmp")):
                    self._unnamed.add(folder.name)
                    log.warning("watch: skipping %s: its name does not end in a step number "
                                "(e.g. checkpoint-500)", folder)
                continue
            if step in found:
                raise HarnessError(f"watch {self.root}: {found[step].name} and {folder.name} both read as step "
                                   f"{step}; keep one checkpoint per step in the folder")
            found[step] = folder
        out = []
        for step, folder in sorted(found.items()):
            if folder in self.done or not _settled(folder, self.settle):
                continue
            if folder in self.failed:
                if checkpoint_fingerprint(folder) == self.failed[folder]:
                    continue
                del self.failed[folder]
            if self._finished_before(step, folder):
                log.info("watch: step %d (%s) already evaluated; skipping", step, folder.name)
                self.done.add(folder)
                continue
            out.append((step, folder))
        return out

    def _marker(self, step: int) -> Path:
        return label_dir(step_dir(self.output, step), self.label) / MARKER

    def _finished_before(self, step: int, folder: Path) -> bool:
        try:
            m = read_json(self._marker(step))
        except (OSError, ValueError):
            return False
        return (isinstance(m, dict) and m.get("request") == self.request
                and m.get("checkpoint") == str(folder.resolve())
                and m.get("fingerprint") == checkpoint_fingerprint(folder))

    def run_once(self) -> int:
        """Evaluate what is pending now; returns how many checkpoints were evaluated."""
        n = 0
        for step, folder in self.pending():
            fingerprint = checkpoint_fingerprint(folder)
            log.info("watch: evaluating step %d (%s)", step, folder)
            try:
                self.evaluate(step, folder)
            except HarnessError as exc:
                log.error("watch: step %d (%s) failed: %s; skipped until the folder changes", step, folder, exc)
                self.failed[folder] = fingerprint
                continue
            if checkpoint_fingerprint(folder) != fingerprint:
                log.warning("watch: %s changed while it was evaluated; it will be evaluated again", folder)
                continue
            write_json(self._marker(step), {"checkpoint": str(folder.resolve()), "step": step,
                                            "fingerprint": fingerprint, "request": self.request})
            self.done.add(folder)
            n += 1
        return n

    def loop(self, interval: float, idle_exit: float | None = None, sleep: Callable[[float], None] = time.sleep
             ) -> Iterator[int]:
        """Poll every ``interval`` seconds until stopped (Ctrl-C), or until ``idle_exit`` seconds pass
        with nothing new to evaluate; yields each poll's count."""
        idle_since = time.monotonic()
        while True:
            n = self.run_once()
            yield n
            if n:
                idle_since = time.monotonic()
            elif idle_exit is not None and time.monotonic() - idle_since >= idle_exit:
                return
            sleep(interval)
