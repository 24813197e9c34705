"""GATED XATTN-DENSE (Flamingo, Sec. 2.2 and Fig. 4) and per-media masking.

Each block is a cross-attention from text to visual tokens, then a feed-forward,
each added to the residual stream through ``tanh(alpha)`` with ``alpha = 0`` at
initialisation, so an untrained model computes exactly the frozen LM.

Masking (Sec. 2.3): each text token attends only to the visual tokens of the
*last* media item before it (``text_time``: 1-based index of that item, 0 when no
media precedes the token, which then attends to nothing and gets zero update).
Two equivalent forms: the masked one (scores against every item's visual tokens,
masked down to one) and the per-item one (:mod:`models.crossattn`: scores against
the item's own tokens only, keys/values projected once per generation), which
:class:`~models.flamingo.model.FlamingoModel` uses unless told otherwise. The block's two
calls are those :class:`models.conditioning.LMConditioning` makes.
"""

from __future__ import annotations

import torch
from torch import nn

from models.crossattn import media_time, per_image_attention, project_media

from .resampler import feed_forward

__all__ = ["GatedCrossAttentionBlock", "MaskedCrossAttention", "media_time"]


class MaskedCrossAttention(nn.Module):
    def __init__(self, dim: int, dim_visual: int, heads: int, dim_head: int):
        super().__init__()
        self.heads, self.scale = heads, dim_head ** -0.5
        inner = heads * dim_head
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim_visual, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, media: torch.Tensor, text_time: torch.Tensor) -> torch.Tensor:
        """x: (B, T, dim); media: (B, M, L, dim_visual); text_time: (B, T) in 0..M."""
        b, t, _ = x.shape
        m, l = media.shape[1:3]
        h = self.heads
        q = self.to_q(self.norm(x)).view(b, t, h, -1).transpose(1, 2)
        k, v = self.to_kv(media.flatten(1, 2)).chunk(2, dim=-1)
        k, v = (z.view(b, m * l, h, -1).transpose(1, 2) for z in (k, v))
        scores = q @ k.transpose(-1, -2) * self.scale  # (B, h, T, M*L)
        key_time = torch.arange(1, m + 1, device=x.device).repeat_interleave(l)  # media index of each key
        allowed = text_time[:, None, :, None] == key_time[None, None, None, :]
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        out = scores.softmax(dim=-1) @ v
        # Tokens with no media before them attend to nothing: their output is exactly zero.
        out = out * (text_time > 0)[:, None, :, None].to(out.dtype)
        return self.to_out(out.transpose(1, 2).reshape(b, t, -1))

    def project(self, media: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of every media item, (B * M, heads, L, dim_head)."""
        return project_media(self.to_kv, media, self.heads)

    def per_image(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], n_media: int,
                  text_time: torch.Tensor, media_rows: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`forward`'s result, each token scored against its own media item only."""
        q = self.to_q(self.norm(x))
        q = q.view(*q.shape[:2], self.heads, -1)
        return self.to_out(per_image_attention(q, kv[0], kv[1], text_time, n_media, media_rows, self.scale))


class GatedCrossAttentionBlock(nn.Module):
    """x + tanh(a_attn) * xattn(x, media);  x + tanh(a_ff) * ffw(x)."""

    def __init__(self, dim: int, dim_visual: int, heads: int, dim_head: int, ff_mult: int):
        super().__init__()
        self.attn = MaskedCrossAttention(dim, dim_visual, heads, dim_head)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ff = feed_forward(dim, ff_mult)
        self.ff_gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, media: torch.Tensor | None, text_time: torch.Tensor) -> torch.Tensor:
        """Masked cross-attention over ``media`` (B, M, L, D), one media row per batch row."""
        empty = media is None or media.shape[1] == 0  # a text-only batch has nothing to attend to
        return self._gated(x, None if empty else self.attn(x, media, text_time))

    def forward_per_image(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor] | None, n_media: int,
                          text_time: torch.Tensor, media_rows: torch.Tensor | None = None) -> torch.Tensor:
        """Per-item cross-attention over ``kv`` from ``self.attn.project(media)``, batch row r
        using media row ``media_rows[r]`` (default r)."""
        attended = self.attn.per_image(x, kv, n_media, text_time, media_rows) if n_media else None
        return self._gated(x, attended)

    def _gated(self, x: torch.Tensor, attended: torch.Tensor | None) -> torch.Tensor:
        if attended is not None:
            x = x + self.attn_gate.tanh() * attended
        return x + self.ff_gate.tanh() * self.ff(x)
