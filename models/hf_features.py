"""Vision features of the `hf` adapter, encoded once per image and reused.

transformers' vision-language models take precomputed vision features in ``forward`` and
``generate`` as ``mm_encoder_outputs={"image": <get_image_features output>}``; ``generate`` expands
them to the beams itself. Where a family's features of an image depend on that image's pixels alone
(:data:`PER_IMAGE`), each image is encoded alone once, its slice of ``pooler_output`` is kept in a
byte-bounded LRU (:class:`models.feature_cache.FeatureCache`), and a batch's features are the
cached slices joined in placeholder order, as ``get_image_features`` returns them for the batch.

Not here: LLaVA-OneVision (an image's features depend on how many images share its sample) and
native video (its pixels go in as they are).
"""

from __future__ import annotations

import hashlib
import inspect
import json
from typing import Any, Sequence


from .feature_cache import FeatureCache, budget_from_mb
from .hf_cache import KEY

#: model types whose ``get_image_features`` output is per image: rows per image (Idefics2/3,
#: SmolVLM: tiles; Gemma 3: crops) or one tensor per image in a tuple (Qwen2-VL, Qwen2.5-VL)
PER_IMAGE = {"idefics3", "idefics2", "smolvlm", "qwen2_vl", "qwen2_5_vl", "gemma3"}


class ImageFeatures:
    """``mm_encoder_outputs`` for a batch's images, each image's features encoded once."""

    def __init__(self, model: Any, image_processor: Any, budget_mb: float | None, fingerprint: str):
        self.model = model
        self.image_processor = image_processor  # unwrapped: a miss processes its image itself, once
        encode = model.get_image_features
        self._inputs = set(inspect.signature(encode).parameters) - {"kwargs", "return_dict"}
        # features depend on the processor settings (image_size, processor_args) and the weights' dtype
        settings = json.dumps(image_processor.to_dict(), sort_keys=True, default=str)
        self._settings = hashlib.sha256(f"{settings}|{model.dtype}".encode()).hexdigest()[:16]
        self.cache = FeatureCache(budget_from_mb(budget_mb), fingerprint)
        self._as_tuple = False  # how this family returns pooler_output (found by the first encode)

    def encoder_outputs(self, images: Sequence) -> dict[str, Any]:
        """The batch's images (placeholder order, each tagged with its media key) -> mm_encoder_outputs."""
        import torch
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        keys = [f"{im.info[KEY]}\0{self._settings}" for im in images]
        parts = self.cache.get(keys, lambda todo: [self._encode(images[i]) for i in todo])
        pooled = tuple(parts) if self._as_tuple else torch.cat(parts)
        return {"image": BaseModelOutputWithPooling(pooler_output=pooled)}

    def _encode(self, image: Any):
        import torch

        pixels = self.image_processor([[image]], return_tensors="pt")
        model = self.model
        kw = {}
        for k, v in pixels.items():
            if k in self._inputs and hasattr(v, "to"):
                kw[k] = v.to(model.device, model.dtype) if v.is_floating_point() else v.to(model.device)
        with torch.inference_mode():
            out = model.get_image_features(**kw, return_dict=True).pooler_output
        self._as_tuple = isinstance(out, (tuple, list))
        return out[0] if self._as_tuple else out


def image_features(model: Any, image_processor: Any, model_type: str, budget_mb: float | None,
                   fingerprint: str) -> ImageFeatures | None:
    """The vision-feature cache for this model, or None where the family's features are not per image
    (:data:`PER_IMAGE`), its model takes no precomputed ones, or ``feature_cache_mb=0``."""
    takes = "mm_encoder_outputs" in inspect.signature(model.forward).parameters
    if model_type not in PER_IMAGE or budget_mb == 0 or not takes:
        return None
    return ImageFeatures(model, image_processor, budget_mb, fingerprint)
