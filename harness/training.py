"""Evaluate during training: a plain function for custom loops and a Hugging Face ``TrainerCallback``.

Both evaluate the model as it is in memory (no save/reload) on a fixed small subset (``limit``:
the first N eval examples, the same at every step; the demos are a pure function of the seed), keep
each evaluation's results under ``<output>/step-<N>/`` (the CLI's layout inside) and log the metrics
with the step::

    from harness.training import evaluate_step, HarnessCallback

    for step, batch in enumerate(loader, 1):                      # a custom loop
        ...
        if step % 500 == 0:
            evaluate_step(model, step, "evals", tasks="easyvqa", shots=[0, 4], seeds=[0], limit=200)

    trainer = Trainer(..., callbacks=[HarnessCallback(every=500, tasks="easyvqa", shots=[0, 4], limit=200,
                                                      log_to="wandb")])

The model is evaluated in eval mode and put back in the mode it was in.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from harness.errors import HarnessError
from harness.model import Model

log = logging.getLogger(__name__)


def adapter_for(model: Any, processor: Any = None) -> Model:
    """A harness adapter around an in-memory model: a Model as is; a ``FlamingoModel`` through
    ``Flamingo.from_module``; a transformers model with its ``processor`` through ``HF.from_objects``."""
    if isinstance(model, Model):
        return model
    from models.flamingo.model import FlamingoModel

    if isinstance(model, FlamingoModel):
        from models.flamingo.adapter import Flamingo

        return Flamingo.from_module(model)
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a requirement
        PreTrainedModel = ()
    if isinstance(model, PreTrainedModel):
        if processor is None:
            raise HarnessError(f"a {type(model).__name__} needs its processor to be evaluated (processor=...)")
        from models.hf import HF

        return HF.from_objects(model, processor)
    raise HarnessError(f"cannot evaluate a {type(model).__name__}: pass a Model adapter, a FlamingoModel, a "
                       f"transformers model with its processor, or adapter=<function module -> adapter>")


def evaluate_step(model: Any, step: int, output: str | Path, *, processor: Any = None,
                  adapter: Callable[[Any], Model] | None = None, tasks: str | Sequence[str] = "easyvqa",
                  shots: Sequence[int] = (0,), seeds: Sequence[int] = (0,), limit: int | None = 100,
                  label: str | None = None, log_to: Any = None, **kwargs: Any) -> pd.DataFrame:
    """Evaluate ``model`` as it is now; results in ``<output>/step-<step>/``; metrics logged with
    ``step`` (``log_to``: names or Logger instances, see harness.loggers; names make new loggers at
    each call, which join an active W&B / MLflow run: without one, build them once with
    ``make_loggers`` and pass them, so every step goes to one run). Returns the tidy cells (with a
    ``step`` column). Other keyword arguments go to :func:`harness.api.evaluate`."""
    from harness.api import evaluate
    from harness.store.layout import step_dir

    if not isinstance(step, int) or step < 0:
        raise HarnessError(f"evaluate_step: step must be an integer >= 0, got {step!r}")
    module = getattr(model, "module", model) if not isinstance(model, Model) else None  # DDP-wrapped
    was_training = getattr(module, "training", None)
    try:
        harness_model = adapter(module) if adapter is not None else adapter_for(module if module is not None else model,
                                                                                  processor)
        df = evaluate(harness_model, tasks=tasks, shots=shots, seeds=seeds, limit=limit,
                      output=step_dir(Path(output), step), label=label or harness_model.name,
                      log_to=log_to, step=step, **kwargs)
    finally:
        if was_training:
            module.train()
    df = df.assign(step=step)
    primary = df[df["primary"]].groupby(["task", "shots"])["value"].mean()
    log.info("step %d: %s", step, ", ".join(f"{t} {s}-shot {v:.2f}" for (t, s), v in primary.items()))
    return df


def _trainer_callback_base():
    try:
        from transformers import TrainerCallback
    except ImportError:  # pragma: no cover
        return object
    return TrainerCallback


class HarnessCallback(_trainer_callback_base()):
    """Evaluate every ``every`` optimizer steps (and at the end of training, ``at_end``) with
    :func:`evaluate_step`; results under ``<output>/step-N/`` (default ``<args.output_dir>/harness``).
    The metrics go into the Trainer's ``state.log_history`` (``eval/<task>/<shots>shot/<metric>``,
    mean over seeds, with ``step``) and to ``log_to``'s trackers. Only the main process evaluates."""

    def __init__(self, every: int, *, output: str | Path | None = None, at_end: bool = True,
                 processor: Any = None, adapter: Callable[[Any], Model] | None = None, log_to: Any = None,
                 **evaluate_kwargs: Any):
        from harness.loggers import logger_names

        if not isinstance(every, int) or every <= 0:
            raise HarnessError(f"HarnessCallback: every must be a positive number of steps, got {every!r}")
        logger_names(log_to)  # an unknown or missing logger fails now, not at the first evaluation
        self.every, self.output, self.at_end = every, output, at_end
        self.processor, self.adapter, self.log_to = processor, adapter, log_to
        self.kwargs = evaluate_kwargs
        self.loggers = None
        self.evaluated: list[int] = []

    def _evaluate(self, args, state, model, processing_class=None):
        from harness.loggers import make_loggers

        step = state.global_step
        if step in self.evaluated or not state.is_world_process_zero:
            return
        output = Path(self.output) if self.output is not None else Path(args.output_dir) / "harness"
        if self.loggers is None:
            self.loggers = make_loggers(self.log_to, output)
        df = evaluate_step(model, step, output, processor=self.processor or processing_class, adapter=self.adapter,
                           log_to=self.loggers, **self.kwargs)
        self.evaluated.append(step)
        means = df.groupby(["task", "shots", "metric"])["value"].mean()
        entry = {f"eval/{t}/{s}shot/{m}": float(v) for (t, s, m), v in means.items()}
        state.log_history.append({**entry, "step": step})

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if state.global_step % self.every == 0:
            self._evaluate(args, state, model, processing_class)
        return control

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.at_end:
            self._evaluate(args, state, model, processing_class)
        for logger in self.loggers or []:
            logger.close()
        self.loggers = None
        return control
