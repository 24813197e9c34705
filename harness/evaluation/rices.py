"""RICES: Retrieval-based In-Context Example Selection (Flamingo paper; OpenFlamingo ``eval/rices.py``).

For each query, the ``shots`` support examples whose image features are most similar
(cosine) to the query's are its demonstrations, ordered so the most similar is LAST,
next to the query; the query itself (same id) is never one of them. Equal similarities
(the rule with VQA support sets: several questions per image share its features) are ordered as
OpenFlamingo's ``RICES.find`` orders them: ``torch.argsort(descending=True)`` of the float32
similarity (harness.metrics.ties.rices_order), so the same features give the same demos. Demos are a pure function of (task, query, shots, encoder):
no seed, the same on 1 or N processes and for any batch size.

Features come from a vision encoder:

- ``rices_encoder=PATH``: a local Hugging Face vision model (a CLIP checkpoint, a CLIP
  vision tower, or any ``AutoModel`` vision model with an image processor config). A full
  CLIP model gives its projected image embedding (as OpenFlamingo's ``encode_image``);
  other models their pooled output (else the mean of the last hidden state).
- ``rices_encoder=model``: the evaluated model's own vision encoder through its
  ``encode_media`` (visual tokens averaged into one vector), e.g. ``flamingo``, ``openflamingo``.

Features are L2-normalised, computed once per (encoder fingerprint, task, split, media)
in batches with a progress bar, and cached on disk as ``.npy`` under the cache folder
(task option ``rices_cache``; default ``$HARNESS_CACHE/rices`` or ``~/.cache/harness/rices``).
The cache file name is a hash of the encoder fingerprint, task, split and every media
item's identity (with its file size and modification time), so another encoder or
other data never reuses features. Retrieval is one matrix product per query against the
whole support split (OpenFlamingo retrieves from the full train set), so ``support_size``
does not apply.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
from tqdm import tqdm

from harness.cache import atomic_write, cache_root, file_stamp
from harness.errors import HarnessError, MediaError
from harness.metrics.ties import rices_order
from harness.sampling import OWN_ENCODER, check_encoder_path  # noqa: F401 (re-exported)
from harness.store.layout import safe_name
from harness.types import Example, Media

log = logging.getLogger(__name__)

#: Bump when the way features are computed changes, so old cache files are not reused.
FEATURE_VERSION = 1
#: ``rices_encoder`` value that means "the evaluated model's own encoder".


class Encoder(Protocol):
    """What RICES needs of a vision encoder."""

    fingerprint: str

    def describe(self) -> dict[str, Any]: ...

    def embed(self, media: Sequence[Media]) -> np.ndarray:
        """One feature vector per media item, shape (len(media), D)."""
        ...


def default_cache_dir() -> Path:
    return cache_root() / "rices"


# ---- encoders -------------------------------------------------------------------
class HFVisionEncoder:
    """A local Hugging Face vision model; images are prepared by its own image processor.

    The weights load on the first ``embed`` only: when every feature is cached (each cell of a
    sweep after the first), the model is never loaded."""

    def __init__(self, path: str | Path, device: str = "cpu"):
        self.path = Path(path)
        check_encoder_path(str(path))
        from harness.model import checkpoint_fingerprint

        self.device = device
        self.model_type = json.loads((self.path / "config.json").read_text(encoding="utf-8")).get("model_type", "")
        self.fingerprint = f"hf-{checkpoint_fingerprint(self.path)}"
        self.model = self.processor = None

    def describe(self) -> dict[str, Any]:
        return {"kind": "hf", "path": str(self.path), "model_type": self.model_type, "fingerprint": self.fingerprint}

    def _load(self) -> None:
        from transformers import AutoImageProcessor, AutoModel

        try:
            self.processor = AutoImageProcessor.from_pretrained(str(self.path))
        except (OSError, ValueError) as exc:
            raise HarnessError(f"rices_encoder {self.path}: cannot load its image processor ({exc}); the folder "
                               f"needs a preprocessor_config.json (save one with the model's image processor)") from None
        try:
            self.model = AutoModel.from_pretrained(str(self.path)).to(self.device).eval()
        except (OSError, ValueError, RuntimeError) as exc:
            raise HarnessError(f"rices_encoder {self.path}: its weights cannot be loaded ({type(exc).__name__}: "
                               f"{(str(exc).splitlines() or [''])[0][:200]})") from None

    def embed(self, media: Sequence[Media]) -> np.ndarray:
        import torch

        from harness.data.video import media_as_images

        if self.model is None:
            self._load()
        # A video is the mean of its frames' features.
        images, owner = [], []
        for i, m in enumerate(media):
            frames = media_as_images([m], True, "RICES")
            images.extend(frames)
            owner.extend([i] * len(frames))
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
        with torch.inference_mode():
            if hasattr(self.model, "get_image_features"):  # a full CLIP: the projected embedding
                out = self.model.get_image_features(pixel_values=pixels)
            else:
                out = self.model(pixel_values=pixels)
            feats = _pooled(out).float().cpu().numpy()
        return _mean_by_owner(feats, owner, len(media))


def _pooled(out: Any):
    if hasattr(out, "ndim"):
        return out
    for name in ("image_embeds", "pooler_output"):
        value = getattr(out, name, None)
        if value is not None:
            return value.reshape(value.shape[0], -1)
    return out.last_hidden_state.mean(dim=1)


def _mean_by_owner(feats: np.ndarray, owner: Sequence[int], n: int) -> np.ndarray:
    out = np.zeros((n, feats.shape[-1]), dtype=np.float32)
    counts = np.zeros(n, dtype=np.float32)
    np.add.at(out, np.asarray(owner, dtype=np.int64), feats.astype(np.float32))
    np.add.at(counts, np.asarray(owner, dtype=np.int64), 1.0)
    return out / np.maximum(counts, 1.0)[:, None]


class ModelEncoder:
    """The evaluated model's own vision encoder: its ``encode_media`` output, averaged over
    visual tokens (all axes but the last) into one vector per media item."""

    def __init__(self, model: Any):
        check_model_encoder(type(model), model.name)
        self.model = model
        self.fingerprint = f"{model.fingerprint}/encode_media-mean"

    def describe(self) -> dict[str, Any]:
        return {"kind": "model", "model": self.model.name, "fingerprint": self.fingerprint}

    def embed(self, media: Sequence[Media]) -> np.ndarray:
        import torch

        feats = self.model.encode_media(list(media))
        rows = []
        with torch.inference_mode():
            for f in feats:
                t = torch.as_tensor(f).float()
                rows.append(t.reshape(-1, t.shape[-1]).mean(0).cpu().numpy())
        return np.stack(rows).astype(np.float32)


def validate_encoder(value: str) -> None:
    """Everything about an ``rices_encoder=PATH`` folder that can be checked without loading its
    weights, before any model loads: a readable config of a model that takes images (a text model
    with an image-processor config is refused), and an image processor that loads."""
    check_encoder_path(value)
    if value == OWN_ENCODER:
        return
    import inspect

    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    where = f"rices_encoder {value!r}"
    try:
        config = AutoConfig.from_pretrained(value)
    except Exception as exc:  # unreadable JSON, unknown model_type...
        raise HarnessError(f"{where}: its config.json cannot be read ({type(exc).__name__}: "
                           f"{(str(exc).splitlines() or [''])[0][:200]})") from None
    cls = AutoModel._model_mapping.get(type(config), None) if hasattr(AutoModel, "_model_mapping") else None
    takes_pixels = cls is not None and (hasattr(cls, "get_image_features")
                                        or "pixel_values" in inspect.signature(cls.forward).parameters)
    if not takes_pixels:
        raise HarnessError(f"{where}: a {config.model_type or 'model'} folder, not a vision model (its model takes no "
                           f"images); give a vision model such as CLIP or SigLIP, or rices_encoder={OWN_ENCODER}")
    try:
        AutoImageProcessor.from_pretrained(value)
    except Exception as exc:
        raise HarnessError(f"{where}: cannot load its image processor ({type(exc).__name__}); the folder needs a "
                           f"preprocessor_config.json (save one with the model's image processor)") from None


def check_model_encoder(model_cls: type, name: str) -> None:
    """Fail early if a model class offers no vision encoder for ``rices_encoder=model``."""
    from harness.model import Model

    if getattr(model_cls, "encode_media", Model.encode_media) is Model.encode_media:
        raise HarnessError(
            f"rices_encoder={OWN_ENCODER}: model {name} offers no vision encoder (no encode_media); "
            f"pass rices_encoder=PATH, the local folder of a Hugging Face vision model such as CLIP"
        )


def make_encoder(value: str, model: Any, device: str = "cpu") -> Encoder:
    if value == OWN_ENCODER:
        return ModelEncoder(model)
    return HFVisionEncoder(value, device)


# ---- features, cached ---------------------------------------------------------------
def _identity_key(m: Media) -> list:
    """A media item's identity, plus its file's size and mtime (so replaced data is not reused)
    and, for a video, the frame selection (it changes the features)."""
    key: list = [m.kind, m.identity]
    selection = getattr(m, "selection", None)
    if selection is not None:
        key.append(repr(selection))
    stamp = file_stamp(m.identity)
    if stamp is not None:  # not a file (e.g. a dataset row): its identity alone
        key += list(stamp)
    return key


@dataclass
class MediaFeatures:
    """L2-normalised features of distinct media items: ``matrix[index[key]]``."""

    index: dict[str, int]
    matrix: np.ndarray
    path: Path
    from_cache: bool


def media_features(encoder: Encoder, task: str, split: str, media: Sequence[Media], cache_dir: Path,
                   batch_size: int = 32, progress: bool = True) -> MediaFeatures:
    """Features of the distinct ``media`` (by identity), read from the cache or computed in batches."""
    distinct: dict[str, Media] = {}
    keys: dict[str, list] = {}
    for m in media:
        if m.identity not in distinct:
            distinct[m.identity] = m
            keys[m.identity] = _identity_key(m)
    ids = list(distinct)
    material = json.dumps([FEATURE_VERSION, encoder.fingerprint, task, split, [keys[i] for i in ids]], default=str)
    digest = hashlib.sha256(material.encode()).hexdigest()[:20]
    path = Path(cache_dir) / f"{safe_name(task)}-{safe_name(split)}-{digest}.npy"
    index = {i: n for n, i in enumerate(ids)}
    checksum = path.with_name(path.name + ".sha256")
    if path.is_file():
        try:
            matrix = np.load(path)
            stored = checksum.read_text(encoding="ascii").strip() if checksum.is_file() else None
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable (%s); recomputing", path, exc)
        else:
            if not (matrix.ndim == 2 and matrix.shape[0] == len(ids)):
                log.warning("%s: shape %s for %d media items; recomputing", path, matrix.shape, len(ids))
            elif stored != _matrix_digest(matrix):
                # overwritten with other values of the same shape (or by an older harness): never trusted
                log.warning("%s: %s; recomputing", path, "no checksum beside it" if stored is None
                            else "its values do not match their checksum (the file was changed)")
            else:
                return MediaFeatures(index, matrix, path, True)
    rows: list[np.ndarray | None] = []
    bar = tqdm(total=len(ids), desc=f"RICES features {task}/{split}", disable=not progress, leave=False)
    for start in range(0, len(ids), batch_size):
        batch = [distinct[i] for i in ids[start : start + batch_size]]
        rows.extend(_embed_batch(encoder, batch))
        bar.update(len(batch))
    bar.close()
    dim = next((r.shape[-1] for r in rows if r is not None), None)
    if dim is None:
        raise HarnessError(f"RICES: none of the {len(ids)} media items of {task}/{split} could be read "
                           f"(first: {ids[0] if ids else 'none'})")
    matrix = np.stack([r if r is not None else np.zeros(dim, np.float32) for r in rows])
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    matrix = (matrix / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    with atomic_write(checksum) as f:
        f.write(_matrix_digest(matrix) + "\n")
    with atomic_write(path, "wb") as f:  # a killed run never leaves half a feature file (a mismatch recomputes)
        np.save(f, matrix)
    log.info("RICES: wrote %d %s/%s features to %s", len(ids), task, split, path)
    return MediaFeatures(index, matrix, path, False)


def _matrix_digest(matrix: np.ndarray) -> str:
    """sha256 of a feature matrix's dtype, shape and bytes (written beside its .npy, checked on load)."""
    h = hashlib.sha256(f"{matrix.dtype}|{matrix.shape}|".encode())
    h.update(np.ascontiguousarray(matrix).tobytes())
    return h.hexdigest()


def _embed_batch(encoder: Encoder, batch: list[Media]) -> list[np.ndarray | None]:
    """One row per item; an unreadable item gets None (then a zero vector: no similarity), and
    fails as a sample later, with its reason, when the model reads it."""
    try:
        return list(np.asarray(encoder.embed(batch), dtype=np.float32))
    except MediaError:
        if len(batch) == 1:
            log.warning("RICES: cannot read %s; it gets no similarity", batch[0].identity)
            return [None]
    return [row for m in batch for row in _embed_batch(encoder, [m])]


def example_features(examples: Sequence[Example], feats: MediaFeatures) -> np.ndarray:
    """One unit vector per example: the mean of its media's features, renormalised (zero if none)."""
    dim = feats.matrix.shape[1]
    out = np.zeros((len(examples), dim), dtype=np.float32)
    several = np.zeros(len(examples), dtype=bool)
    for n, e in enumerate(examples):
        if e.media:
            out[n] = feats.matrix[[feats.index[m.identity] for m in e.media]].mean(0)
            several[n] = len(e.media) > 1
    # One media item: its feature as normalised once (as OpenFlamingo keeps it; normalising again
    # would move its bits); several: their mean, renormalised.
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    renorm = out / np.where(norms > 0, norms, 1.0)
    return np.where(several[:, None], renorm, out).astype(np.float32)


# ---- the sampler ------------------------------------------------------------------------
@dataclass
class RicesSampler:
    """Demos by image-feature similarity to the query, most similar last, never the query itself."""

    task: str
    support: Sequence[Example]
    queries: Sequence[Example]
    encoder: Encoder
    support_split: str
    eval_split: str
    cache_dir: Path = field(default_factory=default_cache_dir)
    batch_size: int = 32
    progress: bool = True
    pool: list[Example] = field(init=False)

    def __post_init__(self) -> None:
        if not self.support:
            raise HarnessError(f"task {self.task}: the support split is empty, so no demonstrations can be drawn")
        self.pool = list(self.support)
        sup = media_features(self.encoder, self.task, self.support_split, [m for e in self.pool for m in e.media],
                             Path(self.cache_dir), self.batch_size, self.progress)
        qry = media_features(self.encoder, self.task, self.eval_split, [m for e in self.queries for m in e.media],
                             Path(self.cache_dir), self.batch_size, self.progress)
        self.cache_files = [sup.path, qry.path]
        self.from_cache = sup.from_cache and qry.from_cache
        self.support_matrix = example_features(self.pool, sup)
        self.query_vectors = dict(zip((q.id for q in self.queries), example_features(self.queries, qry)))
        self._ids = np.array([e.id for e in self.pool], dtype=object)

    def check_shots(self, shots: int, queries: Sequence[Example] | None = None) -> None:
        from harness.sampling import max_shots

        if shots > max_shots(self.pool, queries) and shots > 0:
            raise HarnessError(
                f"task {self.task}: {shots} shots asked for, but the support split has only {len(self.pool)} examples"
            )

    def ranking(self, query: Example) -> np.ndarray:
        """Support indices from most to least similar to ``query`` (ties as OpenFlamingo's torch
        argsort), query excluded."""
        vec = self.query_vectors.get(query.id)
        if vec is None:
            raise HarnessError(f"task {self.task}: RICES has no features for query {query.id} "
                               f"(it is not one of the queries the sampler was built for)")
        order = rices_order(vec, self.support_matrix)  # one product per query: independent of batching
        return order[self._ids[order] != query.id]

    def demos(self, query: Example, shots: int) -> list[Example]:
        """The ``shots`` most similar support examples, most similar LAST (next to the query)."""
        if shots == 0:
            return []
        self.check_shots(shots, [query])
        top = self.ranking(query)[:shots]
        return [self.pool[i] for i in reversed(top)]

    def config(self) -> dict[str, Any]:
        return {"name": "rices", "encoder": self.encoder.describe(), "support_size": len(self.pool),
                "support_split": self.support_split, "feature_version": FEATURE_VERSION,
                # equal similarities ordered as OpenFlamingo's RICES.find (was: stable, earlier first)
                "ties": "torch.argsort"}


def build_sampler(task, seed: int, model, queries: Sequence[Example], progress: bool = True):
    """The sampler a task's options ask for: ``rices`` (:class:`RicesSampler`), else the task's own
    (``Task.demo_sampler``: seeded random, or class-balanced for classification)."""
    o = task.options
    if getattr(o, "sampler", "random") != "rices":
        return task.demo_sampler(seed)  # random, or the task's own (class-balanced for classification)
    encoder = make_encoder(o.rices_encoder, model)
    return RicesSampler(task.name, task.support_examples(), queries, encoder, task.support_split, task.eval_split,
                        Path(o.rices_cache) if o.rices_cache else default_cache_dir(), o.rices_batch_size, progress)
