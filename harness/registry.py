"""Registries of tasks and models.

Built-ins register with ``@register_task("name")`` / ``@register_model("name")``.
Plug-ins come from the entry-point groups ``harness.tasks`` / ``harness.models``
(each entry point names a module or an object to import) or from
``--include path/to/file_or_dir.py``.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable, TypeVar

from harness.errors import HarnessError

log = logging.getLogger(__name__)

T = TypeVar("T")

_TASKS: dict[str, type] = {}
_MODELS: dict[str, type] = {}
_loaded_builtins = False


def _register(table: dict[str, type], kind: str, name: str) -> Callable[[T], T]:
    def deco(obj: T) -> T:
        existing = table.get(name)
        if existing is not None and existing is not obj and (
            existing.__module__, existing.__qualname__) != (obj.__module__, obj.__qualname__):
            raise HarnessError(f"{kind} {name!r} is registered twice: by {existing.__module__} and {obj.__module__}")
        table[name] = obj
        obj.registry_name = name  # type: ignore[attr-defined]
        return obj

    return deco


def register_task(name: str) -> Callable[[T], T]:
    """Class decorator: make a Task subclass available as ``--tasks name``."""
    return _register(_TASKS, "task", name)


def register_model(name: str) -> Callable[[T], T]:
    """Class decorator: make a Model subclass available as ``--model name``."""
    return _register(_MODELS, "model", name)


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
            except Exception as exc:  # a broken plug-in must not hide the others
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
        except Exception as exc:
            del sys.modules[mod_name]
            raise HarnessError(f"--include {f}: importing it failed: {type(exc).__name__}: {exc}") from exc


def _lookup(table: dict[str, type], kind: str, name: str) -> type:
    load_builtins()
    if name not in table:
        known = ", ".join(sorted(table)) or "(none)"
        raise HarnessError(
            f"unknown {kind} {name!r}. Registered {kind}s: {known}. "
            f"A plug-in {kind} needs --include path/to/file.py or an entry point in group harness.{kind}s."
        )
    return table[name]


def get_task_class(name: str) -> type:
    return _lookup(_TASKS, "task", name)


def get_model_class(name: str) -> type:
    return _lookup(_MODELS, "model", name)


def task_names() -> list[str]:
    load_builtins()
    return sorted(_TASKS)


def model_names() -> list[str]:
    load_builtins()
    return sorted(_MODELS)
