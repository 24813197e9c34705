"""Run the grid of cells (models x tasks x shots x seeds) and aggregate over seeds."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from harness.launch.distributed import Group
from harness.model import Model
from harness.evaluation.runner import CellPlan, CellSpec, Runner
from harness.store.journal import CellConflict
from harness.store.layout import cell_dir as plan_dir
from harness.store.results import summary_row, write_label_summary
from harness.task import Task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepSpec:
    shots: tuple[int, ...] = (0, 4, 32)
    seeds: tuple[int, ...] = (0, 1, 2)
    limit: int | None = None
    batch_size: int | str = 8  # or "auto" (harness.evaluation.batch_size)
    shard: tuple[int, int] | str | None = None
    #: per-task shots (suites' published shots); tasks not named here use ``shots``.
    task_shots: Mapping[str, tuple[int, ...]] | None = None
    sample: int | None = None
    #: replace results of another configuration (else the sweep refuses before computing anything).
    overwrite: bool = False


def plan_sweep(runners: Sequence[Runner], tasks: Sequence[Task], spec: SweepSpec) -> dict[tuple, CellPlan]:
    """Every cell's plan, keyed (runner index, task, shots, seed), made once: the conflict check
    and the run use the same plan (its sampler, RICES features included, is built once)."""
    return {(i, task.name, shots, seed): runner.plan(task, _cell_spec(spec, shots, seed))
            for i, runner in enumerate(runners) for task in tasks for shots in _shots(spec, task)
            for seed in spec.seeds}


def check_conflicts(plans: Iterable[CellPlan], spec: SweepSpec) -> None:
    """Refuse, before any cell runs, if a cell folder holds results of another configuration."""
    if spec.overwrite:
        return
    conflicts = []
    for plan in plans:
        try:
            plan.journal.check_conflict()
        except CellConflict as exc:
            conflicts.append(str(exc))
    if conflicts:
        more = f" ({len(conflicts) - 1} more cells likewise)" if len(conflicts) > 1 else ""
        raise CellConflict(conflicts[0] + more)


def _cell_spec(spec: SweepSpec, shots: int, seed: int) -> CellSpec:
    return CellSpec(shots, seed, spec.limit, spec.batch_size, spec.shard, spec.sample, spec.overwrite)


def _shots(spec: SweepSpec, task: Task) -> tuple[int, ...]:
    return tuple((spec.task_shots or {}).get(task.name, spec.shots))


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
    nothing is aggregated (an unsharded run of the same sweep merges the shards).
    Cells another live process is working on are skipped at first and waited for at the
    end, so two runs into one output split the work instead of doing it twice. With a torchrun
    ``group`` every rank evaluates its share of every cell and returns the summaries; rank 0 writes them.
    """
    runners = [Runner(model, output, label, progress=progress, group=group) for model, label in models]
    plans = plan_sweep(runners, tasks, spec)
    check_conflicts(plans.values(), spec)
    for (i, *_), plan in plans.items():  # every cell's prompts against the context, before any query
        runners[i].check_context(plan)
    summaries = []
    for i, runner in enumerate(runners):
        label = runner.label
        grid = [(task, shots, seed) for task in tasks for shots in _shots(spec, task) for seed in spec.seeds]
        results: dict[tuple[str, int, int], dict[str, Any]] = {}
        busy = []
        for task, shots, seed in grid:
            res = runner.run_plan(plans[i, task.name, shots, seed], wait=False)
            if res is None:
                busy.append((task, shots, seed))
            else:
                results[(task.name, shots, seed)] = res
        for task, shots, seed in busy:  # held by another process: wait, then read its metrics
            results[(task.name, shots, seed)] = runner.run_plan(plans[i, task.name, shots, seed], wait=True)

        per_label = []
        for task in tasks:
            for shots in _shots(spec, task):
                cells = [results[(task.name, shots, seed)] for seed in spec.seeds]
                cells = [r for r in cells if "metrics" in r]  # a shard's share: nothing to aggregate here
                for seed, res in zip(spec.seeds, cells):
                    log.info("%s %s %d-shot seed %d: %s = %.2f (n=%d)", label, task.name, shots, seed,
                             res["primary_metric"], res["metrics"][res["primary_metric"]], res["n"])
                if not cells:
                    continue
                per_label.append(summary_row(label, task.name, shots, [
                    (seed, plan_dir(output, label, task.name, shots, seed), r) for seed, r in zip(spec.seeds, cells)]))
        if per_label and (group is None or group.is_main):
            # every finished cell of the label on disk, averaged as compare averages them (not only this run's)
            write_label_summary(output, label, [t.name for t in tasks])
        summaries.extend(per_label)
    return summaries
