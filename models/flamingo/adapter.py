"""The harness adapter of the reference Flamingo: ``--model flamingo [--model-arg path=DIR]``.

It renders each prompt OpenFlamingo's way (``<image>`` before each chunk's text,
``<|endofchunk|>`` after each demonstration), encodes every distinct media item
once (features are cached by file: demo images recur across thousands of
prompts) and decodes with beam search over a KV cache. Without ``path`` it loads
the checkpoint bundled in this repository (trained on easy-VQA).

No separator follows a demonstration's ``<|endofchunk|>`` (``demo_separator = ""``), unlike
current OpenFlamingo's ``"\n"``: the bundled checkpoint was trained on that rendering
(OpenFlamingo 2.0.0's), and the ``prompt`` field of its predictions shows it.

Importing this module is cheap: torch and transformers load when a model is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

from harness.store.identity import media_key
from harness.errors import HarnessError, MediaError
from harness.data.video import load_video_frames, selection_of
from harness.data.media import load_image
from harness.model import Model, checkpoint_fingerprint
from harness.registry import register_model
from harness.types import GenerationConfig, LoglikelihoodRequest, Media, Prompt, RankRequest, Video
from models.feature_cache import FeatureCache, budget_from_mb

BUNDLED_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "easyvqa"
#: the ``path`` option recorded for a model built from a module in memory (``Flamingo.from_module``).
IN_MEMORY = "in-memory"
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass(frozen=True)
class FlamingoOptions:
    """path: checkpoint directory written by models.flamingo (default: the bundled easy-VQA one).
    device: cpu, cuda (this rank's GPU), auto, cuda:1 ...
    feature_cache_mb: memory budget (MiB) of the cache of visual tokens per media item (default: a
    quarter of physical memory, at most 8 GiB; 0: off). feature_cache: optional cap on cached items.
    feature_cache_dir: folder where visual tokens also persist, keyed by (checkpoint, media path, its size and mtime).
    video_frames: frames sampled (uniformly) from a video given as a folder of frame images
    (video files follow the task's --frames/--fps selection).
    xattn: per_image (each token attends to its own media item's tokens) or masked (same logits, slower)."""

    path: str = str(BUNDLED_CHECKPOINT)
    device: str = "cpu"
    feature_cache_mb: float | None = None
    feature_cache: int | None = None
    feature_cache_dir: str = ""
    video_frames: int = 8
    xattn: Literal["per_image", "masked"] = "per_image"


@register_model("flamingo")
class Flamingo(Model):
    """Reference Flamingo (Perceiver Resampler + GATED XATTN-DENSE); default: bundled easy-VQA checkpoint."""
    checkpoint_option = "path"  # what `watch` sets to each checkpoint folder

    Options = FlamingoOptions
    template_style = "openflamingo"
    runtime_options = frozenset({"feature_cache_mb", "feature_cache", "feature_cache_dir"})
    media_kinds = frozenset({"image", "video"})
    # Trained without a separator after <|endofchunk|> (models/flamingo/data.py); keep it at eval.
    demo_separator = ""

    def __init__(self, options=None, *, module=None):
        super().__init__(options)
        import torch

        from .model import FlamingoModel

        o = self.options
        if (o.feature_cache_mb is not None and o.feature_cache_mb < 0) or (o.feature_cache is not None and o.feature_cache < 0):
            raise HarnessError("model flamingo: feature_cache_mb and feature_cache must be >= 0 (0 turns the cache off)")
        self.torch = torch
        if module is not None:  # in memory (Flamingo.from_module): its weights are its identity
            if not isinstance(module, FlamingoModel):
                raise HarnessError(f"Flamingo.from_module: expected a models.flamingo.model.FlamingoModel, "
                                   f"got {type(module).__name__}")
            from harness.store.identity import state_dict_digest

            self.model = module.eval()
            self._fingerprint = "state-" + state_dict_digest(module, module.cfg.to_dict())
        else:
            path = Path(self.options.path)
            if not (path / "config.json").is_file():
                raise HarnessError(
                    f"model flamingo: {path} is not a flamingo checkpoint directory (config.json, model.safetensors and "
                    f"tokenizer files, as `python -m models.flamingo.train --output DIR` writes them)"
                )
            self.model = FlamingoModel.load(path, self.device)
            self._fingerprint = checkpoint_fingerprint(path)
        self.model.per_image_xattn = self.options.xattn == "per_image"
        self._cache = FeatureCache(budget_from_mb(o.feature_cache_mb), self.fingerprint, o.feature_cache_dir or None,
                                   o.feature_cache, self.model.device)

    @classmethod
    def from_module(cls, module, **options) -> "Flamingo":
        """An adapter around an in-memory ``FlamingoModel`` (e.g. one being trained): no save or
        reload. Its identity is a digest of its state dict, computed here once; the module is put in
        eval mode (a training loop puts it back, see harness.training). ``options`` as --model-arg
        (``path`` is recorded as ``in-memory``; ``device`` defaults to the module's)."""
        options.setdefault("path", IN_MEMORY)
        options.setdefault("device", str(getattr(module, "device", "cpu")))
        return cls(options, module=module)

    def stats(self) -> dict[str, int]:
        """Cumulative feature-cache counters (hits, disk hits, vision encodes, evictions)."""
        return self._cache.stats()

    @property
    def fingerprint(self) -> str:
        return f"flamingo-{self._fingerprint}"

    # ---- media -------------------------------------------------------------------
    def _frames(self, video: Video) -> list:
        """A video's frames: a video file is decoded by harness.data.video (the task's frame selection,
        the shared frame cache); a folder of frame images is sampled uniformly."""
        folder = Path(video.path)
        if not folder.is_dir():
            frames = load_video_frames(video)
            cap = self.model.cfg.resampler.max_frames
            if len(frames) > cap:
                raise MediaError(f"{video.path}: {len(frames)} frames selected but this checkpoint takes at most "
                                 f"{cap} (its resampler's time embeddings); use --frames {cap} or fewer")
            return frames
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
        if not files:
            raise MediaError(f"{video.path}: no frame images ({', '.join(FRAME_SUFFIXES)}) in this folder")
        n = min(self.options.video_frames, self.model.cfg.resampler.max_frames, len(files))
        picks = [files[round(i * (len(files) - 1) / max(n - 1, 1))] for i in range(n)]
        return [load_image(str(p)) for p in picks]

    def encode_media(self, media: Sequence[Media]) -> list:
        """Visual tokens (num_latents, dim) of each media item, computed once per item (cached by
        its identity; a video's features depend on which frames were selected, so the selection
        is part of its key)."""
        torch = self.torch
        for m in media:
            if m.kind not in ("image", "video"):
                raise MediaError(f"{m.identity}: model flamingo does not take media of kind {m.kind!r}")
        # (path, size, mtime) keys: an image replaced in place is encoded again, never read stale from disk
        keys = [f"{m.kind}:{media_key(m)}" + (f"|{selection_of(m)!r}" if isinstance(m, Video) else "") for m in media]

        def compute(idx: list[int]) -> list:
            out: dict[int, object] = {}
            with torch.inference_mode():
                images = [i for i in idx if media[i].kind == "image"]
                if images:
                    pixels = self.model.preprocess([load_image(media[i].path) for i in images])
                    out.update(zip(images, self.model.encode_media(pixels)))
                for i in idx:
                    if media[i].kind == "video":
                        out[i] = self.model.encode_media(self.model.preprocess(self._frames(media[i]))[None])[0]
            return [out[i] for i in idx]

        return self._cache.get(keys, compute)

    # ---- prompts -----------------------------------------------------------------
    def prompt_ids(self, prompt: Prompt) -> list[int]:
        """Token ids of the OpenFlamingo rendering (what ``render_prompt`` shows as text)."""
        ids = self.model.prompt_prefix()
        last = len(prompt.chunks) - 1
        sep = self.model.encode_text(self.separator_for(prompt)) if self.separator_for(prompt) else []
        for i, chunk in enumerate(prompt.chunks):
            ids += self.model.chunk_ids(len(chunk.media), chunk.text, end_of_chunk=i < last)
            ids += sep if i < last else []
        return ids

    def _media_features(self, prompts: Sequence[Prompt]) -> list:
        feats = self.encode_media([m for p in prompts for m in p.media])
        out, k = [], 0
        for p in prompts:
            n = len(p.media)
            out.append(self.torch.stack(feats[k : k + n]) if n else self.torch.zeros(0, 0, 0))
            k += n
        return out

    def generate_batch(self, prompts: Sequence[Prompt], cfg: GenerationConfig) -> list[str]:
        new = self.model.generate([self.prompt_ids(p) for p in prompts], media_features=self._media_features(prompts),
                                  max_new_tokens=cfg.max_new_tokens, num_beams=cfg.num_beams,
                                  length_penalty=cfg.length_penalty, min_new_tokens=cfg.min_new_tokens)
        return [self.model.tokenizer.decode(t, skip_special_tokens=True) for t in new]

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[float]:
        prompts = [r.prompt for r in requests]
        return self.model.loglikelihood([self.prompt_ids(p) for p in prompts],
                                        [self.model.encode_text(r.continuation) for r in requests],
                                        media_features=self._media_features(prompts))

    def count_tokens(self, text: str) -> int:
        return len(self.model.encode_text(text))

    def rank_candidates(self, requests: Sequence[RankRequest]) -> list[list[float]]:
        """Each prompt computed once, its key/values reused for every candidate (see scoring.py)."""
        from .scoring import shared_prefix_loglikelihoods

        feats = self._media_features([r.prompt for r in requests])
        return [shared_prefix_loglikelihoods(self.model, self.prompt_ids(r.prompt), f,
                                             [self.model.encode_text(c) for c in r.continuations])
                for r, f in zip(requests, feats)]
