"""Experiment-tracker loggers (optional extras): ``--log-to wandb,mlflow,tensorboard``.

Each logs every evaluated cell's metrics (``<label>/<task>/<shots>shot/<metric>`` per seed and
``.../mean`` over seeds) with the training step, and the run's configuration:

- ``wandb``: into the active run if there is one (e.g. the Trainer's; the step is then logged as
  ``harness/step``, the eval metrics' x-axis, since that run keeps its own step), else a new run in
  ``<output>/wandb``; ``WANDB_MODE=offline`` writes it locally (``wandb sync`` uploads later).
- ``mlflow``: into the active run, else a new run; tracking URI ``$MLFLOW_TRACKING_URI``, else a
  local file store ``<output>/mlruns`` (``mlflow ui --backend-store-uri <output>/mlruns``). The
  configuration of each evaluation is a JSON artifact ``harness/step-N.json``.
- ``tensorboard``: event files in ``<output>/tensorboard`` (``tensorboard --logdir``), config as text.

The packages are pinned in requirements.txt (optional for the harness itself: a logger whose package
is missing is refused, naming the fix, before anything is evaluated).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from harness.errors import HarnessError

log = logging.getLogger(__name__)

#: logger name -> the module it needs.
PACKAGES = {"wandb": "wandb", "mlflow": "mlflow", "tensorboard": "tensorboard"}


def metric_values(cells: pd.DataFrame) -> dict[str, float]:
    """Every cell's metrics as ``label/task/Kshot/metric/seedS`` plus ``.../mean`` over seeds."""
    out: dict[str, float] = {}
    for (label, task, shots, metric), grp in cells.groupby(["label", "task", "shots", "metric"], sort=True):
        base = f"{label}/{task}/{shots}shot/{metric}"
        for seed, value in zip(grp["seed"], grp["value"]):
            out[f"{base}/seed{seed}"] = float(value)
        out[f"{base}/mean"] = float(grp["value"].mean())
    return out


class Logger:
    name = ""

    def __init__(self, output: Path):
        self.output = Path(output)

    def log_cells(self, cells: pd.DataFrame, step: int | None, config: dict[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """End what this logger started (a run it opened); an outside run is left open."""


class WandbLogger(Logger):
    name = "wandb"

    def __init__(self, output: Path):
        super().__init__(output)
        self.run = None
        self.owned = False

    def log_cells(self, cells, step, config):
        import wandb

        if self.run is None:
            self.run = wandb.run
            if self.run is None:
                d = self.output / "wandb"
                d.mkdir(parents=True, exist_ok=True)
                try:
                    self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "harness"), dir=str(self.output),
                                          name=config.get("label"), config={"harness": _jsonable(config)})
                except wandb.errors.UsageError as exc:  # not logged in, no tty: say how, not a traceback
                    raise HarnessError(f"--log-to wandb: {exc}; run `wandb login`, or set WANDB_MODE=offline to "
                                       f"write the run under {d} (`wandb sync` uploads it later)") from None
                self.owned = True
        if not self.owned or step is not None:
            self.run.config.update({"harness": _jsonable(config)}, allow_val_change=True)
        values = {f"eval/{k}": v for k, v in metric_values(cells).items()}
        if self.owned:
            self.run.log(values, step=step)
        else:
            # Another's run (the Trainer's) advances its own step; a step below it would be dropped, so
            # the evaluation's step goes in as harness/step, the x-axis of the eval/ metrics.
            self.run.define_metric("harness/step")
            self.run.define_metric("eval/*", step_metric="harness/step")
            self.run.log({**values, "harness/step": step if step is not None else 0})

    def close(self):
        if self.owned and self.run is not None:
            self.run.finish()
        self.run, self.owned = None, False


class MLflowLogger(Logger):
    name = "mlflow"

    def __init__(self, output: Path):
        super().__init__(output)
        self.owned = False
        self.run_id = None

    def log_cells(self, cells, step, config):
        import mlflow

        try:
            if self.run_id is None:
                if not os.environ.get("MLFLOW_TRACKING_URI") and mlflow.active_run() is None:
                    store = (self.output / "mlruns").resolve()
                    store.parent.mkdir(parents=True, exist_ok=True)  # the store makes its own folder
                    # MLflow 3 keeps the file store in maintenance mode behind this opt-in; it is the
                    # one local store that needs no database (MLFLOW_TRACKING_URI picks another)
                    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
                    mlflow.set_tracking_uri(store.as_uri())
                active = mlflow.active_run()
                if active is None:
                    active = mlflow.start_run(run_name=config.get("label"))
                    self.owned = True
                self.run_id = active.info.run_id
            values = {_mlflow_key(f"eval/{k}"): v for k, v in metric_values(cells).items()}
            mlflow.log_metrics(values, step=step or 0, run_id=self.run_id)
            mlflow.log_dict(_jsonable(config), f"harness/step-{step if step is not None else 0}.json", run_id=self.run_id)
        except mlflow.exceptions.MlflowException as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise HarnessError(f"--log-to mlflow: {first} (tracking URI {mlflow.get_tracking_uri()}); the results are "
                               f"saved: rerun the same command to log them (finished cells are not recomputed)") from None

    def close(self):
        import mlflow

        if self.owned:
            mlflow.end_run()
        self.owned, self.run_id = False, None


def _mlflow_key(key: str) -> str:
    """MLflow metric names allow letters, digits, ``_ - . / :`` and spaces."""
    return re.sub(r"[^A-Za-z0-9_\-./: ]", "_", key)


class TensorBoardLogger(Logger):
    name = "tensorboard"

    def __init__(self, output: Path):
        super().__init__(output)
        self.writer = None

    def log_cells(self, cells, step, config):
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.output / "tensorboard"))
        s = step or 0
        for key, value in metric_values(cells).items():
            self.writer.add_scalar(f"eval/{key}", value, global_step=s)
        self.writer.add_text("harness/config", "```\n" + json.dumps(_jsonable(config), indent=1) + "\n```", global_step=s)
        self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()
        self.writer = None


LOGGERS = {c.name: c for c in (WandbLogger, MLflowLogger, TensorBoardLogger)}


def logger_names(value: str | Sequence[str] | None) -> list[str]:
    """``"wandb,mlflow"`` or a list -> checked names: an unknown one, or one whose package is not
    installed, is a HarnessError naming the fix."""
    items = [value] if isinstance(value, str) else list(value or [])
    names = [n.strip() for v in items for n in str(v).split(",") if n.strip()]
    for n in names:
        if n not in LOGGERS:
            raise HarnessError(f"--log-to {n!r}: unknown logger; choose from {', '.join(LOGGERS)}")
        if importlib.util.find_spec(PACKAGES[n]) is None:
            raise HarnessError(f"--log-to {n}: the {PACKAGES[n]} package is not installed; "
                               f"pip install the version pinned in requirements.txt (pip install -r requirements.txt)")
    if len(set(names)) != len(names):
        raise HarnessError(f"--log-to {','.join(names)}: a logger is named twice")
    return names


def make_loggers(value: str | Sequence[Any] | None, output: Path) -> list[Logger]:
    """Loggers for ``value`` (names, or Logger instances passed through), writing under ``output``."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, Logger) for v in value):
        return list(value)
    return [LOGGERS[n](output) for n in logger_names(value)]


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def log_evaluation(loggers: Sequence[Logger], cells: pd.DataFrame, step: int | None, config: dict[str, Any]) -> None:
    """Send one evaluation's cells (one label) and its configuration to every logger."""
    for logger in loggers:
        logger.log_cells(cells, step=step, config=config)
        log.debug("logged %d metrics of %s to %s at step %s", len(cells), config.get("label"), logger.name, step)
