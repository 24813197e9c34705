"""Vision encoders: a local Hugging Face vision model, or a small built-in conv net.

Both map pixels ``(N, 3, H, W)`` to patch features ``(N, P, D)``; the Perceiver
Resampler turns those into a fixed number of visual tokens.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image as PILImage
from torch import nn

from .config import VisionConfig


class ConvEncoder(nn.Module):
    """A small conv net for tiny images: stride-2 stages, then a 2-D position embedding
    so the resampler knows where each feature came from, plus one global max-pooled token
    (shape evidence is sparse; a max over patches surfaces it, as a pooling probe showed)."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3

        def conv(c_in: int, c_out: int, k: int, stride: int) -> list[nn.Module]:
            norm = [nn.GroupNorm(cfg.norm_groups, c_out)] if cfg.norm_groups else []
            return [nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2), *norm, nn.GELU()]

        for i, c in enumerate(cfg.channels):
            layers += conv(c_in, c, 5 if i == 0 else 3, 2)
            if i > 0:  # a second conv per stage, except at full resolution where it is costly
                layers += conv(c, c, 3, 1)
            c_in = c
        self.net = nn.Sequential(*layers)
        side = cfg.image_size // 2 ** len(cfg.channels)
        self.pos = nn.Parameter(torch.randn(side * side, c_in) * 0.02)
        self.dim = c_in

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.net(pixels).flatten(2).transpose(1, 2)  # (N, h*w, D)
        return torch.cat([x + self.pos, x.amax(dim=1, keepdim=True)], dim=1)


class HFVisionEncoder(nn.Module):
    """A local HF vision model (CLIP vision tower, ViT, SigLIP ...): its last hidden state."""

    def __init__(self, path: str):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        config = AutoConfig.from_pretrained(path)
        model = AutoModel.from_pretrained(path)
        # A full CLIP/SigLIP checkpoint: keep only its vision tower.
        self.model = getattr(model, "vision_model", model)
        vcfg = getattr(config, "vision_config", config)
        self.dim = vcfg.hidden_size
        self.image_size = getattr(vcfg, "image_size", 224)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixels).last_hidden_state


def build_vision(cfg: VisionConfig) -> nn.Module:
    return HFVisionEncoder(cfg.path) if cfg.path else ConvEncoder(cfg)


class ImagePreprocessor:
    """PIL images -> normalised pixel tensors (resize, scale to [0, 1], normalise)."""

    def __init__(self, cfg: VisionConfig, image_size: int | None = None):
        self.size = image_size or cfg.image_size
        self.mean = torch.tensor(cfg.mean).view(3, 1, 1)
        self.std = torch.tensor(cfg.std).view(3, 1, 1)
        if cfg.path:  # use the model's own normalisation where it has a processor config
            try:
                from transformers import AutoImageProcessor

                proc = AutoImageProcessor.from_pretrained(cfg.path)
                self.mean = torch.tensor(proc.image_mean).view(3, 1, 1)
                self.std = torch.tensor(proc.image_std).view(3, 1, 1)
            except (OSError, ValueError, AttributeError):
                pass

    def __call__(self, images: Sequence[PILImage.Image]) -> torch.Tensor:
        arrays = []
        for im in images:
            im = im.convert("RGB")
            if im.size != (self.size, self.size):
                im = im.resize((self.size, self.size), PILImage.BICUBIC)
            arrays.append(np.asarray(im, dtype=np.uint8))
        return self.normalize(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2))

    def normalize(self, uint8_pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) uint8 -> float, normalised."""
        return (uint8_pixels.float() / 255.0 - self.mean) / self.std
