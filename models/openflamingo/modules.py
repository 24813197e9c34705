"""The network pieces of an OpenFlamingo model, written with plain torch.

Parameter names follow OpenFlamingo's and open_clip's modules, so a ``checkpoint.pt``
and an open_clip state dict load into them unchanged:

- :class:`VisionTransformer`: open_clip's ViT (``conv1``, ``class_embedding``,
  ``positional_embedding``, ``ln_pre``, ``transformer.resblocks.N``, ``ln_post``, ``proj``).
  OpenFlamingo feeds its patch tokens (not the pooled embedding) to the resampler.
- :class:`PerceiverResampler`: ``perceiver.*`` in ``checkpoint.pt``.
- :class:`GatedCrossAttentionBlock`: ``lang_encoder.gated_cross_attn_layers.N.*``; attached
  to the Hugging Face LM by :class:`models.conditioning.LMConditioning` (see ``build``).

Masking follows OpenFlamingo: a text token cross-attends only to the latents of the
last ``<image>`` before it; text before any image gets no visual input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from models.crossattn import per_image_attention, project_media


class QuickGELU(nn.Module):
    """OpenAI CLIP's activation (the ViT-L-14 weights OpenFlamingo uses were trained with it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


@dataclass(frozen=True)
class VisionConfig:
    """An open_clip ViT tower. ``heads = width // head_width``."""

    image_size: int
    patch_size: int
    width: int
    layers: int
    head_width: int = 64
    mlp_ratio: float = 4.0
    output_dim: int = 512
    quick_gelu: bool = True

    @property
    def heads(self) -> int:
        return self.width // self.head_width


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_width: int, act: Callable[[], nn.Module]):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        # batch_first=False as in open_clip, which keeps nn.MultiheadAttention off its fused fast path.
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, mlp_width))
        self.mlp.add_module("gelu", act())
        self.mlp.add_module("c_proj", nn.Linear(mlp_width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (L, N, D)
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class _Resblocks(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        act = QuickGELU if cfg.quick_gelu else nn.GELU
        mlp_width = int(cfg.width * cfg.mlp_ratio)
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(cfg.width, cfg.heads, mlp_width, act) for _ in range(cfg.layers)
        )


class VisionTransformer(nn.Module):
    """open_clip's ``VisionTransformer`` (class-token pooling, learnable positions), returning
    the patch tokens OpenFlamingo uses.

    ``token_ln_post``: open_clip <= 2.22 (what OpenFlamingo was trained with) returns the
    tokens *before* ``ln_post``; open_clip >= 2.23 applies ``ln_post`` to them. Default False.
    """

    def __init__(self, cfg: VisionConfig, token_ln_post: bool = False):
        super().__init__()
        self.cfg = cfg
        self.token_ln_post = token_ln_post
        grid = cfg.image_size // cfg.patch_size
        scale = cfg.width**-0.5
        self.conv1 = nn.Conv2d(3, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(cfg.width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, cfg.width))
        self.ln_pre = nn.LayerNorm(cfg.width)
        self.transformer = _Resblocks(cfg)
        self.ln_post = nn.LayerNorm(cfg.width)
        self.proj = nn.Parameter(scale * torch.randn(cfg.width, cfg.output_dim))  # unused for tokens; kept to load

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (N, 3, H, W) -> patch tokens (N, grid*grid, width)."""
        x = self.conv1(pixels)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = self.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        x = x.permute(1, 0, 2)
        for block in self.transformer.resblocks:
            x = block(x)
        x = x.permute(1, 0, 2)
        if self.token_ln_post:
            x = self.ln_post(x)
        return x[:, 1:]


def feed_forward(dim: int, mult: int = 4) -> nn.Sequential:
    """LayerNorm -> Linear -> GELU -> Linear (indices 0..3, as in checkpoint.pt)."""
    inner = int(dim * mult)
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, inner, bias=False), nn.GELU(), nn.Linear(inner, dim, bias=False))


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., n, heads*d) -> (..., heads, n, d)"""
    *lead, n, hd = x.shape
    return x.reshape(*lead, n, heads, hd // heads).transpose(-3, -2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(..., heads, n, d) -> (..., n, heads*d)"""
    x = x.transpose(-3, -2)
    return x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])


class PerceiverAttention(nn.Module):
    def __init__(self, dim: int, dim_head: int = 64, heads: int = 8):
        super().__init__()
        self.scale = dim_head**-0.5
        self.heads = heads
        inner = dim_head * heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """x (b, T, n1, D) media features; latents (b, T, n2, D)."""
        x = self.norm_media(x)
        latents = self.norm_latents(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat((x, latents), dim=-2)).chunk(2, dim=-1)
        q, k, v = (_split_heads(t, self.heads) for t in (q, k, v))
        sim = (q * self.scale) @ k.transpose(-1, -2)
        sim = sim - sim.amax(dim=-1, keepdim=True).detach()
        return self.to_out(_merge_heads(sim.softmax(dim=-1) @ v))


class PerceiverResampler(nn.Module):
    """Turns each media's patch tokens into ``num_latents`` vectors, independently per media."""

    def __init__(self, dim: int, depth: int = 6, num_latents: int = 64, dim_head: int = 64, heads: int = 8):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, dim_head, heads), feed_forward(dim)]) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (b, T, F, v, D) -> (b, T, num_latents, D)."""
        b, T, Fr, v, d = x.shape
        x = x.reshape(b, T, Fr * v, d)
        latents = self.latents.view(1, 1, *self.latents.shape).expand(b, T, -1, -1)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm(latents)


class MaskedCrossAttention(nn.Module):
    def __init__(self, dim: int, dim_visual: int, dim_head: int = 64, heads: int = 8):
        super().__init__()
        self.scale = dim_head**-0.5
        self.heads = heads
        inner = dim_head * heads
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim_visual, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, media: torch.Tensor, text_time: torch.Tensor) -> torch.Tensor:
        """The masked form (OpenFlamingo's): x (B, L, D) text; media (B, T_img, n, Dv);
        text_time (B, L): index (1-based) of the image each token follows, 0 for none."""
        _, T_img, n = media.shape[:3]
        q = _split_heads(self.to_q(self.norm(x)), self.heads)
        k, v = self.to_kv(media.reshape(media.shape[0], T_img * n, -1)).chunk(2, dim=-1)
        k, v = _split_heads(k, self.heads), _split_heads(v, self.heads)
        sim = (q * self.scale) @ k.transpose(-1, -2)  # (B, h, L, T_img*n)
        media_time = torch.arange(1, T_img + 1, device=x.device).repeat_interleave(n)
        allowed = text_time[:, None, :, None] == media_time[None, None, None, :]
        sim = sim.masked_fill(~allowed, -torch.finfo(sim.dtype).max)
        sim = sim - sim.amax(dim=-1, keepdim=True).detach()
        attn = sim.softmax(dim=-1)
        attn = attn.masked_fill((text_time == 0)[:, None, :, None], 0.0)  # no image before: no visual input
        return self.to_out(_merge_heads(attn @ v))

    def project(self, media: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of every image, (M * T_img, h, n, d): computed once per generation."""
        return project_media(self.to_kv, media, self.heads)

    def per_image(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], n_images: int,
                  text_time: torch.Tensor, media_rows: torch.Tensor | None = None) -> torch.Tensor:
        """The same result as :meth:`forward`, each token scored against its own image's latents only."""
        q = self.to_q(self.norm(x))
        q = q.view(*q.shape[:2], self.heads, -1)
        out = per_image_attention(q, kv[0], kv[1], text_time, n_images, media_rows, self.scale)
        return self.to_out(out)


class GatedCrossAttentionBlock(nn.Module):
    """tanh-gated cross-attention and feed-forward, inserted before an LM decoder layer."""

    def __init__(self, dim: int, dim_visual: int, dim_head: int = 64, heads: int = 8, ff_mult: int = 4):
        super().__init__()
        self.attn = MaskedCrossAttention(dim, dim_visual, dim_head, heads)
        self.attn_gate = nn.Parameter(torch.tensor([0.0]))
        self.ff = feed_forward(dim, ff_mult)
        self.ff_gate = nn.Parameter(torch.tensor([0.0]))

    def forward(self, x: torch.Tensor, media: torch.Tensor, text_time: torch.Tensor) -> torch.Tensor:
        """Masked cross-attention over all of ``media`` (B, T_img, n, Dv), one media row per batch row."""
        return self._gated(x, self.attn(x, media, text_time))

    def forward_per_image(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], n_images: int,
                          text_time: torch.Tensor, media_rows: torch.Tensor | None = None) -> torch.Tensor:
        """Per-image cross-attention over keys/values from ``self.attn.project``."""
        return self._gated(x, self.attn.per_image(x, kv, n_images, text_time, media_rows))

    def _gated(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        x = attended * self.attn_gate.tanh() + x
        return self.ff(x) * self.ff_gate.tanh() + x
