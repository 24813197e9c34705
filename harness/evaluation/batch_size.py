"""``--batch-size auto``: the batch size a cell's own first batches show to be fastest.

A larger batch is not always faster per query: with left padding some attention paths fall back from
their causal fast path to a dense mask, and at 32 shots (thousands of prompt tokens) one forward of
8 padded prompts measured 1.5-1.8x the 8 prompts one by one (benchmarks/batching.py, docs/speed.md).
So ``auto`` tries sizes 1, 2, 4, 8, ... on the cell's first requests (longest prompts first, so a size
that fits them fits the rest), stops growing when a size is slower per prompt character than the one
before it or runs out of memory, and serves the rest of the cell with the fastest. Every trial batch's
outputs are kept (no work is thrown away), and the choice is recorded in the cell's metrics.json
(``batch_size``). Outputs do not depend on the choice as long as the model's outputs do not depend on
the batch (the harness's adapters left-pad, and benchmarks/batching.py checks equality).
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any, Callable, Sequence, Union

log = logging.getLogger(__name__)

AUTO = "auto"
BatchSize = Union[int, str]  # an int >= 1, or AUTO
#: the sizes ``auto`` tries, in order (it stops at the first that is slower than the one before)
CANDIDATES = (1, 2, 4, 8, 16, 32, 64)


def parse_batch_size(text: str) -> BatchSize:
    """``--batch-size``: an integer or ``auto`` (its range is checked with the other run flags,
    harness.evaluation.validate.check_sweep_flags)."""
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a batch size: give an integer >= 1 or auto") from None


def is_out_of_memory(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def run_auto(requests: Sequence[Any], call: Callable[[list[Any]], None], cost: Callable[[Any], int],
             candidates: Sequence[int] = CANDIDATES) -> dict[str, Any]:
    """Run ``call`` on every request, in order, in batches whose size is chosen as the module says.
    ``cost(request)``: its prompt's length, to compare batches of different prompts. Returns what was
    measured and chosen (for metrics.json)."""
    pos, per_char, chosen, tried = 0, {}, None, []

    def timed(batch: list[Any]) -> float:
        t0 = time.perf_counter()
        call(batch)
        return (time.perf_counter() - t0) / max(1, sum(cost(r) for r in batch))

    for size in candidates:
        trials = 2 if size == 1 else 1  # the first call also pays one-time warm-up: batch 1 gets a second try
        if pos + size * trials > len(requests):
            break
        try:
            results = []
            for _ in range(trials):
                results.append(timed(list(requests[pos : pos + size])))
                pos += size
        except RuntimeError as exc:
            if not is_out_of_memory(exc) or not per_char:
                raise
            log.info("batch size %d ran out of memory; it is not used", size)
            _free_memory()
            tried.append(size)
            break
        per_char[size] = min(results)
        tried.append(size)
        if len(per_char) > 1 and per_char[size] > per_char[tried[-2]]:
            break
    chosen = min(per_char, key=per_char.get) if per_char else 1
    for start in range(pos, len(requests), chosen):
        call(list(requests[start : start + chosen]))
    if per_char:
        log.info("--batch-size auto: %d (seconds per 1k prompt characters: %s)", chosen,
                 ", ".join(f"{s}: {v * 1000:.4f}" for s, v in per_char.items()))
    return {"chosen": chosen, "tried": tried,
            "seconds_per_1k_prompt_chars": {str(s): round(v * 1000, 6) for s, v in per_char.items()}}


def _free_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
