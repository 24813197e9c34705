"""Loading media from local files, with errors that name the file."""

from __future__ import annotations

from functools import lru_cache

from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from .errors import MediaError


@lru_cache(maxsize=256)
def load_image(path: str) -> PILImage.Image:
    """Open an image as RGB. Cached: demo images recur across thousands of prompts."""
    try:
        with PILImage.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise MediaError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise MediaError(f"image could not be read: {path} ({exc})") from None
