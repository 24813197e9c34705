"""OpenFlamingo checkpoints, run from local files as ``--model openflamingo``.

An OpenFlamingo model is an open_clip ViT (frozen), a Perceiver Resampler, a Hugging Face
causal LM (frozen) and gated cross-attention blocks before its decoder layers; the
resampler, the cross-attention blocks and the LM's input embeddings are what
``checkpoint.pt`` holds. This adapter builds those pieces with plain torch
(:mod:`.modules`), so running needs neither the ``open-flamingo`` package, nor open_clip,
nor torchvision. ``tests/test_openflamingo.py`` checks it against the package.

Behaviour that deliberately differs from the package's evaluation code:

- precision casts the weights and pixel tensors, never token ids or masks (the package's
  eval casts ``input_ids`` to bf16/fp16, which corrupts ids above 256/2048);
- log-likelihoods come from one forward pass over context + continuation with the
  padding masked and positions counted from the first real token (the package's cached
  classification path drops the attention mask of the padded context);
- generation never emits ``<image>`` (the package would then condition the following
  tokens on the wrong image).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from dataclasses import dataclass
from typing import Iterable, Literal, Sequence

from harness.store.identity import media_key
from harness.errors import HarnessError, MediaError
from harness.data.media import load_image
from harness.model import Model, checkpoint_fingerprint
from harness.registry import register_model
from harness.types import GenerationConfig, Image, LoglikelihoodRequest, Media, Prompt
from models.feature_cache import FeatureCache, budget_from_mb

log = logging.getLogger(__name__)

MEDIA_TOKEN = "<image>"
END_OF_CHUNK = "<|endofchunk|>"
PRECISIONS = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True)
class OpenFlamingoOptions:
    """vision_encoder: open_clip tower name (ViT-L-14, ...) or an open_clip model-config JSON.
    vision_weights: open_clip state dict (.bin/.pt/.safetensors; ``visual.*`` keys or a bare tower);
        may be empty when checkpoint.pt holds ``vision_encoder.*``.
    lang_model: local Hugging Face causal-LM directory.  tokenizer: local tokenizer directory
        (default: lang_model).  checkpoint: OpenFlamingo's checkpoint.pt.
    cross_attn_every_n_layers: as the checkpoint was trained (1 for 3B, 2 for 4B, 4 for 9B).
    precision: fp32, bf16 or fp16 (weights cast; token ids never).  device: cpu, cuda (this rank's GPU), auto, cuda:1 ...
    quick_gelu: ViT activation (default: QuickGELU for named towers, the JSON's flag otherwise).
    vision_token_ln_post: apply ln_post to the patch tokens (open_clip >= 2.23); OpenFlamingo
        was trained with open_clip <= 2.22, which does not.
    decoder_layers_attr: dotted path of the LM's decoder-layer list (default: the longest ModuleList).
    trust_remote_code: let transformers run the LM directory's own modelling code (e.g. MPT-1B).
    feature_cache_mb: memory budget (MiB) of the cache of resampled image features (demos recur
        across prompts, support and query images across seeds and shot counts); default: a quarter
        of physical memory, at most 8 GiB; 0 turns the cache off.
    feature_cache_size: optional cap on the number of cached images (the old item-count bound).
    feature_cache_dir: folder where features also persist, keyed by (model fingerprint, image path, size, mtime
        identity), so the next seed, shot count or process reuses them; empty: memory only.
    xattn: per_image (each token attends to its own image's latents, keys/values projected once
        per generation) or masked (OpenFlamingo's form; same logits, slower; kept to measure against).
    prefill_once: beam search prefills each prompt once and expands its KV cache to the beams
        (false: Hugging Face expands the prompt to the beams first, prefilling it once per beam;
        needs beam_search=hf).
    beam_search: builtin (models/decoding.py: Hugging Face's search, token for token, with a
        cheaper cache reorder) or hf (transformers' generate; kept to measure and test against).
    prefetch: encode a cell's distinct images up front, 64 a vision call, instead of those each query
        batch lacks (for GPUs, where small vision batches waste the device; on a CPU it measured no
        faster, benchmarks/fewshot_speed.py). Outputs are the same either way."""

    vision_encoder: str = "ViT-L-14"
    vision_weights: str = ""
    lang_model: str = ""
    tokenizer: str = ""
    checkpoint: str = ""
    cross_attn_every_n_layers: int = 1
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    device: str = "cpu"
    quick_gelu: bool | None = None
    vision_token_ln_post: bool = False
    decoder_layers_attr: str = ""
    trust_remote_code: bool = False
    feature_cache_mb: float | None = None
    feature_cache_size: int | None = None
    feature_cache_dir: str = ""
    xattn: Literal["per_image", "masked"] = "per_image"
    prefill_once: bool = True
    beam_search: Literal["builtin", "hf"] = "builtin"
    prefetch: bool = False


@register_model("openflamingo")
class OpenFlamingo(Model):
    """OpenFlamingo checkpoints (open_clip ViT + resampler + cross-attention + HF LM) from local files; see docs/openflamingo.md."""
    checkpoint_option = "checkpoint"  # what `watch` sets to each checkpoint folder

    Options = OpenFlamingoOptions
    template_style = "openflamingo"
    runtime_options = frozenset({"feature_cache_mb", "feature_cache_size", "feature_cache_dir", "prefetch"})
    media_token = MEDIA_TOKEN
    end_of_chunk = END_OF_CHUNK

    def __init__(self, options=None):
        super().__init__(options)
        from .build import build

        o = self.options
        if o.cross_attn_every_n_layers < 1:
            raise HarnessError("model openflamingo: cross_attn_every_n_layers must be >= 1")
        if o.feature_cache_size is not None and o.feature_cache_size < 0:
            raise HarnessError("model openflamingo: feature_cache_size must be >= 0")
        if o.feature_cache_mb is not None and o.feature_cache_mb < 0:
            raise HarnessError("model openflamingo: feature_cache_mb must be >= 0 (0 turns the cache off)")
        if not o.prefill_once and o.beam_search != "hf":
            raise HarnessError("model openflamingo: prefill_once=false is Hugging Face's expansion of the prompt to "
                               "the beams; it needs beam_search=hf")
        self.net = build(o)
        self.tokenizer = self.net.tokenizer
        params = inspect.signature(self.net.lm.forward).parameters
        self._accepts_position_ids = "position_ids" in params
        self._accepts_logits_to_keep = "logits_to_keep" in params
        h = hashlib.sha256()
        for p in (o.checkpoint, o.lang_model, o.vision_weights):
            h.update((checkpoint_fingerprint(p) if p else "-").encode())
        h.update(f"{o.vision_encoder}|{o.cross_attn_every_n_layers}|{o.vision_token_ln_post}|{o.quick_gelu}".encode())
        self._fingerprint = h.hexdigest()[:16]
        # precision is in the on-disk key: bf16 features must not be read back by an fp32 run
        self._features = FeatureCache(budget_from_mb(o.feature_cache_mb), f"{self.fingerprint}-{o.precision}",
                                      o.feature_cache_dir or None, o.feature_cache_size, self.net.device)

    def stats(self) -> dict[str, int]:
        """Cumulative vision-feature cache counters (hits, disk hits, vision encodes, evictions)."""
        return self._features.stats()

    def observe_support(self, task: str, support) -> None:
        """Warn when the support set's features cannot all stay cached (they would be re-encoded)."""
        n = len({m.identity for e in support for m in e.media})
        item = self.net.num_latents * self.net.vis_dim * self.net.dtype.itemsize
        if n * item > self._features.budget_bytes:
            log.warning("openflamingo: the %d support images of %s need %.0f MiB of features but feature_cache_mb "
                        "allows %.0f; demos will be re-encoded (raise feature_cache_mb)", n, task,
                        n * item / 2**20, self._features.budget_bytes / 2**20)

    #: images per vision call when a cell's distinct images are encoded up front (prefetch_media)
    PREFETCH_BATCH = 64

    def prefetch_media(self, media: Iterable[Media]) -> None:
        """Encode the images a cell will show that the feature cache lacks, ``PREFETCH_BATCH`` a call,
        when they all fit its budget beside what it holds (else each batch encodes its own, as before).
        An unreadable image fails only the samples that show it, later: its chunk is left to them.
        Only with the ``prefetch`` option."""
        if not self.options.prefetch:
            return
        cache = self._features
        seen: set[str] = set()
        missing = []
        for m in media:  # each image once (demos recur across queries), its file stat read once
            if isinstance(m, Image) and m.identity not in seen:
                seen.add(m.identity)
                if media_key(m) not in cache:
                    missing.append(m)
        item = self.net.num_latents * self.net.vis_dim * self.net.dtype.itemsize
        room = (cache.budget_bytes - cache.nbytes) // item if item else 0
        cap = self.options.feature_cache_size
        if not missing or len(missing) > room or (cap is not None and len(cache) + len(missing) > cap):
            return
        for start in range(0, len(missing), self.PREFETCH_BATCH):
            try:
                self.media_features(missing[start : start + self.PREFETCH_BATCH])
            except MediaError:
                continue

    @property
    def fingerprint(self) -> str:
        return f"openflamingo-{self._fingerprint}"

    # ---- media ------------------------------------------------------------------
    def pixels(self, media: Sequence[Media]):
        """Preprocessed pixel tensors (N, 3, S, S), float32 on the CPU."""
        import torch

        from .preprocess import preprocess

        out = []
        for m in media:
            if not isinstance(m, Image):
                raise MediaError(f"{m.path}: model openflamingo takes images only, not {m.kind}")
            try:
                out.append(preprocess(load_image(m.path), self.net.image_size))
            except ValueError as exc:
                raise MediaError(f"{m.path}: {exc}") from None
        return torch.stack(out) if out else torch.zeros(0, 3, self.net.image_size, self.net.image_size)

    def encode_pixels(self, pixels):
        """(N, 3, S, S) pixels -> resampled features (N, num_latents, D) in the model dtype."""
        import torch

        with torch.inference_mode():
            x = pixels.to(self.net.device, dtype=self.net.dtype)
            tokens = self.net.vision(x)
            return self.net.perceiver(tokens[:, None, None])[:, 0]

    def media_features(self, media: Sequence[Media]) -> list:
        """Resampled features (num_latents, D) of each image, cached by identity: a demo image's
        features are computed once and reused across every prompt that shows it. Exact: the
        resampler treats each image independently."""

        def compute(idx: list[int]):
            return list(self.encode_pixels(self.pixels([media[i] for i in idx])))

        return self._features.get([media_key(m) for m in media], compute)  # (path, size, mtime): never stale

    def encode_media(self, media: Sequence[Media]):
        """:meth:`media_features` stacked: (N, num_latents, D)."""
        return self.stack_media([self.media_features(media)])[0, : len(media)]

    def batch_media(self, prompts: Sequence[Prompt]):
        """(B, T_img, num_latents, D): each prompt's images in order, zero-padded to the most
        images in the batch (padding is never attended: no token follows it)."""
        return self.stack_media([self.media_features(p.media) for p in prompts])

    def stack_media(self, feats: Sequence[Sequence]):
        """Per-prompt feature lists [[(n, D)] * T_i] -> (B, max(1, max T_i), n, D), zero-padded."""
        import torch

        from models.decoding import intra_op_threads

        t_max = max([1, *map(len, feats)])
        # copies of cached features: on one thread, no parallel region to wait for on a busy machine
        with intra_op_threads(1):
            out = torch.zeros(len(feats), t_max, self.net.num_latents, self.net.vis_dim, device=self.net.device,
                              dtype=self.net.dtype)
            for i, f in enumerate(feats):
                if len(f):
                    torch.stack(list(f), out=out[i, : len(f)])
        return out

    # ---- text -------------------------------------------------------------------
    def _encode_texts(self, texts: Sequence[str]):
        from .text import encode_left_padded

        ids, mask = encode_left_padded(self.tokenizer, texts)
        return ids.to(self.net.device), mask.to(self.net.device)

    def _check_media_count(self, prompt: Prompt, ids) -> None:
        n = int((ids == self.net.media_token_id).sum())
        if n != len(prompt.media):
            raise HarnessError(
                f"model openflamingo: the prompt has {len(prompt.media)} images but {n} {MEDIA_TOKEN} tokens; "
                f"a task text contains {MEDIA_TOKEN!r} itself"
            )

    # ---- protocol -----------------------------------------------------------------
    def generate_batch(self, prompts: Sequence[Prompt], cfg: GenerationConfig) -> list[str]:
        """Generate for prompts with the same settings; stops at ``<|endofchunk|>``."""
        ids, mask = self._encode_texts([self.render_prompt(p) for p in prompts])
        for p, row in zip(prompts, ids):
            self._check_media_count(p, row)
        media = self.batch_media(prompts)
        new = self.generate_ids(ids, mask, media, self.generation_kwargs(cfg))
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return [t.split(END_OF_CHUNK)[0] for t in texts]

    def generate_ids(self, ids, mask, media, kwargs: dict):
        """The new token ids (B, n) that Hugging Face's ``generate(**kwargs)`` gives for the
        left-padded prompts ``ids``/``mask`` and their media (B, T_img, n, D), by the
        ``beam_search`` option's route (public: the parity tests drive both with the same kwargs)."""
        import torch

        from models.decoding import LMDecoder, decode, search_from_hf

        per_image = self.options.xattn == "per_image"
        beams = kwargs.get("num_beams", 1)
        with torch.inference_mode(), self.net.conditioning.conditioned(media, incremental=True, per_image=per_image):
            cache = None
            if self.options.prefill_once and ids.shape[1] > 1:
                cache = self.prefill(ids[:, :-1], mask[:, :-1], beams)
            if self.options.beam_search == "hf":
                extra = {"past_key_values": cache} if cache is not None else {}
                return self.net.lm.generate(input_ids=ids, attention_mask=mask, **extra, **kwargs)[:, ids.shape[1]:]
            search = search_from_hf(self.net.lm, kwargs, "openflamingo")
            full = mask.repeat_interleave(beams, 0)
            # generate's inputs for the last prompt token: its position from the mask, no mask without padding
            positions = None
            if self._accepts_position_ids:
                positions = (full.cumsum(-1) - 1).masked_fill(full == 0, 0)[:, -1:]
            extra = {"logits_to_keep": 1} if self._accepts_logits_to_keep else {}
            decoder = LMDecoder(self.net.lm, cache, None if bool((mask == 1).all()) else full, positions,
                                shared=ids.shape[1] - 1 if cache is not None else 0, extra=extra)
            logits = decoder.step(ids[:, -1].repeat_interleave(beams))
            return decode(decoder, logits, search).tokens

    def prefill(self, ids, mask, num_beams: int):
        """KV cache of ``ids`` (B, L) computed once per prompt, then repeated for ``num_beams`` beams.

        Call inside ``conditioning.conditioned(media, incremental=True)``; ``generate`` then
        continues from it with the full ids (Hugging Face feeds only the uncached tokens, here
        the last prompt token, and derives positions from the full mask as below)."""
        kwargs = {}
        if self._accepts_position_ids:  # as Hugging Face's generate computes them for left padding
            kwargs["position_ids"] = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        if self._accepts_logits_to_keep:  # the logits are not needed: skip the vocabulary projection
            kwargs["logits_to_keep"] = 1
        cache = self.net.lm(input_ids=ids, attention_mask=mask, use_cache=True, **kwargs).past_key_values
        if num_beams > 1:
            cache.batch_repeat_interleave(num_beams)
        return cache

    def generation_kwargs(self, cfg: GenerationConfig) -> dict:
        """The Hugging Face generate settings for a GenerationConfig (public: the parity test
        passes the same ones to the package)."""
        kwargs = dict(
            max_new_tokens=cfg.max_new_tokens,
            min_new_tokens=cfg.min_new_tokens,
            num_beams=cfg.num_beams,
            do_sample=False,
            eos_token_id=self.net.eoc_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
            suppress_tokens=[self.net.media_token_id],
        )
        if cfg.num_beams > 1:  # only beam search reads it (transformers warns otherwise)
            kwargs["length_penalty"] = cfg.length_penalty
        return kwargs

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[float]:
        """Sum of the continuation tokens' log-probabilities after the rendered prompt.

        The continuation is tokenized on its own (no special tokens) and appended to the
        prompt's tokens, as OpenFlamingo's classification evaluation does. One forward pass
        over the left-padded batch, padding masked, positions counted from each row's first
        real token, so a row's score does not depend on what it is batched with."""
        import torch

        rows, conts = [], []
        for r in requests:
            ctx = self.tokenizer(self.render_prompt(r.prompt))["input_ids"]
            cont = self.tokenizer(r.continuation, add_special_tokens=False)["input_ids"]
            self._check_media_count(r.prompt, torch.tensor(ctx))
            rows.append(list(ctx) + list(cont))
            conts.append(len(cont))
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
        ids, mask = ids.to(self.net.device), mask.to(self.net.device)
        kwargs = {}
        if self._accepts_position_ids:
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        media = self.batch_media([r.prompt for r in requests])
        per_image = self.options.xattn == "per_image"
        with torch.inference_mode(), self.net.conditioning.conditioned(media, incremental=False, per_image=per_image):
            logits = self.net.lm(input_ids=ids, attention_mask=mask, use_cache=False, **kwargs).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        out = []
        for i, n in enumerate(conts):
            if n == 0:
                out.append(0.0)
                continue
            target = ids[i, width - n:]
            pred = logprobs[i, width - n - 1 : width - 1]
            out.append(float(pred.gather(-1, target[:, None]).sum()))
        return out

    def count_tokens(self, text: str) -> int:
        """Tokens of a continuation tokenized on its own, as ``loglikelihood`` (and OpenFlamingo) does."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


__all__ = ["OpenFlamingo", "OpenFlamingoOptions", "MEDIA_TOKEN", "END_OF_CHUNK"]
