"""open_clip's evaluation image transform, without torchvision.

open_clip (``image_transform(is_train=False)``) composes torchvision's
``Resize(size, BICUBIC)`` (shorter side to ``size``), ``CenterCrop(size)``, RGB conversion,
``ToTensor()`` and ``Normalize(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)``. On PIL images
torchvision calls PIL's own ``resize``/``crop``; this module makes the same calls with the
same size and offset arithmetic, so the pixels match.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image as PILImage

OPENAI_DATASET_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_DATASET_STD = (0.26862954, 0.26130258, 0.27577711)


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """torchvision's shorter-side resize: the short side becomes ``size``, the long side
    ``int(size * long / short)`` (truncated)."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def center_crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """torchvision's CenterCrop offsets: ``int(round((dim - size) / 2))`` (Python rounding)."""
    left = int(round((width - size) / 2.0))
    top = int(round((height - size) / 2.0))
    return left, top, left + size, top + size


def preprocess(image: PILImage.Image, size: int) -> torch.Tensor:
    """A PIL image -> normalised float32 tensor (3, size, size)."""
    w, h = image.size
    new = resized_size(w, h, size)
    if new != (w, h):
        image = image.resize(new, PILImage.BICUBIC)
    if min(image.size) < size:  # torchvision pads only in this degenerate case; refuse rather than guess
        raise ValueError(f"image of size {image.size} is smaller than the crop {size}")
    image = image.crop(center_crop_box(*image.size, size)).convert("RGB")
    x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255.0)
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(3, 1, 1)
    return (x - mean) / std
