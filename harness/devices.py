"""Devices: what a model's ``device`` option means in this process (plug-in vocabulary: models
import it; the engine's launch plumbing reads the same environment)."""

from __future__ import annotations

import os
from typing import Mapping

from harness.errors import HarnessError


def _env_int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    value = env.get(name)
    if value is None:
        if default is None:
            raise HarnessError(f"${name} is not set; launch with torchrun, which sets it")
        return default
    try:
        return int(value)
    except ValueError:
        raise HarnessError(f"${name}={value!r} is not an integer") from None


def resolve_device(device: str, env: Mapping[str, str] | None = None) -> str:
    """The device a model option names, for this process: ``cuda`` means this process's GPU
    (``cuda:$LOCAL_RANK``, so torchrun's ranks take one GPU each), ``auto`` means that GPU when
    CUDA is available, else the CPU; an explicit ``cuda:1`` or ``cpu`` is kept."""
    env = os.environ if env is None else env
    if device not in ("cuda", "auto"):
        return device
    if device == "auto":
        import torch

        if not torch.cuda.is_available():
            return "cpu"
    return f"cuda:{_env_int(env, 'LOCAL_RANK', 0)}"
