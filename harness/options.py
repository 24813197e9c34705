"""Typed options for tasks and models, set from ``key=value`` strings on the command line."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Mapping

from harness.errors import HarnessError


def parse_key_values(items: list[str] | None, flag: str) -> list[tuple[str | None, str, str]]:
    """Parse ``[target:]key=value`` items into (target, key, value) triples."""
    out = []
    for item in items or []:
        if "=" not in item:
            raise HarnessError(f"{flag} {item!r}: expected key=value (or name:key=value)")
        key, value = item.split("=", 1)
        target = None
        if ":" in key:
            target, key = key.split(":", 1)
        if not key:
            raise HarnessError(f"{flag} {item!r}: empty key")
        out.append((target, key.strip(), value))
    return out


def _convert(value: str, typ: Any, where: str) -> Any:
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        non_none = [a for a in args if a is not type(None)]
        if value.lower() in ("none", "null", "") and len(non_none) < len(args):
            return None
        return _convert(value, non_none[0], where)
    if origin is typing.Literal:
        if value not in args:
            raise HarnessError(f"{where}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if typ is bool:
        low = value.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise HarnessError(f"{where}: {value!r} is not a boolean (true/false)")
    if typ in (int, float):
        try:
            return typ(value)
        except ValueError:
            raise HarnessError(f"{where}: {value!r} is not a valid {typ.__name__}") from None
    if origin in (tuple, list):
        inner = args[0] if args else str
        return origin(_convert(v.strip(), inner, where) for v in value.split(",") if v.strip())
    return value


def build_options(cls: type, values: Mapping[str, Any], owner: str):
    """Instantiate the options dataclass ``cls`` from strings (or typed values).

    Unknown keys are an error that lists the valid ones.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise HarnessError(
                f"{owner}: unknown option {key!r}. Valid options: {', '.join(sorted(fields)) or '(none)'}"
            )
        kwargs[key] = _convert(value, hints[key], f"{owner} option {key}") if isinstance(value, str) else value
    missing = [f.name for f in fields.values() if f.name not in kwargs and f.init
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise HarnessError(f"{owner}: option(s) {', '.join(missing)} must be given (key=value)")
    try:
        return cls(**kwargs)  # the options' own range checks run here (__post_init__)
    except HarnessError as exc:
        msg = str(exc)
        raise type(exc)(msg if msg.startswith(owner) else f"{owner}: {msg}") from None


def describe_options(cls: type) -> list[tuple[str, str, str]]:
    """(name, type, default) for ``list`` and ``--help`` output."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "")
        typ = hints[f.name]
        out.append((f.name, getattr(typ, "__name__", str(typ).replace("typing.", "")), repr(default)))
    return out
