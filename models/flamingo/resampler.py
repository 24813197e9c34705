"""The Perceiver Resampler (Flamingo, Sec. 2.1 and Fig. 5).

A fixed set of learned latents cross-attends to the flattened spatio-temporal
features of one media item (an image is a 1-frame video), so every media item
becomes ``num_latents`` visual tokens whatever its size or frame count. Keys and
values are the features concatenated with the latents, as in the paper.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ResamplerConfig


def feed_forward(dim: int, mult: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(),
                         nn.Linear(dim * mult, dim, bias=False))


class PerceiverAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads, self.scale = heads, dim_head ** -0.5
        inner = heads * dim_head
        self.norm_x, self.norm_latents = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """x: (B, N, D) features; latents: (B, L, D)."""
        x, latents = self.norm_x(x), self.norm_latents(latents)
        b, h = x.shape[0], self.heads
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)
        q, k, v = (t.view(b, t.shape[1], h, -1).transpose(1, 2) for t in (q, k, v))
        attn = (q @ k.transpose(-1, -2) * self.scale).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, latents.shape[1], -1)
        return self.to_out(out)


class PerceiverResampler(nn.Module):
    def __init__(self, dim: int, cfg: ResamplerConfig):
        super().__init__()
        self.max_frames = cfg.max_frames
        self.latents = nn.Parameter(torch.randn(cfg.num_latents, dim) * 0.02)
        self.time_emb = nn.Parameter(torch.zeros(cfg.max_frames, 1, dim))
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, cfg.heads, cfg.dim_head), feed_forward(dim, cfg.ff_mult)])
            for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features: (N, F, P, D) = media items x frames x patches x dim -> (N, L, D)."""
        n, f = features.shape[:2]
        if f > self.max_frames:
            raise ValueError(f"{f} frames given; this resampler has time embeddings for at most {self.max_frames}")
        x = (features + self.time_emb[:f]).flatten(1, 2)  # (N, F*P, D)
        latents = self.latents.expand(n, -1, -1)
        for attn, ff in self.layers:
            latents = latents + attn(x, latents)
            latents = latents + ff(latents)
        return self.norm(latents)
