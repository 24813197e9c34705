"""Models that load only when a cell needs them.

A finished rerun (every cell already complete) and the check for cells of another configuration
need only each model's identity, :meth:`Model.config`. When a model with the same
:func:`~harness.store.identity.preload_key` (adapter, options, checkpoint files, code and library
versions) loaded before, its config is known without loading the weights: :class:`DeferredModel`
answers ``config()`` from it and loads the model on the first use of anything else.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, Callable

from harness.devices import resolve_device
from harness.errors import HarnessError
from harness.model import Model
from harness.options import build_options
from harness.store.identity import known_model_config, preload_key, remember_model_config

log = logging.getLogger(__name__)

#: what a deferred model answers from the class, without loading
_CLASS = frozenset({"runtime_options", "version", "checkpoint_option", "Options", "registry_name"})
#: what planning reads of a model and an adapter may set when it loads (an ``hf`` model takes video
#: only when its processor does): recorded with the identity and answered from that record
TRAITS = ("template_style", "media_kinds", "media_token", "end_of_chunk", "demo_separator")


class DeferredModel:
    """Stands for ``cls(raw_options)`` until something beyond its identity is needed."""

    def __init__(self, cls: type[Model], raw_options: dict[str, Any], config: dict[str, Any],
                 traits: dict[str, Any], load: Callable[[], Model]):
        self._cls, self._config, self._traits, self._load = cls, config, traits, load
        self._model: Model | None = None
        self.name = cls.registry_name or cls.__name__  # type: ignore[attr-defined]
        self.options = build_options(cls.Options, dict(raw_options), f"model {self.name}")

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def model(self) -> Model:
        if self._model is None:
            self._model = self._load()
        return self._model

    def config(self) -> dict[str, Any]:
        return self._model.config() if self._model is not None else dict(self._config)

    def runtime_config(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self.options).items() if k in self._cls.runtime_options}

    @property
    def device(self) -> str:
        if self._model is not None:
            return self._model.device
        return resolve_device(str(getattr(self.options, "device", "cpu")))

    @property
    def video_as_frames(self) -> bool:
        return bool(getattr(self.options, "video_as_frames", False))

    def stats(self) -> dict[str, int]:
        return self._model.stats() if self._model is not None else {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if self._model is None and name in self._traits:
            value = self._traits[name]
            return frozenset(value) if name == "media_kinds" else value
        if name in _CLASS:
            return getattr(self._cls, name)
        return getattr(self.model(), name)


def load_or_defer(cls: type[Model], raw_options: dict[str, Any], load: Callable[[], Model]) -> Model | DeferredModel:
    """A :class:`DeferredModel` when this model's config is known from an earlier load, else the
    model, loaded now (and its config remembered for the next run)."""
    name = cls.registry_name or cls.__name__  # type: ignore[attr-defined]
    try:
        options = dataclasses.asdict(build_options(cls.Options, dict(raw_options), f"model {name}"))
        key = preload_key(name, cls.version, options)
    except (HarnessError, OSError) as exc:  # bad options, or one naming an unreadable file: the load says so
        log.debug("model %s: no identity before loading (%s)", name, exc)
        return load()
    record = known_model_config(key)
    known = record.get("config") if record else None
    traits = record.get("traits") if record else None
    if isinstance(known, dict) and isinstance(traits, dict):
        log.info("model %s: identity known from an earlier load; its weights load only if a cell needs them", name)

        def load_and_check() -> Model:
            model = load()
            if _plain(model.config()) != known:  # never trust a stale record: the identity planned with must hold
                raise HarnessError(f"model {name}: its identity differs from the one recorded by an earlier load "
                                   f"(entry {key} of $HARNESS_CACHE/model_configs.json); delete that file and rerun")
            return model

        return DeferredModel(cls, raw_options, known, traits, load_and_check)
    model = load()
    try:
        traits = {t: sorted(v) if isinstance(v, frozenset) else v
                  for t in TRAITS if (v := getattr(model, t, None)) is not None or hasattr(model, t)}
        remember_model_config(key, _plain({"config": model.config(), "traits": traits}))
    except (TypeError, ValueError, OSError) as exc:  # a config that is not JSON, or an unwritable cache: never deferred
        log.debug("model %s: config not remembered (%s)", name, exc)
    return model


def _plain(config: dict[str, Any]) -> dict[str, Any]:
    """The config as JSON gives it back (tuples as lists): how it is recorded and compared."""
    return json.loads(json.dumps(config, default=str))
