"""Reading OpenFlamingo's weight files: the vision tower's config and state dict, and
``checkpoint.pt`` (resampler, cross-attention, LM embeddings), split per component.

Every file is read with ``torch.load(..., weights_only=True)`` or safetensors: a weight
file cannot run code.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from harness.errors import HarnessError

from .modules import VisionConfig

log = logging.getLogger(__name__)

#: open_clip towers by name (their ``vision_cfg``). OpenFlamingo's released models all use
#: ViT-L-14 with OpenAI's weights, which open_clip builds with QuickGELU.
VISION_ARCHS: dict[str, VisionConfig] = {
    "ViT-B-32": VisionConfig(image_size=224, patch_size=32, width=768, layers=12, output_dim=512),
    "ViT-B-16": VisionConfig(image_size=224, patch_size=16, width=768, layers=12, output_dim=512),
    "ViT-L-14": VisionConfig(image_size=224, patch_size=14, width=1024, layers=24, output_dim=768),
    "ViT-L-14-336": VisionConfig(image_size=336, patch_size=14, width=1024, layers=24, output_dim=768),
    "ViT-H-14": VisionConfig(image_size=224, patch_size=14, width=1280, layers=32, head_width=80, output_dim=1024),
}


def vision_config(name_or_path: str, quick_gelu: bool | None) -> VisionConfig:
    """A named tower from :data:`VISION_ARCHS`, or an open_clip model-config JSON file
    (``{"embed_dim": ..., "vision_cfg": {...}, "quick_gelu": ...}``)."""
    if name_or_path in VISION_ARCHS:
        cfg = VISION_ARCHS[name_or_path]
        return cfg if quick_gelu is None else VisionConfig(**{**cfg.__dict__, "quick_gelu": quick_gelu})
    path = Path(name_or_path)
    if not path.is_file():
        raise HarnessError(
            f"model openflamingo: vision_encoder {name_or_path!r} is neither a known open_clip tower "
            f"({', '.join(VISION_ARCHS)}) nor an open_clip model-config JSON file"
        )
    try:
        raw = json.loads(path.read_text())
        v = raw["vision_cfg"]
        unsupported = {k for k in v if k not in {"image_size", "patch_size", "width", "layers", "head_width", "mlp_ratio"}}
        if unsupported:
            raise HarnessError(
                f"{path}: vision_cfg keys {sorted(unsupported)} are not supported (plain ViT towers only)"
            )
        return VisionConfig(
            image_size=int(v["image_size"]),
            patch_size=int(v["patch_size"]),
            width=int(v["width"]),
            layers=int(v["layers"]),
            head_width=int(v.get("head_width", 64)),
            mlp_ratio=float(v.get("mlp_ratio", 4.0)),
            output_dim=int(raw.get("embed_dim", 512)),
            quick_gelu=bool(raw.get("quick_gelu", False)) if quick_gelu is None else quick_gelu,
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise HarnessError(
            f"{path}: not an open_clip model config (needs vision_cfg with image_size, patch_size, width, layers): {exc}"
        ) from None


def load_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """A flat tensor dict from a .safetensors file or a torch pickle (weights only)."""
    p = Path(path)
    if not p.is_file():
        raise HarnessError(f"model openflamingo: {what} file not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise HarnessError(
            f"model openflamingo: {what} {p} could not be read as a weights-only torch file ({exc}). "
            "OpenAI's TorchScript archives (ViT-L-14.pt) are not read; use open_clip's state dict "
            "(open_clip_pytorch_model.bin / open_clip_model.safetensors), see docs/openflamingo.md"
        ) from None
    if isinstance(obj, dict) and "model_state_dict" in obj:
        obj = obj["model_state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise HarnessError(f"model openflamingo: {what} {p} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def vision_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ViT tower's weights from an open_clip CLIP state dict (``visual.*``) or a bare tower."""
    if any(k.startswith("visual.") for k in sd):
        return {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
    return dict(sd)


@dataclass
class CheckpointParts:
    """``checkpoint.pt`` split by component (keys relative to each component)."""

    vision: dict[str, torch.Tensor] = field(default_factory=dict)
    perceiver: dict[str, torch.Tensor] = field(default_factory=dict)
    cross_attn: dict[str, torch.Tensor] = field(default_factory=dict)
    lm: dict[str, torch.Tensor] = field(default_factory=dict)


_WRAPPED_DECODER = re.compile(r"^(.*)\.(\d+)\.decoder_layer\.(.*)$")
_WRAPPED_XATTN = re.compile(r"^.*\.(\d+)\.gated_cross_attn_layer\.(.*)$")
_XATTN = re.compile(r"^gated_cross_attn_layers\.(\d+)\.(.*)$")
_OLD_BLOCK = re.compile(r"^old_decoder_blocks\.(\d+)\.(.*)$")


def split_checkpoint(sd: dict[str, torch.Tensor], decoder_layers_attr: str) -> CheckpointParts:
    """Map OpenFlamingo's module names onto our components.

    The package wraps each LM decoder layer in a ``FlamingoLayer``, so the same weights
    can appear as ``<layers>.N.decoder_layer.*``, ``old_decoder_blocks.N.*`` (plain layer)
    and ``<layers>.N.gated_cross_attn_layer.*`` / ``gated_cross_attn_layers.N.*``; all map here.
    """
    parts = CheckpointParts()
    for key, value in sd.items():
        if key.startswith("vision_encoder."):
            parts.vision[key[len("vision_encoder."):]] = value
        elif key.startswith("perceiver."):
            parts.perceiver[key[len("perceiver."):]] = value
        elif key.startswith("lang_encoder."):
            sub = key[len("lang_encoder."):]
            if m := _XATTN.match(sub):
                parts.cross_attn[f"{m[1]}.{m[2]}"] = value
            elif m := _WRAPPED_XATTN.match(sub):
                parts.cross_attn[f"{m[1]}.{m[2]}"] = value
            elif m := _OLD_BLOCK.match(sub):
                parts.lm[f"{decoder_layers_attr}.{m[1]}.{m[2]}"] = value
            elif m := _WRAPPED_DECODER.match(sub):
                parts.lm[f"{m[1]}.{m[2]}.{m[3]}"] = value
            else:
                parts.lm[sub] = value
        else:
            log.warning("checkpoint key %s belongs to no OpenFlamingo component; ignored", key)
    return parts


def find_decoder_layers(lm: torch.nn.Module, override: str = "") -> tuple[str, torch.nn.ModuleList]:
    """The attribute path and ModuleList of the LM's decoder layers (the longest ModuleList)."""
    if override:
        obj = lm
        try:
            for part in override.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            raise HarnessError(f"model openflamingo: the LM has no attribute {override!r} (decoder_layers_attr)") from None
        if not isinstance(obj, torch.nn.ModuleList):
            raise HarnessError(f"model openflamingo: decoder_layers_attr {override!r} is not a ModuleList")
        return override, obj
    lists = [(name, m) for name, m in lm.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0]
    if not lists:
        raise HarnessError("model openflamingo: the LM has no ModuleList of decoder layers; set decoder_layers_attr")
    name, mod = max(lists, key=lambda nm: len(nm[1]))
    return name, mod
