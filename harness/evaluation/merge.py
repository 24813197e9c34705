"""``run_eval.py merge RESULTS``: finish independent shard runs without repeating their command.

Every shard journal sits beside the configuration that produced it
(``<cell>/shards/<config key>/config.json``). Merging rebuilds each cell's task from that
configuration (with the same ``--data-dir``/``--include`` as the run), checks that the shards
together hold a prediction for every query, and then lets the ordinary runner finish the cell
with a :class:`RecordedModel` standing in for the model: with nothing left to compute, the cell
is merged in eval order and scored exactly as the unsharded command would, and ``summary.json``
is written per label.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

from harness.errors import HarnessError
from harness.model import Model, NoOptions
from harness.registry import get_model_class, get_task_class
from harness.evaluation.runner import select_queries
from harness.store.journal import Journal
from harness.store.layout import cell_dir, read_json
from harness.evaluation.sweep import SweepSpec, run_sweep

log = logging.getLogger(__name__)


class RecordedModel(Model):
    """The model of a cell being merged, as its configuration recorded it; it computes nothing."""

    media_kinds = frozenset({"image", "video"})

    def __init__(self, config: dict[str, Any]):
        self.name = config["name"]
        self.options = NoOptions()
        self._config = config
        # Tasks pick their template by the model's style: the registered class still knows it.
        self.template_style = get_model_class(self.name).template_style

    def config(self) -> dict[str, Any]:
        return self._config

    def _missing(self, requests: Sequence[Any]) -> list:
        raise HarnessError(
            f"merge: {len(requests)} queries have no prediction and merge cannot compute them; the data "
            "(--data-dir) or plug-ins (--include) differ from the run's. Rerun the run's command without --shard"
        )

    generate = loglikelihood = _missing


def _shard_cells(paths: Iterable[str | Path]) -> list[tuple[Path, str, dict[str, Any]]]:
    cells = []
    for root in map(Path, paths):
        if not root.is_dir():
            raise HarnessError(f"merge: {root} is not a results folder")
        for f in sorted(root.rglob("shards/*/config.json")):
            try:
                rec = read_json(f)
                cells.append((f.parents[2], rec["config_key"], rec["config"]))
            except (OSError, json.JSONDecodeError, KeyError) as exc:
                raise HarnessError(f"merge: {f} is not a shard configuration ({exc})") from None
    return cells


def _output_of(cell: Path, config: dict[str, Any]) -> Path:
    """The --output folder a cell folder was written under."""
    for output in cell.parents:
        if cell_dir(output, config["label"], config["task"]["name"], config["shots"], config["seed"]) == cell:
            return output
    raise HarnessError(f"merge: {cell} is not where the results layout puts its cell")


def merge_results(paths: Sequence[str | Path], data_dir: str | None, progress: bool = True) -> list[dict]:
    """Merge every shard journal under ``paths``; returns the per-(label, task, shots) summaries."""
    cells = _shard_cells(paths)
    if not cells:
        raise HarnessError(f"merge: no shard journals (<cell>/shards/<key>/config.json) under {', '.join(map(str, paths))}"
                           "; nothing to merge")
    # One sweep per (output, label, model, limit): its tasks x shots x seeds grid.
    groups: dict[tuple, dict[str, Any]] = defaultdict(lambda: {"tasks": {}, "shots": set(), "seeds": set()})
    for cell, key, config in cells:
        _check_complete(cell, key, config, data_dir)
        gkey = (str(_output_of(cell, config)), config["label"], json.dumps(config["model"], sort_keys=True),
                config["limit"], config.get("sample"))
        g = groups[gkey]
        g["tasks"].setdefault(config["task"]["name"], config["task"])
        g["shots"].add(config["shots"])
        g["seeds"].add(config["seed"])
    summaries = []
    for (output, label, model_json, limit, sample), g in groups.items():
        tasks_cfg = list(g["tasks"].values())
        models = [(RecordedModel(json.loads(model_json)), label)]
        tasks = [_task(t, data_dir) for t in tasks_cfg]
        spec = SweepSpec(tuple(sorted(g["shots"])), tuple(sorted(g["seeds"])), limit, sample=sample)
        _check_grid(Path(output), label, tasks, spec)
        summaries.extend(run_sweep(models, tasks, spec, Path(output), progress=progress))
    return summaries


def _task(config: dict[str, Any], data_dir: str | None):
    cls = get_task_class(config["name"])
    if config.get("version", 1) != cls.version:
        raise HarnessError(f"merge: the shards of task {config['name']} were computed by its version "
                           f"{config.get('version', 1)}, the installed task is version {cls.version} (its outputs or "
                           f"scoring changed); rerun the run's command to compute the cells again")
    return cls(data_dir, config["options"])


def _check_complete(cell: Path, key: str, config: dict[str, Any], data_dir: str | None) -> None:
    queries = select_queries(_task(config["task"], data_dir), config["limit"], config.get("sample"), config["seed"])
    journal = Journal(cell, key, config)
    have = {r.query_id for r in journal.recorded()}
    missing = [q.id for q in queries if q.id not in have]
    if missing:
        shards = [p.stem for p in journal.shard_files()]
        raise HarnessError(
            f"merge: {cell}: {len(missing)} of {len(queries)} queries have no prediction yet (e.g. {missing[0]}; "
            f"shard journals: {', '.join(shards) or 'none'}); finish the missing shards (rerun the run's command with "
            "its --shard K/N, or its torchrun command, which resume), then merge again"
        )


def _check_grid(output: Path, label: str, tasks: list, spec: SweepSpec) -> None:
    """Every cell of the grid has shards or finished metrics: merge never starts a cell."""
    for task in tasks:
        for shots in spec.shots:
            for seed in spec.seeds:
                d = cell_dir(output, label, task.name, shots, seed)
                if not ((d / "metrics.json").is_file() or (d / "shards").is_dir()):
                    raise HarnessError(f"merge: {d} has neither shard journals nor results; the sweep's grid of "
                                       f"shots x seeds is incomplete there")
