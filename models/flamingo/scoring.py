"""Shared-prefix log-likelihood scoring: rank many candidates after one prompt.

A close-ended query (1,000 ImageNet class names, 100 VisDial answers) scores every
candidate after the same prompt (demos + query). The naive way runs the whole prompt
once per candidate. Here the prompt runs once, its key/values are kept, and the
candidates run in batches on top of copies of them:

- a candidate's first token is scored from the prompt's last logits, so a one-token
  candidate costs no forward pass at all;
- the remaining tokens run with the prompt's cache (positions continue after the prompt);
- per-media masking: candidate tokens follow the query's media item and attend only to it,
  so only that item's visual tokens go with the batch (the masked ones add exactly zero).

``benchmarks/prefix_scoring.py`` measures the speed-up against the naive path and checks the
log-likelihoods agree.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Sequence

import torch

if TYPE_CHECKING:
    from .model import FlamingoModel


@torch.inference_mode()
def shared_prefix_loglikelihoods(model: "FlamingoModel", prompt_ids: Sequence[int], media: torch.Tensor,
                                 continuations: Sequence[Sequence[int]], batch_size: int = 64) -> list[float]:
    """Sum of log p(continuation tokens | prompt) for each continuation, the prompt computed once.

    ``media``: the prompt's visual tokens (M, L, D) in ``<image>`` order (M may be 0).
    """
    if not continuations:
        return []
    device = model.device
    ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)
    n_media = int((ids == model.media_token_id).sum())
    batch_media = media[None].to(device) if n_media else None
    out = model(ids, batch_media, use_cache=True)
    first_logp = out.logits[0, -1].float().log_softmax(-1)
    prefix_cache, prefix_len = out.past_key_values, ids.shape[1]
    # Candidate tokens attend only to the last media item before them (the query's).
    last_media = batch_media[:, n_media - 1 : n_media] if n_media else None
    offset_value = 1 if n_media else 0

    results = [0.0] * len(continuations)
    longer = []
    for i, cont in enumerate(continuations):
        if len(cont):
            results[i] = float(first_logp[cont[0]])
        if len(cont) > 1:
            longer.append(i)
    longer.sort(key=lambda i: len(continuations[i]))  # similar lengths batch together: less padding
    for start in range(0, len(longer), batch_size):
        rows = longer[start : start + batch_size]
        b = len(rows)
        width = max(len(continuations[i]) for i in rows) - 1
        inputs = torch.full((b, width), model.pad_token_id, dtype=torch.long, device=device)
        mask = torch.zeros((b, prefix_len + width), dtype=torch.long, device=device)
        mask[:, :prefix_len] = 1
        for r, i in enumerate(rows):
            toks = continuations[i][:-1]  # the last token is only ever a target
            inputs[r, : len(toks)] = torch.tensor(toks, device=device)
            mask[r, prefix_len : prefix_len + len(toks)] = 1  # right padding: real tokens never see it
        cache = copy.deepcopy(prefix_cache)
        cache.batch_repeat_interleave(b)
        step_media = last_media.expand(b, *last_media.shape[1:]) if last_media is not None else None
        offset = torch.full((b,), offset_value, dtype=torch.long, device=device)
        logp = model(inputs, step_media, mask, past_key_values=cache, media_offset=offset,
                     use_cache=True).logits.float().log_softmax(-1)
        for r, i in enumerate(rows):
            targets = torch.tensor(continuations[i][1:], device=device)
            results[i] += float(logp[r, : len(targets)].gather(-1, targets[:, None]).sum())
    return results
