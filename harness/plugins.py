"""Which tasks and models exist: the composition root that imports the built-in ``tasks`` and
``models`` packages, the installed entry points (groups ``harness.tasks`` / ``harness.models``, each
naming a module or an object to import) and ``--include`` files, so that they register themselves
in :mod:`harness.registry`. The command line and ``harness.evaluate`` call :func:`load_builtins`
first; a script using the registry directly does the same."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from importlib.metadata import entry_points
from pathlib import Path

from harness.errors import HarnessError

log = logging.getLogger(__name__)

_loaded_builtins = False


def load_builtins() -> None:
    """Import the built-in task and model modules and the installed entry points (once)."""
    global _loaded_builtins
    if _loaded_builtins:
        return
    _loaded_builtins = True
    importlib.import_module("tasks")
    importlib.import_module("models")
    for group in ("harness.tasks", "harness.models"):
        for ep in entry_points(group=group):
            try:
                ep.load()
            except Exception as exc:  # third-party code may raise anything; one broken plug-in must not hide the others
                log.warning("could not load plug-in %s from entry point group %s: %s", ep.value, group, exc)


def include(path: str | Path) -> None:
    """Import a plug-in file, or every ``*.py`` file in a directory, so that it registers itself."""
    p = Path(path)
    if not p.exists():
        raise HarnessError(f"--include {path}: no such file or directory")
    files = sorted(p.glob("*.py")) if p.is_dir() else [p]
    if p.is_file() and p.suffix != ".py":
        raise HarnessError(f"--include {path}: expected a .py file or a directory of them")
    for f in files:
        mod_name = f"harness_plugin_{abs(hash(str(f.resolve())))}_{f.stem}"
        if mod_name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(mod_name, f)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # the user's file may raise anything: named, with its type, as theirs
            del sys.modules[mod_name]
            raise HarnessError(f"--include {f}: importing it failed: {type(exc).__name__}: {exc}") from exc
