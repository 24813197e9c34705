"""Loading media from local files or dataset rows, with errors that name the item."""

from __future__ import annotations

from functools import lru_cache
from typing import Union

from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from harness.cache import file_stamp
from harness.errors import MediaError
from harness.types import Image


def load_image(item: Union[str, Image]) -> PILImage.Image:
    """Open an image as RGB: a file path, an ``Image``, or a dataset-row image (``DatasetImage`` or its
    ``hfds://`` identity). Cached: demo images recur across thousands of prompts."""
    path = item if isinstance(item, str) else item.path
    return _load(path, file_stamp(path))  # a file replaced in place is decoded again


@lru_cache(maxsize=256)
def _load(path: str, stamp: tuple[int, int] | None = None) -> PILImage.Image:
    from harness.data import hf_data

    if hf_data.is_row_image(path):
        return hf_data.decode_image(path)
    try:
        with PILImage.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise MediaError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise MediaError(f"image could not be read: {path} ({exc})") from None


load_image.cache_clear = _load.cache_clear  # type: ignore[attr-defined]
