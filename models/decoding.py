"""Greedy and beam-search decoding over a KV cache, token for token equal to Hugging Face's
``generate`` (transformers 5: ``GenerationMixin._sample`` and ``_beam_search``).

Shared by the models this project owns (``openflamingo``, ``flamingo``). A model supplies a
:class:`Decoder`: ``step`` feeds one token per row (``batch * num_beams`` rows, beams of a
prompt next to each other) and returns the next logits; ``reorder`` makes row ``i`` continue
the beam ``beam_idx[i]``. :func:`decode` runs the search with Hugging Face's arithmetic, op for
op where rounding or tie-breaking could differ (``log_softmax`` of float32 logits, the
processors after it, ``topk`` over ``num_beams * vocab`` candidates per prompt, the ``-1e9``
penalties, the length normalisation ``score / new_tokens ** length_penalty``, the early-stop
heuristic), so the same logits give the same tokens; tests/test_decoding.py checks it on
generated cases. What it leaves out is what Hugging Face spends outside the forward pass on
generality: logits-processor and stopping-criteria objects, input preparation per step, and
reordering the whole cache (here :func:`reorder_beams` moves only the generated positions:
beams of a prompt share its prompt's keys/values for the whole search).

Supported settings: ``num_beams`` (1 = greedy), ``max_new_tokens``, ``min_new_tokens``,
``length_penalty``, ``early_stopping`` (False, True, "never"), end tokens, suppressed tokens.
Anything else a checkpoint's ``generation_config`` asks for is refused by
:func:`check_generation_config` (use Hugging Face's generate for it).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Protocol

import torch


@dataclass(frozen=True)
class Search:
    """Decoding settings, with Hugging Face's meaning."""

    num_beams: int = 1
    max_new_tokens: int = 5
    min_new_tokens: int = 0
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    eos_ids: tuple[int, ...] = ()
    suppress_ids: tuple[int, ...] = ()
    pad_id: int | None = None

    def __post_init__(self):
        if self.num_beams < 1 or self.max_new_tokens < 0 or self.min_new_tokens < 0:
            raise ValueError(f"bad search settings: {self}")
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(f"early_stopping must be True, False or 'never', not {self.early_stopping!r}")


class Decoder(Protocol):
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed ``tokens`` (rows,), one per row; the logits (rows, vocab) of the next token."""

    def reorder(self, beam_idx: torch.Tensor) -> None:
        """Row ``i`` continues the cached state of row ``beam_idx[i]`` (a beam of the same prompt)."""


@dataclass
class Decoded:
    """``tokens`` (batch, n): the new tokens as Hugging Face returns them after the prompt (a row
    that ended early is padded with the fill value); ``lengths``: each row's own token count
    (its end token included)."""

    tokens: torch.Tensor
    lengths: list[int]

    def rows(self) -> list[list[int]]:
        return [row[:n] for row, n in zip(self.tokens.tolist(), self.lengths)]


@contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """Run torch ops on ``n`` intra-op threads inside the block.

    The search's bookkeeping is a few dozen ops on tensors of a few thousand numbers per step;
    some (``log_softmax``) open a parallel region whatever their size, and on a busy machine
    each such region waits for a descheduled worker thread: 8 ms instead of 12 us per call on
    2 threads beside one other busy process. One thread computes the same numbers (every op
    here works row by row)."""
    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if before != n:
            torch.set_num_threads(before)


class _ForwardThreads:
    """The decoder with the caller's thread count for its forward passes (the search runs on one)."""

    def __init__(self, decoder: Decoder, threads: int):
        self.decoder, self.threads = decoder, threads

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        with intra_op_threads(self.threads):
            return self.decoder.step(tokens)

    def reorder(self, beam_idx: torch.Tensor) -> None:
        self.decoder.reorder(beam_idx)


def decode(decoder: Decoder, logits: torch.Tensor, search: Search) -> Decoded:
    """Decode from ``logits`` (batch * num_beams, vocab), the next-token logits of every row
    (beams of a prompt start equal). Greedy when ``num_beams`` is 1, as Hugging Face does."""
    forward = _ForwardThreads(decoder, torch.get_num_threads())
    with intra_op_threads(1):
        if search.num_beams == 1:
            return _greedy(forward, logits, search)
        return _beam_search(forward, logits, search)


class _Masks:
    """The token masks the processors apply (built once per search, not per step)."""

    def __init__(self, search: Search, vocab: int, device: torch.device):
        vocab_ids = torch.arange(vocab, device=device)
        self.eos = torch.tensor(search.eos_ids, dtype=torch.long, device=device)
        self.eos_mask = torch.isin(vocab_ids, self.eos) if search.eos_ids else None
        suppress = torch.tensor(search.suppress_ids, dtype=torch.long, device=device)
        self.suppress_mask = torch.isin(vocab_ids, suppress) if search.suppress_ids else None
        self.min_new_tokens = search.min_new_tokens

    def apply(self, scores: torch.Tensor, step: int) -> torch.Tensor:
        """Hugging Face's MinNewTokensLengthLogitsProcessor, then SuppressTokensLogitsProcessor."""
        if self.eos_mask is not None and step < self.min_new_tokens:
            scores = torch.where(self.eos_mask, -float("inf"), scores)
        if self.suppress_mask is not None:
            scores = torch.where(self.suppress_mask, -float("inf"), scores)
        return scores

    def ends(self, tokens: torch.Tensor) -> torch.Tensor:
        if not len(self.eos):
            return torch.zeros_like(tokens, dtype=torch.bool)
        return torch.isin(tokens, self.eos)


def _greedy(decoder: Decoder, logits: torch.Tensor, search: Search) -> Decoded:
    """``GenerationMixin._sample`` without sampling: argmax of the processed logits; a finished
    row gets the pad token; stops when every row has ended or at ``max_new_tokens``."""
    rows, device = logits.shape[0], logits.device
    if search.eos_ids and search.pad_id is None:
        raise ValueError("greedy decoding with end tokens needs a pad token id")
    masks = _Masks(search, logits.shape[-1], device)
    unfinished = torch.ones(rows, dtype=torch.long, device=device)
    out: list[torch.Tensor] = []
    for step in range(search.max_new_tokens):
        scores = masks.apply(logits.float(), step)
        tokens = scores.argmax(dim=-1)
        if search.eos_ids:
            tokens = tokens * unfinished + search.pad_id * (1 - unfinished)
        out.append(tokens)
        unfinished = unfinished & ~masks.ends(tokens)
        if unfinished.max() == 0 or step + 1 == search.max_new_tokens:
            break
        logits = decoder.step(tokens)
    tokens = torch.stack(out, dim=1) if out else torch.zeros(rows, 0, dtype=torch.long, device=device)
    # a row's own length: up to and including its first end token
    ended = masks.ends(tokens)
    lengths = [int(r.nonzero()[0]) + 1 if r.any() else tokens.shape[1] for r in ended]
    return Decoded(tokens, lengths)


def _fill_value(search: Search) -> int:
    """What Hugging Face's beam search pads finished rows with (``pad or eos[0]``: a pad id 0 counts as unset)."""
    if not search.eos_ids:
        return -1
    return search.pad_id if search.pad_id else search.eos_ids[0]


def _gather(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``t[b, idx[b, k], ...]``: Hugging Face's ``_gather_beams``."""
    while idx.ndim < t.ndim:
        idx = idx.unsqueeze(-1)
    return torch.take_along_dim(t, idx, dim=1)


def _beam_search(decoder: Decoder, logits: torch.Tensor, search: Search) -> Decoded:
    """``GenerationMixin._beam_search`` (transformers 5), step for step; the sequences hold the
    new tokens only (the prompt part is the same in every beam and never read)."""
    nb, n_new, lp, early = search.num_beams, search.max_new_tokens, search.length_penalty, search.early_stopping
    batch, device = logits.shape[0] // nb, logits.device
    vocab = logits.shape[-1]
    masks = _Masks(search, vocab, device)
    keep = max(2, 1 + len(search.eos_ids)) * nb  # enough candidates for nb live beams after eos endings
    top_nb = torch.cat((torch.ones(nb, dtype=torch.bool), torch.zeros(keep - nb, dtype=torch.bool))).to(device)
    batch_offset = torch.arange(batch, device=device).view(-1, 1) * nb

    running = torch.full((batch, nb, n_new), _fill_value(search), dtype=torch.int64, device=device)
    sequences = running.clone()
    running_scores = torch.zeros((batch, nb), dtype=torch.float, device=device)
    running_scores[:, 1:] = -1e9  # only the first beam expands at step one
    beam_scores = torch.full((batch, nb), -1e9, dtype=torch.float, device=device)
    finished = torch.zeros((batch, nb), dtype=torch.bool, device=device)
    improvable = torch.ones((batch, 1), dtype=torch.bool, device=device)
    running_idx = torch.full((batch, nb, n_new), -1, dtype=torch.int32, device=device)
    beam_indices = running_idx.clone()
    identity = torch.arange(batch * nb, device=device)

    for step in range(n_new):
        log_probs = masks.apply(torch.log_softmax(logits.float(), dim=-1), step)
        log_probs = (log_probs.view(batch, nb, vocab) + running_scores[:, :, None]).reshape(batch, -1)

        # top-k continuations over all beams of a prompt
        topk_scores, topk_idx = torch.topk(log_probs, k=keep)
        topk_beam = topk_idx // vocab
        topk_tokens = topk_idx % vocab
        topk_running = _gather(running, topk_beam)
        topk_running[:, :, step] = topk_tokens
        topk_running_idx = _gather(running_idx, topk_beam)
        topk_running_idx[:, :, step] = (topk_beam + batch_offset).to(torch.int32)
        hits = masks.ends(topk_tokens)
        if step + 1 >= n_new:  # MaxLengthCriteria: every candidate ends here
            hits = torch.ones_like(hits)

        # the best nb candidates that did not end continue
        live_scores = topk_scores + hits.to(torch.float32) * -1.0e9
        next_idx = torch.topk(live_scores, k=nb)[1]
        running = _gather(topk_running, next_idx)
        running_scores = _gather(live_scores, next_idx)
        running_idx = _gather(topk_running_idx, next_idx)

        # candidates among the top nb that ended join the finished ones if they beat them
        just_ended = hits & top_nb[None, :]
        ended_scores = topk_scores / ((step + 1) ** lp)
        full = torch.all(finished, dim=-1, keepdim=True) & (early is True)
        ended_scores += full.to(torch.float32) * -1.0e9
        ended_scores += (~improvable).to(torch.float32) * -1.0e9
        ended_scores += (~just_ended) * -1.0e9
        merged_scores = torch.cat((beam_scores, ended_scores), dim=1)
        best = torch.topk(merged_scores, k=nb)[1]
        sequences = _gather(torch.cat((sequences, topk_running), dim=1), best)
        beam_scores = _gather(merged_scores, best)
        beam_indices = _gather(torch.cat((beam_indices, topk_running_idx), dim=1), best)
        finished = _gather(torch.cat((finished, just_ended), dim=1), best)

        # Hugging Face's stopping rule (over the whole batch)
        n_done = step + 1
        hyp_len = n_new if early == "never" and lp > 0.0 else n_done
        best_possible = running_scores[:, :1] / (hyp_len ** lp)
        worst_finished = torch.where(finished, torch.min(beam_scores, dim=1, keepdim=True)[0], -1.0e9)
        improvable = improvable & torch.any(best_possible > worst_finished, dim=-1, keepdim=True)
        go_on = bool(torch.any(improvable)) and not (bool(torch.all(finished)) and early is True) \
            and not bool(torch.all(hits))
        if not go_on:
            break
        beam_idx = running_idx[:, :, step].reshape(-1).long()
        if not torch.equal(beam_idx, identity):
            decoder.reorder(beam_idx)
        logits = decoder.step(running[:, :, step].reshape(-1))

    best_indices = beam_indices[:, 0]
    lengths = (best_indices + 1).bool().sum(dim=1)
    width = int(lengths.max()) if batch else 0
    return Decoded(sequences[:, 0, :width], lengths.tolist())


def reorder_beams(cache: Any, beam_idx: torch.Tensor, start: int) -> None:
    """Reorder a Hugging Face KV cache for beam search, moving only positions ``start`` onward.

    Beams of a prompt hold the same keys/values for the prompt (positions before ``start``:
    computed once and repeated to the beams), so only the positions the beams computed
    themselves differ; ``beam_idx`` only ever picks beams of the same prompt. A plain
    ``DynamicLayer`` is permuted in place there; any other layer kind (sliding window,
    quantized ...) is reordered whole, as Hugging Face does."""
    from transformers.cache_utils import DynamicLayer

    for layer in cache.layers:
        if type(layer) is DynamicLayer and layer.is_initialized and layer.keys.ndim == 4:
            for t in (layer.keys, layer.values):
                tail = t[:, :, start:]
                tail.copy_(tail.index_select(0, beam_idx))
        else:
            layer.reorder_cache(beam_idx)


class LMDecoder:
    """Steps a Hugging Face causal LM one token per row over its KV cache, with the inputs
    Hugging Face's generate gives it: the 2D mask grown by a column per step (``None`` when the
    prompt had no padding: generate drops an all-ones mask), positions counted on from the
    last fed token (``None``: an LM that takes no positions), ``logits_to_keep=1``. ``mask`` and
    ``positions`` describe the first token :meth:`step` will feed; cache positions before ``shared``
    are the prompt's, the same in every beam."""

    def __init__(self, lm: Any, cache: Any, mask: torch.Tensor | None, positions: torch.Tensor | None, shared: int,
                 extra: dict[str, Any] | None = None):
        self.lm, self.cache, self.mask, self.positions, self.shared = lm, cache, mask, positions, shared
        self.extra = extra or {}

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = {} if self.positions is None else {"position_ids": self.positions}
        out = self.lm(input_ids=tokens[:, None], attention_mask=self.mask, past_key_values=self.cache, use_cache=True,
                      **positions, **self.extra)
        self.cache = out.past_key_values
        if self.positions is not None:
            self.positions = self.positions + 1
        if self.mask is not None:
            self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=-1)
        return out.logits[:, -1]

    def reorder(self, beam_idx: torch.Tensor) -> None:
        reorder_beams(self.cache, beam_idx, self.shared)


def search_from_hf(lm: Any, kwargs: dict[str, Any], model: str) -> Search:
    """The search Hugging Face's ``lm.generate(**kwargs)`` runs: ``kwargs`` over the LM's
    ``generation_config`` over Hugging Face's defaults. A setting :func:`decode` does not
    implement is a HarnessError naming it."""
    from harness.errors import HarnessError

    check_generation_config(lm, model)
    gc = getattr(lm, "generation_config", None)

    def get(name: str, default: Any) -> Any:
        value = kwargs[name] if name in kwargs else getattr(gc, name, None)
        return default if value is None else value

    if get("do_sample", False):
        raise HarnessError(f"model {model}: sampling is not implemented by the built-in search; use beam_search=hf")
    eos = get("eos_token_id", ())
    eos = (eos,) if isinstance(eos, int) else tuple(eos)
    pad = get("pad_token_id", None)
    num_beams = get("num_beams", 1)
    return Search(num_beams=num_beams, max_new_tokens=kwargs["max_new_tokens"],
                  min_new_tokens=get("min_new_tokens", 0), length_penalty=get("length_penalty", 1.0),
                  early_stopping=get("early_stopping", False), eos_ids=eos,
                  suppress_ids=tuple(get("suppress_tokens", ())), pad_id=eos[0] if pad is None and eos else pad)


#: generation_config fields that make Hugging Face's generate do something :func:`decode` does
#: not, with their neutral values.
_NEUTRAL = {
    "repetition_penalty": (None, 1.0), "encoder_repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,), "sequence_bias": (None,),
    "forced_bos_token_id": (None,), "forced_eos_token_id": (None,), "begin_suppress_tokens": (None,),
    "exponential_decay_length_penalty": (None,), "renormalize_logits": (None, False),
    "remove_invalid_values": (None, False), "min_length": (None, 0), "guidance_scale": (None, 1.0),
    "num_return_sequences": (None, 1), "stop_strings": (None,), "max_time": (None,),
    "watermarking_config": (None,), "prefill_chunk_size": (None,),
}


def check_generation_config(lm: Any, model: str) -> None:
    """Refuse a checkpoint whose ``generation_config`` asks Hugging Face's generate for
    something :func:`decode` does not do (repetition penalty, forced tokens ...)."""
    from harness.errors import HarnessError

    gc = getattr(lm, "generation_config", None)
    for name, neutral in _NEUTRAL.items():
        value = getattr(gc, name, None)
        if value not in neutral:
            raise HarnessError(f"model {model}: the LM's generation_config sets {name}={value!r}, which the built-in "
                               f"beam search does not implement; use --model-arg beam_search=hf")
