"""Beam search over a KV cache, for Flamingo's language pass.

The prompt is run once (visual tokens attached through the cross-attention hooks, their
keys/values projected once) and its cache repeated to the beams; each step then feeds only
the newly chosen token of every beam. Beams of one prompt share its media row
(``media_rows``), and a media offset tells the hooks which image new tokens follow. The
search itself is :func:`models.decoding.decode`, the one ``openflamingo`` uses: Hugging Face's
beam search (greedy for one beam), score = sum of log-probs / ``new_tokens ** length_penalty``,
a hypothesis ends at a stop token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from models.decoding import Search, decode, reorder_beams

if TYPE_CHECKING:
    from .model import FlamingoModel


class FlamingoDecoder:
    """One token per beam through :meth:`FlamingoModel.forward`, continuing its KV cache."""

    def __init__(self, model: "FlamingoModel", media: torch.Tensor | None, mask: torch.Tensor, cache: Any,
                 offset: torch.Tensor, kv: list | None, media_rows: torch.Tensor, shared: int):
        self.model, self.media, self.mask, self.cache = model, media, mask, cache
        self.offset, self.kv, self.media_rows, self.shared = offset, kv, media_rows, shared

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=1)
        out = self.model(tokens[:, None], self.media, self.mask, past_key_values=self.cache, media_offset=self.offset,
                         use_cache=True, media_kv=self.kv, media_rows=self.media_rows)
        self.cache = out.past_key_values
        return out.logits[:, -1]

    def reorder(self, beam_idx: torch.Tensor) -> None:
        reorder_beams(self.cache, beam_idx, self.shared)


def beam_search(model: "FlamingoModel", input_ids: torch.Tensor, attention_mask: torch.Tensor,
                media: torch.Tensor | None, num_beams: int, max_new_tokens: int, min_new_tokens: int,
                length_penalty: float, stop_ids: set[int], banned_ids: set[int]) -> list[list[int]]:
    """The new tokens of each prompt, without the stop token that ended it."""
    b, nb = input_ids.shape[0], max(1, num_beams)
    if max_new_tokens <= 0:
        return [[] for _ in range(b)]
    kv = model.media_kv(media)  # cross-attention keys/values: once per prompt for the whole search
    out = model(input_ids, media, attention_mask, use_cache=True, media_kv=kv, logits_to_keep=1)
    cache = out.past_key_values
    cache.batch_repeat_interleave(nb)  # one row per beam from here on; beams share their prompt's media
    decoder = FlamingoDecoder(model, media, attention_mask.repeat_interleave(nb, 0), cache,
                              (input_ids == model.media_token_id).sum(1).repeat_interleave(nb, 0), kv,
                              torch.arange(b, device=input_ids.device).repeat_interleave(nb), input_ids.shape[1])
    search = Search(num_beams=nb, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                    length_penalty=length_penalty, eos_ids=tuple(sorted(stop_ids)),
                    suppress_ids=tuple(sorted(banned_ids)), pad_id=model.pad_token_id)
    rows = decode(decoder, out.logits[:, -1].repeat_interleave(nb, 0), search).rows()
    return [r[:-1] if r and r[-1] in stop_ids else r for r in rows]
