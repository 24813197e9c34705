"""Run the grid of cells (models x tasks x shots x seeds) and aggregate over seeds."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from .distributed import Group
from .metrics.stats import mean_std
from .model import Model
from .runner import CellSpec, Runner
from .store import safe_name, write_json
from .task import Task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepSpec:
    shots: tuple[int, ...] = (0, 4, 32)
    seeds: tuple[int, ...] = (0, 1, 2)
    limit: int | None = None
    batch_size: int = 8
    shard: tuple[int, int] | None = None
    #: per-task shots (suites' published shots); tasks not named here use ``shots``.
    task_shots: Mapping[str, tuple[int, ...]] | None = None
    sample: int | None = None


def run_sweep(
    models: Sequence[tuple[Model, str]],
    tasks: Sequence[Task],
    spec: SweepSpec,
    output: Path,
    progress: bool = True,
    group: Group | None = None,
) -> list[dict]:
    """Evaluate every cell; returns per-(label, task, shots) summaries and writes ``summary.json`` per label.

    With ``spec.shard`` set, only this process's share of each cell is evaluated and
    nothing is aggregated (an unsharded run of the same sweep merges the shards). With a torchrun
    ``group`` every rank evaluates its share of every cell and returns the summaries; rank 0 writes them.
    """
    summaries = []
    for model, label in models:
        runner = Runner(model, output, label, progress=progress, group=group)
        per_label = []
        for task in tasks:
            for shots in (spec.task_shots or {}).get(task.name, spec.shots):
                results = []
                for seed in spec.seeds:
                    res = runner.run_cell(task, CellSpec(shots, seed, spec.limit, spec.batch_size, spec.shard,
                                                            spec.sample))
                    if "metrics" not in res:
                        continue  # a shard's share: nothing to aggregate here
                    primary = res["metrics"][res["primary_metric"]]
                    log.info("%s %s %d-shot seed %d: %s = %.2f (n=%d)", label, task.name, shots, seed,
                             res["primary_metric"], primary, res["n"])
                    results.append(res)
                if not results:
                    continue
                values = [r["metrics"][r["primary_metric"]] for r in results]
                mean, std = mean_std(values)
                per_label.append({
                    "label": label,
                    "task": task.name,
                    "metric": results[0]["primary_metric"],
                    "shots": shots,
                    "seeds": list(spec.seeds),
                    "per_seed": values,
                    "mean": mean,
                    "std": std,
                    "n": results[0]["n"],
                    "n_failed": [r["n_failed"] for r in results],
                    "wall_time_s": sum(r["wall_time_s"] for r in results),
                })
        if per_label and (group is None or group.is_main):
            write_json(output / safe_name(label) / "summary.json", per_label)
        summaries.extend(per_label)
    return summaries
