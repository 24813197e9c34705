"""SDPA per row for left-padded batches: padding never costs the causal fast path.

With one unpadded prompt, transformers' ``sdpa`` attention passes no mask and ``is_causal=True``,
and the kernel never builds the (length x length) score matrix. Once a batch holds prompts of
different lengths, it is left-padded and the mask becomes a dense (batch, 1, q, k) tensor: SDPA then
takes its masked kernel, which at 32 shots (~2,000 tokens) made a batch of 8 slower per prompt than
8 prompts one by one (docs/speed.md, ``benchmarks/batching.py``).

``sdpa_rows`` is ``sdpa`` with one change. Its mask builder recognises the plain causal mask of a
left-padded prefill (no cache, no sliding window, no image spans or packing: transformers passes
its own ``causal_mask_function``) and remembers each row's padding for the mask tensor it returns.
Given that very tensor, the attention runs each row on its unpadded slice with ``is_causal=True``,
the call a batch of one makes; padded query positions get zeros (no real token attends to them).
Anything else (no mask, decode steps, other masks, a mask a model sliced or rebuilt) goes to
``sdpa`` unchanged, with the full mask, which is always built. Projections and MLPs still run on
the whole batch.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported when a model loads, not with the registry
    import torch

NAME = "sdpa_rows"

_registered = False
#: the masks this module built for left-padded prefills, newest last: (mask, each row's pad count)
_known: list[tuple[weakref.ref, list[int]]] = []


def register() -> None:
    """Make ``sdpa_rows`` an attention implementation transformers knows (idempotent)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    AttentionInterface.register(NAME, sdpa_rows_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_rows_mask)
    _registered = True


def use_row_attention(model: Any) -> bool:
    """Switch ``model`` (every sub-model on ``sdpa``) to ``sdpa_rows``; False where it is not on
    ``sdpa`` (eager, flash: left as they are) or cannot switch."""
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    register()
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # it warns for sub-configs without a sub-model (IDEFICS's vision_config)
    try:
        model.set_attn_implementation(NAME)
    except (ValueError, KeyError, AttributeError):
        return False
    finally:
        hf_logging.set_verbosity(level)
    return getattr(model.config, "_attn_implementation", None) == NAME


def left_pads(padding: "torch.Tensor | None", q_length: int, kv_length: int) -> list[int] | None:
    """Each row's count of left-pad tokens if ``padding`` (batch, kv_length; True = a real token)
    is left padding of a whole sequence (q_length == kv_length), with some padding; else None."""
    import torch

    if padding is None or padding.ndim != 2 or padding.shape[-1] != kv_length or q_length != kv_length:
        return None
    real = padding.to(torch.bool)
    if not bool(real[:, -1].all()) or bool((real[:, 1:].int() - real[:, :-1].int() < 0).any()):
        return None  # a row ends in padding, or has a gap: not left padding
    pads = (~real).sum(-1).tolist()
    return pads if any(pads) else None


def sdpa_rows_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
                   mask_function: Any = None, attention_mask: "torch.Tensor | None" = None,
                   local_size: int | None = None, **kwargs):
    """transformers' ``sdpa_mask``, remembering the padding of a left-padded causal prefill's mask."""
    from transformers.masking_utils import causal_mask_function, sdpa_mask

    import torch

    if mask_function is None:
        mask_function = causal_mask_function
    pads = None
    if mask_function is causal_mask_function and local_size is None and q_offset == 0 and kv_offset == 0 \
            and not kwargs.get("use_vmap"):
        pads = left_pads(attention_mask, q_length, kv_length)
    if pads is None or len(pads) != batch_size:
        return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                         kv_offset=kv_offset, mask_function=mask_function, attention_mask=attention_mask,
                         local_size=local_size, **kwargs)
    # sdpa_mask's result, in one broadcast (its generic builder gathers per element): kept for any
    # attention call that does not get this tensor as it is (then plain sdpa reads it)
    idx = torch.arange(q_length, device=attention_mask.device)
    mask = (idx[None, :] <= idx[:, None])[None, None] & attention_mask.to(torch.bool)[:, None, None, :]
    _known[:] = [k for k in _known if k[0]() is not None][-7:] + [(weakref.ref(mask), pads)]
    return mask


def pads_of(mask: "torch.Tensor | None") -> list[int] | None:
    """The row padding recorded for ``mask`` by :func:`sdpa_rows_mask`, if it built this very tensor."""
    if mask is None:
        return None
    return next((pads for ref, pads in reversed(_known) if ref() is mask), None)


def sdpa_rows_attention(module: Any, query: "torch.Tensor", key: "torch.Tensor", value: "torch.Tensor",
                        attention_mask: "torch.Tensor | None", **kwargs) -> tuple["torch.Tensor", None]:
    """transformers' attention interface: query (B, h, q, d), key/value (B, h_kv, k, d); returns
    (B, q, h, d) as ``sdpa_attention_forward`` does."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q_len = query.shape[2]
    pads = pads_of(attention_mask) if q_len > 1 and q_len == key.shape[2] else None
    if pads is None or len(pads) != query.shape[0]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    kwargs.pop("is_causal", None)
    out = query.new_zeros(query.shape[0], q_len, query.shape[1], value.shape[-1])
    for row, pad in enumerate(pads):
        if pad >= q_len:
            continue
        part, _ = sdpa_attention_forward(module, query[row : row + 1, :, pad:], key[row : row + 1, :, pad:],
                                         value[row : row + 1, :, pad:], None, is_causal=True, **kwargs)
        out[row, pad:] = part[0]
    return out, None
