"""The Flamingo configuration: one JSON-serialisable dataclass saved next to the weights.

A component is either *built in* (built from the settings here, weights in the
checkpoint) or *pretrained* (loaded from a local Hugging Face directory given by
``vision_path`` / ``lm_path``; frozen weights stay there and are not copied).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

MEDIA_TOKEN = "<image>"
END_OF_CHUNK = "<|endofchunk|>"


@dataclass
class VisionConfig:
    """The vision encoder. ``path`` set: a local HF vision model (CLIP vision tower, ViT...);
    empty: the small built-in conv net below (for the bundled checkpoint)."""

    path: str = ""
    image_size: int = 64
    channels: tuple[int, ...] = (16, 32, 64, 128)  # built-in conv net: one stride-2 stage per entry
    norm_groups: int = 8  # built-in conv net: GroupNorm after each conv (0: none); learns shapes far faster
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    frozen: bool = True


@dataclass
class ResamplerConfig:
    """Perceiver Resampler: ``num_latents`` learned queries, ``depth`` layers, time embeddings
    for up to ``max_frames`` video frames."""

    num_latents: int = 64
    depth: int = 6
    heads: int = 8
    dim_head: int = 64
    ff_mult: int = 4
    max_frames: int = 8


@dataclass
class LMConfig:
    """The causal LM. ``path`` set: a local HF causal LM (GPT-2, OPT, Llama...);
    empty: built from ``hf_config`` (a transformers config dict, e.g. a tiny GPT-2)."""

    path: str = ""
    hf_config: dict[str, Any] = field(default_factory=dict)
    frozen: bool = True
    cross_attn_every: int = 1  # a GATED XATTN-DENSE block before every K-th decoder layer
    xattn_heads: int = 8
    xattn_dim_head: int = 64
    xattn_ff_mult: int = 4
    prepend_bos: bool = False  # add the tokenizer's BOS at the start of every prompt (Llama-style)


@dataclass
class FlamingoConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    resampler: ResamplerConfig = field(default_factory=ResamplerConfig)
    lm: LMConfig = field(default_factory=LMConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, obj: dict[str, Any], where: str = "config") -> "FlamingoConfig":
        parts = {}
        for name, sub in (("vision", VisionConfig), ("resampler", ResamplerConfig), ("lm", LMConfig)):
            values = dict(obj.get(name, {}))
            known = {f.name for f in dataclasses.fields(sub)}
            unknown = set(values) - known
            if unknown:
                raise HarnessError(f"{where}: unknown keys in '{name}': {', '.join(sorted(unknown))}; "
                                   f"valid: {', '.join(sorted(known))}")
            for k, v in values.items():  # JSON turns tuples into lists
                if isinstance(v, list):
                    values[k] = tuple(v)
            parts[name] = sub(**values)
        return cls(**parts)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "FlamingoConfig":
        if not path.is_file():
            raise HarnessError(f"flamingo checkpoint: {path} not found (a checkpoint directory holds config.json, "
                               f"model.safetensors and the tokenizer files, as FlamingoModel.save writes them)")
        try:
            obj = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise HarnessError(f"flamingo checkpoint: {path} is not valid JSON ({exc})") from None
        return cls.from_dict(obj, str(path))
