"""Per-image cross-attention, shared by the Flamingo-style models this project owns.

Flamingo's masking lets a text token attend only to the latents of the *last* media
item before it (``text_time``: 1-based index of that item, 0 when none precedes the
token, which then gets a zero update). The masked form scores every token against
the latents of *every* image and masks all but one away: L x T x n scores per row.
Here each run of tokens that follows one image is scored against that image's
latents only: L x n scores. It is the same softmax over the same keys, so the same
result up to float rounding (tests check 1e-5 in fp32).

Keys and values are projected once per image per layer (:func:`project_media`) and
reused for every call of a generation (prefill and each decode step).

``media_rows`` maps batch rows to media rows: beams of one prompt share its media,
so a batch of ``B * beams`` rows conditions on ``B`` media rows without copying them.
"""

from __future__ import annotations

import torch


def media_time(input_ids: torch.Tensor, media_token_id: int, offset: torch.Tensor | None = None) -> torch.Tensor:
    """``text_time`` of each token: the 1-based index of the last media token at or before it
    (0: none). ``offset`` (B,) counts media already seen in a cached prefix."""
    t = torch.cumsum(input_ids == media_token_id, dim=1)
    return t if offset is None else t + offset[:, None]


def project_media(to_kv: torch.nn.Module, media: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """media (M, T, n, Dv) -> keys, values (M * T, heads, n, d): one row per (media row, image)."""
    m, t, n = media.shape[:3]
    k, v = to_kv(media.reshape(m * t, n, -1)).chunk(2, dim=-1)
    return tuple(z.reshape(m * t, n, heads, -1).transpose(1, 2) for z in (k, v))  # type: ignore[return-value]


def media_rows_for(batch: int, media_batch: int, device: torch.device) -> torch.Tensor:
    """The media row of each of ``batch`` rows when rows are ``media_batch`` prompts, each
    repeated ``batch // media_batch`` times in a row (how beams are laid out)."""
    if media_batch <= 0 or batch % media_batch:
        raise ValueError(f"a batch of {batch} rows cannot share media of {media_batch} rows")
    return torch.arange(media_batch, device=device).repeat_interleave(batch // media_batch)


def per_image_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, text_time: torch.Tensor,
                        n_images: int, media_rows: torch.Tensor | None = None, scale: float = 1.0) -> torch.Tensor:
    """Each token's attention over the latents of its own image.

    q (B, L, h, d) queries; k, v (M * T, h, n, d) from :func:`project_media` (T = ``n_images``);
    text_time (B, L) non-decreasing per row (a running count of media tokens), 0..T;
    media_rows (B,) media row of each batch row (default: row b uses media row b).
    Returns (B, L, h * d); zero for tokens that follow no image.
    """
    b, length, h, d = q.shape
    out = q.new_zeros(b, length, h, d)
    if n_images == 0 or length == 0:
        return out.view(b, length, h * d)
    dev = q.device
    tt = text_time.contiguous()
    wanted = torch.arange(1, n_images + 1, device=dev, dtype=tt.dtype).expand(b, n_images).contiguous()
    starts = torch.searchsorted(tt, wanted)  # first token of each image's run
    lengths = torch.searchsorted(tt, wanted, right=True) - starts
    rows, imgs = (lengths > 0).nonzero(as_tuple=True)  # (row, image) pairs with tokens
    if rows.numel() == 0:
        return out.view(b, length, h * d)
    seg_len = lengths[rows, imgs]
    span = int(seg_len.max())
    offsets = torch.arange(span, device=dev)
    pos = (starts[rows, imgs][:, None] + offsets).clamp(max=length - 1)  # (N, S)
    valid = offsets[None, :] < seg_len[:, None]
    qs = q[rows[:, None], pos].transpose(1, 2)  # (N, h, S, d)
    mrow = rows if media_rows is None else media_rows[rows]
    flat = mrow * n_images + imgs
    if flat.numel() == k.shape[0] and bool((flat == torch.arange(k.shape[0], device=dev)).all()):
        ks, vs = k, v  # every image of every row has tokens (a prefill): no gather needed
    else:
        ks, vs = k.index_select(0, flat), v.index_select(0, flat)
    sim = (qs * scale) @ ks.transpose(-1, -2)  # (N, h, S, n)
    res = (sim.softmax(dim=-1) @ vs).transpose(1, 2)  # (N, S, h, d)
    out[rows[:, None].expand_as(pos)[valid], pos[valid]] = res[valid]
    return out.view(b, length, h * d)
