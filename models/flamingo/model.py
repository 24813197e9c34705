"""The Flamingo model: vision encoder -> Perceiver Resampler -> LM with gated cross-attention.

Read in this order: ``__init__`` (how the parts are put together), ``encode_media``
(pixels -> visual tokens, separate so callers can cache it), ``forward`` (the
language pass, conditioned on visual tokens), then ``generate`` / ``loglikelihood``
and ``save`` / ``load``.

The LM's own modules are left untouched: a forward pre-hook on every K-th decoder
layer runs a GATED XATTN-DENSE block on that layer's input hidden states
(:class:`models.conditioning.LMConditioning`, shared with ``openflamingo``). So the
LM's state-dict keys stay those of the Hugging Face model, and a frozen pretrained
LM never has to be copied into a checkpoint.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from harness.errors import HarnessError
from models.conditioning import LMConditioning
from models.crossattn import media_time

from .config import END_OF_CHUNK, MEDIA_TOKEN, FlamingoConfig
from .generation import beam_search
from .resampler import PerceiverResampler
from .vision import ImagePreprocessor, build_vision
from .xattn import GatedCrossAttentionBlock

log = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


@dataclass
class LMOutput:
    logits: torch.Tensor
    past_key_values: Any


def decoder_layers(lm: nn.Module) -> nn.ModuleList:
    """The LM's list of decoder layers (GPT-2: transformer.h, OPT: model.decoder.layers,
    Llama/Mistral/Qwen: model.layers): the first ModuleList as long as the layer count."""
    n = lm.config.num_hidden_layers
    for _, module in lm.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise HarnessError(f"could not find the {n} decoder layers of {type(lm).__name__}")


def load_tokenizer(path: str | Path):
    """A tokenizer with Flamingo's special tokens: ``<image>``, ``<|endofchunk|>`` and a pad token."""
    from transformers import AutoTokenizer

    names = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")
    if Path(path).is_dir() and not any((Path(path) / n).is_file() for n in names):
        raise HarnessError(f"{path}: no tokenizer files ({', '.join(names)}); copy them from the checkpoint's "
                           f"source (save_pretrained writes them)")
    tok = AutoTokenizer.from_pretrained(str(path))
    missing = [t for t in (MEDIA_TOKEN, END_OF_CHUNK) if t not in tok.get_vocab()]
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing})
    if tok.pad_token is None:
        tok.add_special_tokens({"pad_token": "<PAD>"})
    return tok


def build_lm(cfg: FlamingoConfig) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    if cfg.lm.path:
        return AutoModelForCausalLM.from_pretrained(cfg.lm.path)
    hf = dict(cfg.lm.hf_config)
    if "model_type" not in hf:
        raise HarnessError("flamingo config: lm.hf_config needs a 'model_type' (e.g. gpt2) when lm.path is empty")
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(hf.pop("model_type"), **hf))


class FlamingoModel(nn.Module):
    def __init__(self, cfg: FlamingoConfig, tokenizer):
        super().__init__()
        self.cfg, self.tokenizer = cfg, tokenizer
        self.vision = build_vision(cfg.vision)
        self.preprocess = ImagePreprocessor(cfg.vision, getattr(self.vision, "image_size", None))
        self.resampler = PerceiverResampler(self.vision.dim, cfg.resampler)
        self.lm = build_lm(cfg)
        if len(tokenizer) > self.lm.get_input_embeddings().num_embeddings:
            self.lm.resize_token_embeddings(len(tokenizer))
        self.media_token_id = tokenizer.convert_tokens_to_ids(MEDIA_TOKEN)
        self.eoc_token_id = tokenizer.convert_tokens_to_ids(END_OF_CHUNK)
        self.pad_token_id = tokenizer.pad_token_id

        dim = self.lm.config.hidden_size
        layers = decoder_layers(self.lm)
        every = cfg.lm.cross_attn_every
        if every < 1:
            raise HarnessError(f"flamingo config: lm.cross_attn_every must be >= 1, got {every}")
        self.xattn_at = [i for i in range(len(layers)) if i % every == 0]
        self.xattn = nn.ModuleList(
            GatedCrossAttentionBlock(dim, self.vision.dim, cfg.lm.xattn_heads, cfg.lm.xattn_dim_head,
                                     cfg.lm.xattn_ff_mult)
            for _ in self.xattn_at
        )
        # text_time comes from forward(); a call of self.lm outside it is the plain LM
        self.conditioning = LMConditioning(((layers[i], block) for i, block in zip(self.xattn_at, self.xattn)),
                                           self.media_token_id)
        #: per-item cross-attention (False: the masked form; same logits, kept to measure against)
        self.per_image_xattn = True
        self._keeps_logits = "logits_to_keep" in inspect.signature(self.lm.forward).parameters
        self.set_frozen()
        self._text_cache = lru_cache(maxsize=65536)(self._encode_text_uncached)

    # ---- construction helpers -------------------------------------------------
    def set_frozen(self) -> None:
        """Freeze what the config says is frozen. New token embeddings must learn, so a frozen
        LM keeps its input/output embeddings trainable (as OpenFlamingo does)."""
        self.vision.requires_grad_(not self.cfg.vision.frozen)
        self.lm.requires_grad_(not self.cfg.lm.frozen)
        if self.cfg.lm.frozen:
            self.lm.get_input_embeddings().requires_grad_(True)
            out = self.lm.get_output_embeddings()
            if out is not None:
                out.requires_grad_(True)

    # ---- text ------------------------------------------------------------------
    def _encode_text_uncached(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_text(self, text: str) -> list[int]:
        """Token ids of a piece of text (no special tokens added); cached, prompts repeat a lot."""
        return list(self._text_cache(text))

    def chunk_ids(self, n_media: int, text: str, end_of_chunk: bool) -> list[int]:
        """One interleaved chunk, OpenFlamingo style: ``<image>`` x n, the text, ``<|endofchunk|>``."""
        ids = [self.media_token_id] * n_media + self.encode_text(text)
        return ids + [self.eoc_token_id] if end_of_chunk else ids

    def prompt_prefix(self) -> list[int]:
        bos = self.tokenizer.bos_token_id
        return [bos] if self.cfg.lm.prepend_bos and bos is not None else []

    # ---- vision ----------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def encode_media(self, pixels: torch.Tensor) -> torch.Tensor:
        """Visual tokens of media items: pixels (N, 3, H, W) images or (N, F, 3, H, W) videos
        -> (N, num_latents, dim_visual)."""
        if pixels.ndim == 4:
            pixels = pixels[:, None]
        if pixels.ndim != 5:
            raise ValueError(f"pixels must be (N, 3, H, W) or (N, F, 3, H, W), got shape {tuple(pixels.shape)}")
        n, f = pixels.shape[:2]
        feats = self.vision(pixels.flatten(0, 1).to(self.device))  # (N*F, P, D)
        return self.resampler(feats.view(n, f, *feats.shape[1:]))

    # ---- the language pass -----------------------------------------------------
    def media_kv(self, media: torch.Tensor | None) -> list | None:
        """Cross-attention keys/values of ``media`` (B, M, L, D) for every block: compute them
        once and pass them to each :meth:`forward` of a generation (None: masked form or no media)."""
        if media is None or media.shape[1] == 0 or not self.per_image_xattn:
            return None
        return self.conditioning.project(media)

    def forward(self, input_ids: torch.Tensor, media: torch.Tensor | None, attention_mask: torch.Tensor | None = None,
                past_key_values: Any = None, media_offset: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, use_cache: bool = False, media_kv: list | None = None,
                media_rows: torch.Tensor | None = None, logits_to_keep: int = 0) -> LMOutput:
        """Logits of ``input_ids`` (B, T) conditioned on visual tokens ``media`` (B', M, L, D), the
        m-th ``<image>`` of a row referring to ``media[media_rows[row], m]`` (default: with
        B = B' * k, ``media_rows[row] = row // k``; beams of one prompt share its media row). With a cache,
        ``media_offset`` (B,) counts the ``<image>`` tokens already in the cached prefix.
        ``media_kv``: :meth:`media_kv` of ``media``, projected on first use when not given.
        ``logits_to_keep``: only the last N positions' logits (0: all)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if position_ids is None:
            position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)[:, -input_ids.shape[1]:]
        extra = {"logits_to_keep": logits_to_keep} if logits_to_keep and self._keeps_logits else {}
        text_time = media_time(input_ids, self.media_token_id, media_offset)
        with self.conditioning.conditioned(media, per_image=self.per_image_xattn, text_time=text_time,
                                           media_rows=media_rows, kv=media_kv):
            out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          past_key_values=past_key_values, use_cache=use_cache, **extra)
        return LMOutput(out.logits, out.past_key_values if use_cache else None)

    # ---- batching --------------------------------------------------------------
    def collate(self, ids: Sequence[Sequence[int]], media: Sequence[torch.Tensor]):
        """Left-pad token rows and zero-pad each row's media (M_i, L, D) to a batch (B, M, L, D)."""
        b, t = len(ids), max(len(x) for x in ids)
        input_ids = torch.full((b, t), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((b, t), dtype=torch.long)
        for i, row in enumerate(ids):
            if row:
                input_ids[i, t - len(row):] = torch.tensor(row)
                mask[i, t - len(row):] = 1
        for i, row in enumerate(ids):
            n = sum(1 for x in row if x == self.media_token_id)
            if n != len(media[i]):
                raise ValueError(f"row {i} has {n} {MEDIA_TOKEN} tokens but {len(media[i])} media items")
        m = max(len(x) for x in media)
        batch_media = None
        if m:
            shape = next(x for x in media if len(x)).shape[1:]
            batch_media = torch.zeros((b, m, *shape), device=self.device)
            for i, x in enumerate(media):
                if len(x):
                    batch_media[i, : len(x)] = x
        return input_ids.to(self.device), mask.to(self.device), batch_media

    def _features(self, media_features, pixels) -> list[torch.Tensor]:
        if (media_features is None) == (pixels is None):
            raise ValueError("give exactly one of media_features (from encode_media) or pixels")
        if media_features is not None:
            return list(media_features)
        return [self.encode_media(p) if len(p) else p.new_zeros((0, 0, 0)) for p in pixels]

    @torch.inference_mode()
    def generate(self, ids: Sequence[Sequence[int]], media_features: Sequence[torch.Tensor] | None = None,
                 pixels: Sequence[torch.Tensor] | None = None, max_new_tokens: int = 5, num_beams: int = 3,
                 length_penalty: float = 0.0, min_new_tokens: int = 0) -> list[list[int]]:
        """Continue each prompt (token ids, its media as visual tokens or pixels) with beam search
        over a KV cache; stops at ``<|endofchunk|>`` or EOS. Returns the new token ids."""
        feats = self._features(media_features, pixels)
        input_ids, mask, media = self.collate(ids, feats)
        stop = {self.eoc_token_id} | ({self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set())
        return beam_search(self, input_ids, mask, media, num_beams=num_beams, max_new_tokens=max_new_tokens,
                           min_new_tokens=min_new_tokens, length_penalty=length_penalty, stop_ids=stop,
                           banned_ids={self.media_token_id, self.pad_token_id} - stop)

    @torch.inference_mode()
    def loglikelihood(self, ids: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
                      media_features: Sequence[torch.Tensor] | None = None,
                      pixels: Sequence[torch.Tensor] | None = None) -> list[float]:
        """Sum of log p(continuation tokens | prompt) for each (prompt ids, continuation ids)."""
        feats = self._features(media_features, pixels)
        full = [list(a) + list(c) for a, c in zip(ids, continuations)]
        input_ids, mask, media = self.collate(full, feats)
        logp = self(input_ids, media, mask).logits.float().log_softmax(-1)
        out = []
        for i, c in enumerate(continuations):
            n = len(c)
            if n == 0:
                out.append(0.0)
                continue
            targets = input_ids[i, -n:]
            out.append(float(logp[i, -n - 1 : -1].gather(-1, targets[:, None]).sum()))
        return out

    # ---- save / load -----------------------------------------------------------
    def external_names(self) -> set[str]:
        """State-dict keys that live in a frozen pretrained directory, not in our checkpoint
        (a frozen LM's trainable embeddings are ours: they learned the new tokens)."""
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        out = set()
        for name in self.state_dict():
            if name.startswith("vision.") and self.cfg.vision.path and self.cfg.vision.frozen:
                out.add(name)
            elif name.startswith("lm.") and self.cfg.lm.path and self.cfg.lm.frozen and name not in trainable:
                out.add(name)
        return out

    def save(self, directory: str | Path) -> Path:
        """Write config.json, model.safetensors (every tensor not in a frozen pretrained
        component; tied tensors once) and the tokenizer files."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tensors, seen, external = {}, set(), self.external_names()
        for name, t in self.state_dict().items():
            if name in external or t.data_ptr() in seen:
                continue
            seen.add(t.data_ptr())
            tensors[name] = t.detach().contiguous().cpu()
        save_file(tensors, str(d / WEIGHTS_NAME), metadata={"format": "pt"})
        self.cfg.save(d / CONFIG_NAME)
        self.tokenizer.save_pretrained(str(d))
        return d

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu") -> "FlamingoModel":
        from safetensors.torch import load_file

        d = Path(directory)
        cfg = FlamingoConfig.load(d / CONFIG_NAME)
        if not (d / WEIGHTS_NAME).is_file():
            raise HarnessError(f"flamingo checkpoint {d}: {WEIGHTS_NAME} not found")
        model = cls(cfg, load_tokenizer(d))
        state = load_file(str(d / WEIGHTS_NAME))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected:
            raise HarnessError(f"flamingo checkpoint {d}: unexpected tensors {unexpected[:5]} (config mismatch?)")
        current, external = model.state_dict(), model.external_names()
        loaded_ptrs = {t.data_ptr() for n, t in current.items() if n in state}
        # Missing is fine for pretrained tensors and for tied copies of a loaded tensor.
        bad = [n for n in missing if n not in external and current[n].data_ptr() not in loaded_ptrs]
        if bad:
            raise HarnessError(f"flamingo checkpoint {d}: tensors missing from {WEIGHTS_NAME}: {bad[:5]}")
        return model.to(device).eval()
