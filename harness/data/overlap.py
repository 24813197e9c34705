"""Demo/eval overlap: support examples whose image is also an eval image.

Benchmarks share images (VQAv2, OK-VQA and COCO captioning all use COCO photos), so a demonstration
can show the very image the query asks about, and a few-shot score then measures recall. Before a
run (``check-data``, or the task option ``exclude_overlap``) the support split is compared with the
eval split, image by image:

- **same file or bytes**: the same media identity (path / dataset row), or the same SHA-256 of the
  file's bytes;
- **near-duplicate**: the same picture resized, re-encoded or lightly edited, found by two 64-bit
  perceptual hashes that must both be within :data:`MAX_DISTANCE` bits (Hamming distance): a
  difference hash (dHash: the sign of horizontal gradients of a 9x8 grayscale thumbnail) and a DCT
  hash (pHash: the signs, against their median, of the 8x8 lowest frequencies of a 32x32 grayscale
  thumbnail's 2-D DCT). Requiring both keeps chance matches rare; candidates are found by
  splitting the dHash into 8 bytes (two hashes within 7 bits share at least one byte), so the
  comparison is not all-pairs.

Only images are compared (a video's frames are not). JPEGs are decoded at reduced size (PIL draft
mode): hashing needs a 32x32 thumbnail, not the full picture.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
from PIL import Image as PILImage
from tqdm import tqdm

from harness.errors import MediaError
from harness.types import Example, Image

log = logging.getLogger(__name__)

#: bits (of 64) two images' dHash and pHash may each differ by and still count as the same picture
MAX_DISTANCE = 6


@dataclass(frozen=True)
class ImageHash:
    """What an image is compared by: its file's bytes digest and its two perceptual hashes."""

    digest: str
    dhash: int
    phash: int


def _gray(im: PILImage.Image, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(im.convert("L").resize(size, PILImage.Resampling.LANCZOS), dtype=np.float64)


def _bits(mask: np.ndarray) -> int:
    return int("".join("1" if b else "0" for b in mask.ravel()), 2)


def dhash(im: PILImage.Image) -> int:
    """Difference hash: 8 rows x 8 comparisons of neighbouring pixels of a 9x8 grayscale thumbnail."""
    g = _gray(im, (9, 8))
    return _bits(g[:, 1:] > g[:, :-1])


def phash(im: PILImage.Image) -> int:
    """DCT hash: the 8x8 lowest frequencies of a 32x32 grayscale thumbnail's 2-D DCT-II, each
    compared with their median (the DC term excluded from the median, as it only encodes brightness)."""
    from scipy.fft import dctn

    low = dctn(_gray(im, (32, 32)), type=2, norm="ortho")[:8, :8]
    return _bits(low > np.median(low.ravel()[1:]))


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def hash_image(item: Image) -> ImageHash:
    """The hashes of one image (a file, or a dataset row's image)."""
    from harness.data import hf_data
    from harness.data.media import load_image

    if hf_data.is_row_image(item.path):
        im = load_image(item)
        digest = hashlib.sha256(im.tobytes()).hexdigest()
    else:
        try:
            with open(item.path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            with PILImage.open(item.path) as raw:
                raw.draft("RGB", (64, 64))  # JPEG: decode at 1/2..1/8 scale, enough for a 32x32 thumbnail
                im = raw.convert("RGB")
        except FileNotFoundError:
            raise MediaError(f"image not found: {item.path}") from None
        except OSError as exc:
            raise MediaError(f"image could not be read: {item.path} ({exc})") from None
    return ImageHash(digest, dhash(im), phash(im))


@dataclass
class Overlap:
    """Support examples whose image is also an eval image."""

    task: str
    n_support: int
    n_eval_images: int
    #: support example id -> (how: "same file" | "same bytes" | "near-duplicate", the eval image's identity)
    matches: dict[str, tuple[str, str]] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.matches)

    def by_kind(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for how, _ in self.matches.values():
            out[how] += 1
        return dict(out)

    def line(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.by_kind().items()))
        text = (f"task {self.task}: {self.count} of {self.n_support} support examples show an eval image "
                f"({self.n_eval_images} distinct eval images){f': {kinds}' if kinds else ''}")
        if self.unreadable:
            text += f"; {len(self.unreadable)} images could not be read (e.g. {self.unreadable[0]})"
        return text


def _images(examples: Iterable[Example]) -> Iterable[tuple[Example, Image]]:
    for e in examples:
        for m in e.media:
            if isinstance(m, Image):
                yield e, m


def same_file_count(support: Sequence[Example], evals: Sequence[Example]) -> int:
    """Support examples showing the very file (media identity) of an eval image: cheap, no decoding."""
    eval_ids = {m.identity for _, m in _images(evals)}
    return len({e.id for e, m in _images(support) if m.identity in eval_ids})


def find_overlap(task: str, support: Sequence[Example], evals: Sequence[Example],
                 progress: bool = True) -> Overlap:
    """Which ``support`` examples show an image that is also in ``evals`` (see the module docstring)."""
    eval_items = {m.identity: m for _, m in _images(evals)}
    report = Overlap(task, len(support), len(eval_items))
    support_pairs = list(_images(support))
    unique = {m.identity: m for _, m in support_pairs} | eval_items
    hashes: dict[str, ImageHash] = {}
    for ident, m in tqdm(unique.items(), desc=f"{task}: hashing images", disable=not progress, leave=False):
        try:
            hashes[ident] = hash_image(m)
        except MediaError as exc:
            report.unreadable.append(str(exc))
    by_digest = {hashes[i].digest: i for i in eval_items if i in hashes}
    bands: dict[tuple[int, int], list[str]] = defaultdict(list)
    for i in eval_items:
        if i in hashes:
            for b in range(8):
                bands[(b, (hashes[i].dhash >> (8 * b)) & 0xFF)].append(i)
    for ex, m in support_pairs:
        if ex.id in report.matches:
            continue
        if m.identity in eval_items:
            report.matches[ex.id] = ("same file", m.identity)
            continue
        h = hashes.get(m.identity)
        if h is None:
            continue
        if h.digest in by_digest:
            report.matches[ex.id] = ("same bytes", by_digest[h.digest])
            continue
        seen: set[str] = set()
        for b in range(8):
            for i in bands.get((b, (h.dhash >> (8 * b)) & 0xFF), ()):
                if i in seen:
                    continue
                seen.add(i)
                e = hashes[i]
                if hamming(h.dhash, e.dhash) <= MAX_DISTANCE and hamming(h.phash, e.phash) <= MAX_DISTANCE:
                    report.matches[ex.id] = ("near-duplicate", i)
                    break
            if ex.id in report.matches:
                break
    return report
