"""The Python API: ``harness.evaluate(model, tasks=..., shots=..., seeds=..., limit=..., output=...)``.

It runs the same sweep as ``run_eval.py run`` (same validation before any model loads, same
results folder, same resume and conflict rules) and returns the tidy results of the cells it
evaluated, as :func:`harness.reporting.report.load_results` gives them (one row per cell x metric).

``model`` is either a registered name (with ``model_args`` as ``--model-arg``) or an adapter
instance, e.g. one around a model in memory::

    from models.flamingo.adapter import Flamingo
    df = harness.evaluate(Flamingo.from_module(module), tasks="easyvqa", shots=[0, 4], seeds=[0], limit=100)

    from models.hf import HF
    df = harness.evaluate(HF.from_objects(model, processor), tasks="vqav2", data_dir="data")
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from harness.errors import HarnessError
from harness.model import Model

log = logging.getLogger(__name__)


def _names(value: str | Sequence[str]) -> list[str]:
    items = [value] if isinstance(value, str) else list(value)
    return [n.strip() for v in items for n in str(v).split(",") if n.strip()]


def _items(args: Mapping[str, Any] | Sequence[str] | None) -> list[str]:
    """``{"key": value}`` or ``["[target:]key=value", ...]`` -> the CLI's ``key=value`` items."""
    if args is None:
        return []
    if isinstance(args, Mapping):
        return [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in args.items()]
    return list(args)


@dataclass
class Request:
    """A checked evaluation request: its tasks (built, their data read) and sweep, no model yet."""

    tasks: list
    spec: Any
    model_items: list[str]
    label: str | None


def check_request(model: str | Model, tasks: str | Sequence[str], shots: Sequence[int] | None, seeds: Sequence[int],
                  limit: int | None, *, model_args=None, task_args=None, label: str | None = None,
                  data_dir: str | None = None, batch_size: int | str = 8, sample: int | None = None,
                  overwrite: bool = False) -> Request:
    """Every check :func:`evaluate` makes before a model loads (``watch`` makes them once, up front):
    names, shots, seeds, options, labels, the tasks' data and prompt sizes. Raises HarnessError."""
    from harness.cli import DEFAULT_SHOTS, _targeted, build_tasks
    from harness.suites import expand
    from harness.evaluation.sweep import SweepSpec
    from harness.evaluation.validate import (check_model_options, check_prompt_media, check_sweep_flags,
                                             check_task, max_images_per_prompt)
    from harness.registry import task_names
    from harness.plugins import load_builtins
    from harness.store.layout import check_label

    load_builtins()
    task_list = _names(tasks)
    if not task_list:
        raise HarnessError("evaluate: no task given (tasks='easyvqa' or a list of names)")
    expansion = expand(task_list, list(shots) if shots is not None else None, tuple(DEFAULT_SHOTS), task_names())
    shots = tuple(shots if shots is not None else DEFAULT_SHOTS)
    check_sweep_flags(shots, list(seeds), limit, batch_size, sample)
    if label is not None:
        check_label(label)
    items: list[str] = []
    if isinstance(model, Model):
        if model_args:
            raise HarnessError("evaluate: model_args apply to a model name; an adapter instance has its options")
        label = check_label(label or f"{model.name}@memory")
    elif isinstance(model, str):
        items = _items(model_args)
        options = check_model_options([model], _targeted(items, "model_args", [model]))
    else:
        raise HarnessError(f"evaluate: model must be a registered name or a harness Model adapter, "
                           f"got {type(model).__name__} (wrap a module: Flamingo.from_module, HF.from_objects)")
    tasks_built = build_tasks(list(expansion.tasks), _items(task_args), data_dir)
    for task in tasks_built:
        task_shots = expansion.shots.get(task.name, shots)
        check_task(task, task_shots, limit, sample)
        if isinstance(model, Model):
            for s in task_shots:
                type(model).check_prompt_images(model.options, max_images_per_prompt(task, s), f"{task.name} at {s} shots")
        else:
            check_prompt_media([model], options, task, task_shots)
    spec = SweepSpec(shots, tuple(seeds), limit, batch_size, task_shots=expansion.shots, sample=sample,
                     overwrite=overwrite)
    return Request(tasks_built, spec, items, label)


def evaluate(
    model: str | Model,
    tasks: str | Sequence[str] = "easyvqa",
    shots: Sequence[int] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    limit: int | None = None,
    output: str | Path = "results",
    *,
    model_args: Mapping[str, Any] | Sequence[str] | None = None,
    task_args: Mapping[str, Any] | Sequence[str] | None = None,
    label: str | None = None,
    data_dir: str | None = None,
    batch_size: int | str = 8,
    sample: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
    log_to: str | Sequence[str] | None = None,
    step: int | None = None,
) -> pd.DataFrame:
    """Evaluate ``model`` on every task x shots x seed cell; write the results folder ``output``
    exactly as ``run_eval.py run --output OUTPUT`` does; return the cells' tidy results.

    ``model``: a registered name (options in ``model_args``, a dict or ``key=value`` items) or a
    :class:`harness.model.Model` instance (e.g. ``Flamingo.from_module(m)``, ``HF.from_objects(m, p)``).
    ``tasks``: names or suites (comma string or list); ``shots``: default the CLI's (0 4 32, a
    suite's published shots). ``label``: the results' name (default as the CLI: ``name@<checkpoint
    folder>``; an instance: ``name@memory``). ``log_to``: ``"wandb,mlflow,tensorboard"`` (see
    harness.loggers), each cell's metrics logged with ``step``. Bad input raises
    :class:`harness.errors.HarnessError` before any model loads.
    """
    from harness.evaluation.sweep import run_sweep
    from harness.loggers import make_loggers

    # an unknown or missing logger fails before any work; Logger instances given are the caller's to close
    owned = not (isinstance(log_to, (list, tuple)) and log_to and not isinstance(log_to[0], str))
    loggers = make_loggers(log_to, Path(output))
    req = check_request(model, tasks, shots, seeds, limit, model_args=model_args, task_args=task_args, label=label,
                        data_dir=data_dir, batch_size=batch_size, sample=sample, overwrite=overwrite)
    if isinstance(model, Model):
        models = [(model, req.label)]
    else:
        from harness.cli import build_models

        models = build_models([model], req.model_items, [label] if label else None)
    tasks_built, spec = req.tasks, req.spec
    output = Path(output)
    try:
        run_sweep(models, tasks_built, spec, output, progress=progress)
        cells = log_sweep(loggers, output, models, tasks_built, spec, step)[models[0][1]]
    finally:
        if owned:
            for logger in loggers:
                logger.close()
    return cells


def log_sweep(loggers, output: Path, models, tasks, spec, step: int | None) -> dict[str, pd.DataFrame]:
    """Each model's cells of this sweep (label -> tidy rows), sent to ``loggers`` with ``step`` and the
    configuration (``run --log-to``, the API's ``log_to``, ``watch``)."""
    from harness.loggers import log_evaluation

    out = {}
    for model, label in models:
        cells = out[label] = results_of(output, label, tasks, spec)
        if loggers:
            config = {"label": label, "model": model.config(), "tasks": [t.name for t in tasks],
                      "shots": list(spec.shots), "seeds": list(spec.seeds), "limit": spec.limit,
                      "sample": spec.sample, "output": str(output), "step": step}
            log_evaluation(loggers, cells, step, config)
    return out


def results_of(output: Path, label: str, tasks, spec) -> pd.DataFrame:
    """The tidy rows (as load_results) of exactly the cells of this sweep under ``output``."""
    from harness.evaluation.sweep import _shots
    from harness.reporting.report import load_results
    from harness.store.layout import cell_dir

    files = {str(cell_dir(output, label, t.name, s, seed) / "metrics.json")
             for t in tasks for s in _shots(spec, t) for seed in spec.seeds}
    df = load_results([output])
    return df[df["file"].isin(files)].reset_index(drop=True)
