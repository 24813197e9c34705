"""Conditioning a Hugging Face causal LM on media, shared by ``flamingo`` and ``openflamingo``.

The LM's own modules are left untouched (its state-dict keys stay Hugging Face's): a
forward pre-hook on a decoder layer runs a gated cross-attention block on that layer's
input hidden states. What the blocks attend to is set for a scope by
:meth:`LMConditioning.conditioned`.

A block has two calls, the same for both models:

- ``block(x, media, text_time)``: the masked form, one media row per batch row;
- ``block.forward_per_image(x, kv, n_images, text_time, media_rows)``: the per-image form
  (:mod:`models.crossattn`) over ``kv = block.attn.project(media)``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from models.crossattn import media_rows_for, media_time


@dataclass
class _Scope:
    media: torch.Tensor | None
    per_image: bool
    incremental: bool
    text_time: torch.Tensor | None
    derive_time: bool  # text_time from each call's input ids (else given for the scope)
    media_rows: torch.Tensor | None
    kv: dict[int, Any]
    seen: torch.Tensor | None = None  # incremental: <image> tokens so far, per row
    rows_of: dict[int, torch.Tensor] = field(default_factory=dict)  # batch size -> derived media rows


class LMConditioning:
    """Runs gated cross-attention blocks inside a Hugging Face causal LM.

    ``layers_and_blocks``: (decoder layer, block or None) pairs; each block runs before its layer.
    ``input_embeddings``: the LM's input embeddings; when given, a pre-hook on them reads each
    call's token ids to work out which image every token follows (``text_time``), unless the
    scope gives ``text_time`` itself.
    ``strict``: an LM call outside :meth:`conditioned` is an error (else the plain LM runs).
    """

    def __init__(self, layers_and_blocks: Iterable[tuple[nn.Module, nn.Module | None]], media_token_id: int,
                 input_embeddings: nn.Module | None = None, strict: bool = False):
        self.media_token_id, self.strict = media_token_id, strict
        self.blocks: list[nn.Module] = []
        self._scope: _Scope | None = None
        if input_embeddings is not None:
            input_embeddings.register_forward_pre_hook(self._on_input_ids)
        for layer, block in layers_and_blocks:
            if block is not None:
                layer.register_forward_pre_hook(self._layer_hook(len(self.blocks), block), with_kwargs=True)
                self.blocks.append(block)

    def project(self, media: torch.Tensor) -> list:
        """Every block's keys/values of ``media`` (M, T_img, n, D), to pass as ``kv`` to several scopes."""
        return [block.attn.project(media) for block in self.blocks]

    @contextmanager
    def conditioned(self, media: torch.Tensor | None, incremental: bool = False, per_image: bool = True, *,
                    text_time: torch.Tensor | None = None, media_rows: torch.Tensor | None = None,
                    kv: list | None = None) -> Iterator[None]:
        """LM calls inside condition on ``media`` (M, T_img, n, D), one row per prompt (None or
        no images: the blocks' feed-forward only).

        - ``media_rows`` (B,): the media row of each batch row. Default: a call with B = M * k
          rows conditions row r on media row ``r // k`` (beams laid out as ``repeat_interleave``),
          so a cache computed on M rows may be expanded to beams without expanding the media.
        - ``text_time`` (B, L): which image each token follows, for one call. Default: from each
          call's ids (needs ``input_embeddings``); with ``incremental=True`` calls continue one
          another (a KV cache) and a running per-row count of ``<image>`` tokens carries over.
        - ``per_image=True``: keys/values projected once per block for the scope (or ``kv``, from
          :meth:`project`) and each token scored against its own image; False: the masked form.
        """
        outer = self._scope
        self._scope = _Scope(media, per_image or kv is not None, incremental, text_time, text_time is None,
                             media_rows, dict(enumerate(kv)) if kv is not None else {})
        try:
            yield
        finally:
            self._scope = outer

    def _active(self) -> _Scope | None:
        if self._scope is None and self.strict:
            raise RuntimeError("LM called without media conditioning (use its conditioning.conditioned(media, ...))")
        return self._scope

    def _on_input_ids(self, module: nn.Module, args: tuple) -> None:
        s = self._active()
        if s is None or not s.derive_time:
            return
        ids, seen = args[0], s.seen
        if seen is not None and seen.shape[0] != ids.shape[0]:  # the cache was expanded to beams since the last call
            seen = seen[media_rows_for(ids.shape[0], seen.shape[0], ids.device)]
        s.text_time = media_time(ids, self.media_token_id, seen)
        if s.incremental:
            s.seen = s.text_time[:, -1]

    def _layer_hook(self, index: int, block: nn.Module):
        def hook(module, args, kwargs):
            s = self._active()
            if s is None:  # plain LM
                return None
            if s.text_time is None:
                raise RuntimeError("conditioned LM called without input_ids: cannot tell which image a token follows")
            x = args[0] if args else kwargs["hidden_states"]
            y = self._apply(s, index, block, x)
            if args:
                return (y, *args[1:]), kwargs
            kwargs["hidden_states"] = y
            return args, kwargs

        return hook

    def _apply(self, s: _Scope, index: int, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        media, rows = s.media, s.media_rows
        if rows is None and media is not None and media.shape[0] != x.shape[0]:
            if x.shape[0] not in s.rows_of:
                s.rows_of[x.shape[0]] = media_rows_for(x.shape[0], media.shape[0], x.device)
            rows = s.rows_of[x.shape[0]]
        if s.per_image and media is not None and media.shape[1] > 0:
            kv = s.kv.get(index)
            if kv is None:
                kv = s.kv[index] = block.attn.project(media)
            return block.forward_per_image(x, kv, media.shape[1], s.text_time, rows)
        return block(x, media if media is None or rows is None else media[rows], s.text_time)
