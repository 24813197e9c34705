"""Caches for the `hf` adapter: demo images recur across thousands of prompts.

- :class:`ByteLRU` (from :mod:`harness.cache`): a least-recently-used map bounded in bytes.
- :class:`CachedImageProcessor`: wraps a transformers image processor so that each image is
  processed once (resize, tiling, normalisation) and its pixels are reused in every later prompt.
  The processor's batch output is rebuilt from the per-image outputs by a family's merge rule
  (:data:`MERGES`); families without one are processed whole, uncached.

Images are keyed by the media identity the adapter writes into ``image.info[KEY]`` (plus the
processor settings of the call), never by object id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from harness.cache import ByteLRU  # noqa: F401 (the adapter's pixel cache)

#: where the adapter writes an image's cache key (its media identity, plus the frame for video)
KEY = "harness_media_key"


def nbytes(value: Any) -> int:
    """Bytes held by PIL images and tensors/arrays in a (nested) value."""
    if hasattr(value, "getbands"):  # PIL image
        return value.width * value.height * len(value.getbands())
    if hasattr(value, "nbytes"):
        return int(value.nbytes)
    if hasattr(value, "element_size"):
        return value.element_size() * value.nelement()
    if isinstance(value, dict) or hasattr(value, "items"):
        return sum(nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(nbytes(v) for v in value) + 8 * len(value)
    return 8


# ---- merge rules: per-image outputs (one list per sample) -> the processor's batch output -----
def _cat_images(samples: list[list[dict]]) -> dict:
    """Every image's rows stacked along dim 0 (Qwen2-VL patches + grid, Gemma 3 crops)."""
    import torch

    flat = [o for s in samples for o in s]
    out = {}
    for k in flat[0]:
        vals = [o[k] for o in flat]
        out[k] = torch.cat(vals) if isinstance(vals[0], torch.Tensor) else [x for v in vals for x in v]
    return out


def _pad_dim1(tensors: Sequence, n: int):
    import torch

    out = []
    for t in tensors:
        if t.shape[1] < n:
            t = torch.cat([t, t.new_zeros((t.shape[0], n - t.shape[1], *t.shape[2:]))], 1)
        out.append(t)
    return torch.cat(out)


def _tiles_per_sample(samples: list[list[dict]]) -> dict:
    """Idefics2/3, SmolVLM: (samples, tiles of all its images, ...), zero-padded to the most tiles;
    rows/cols as one list per sample."""
    import torch

    keys = next(o for s in samples for o in s).keys()
    out: dict[str, Any] = {}
    for k in keys:
        per_sample = [[o[k] for o in s] for s in samples]
        if isinstance(next(v for s in per_sample for v in s), torch.Tensor):
            joined = [torch.cat(s, 1) for s in per_sample]
            out[k] = _pad_dim1(joined, max(t.shape[1] for t in joined))
        else:
            out[k] = [[x for v in s for x in v[0]] for s in per_sample]
    return out


def _patches_per_image(samples: list[list[dict]]) -> dict:
    """LLaVA-OneVision / LLaVA-NeXT: (images, patches, ...), zero-padded to the most patches;
    image sizes stacked; images counted per sample."""
    import torch

    flat = [o for s in samples for o in s]
    out: dict[str, Any] = {}
    for k in flat[0]:
        vals = [o[k] for o in flat]
        if k == "batch_num_images":
            out[k] = torch.tensor([len(s) for s in samples]) if isinstance(vals[0], torch.Tensor) \
                else [len(s) for s in samples]
        elif k == "pixel_values":
            out[k] = _pad_dim1(vals, max(v.shape[1] for v in vals))
        else:
            out[k] = torch.cat(vals) if isinstance(vals[0], torch.Tensor) else [x for v in vals for x in v]
    return out


@dataclass(frozen=True)
class Merge:
    """How a family's image processor output is rebuilt from per-image outputs.

    alone_differs: an image is processed differently alone in its sample than beside others
    (LLaVA-OneVision splits a lone image into anyres patches, pads others to a square): images of
    multi-image samples are then processed as a pair with themselves and the first one kept.
    """

    fn: Callable[[list[list[dict]]], dict]
    alone_differs: bool = False


MERGES: dict[str, Merge] = {
    "qwen2_vl": Merge(_cat_images),
    "qwen2_5_vl": Merge(_cat_images),
    "gemma3": Merge(_cat_images),
    "idefics3": Merge(_tiles_per_sample),
    "smolvlm": Merge(_tiles_per_sample),
    "idefics2": Merge(_tiles_per_sample),
    "llava_onevision": Merge(_patches_per_image, alone_differs=True),
}


class CachedImageProcessor:
    """Stands in for a processor's ``image_processor``: each keyed image processed once.

    Everything but the call is the wrapped processor's (attributes, saving, settings).
    """

    def __init__(self, inner: Any, merge: Merge, cache: ByteLRU):
        self.__dict__["_inner"] = inner
        self.__dict__["_merge"] = merge
        self.__dict__["_cache"] = cache

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._inner, name, value)

    def __call__(self, images: Any, **kwargs: Any):
        from transformers import BatchFeature

        samples = _as_samples(images)
        if samples is None or not all(s and all(KEY in im.info for im in s) for s in samples):
            return self._inner(images, **kwargs)
        settings = repr(sorted((k, repr(v)) for k, v in kwargs.items() if k != "return_tensors"))
        per_image = [[self._one(im, settings, kwargs, len(s) > 1) for im in s] for s in samples]
        return BatchFeature(self._merge.fn(per_image), tensor_type=None)

    def _one(self, image: Any, settings: str, kwargs: dict, beside_others: bool) -> dict:
        paired = beside_others and self._merge.alone_differs

        def load() -> dict:
            out = dict(self._inner([[image, image] if paired else [image]], **{**kwargs, "return_tensors": "pt"}))
            return {k: v[:1] for k, v in out.items()} if paired else out

        return self._cache.get(("pixels", image.info[KEY], settings, paired), load)


def _as_samples(images: Any) -> list[list] | None:
    """Images as one list per sample (the processor's nested layout), or None if not PIL images."""
    from PIL import Image

    if isinstance(images, Image.Image):
        return [[images]]
    if isinstance(images, (list, tuple)) and images:
        if all(isinstance(x, Image.Image) for x in images):
            return [list(images)]
        if all(isinstance(s, (list, tuple)) and all(isinstance(x, Image.Image) for x in s) for s in images):
            return [list(s) for s in images]
    return None
