"""Registries of tasks and models: the tables and their decorators, and nothing else (a leaf: the
built-in ``tasks``/``models`` packages import it, never the other way).

Built-ins register with ``@register_task("name")`` / ``@register_model("name")`` when imported;
:mod:`harness.plugins` (called by the command line and ``harness.evaluate``) imports them, the
entry-point groups ``harness.tasks`` / ``harness.models`` and ``--include`` files.
"""

from __future__ import annotations

from typing import Callable, TypeVar

from harness.errors import HarnessError

T = TypeVar("T")

_TASKS: dict[str, type] = {}
_MODELS: dict[str, type] = {}


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


def _lookup(table: dict[str, type], kind: str, name: str) -> type:
    if name not in table:
        known = ", ".join(sorted(table)) or "(none)"
        raise HarnessError(
            f"unknown {kind} {name!r}. Registered {kind}s: {known}. "
            f"A plug-in {kind} needs --include path/to/file.py or an entry point in group harness.{kind}s"
            f"{'' if table else ' (nothing is registered: call harness.plugins.load_builtins() first)'}."
        )
    return table[name]


def get_task_class(name: str) -> type:
    return _lookup(_TASKS, "task", name)


def get_model_class(name: str) -> type:
    return _lookup(_MODELS, "model", name)


def task_names() -> list[str]:
    return sorted(_TASKS)


def model_names() -> list[str]:
    return sorted(_MODELS)
