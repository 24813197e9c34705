"""Beam search over a KV cache, for Flamingo's language pass.

The prompt is run once (visual tokens attached through the cross-attention hooks,
their keys/values projected once); each step then feeds only the newly chosen
token of every beam. Beams of one prompt share its media row (``media_rows``), and
a media offset tells the hooks which image new tokens follow. Scores follow Hugging Face's beam search: sum of log-probs divided by
``length ** length_penalty``; a hypothesis ends at a stop token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .model import FlamingoModel


def beam_search(model: "FlamingoModel", input_ids: torch.Tensor, attention_mask: torch.Tensor,
                media: torch.Tensor | None, num_beams: int, max_new_tokens: int, min_new_tokens: int,
                length_penalty: float, stop_ids: set[int], banned_ids: set[int]) -> list[list[int]]:
    b, nb = input_ids.shape[0], max(1, num_beams)
    if max_new_tokens <= 0:
        return [[] for _ in range(b)]
    kv = model.media_kv(media)  # cross-attention keys/values: once per prompt for the whole search
    out = model(input_ids, media, attention_mask, use_cache=True, media_kv=kv, logits_to_keep=1)
    logits, cache = out.logits[:, -1], out.past_key_values

    # One row per beam from here on; beams share their prompt's media (and its keys/values).
    cache.batch_repeat_interleave(nb)
    media_rows = torch.arange(b, device=input_ids.device).repeat_interleave(nb)
    mask = attention_mask.repeat_interleave(nb, 0)
    offset = (input_ids == model.media_token_id).sum(1).repeat_interleave(nb, 0)
    logits = logits.repeat_interleave(nb, 0)
    scores = torch.full((b, nb), float("-inf"), device=input_ids.device)
    scores[:, 0] = 0.0  # all beams start equal: expand only the first, or the top-k repeats
    tokens: list[list[int]] = [[] for _ in range(b * nb)]
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(b)]
    done = [False] * b
    stop_list = sorted(stop_ids)

    for step in range(max_new_tokens):
        logp = logits.float().log_softmax(-1)
        if banned_ids:
            logp[:, sorted(banned_ids)] = float("-inf")
        if step < min_new_tokens:
            logp[:, stop_list] = float("-inf")
        vocab = logp.shape[-1]
        cand = (scores[:, :, None] + logp.view(b, nb, vocab)).view(b, -1)
        top_scores, top_idx = cand.topk(2 * nb, dim=1)
        top_scores, top_idx = top_scores.tolist(), top_idx.tolist()

        next_beam, next_token, next_score = [], [], []
        for row in range(b):
            kept = 0
            for rank, (s, idx) in enumerate(zip(top_scores[row], top_idx[row])):
                beam, tok = divmod(idx, vocab)
                src = row * nb + beam
                if done[row]:  # keep the row's shape; its beams are ignored
                    next_beam.append(src), next_token.append(tok), next_score.append(float("-inf"))
                    kept += 1
                elif tok in stop_ids:
                    if rank < nb and s > float("-inf"):
                        finished[row].append((s / (step + 1) ** length_penalty, tokens[src]))
                    continue
                elif s > float("-inf"):
                    next_beam.append(src), next_token.append(tok), next_score.append(s)
                    kept += 1
                if kept == nb:
                    break
            while kept < nb:  # fewer live candidates than beams (tiny vocab): pad with dead beams
                next_beam.append(row * nb), next_token.append(model.pad_token_id), next_score.append(float("-inf"))
                kept += 1
            if not done[row] and len(finished[row]) >= nb:
                best_live = max(next_score[-nb:]) / (step + 1) ** length_penalty
                worst_kept = sorted(f[0] for f in finished[row])[-nb]
                done[row] = best_live <= worst_kept

        tokens = [tokens[src] + [tok] for src, tok in zip(next_beam, next_token)]
        scores = torch.tensor(next_score, device=scores.device).view(b, nb)
        if all(done) or step == max_new_tokens - 1:
            break
        beam_idx = torch.tensor(next_beam, device=input_ids.device)
        cache.reorder_cache(beam_idx)
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        new = torch.tensor(next_token, device=input_ids.device)[:, None]
        out = model(new, media, mask, past_key_values=cache, media_offset=offset, use_cache=True, media_kv=kv,
                    media_rows=media_rows)
        logits, cache = out.logits[:, -1], out.past_key_values

    results = []
    for row in range(b):
        pool = list(finished[row])
        if not done[row]:  # ran out of tokens: live beams count as hypotheses
            length = len(tokens[row * nb])
            pool += [(float(scores[row, k]) / max(length, 1) ** length_penalty, tokens[row * nb + k])
                     for k in range(nb) if scores[row, k] > float("-inf")]
        results.append(max(pool, key=lambda x: x[0])[1] if pool else [])
    return results
