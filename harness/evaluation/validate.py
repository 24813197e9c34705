"""Validation before work: every flag, every task's data and options, every shot count against
every support set, and the models' options, all checked before any model is constructed.

A mistake found here costs a second, not a model load (minutes for a large model) or the
cells that ran before it. Each check raises a HarnessError naming the thing and the fix.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from harness.errors import DataError, HarnessError
from harness.devices import resolve_device
from harness.options import build_options
from harness.registry import get_model_class
from harness.sampling import RandomSampler
from harness.task import Task

log = logging.getLogger(__name__)


def check_sweep_flags(shots: Sequence[int], seeds: Sequence[int], limit: int | None, batch_size: int | str,
                      sample: int | None = None) -> None:
    """--shots, --seeds, --limit, --sample and --batch-size: in range and without repeats (the one check
    of each, for the command line, ``harness.evaluate`` and ``watch``; the run path trusts them)."""
    bad = [s for s in shots if s < 0]
    if bad:
        raise HarnessError(f"--shots {bad[0]}: shot counts must be >= 0")
    for flag, values in (("--shots", shots), ("--seeds", seeds)):
        dup = sorted({v for v in values if list(values).count(v) > 1})
        if dup:
            raise HarnessError(f"{flag} {' '.join(map(str, values))}: {dup[0]} is given twice; give each once")
    if limit is not None and limit <= 0:
        raise HarnessError(f"--limit {limit}: must be a positive number of eval examples")
    if sample is not None and sample <= 0:
        raise HarnessError(f"--sample must be positive, got {sample}")
    if batch_size != "auto" and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise HarnessError(f"--batch-size {batch_size}: must be an integer >= 1 or auto")


def check_task(task: Task, shots: Sequence[int], limit: int | None = None, sample: int | None = None) -> None:
    """Both splits read (every data-file error surfaces now); every shot count (and the zero-shot
    text demos) fits the support set. The task's options were range-checked when they were built
    (``TaskOptions``)."""
    support = task.support_examples()
    evals = task.eval_examples()
    if not evals:
        raise DataError(f"task {task.name}: the eval split {task.eval_split!r} is empty")
    sampler = RandomSampler(task.name, support, 0, task.options.support_size)
    queries = evals[:limit] if limit else evals
    if sample is not None and sample >= len(queries):
        log.warning("task %s: --sample %d is not smaller than the %d eval questions%s: every seed evaluates all of "
                    "them (the same queries)", task.name, sample, len(queries), f" (first {limit})" if limit else "")
    for s in shots:
        task.check_shots(s)  # a zero-shot-only benchmark refuses demos
        sampler.check_shots(s if s > 0 else task.zero_shot_demos(), queries)
    log.debug("task %s: %d support, %d eval examples%s", task.name, len(support), len(evals),
              f" (first {limit})" if limit else "")


def check_model_options(names: Sequence[str], options: dict[str, dict[str, str]]) -> dict[str, Any]:
    """Each model's --model-args parse into its Options (unknown keys, types), and a ``device``
    option names a device this machine has; without constructing any model. Returns the parsed
    options by model name."""
    parsed = {}
    for name in names:
        opts = parsed[name] = build_options(get_model_class(name).Options, options[name], f"model {name}")
        device = getattr(opts, "device", None)
        if isinstance(device, str):
            # checked as this process will use it: 'cuda' is this rank's GPU, 'auto' the CPU without CUDA
            resolved = resolve_device(device)
            if resolved != "cpu":
                check_device(resolved, f"model {name} option device", given=device)
    return parsed


def images_in(example) -> int:
    """Images an example's media make: one per image, a video's frames (fps sampling: its cap)."""
    from harness.data.video import selection_of
    from harness.types import Video

    return sum(selection_of(m).cap if isinstance(m, Video) else 1 for m in example.media)


def max_images_per_prompt(task: Task, shots: int) -> int:
    """Most images one prompt of ``task`` at ``shots`` can hold: the query's plus its demos' (the
    ``shots`` largest of the support set; zero-shot text demos carry none)."""
    query = _largest(task.eval_examples(), 1)
    if shots == 0:
        return query
    return query + _largest(task.support_examples(), shots)


def _largest(examples, n: int) -> int:
    """The images of the ``n`` examples with the most (all the same: without building them)."""
    same = getattr(examples, "media_per_example", None)
    if same is not None:
        return same * min(n, len(examples))
    return sum(sorted(map(images_in, examples), reverse=True)[:n])


def check_prompt_media(names: Sequence[str], options: dict[str, Any], task: Task, shots: Sequence[int]) -> None:
    """Each model refuses, before it loads, prompts of ``task`` it could never take (``max_images``)."""
    for s in shots:
        n = max_images_per_prompt(task, s)
        for name in names:
            get_model_class(name).check_prompt_images(options[name], n, f"{task.name} at {s} shots")


def check_device(device: str, where: str, given: str | None = None) -> None:
    """``device`` exists here; messages name the option as ``given`` (before resolve_device)."""
    import torch

    given = device if given is None else given
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise HarnessError(f"{where}={given!r}: not a device name; use cpu, cuda, cuda:1 or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise HarnessError(f"{where}={given!r}: no CUDA GPU is available here; use device=cpu")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            if given in ("cuda", "auto"):  # resolved to cuda:$LOCAL_RANK: one GPU per rank
                raise HarnessError(
                    f"{where}={given!r}: this is local rank {dev.index} of a launch but this machine has {n} "
                    f"CUDA device(s); start at most {n} process(es) per node (torchrun --nproc_per_node {n})")
            raise HarnessError(f"{where}={given!r}: this machine has {n} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise HarnessError(f"{where}={given!r}: MPS is not available here; use device=cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise HarnessError(f"{where}={given!r}: unsupported device type {dev.type!r}; use cpu, cuda or mps")
