"""The results as a tidy long table: one row per (task, metric, checkpoint, shots), numbers only.

What ``compare --format csv|parquet``, the LaTeX table and the plots are made from::

    from harness.reporting.tidy import tidy, write_tidy
    df = tidy(["results/A", "results/B"])          # pandas DataFrame, numeric columns
    write_tidy(df, "table.parquet")                # or .csv

Columns (see :data:`COLUMNS`): ``mean`` over seeds, ``std`` over seeds (population, ddof=0, as
OpenFlamingo), ``ci_low``/``ci_high`` the 95% interval over queries of that mean (below), ``n``
queries per seed, ``ci_demos_low``/``ci_demos_high`` the 95% interval over queries AND demonstration
draws (seeds), the two-level bootstrap of harness.metrics.stats.two_level_interval (2+ seeds), ``seeds``, ``failed`` samples (all seeds), ``config_key`` (the configuration
without its seed: the cells averaged into the row) and where the row came from.

The interval: per query, its scores are averaged over the seeds (the seeds share the query, so
they are not independent samples), then the 95% interval of the mean of those per-query values,
as a cell's own ``<metric>_ci95`` (Wilson for scores in [0, 1], a percentile bootstrap otherwise;
docs/statistics.md). With one seed it is the cell's interval. It exists for a task's primary
metric where that metric is the mean of the per-sample scores in ``predictions.jsonl``; elsewhere
(breakdowns, corpus metrics such as ROC-AUC, suite rows) it is empty and ``ci_method`` says why.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from harness.errors import HarnessError
from harness.store.results import seeds_queries_interval

#: The tidy table's columns, in order.
COLUMNS = ["task", "metric", "checkpoint", "shots", "mean", "std", "ci_low", "ci_high", "n", "seeds", "failed",
           "config_key", "model", "label", "source", "primary", "ci_method", "ci_demos_low", "ci_demos_high"]


def tidy(paths: Sequence[str | Path], metrics: str = "primary", ci: bool = True) -> pd.DataFrame:
    """Every finished cell under ``paths``, averaged over seeds: one row per task, metric, checkpoint
    and shots (plus suite rows, harness.suites). ``metrics='all'`` keeps the breakdowns;
    ``ci=False`` skips reading the predictions (the interval columns stay empty)."""
    from harness.reporting.report import load_results

    return tidy_cells(load_results(paths), metrics=metrics, ci=ci)


def tidy_cells(cells: pd.DataFrame, metrics: str = "primary", ci: bool = True) -> pd.DataFrame:
    """:func:`tidy` from :func:`harness.reporting.report.load_results`'s cells."""
    from harness.suites import add_suite_rows

    if metrics not in ("primary", "all"):
        raise HarnessError(f"metrics={metrics!r}: primary or all")
    if metrics == "primary":
        cells = cells[cells["primary"]]
    keys = ["task", "metric", "checkpoint", "shots"]
    rows = []
    for key, g in cells.groupby(keys, sort=True):
        seeds = g.drop_duplicates("seed")
        row = dict(zip(keys, key))
        row.update(
            mean=float(seeds["value"].mean()),
            std=float(seeds["value"].std(ddof=0)),
            ci_low=math.nan, ci_high=math.nan, ci_demos_low=math.nan, ci_demos_high=math.nan,
            n=int(seeds["n"].min()), seeds=int(len(seeds)), failed=int(seeds["n_failed"].sum()),
            config_key=str(g["setting"].iloc[0]), model=str(g["model"].iloc[0]), label=str(g["label"].iloc[0]),
            source=str(g["source"].iloc[0]), primary=bool(g["primary"].iloc[0]),
            ci_method="not computed" if not ci else "only for a task's primary metric",
        )
        if ci and row["primary"]:
            row["ci_low"], row["ci_high"], row["ci_method"] = seed_averaged_interval(
                list(zip(seeds["file"], seeds["value"])))
            if row["seeds"] > 1:  # the two-level interval needs 2+ demonstration draws
                both = seeds_queries_interval([(Path(f).parent, v) for f, v in zip(seeds["file"], seeds["value"])])
                if both["ci95_seeds_queries"] is not None:
                    row["ci_demos_low"], row["ci_demos_high"] = both["ci95_seeds_queries"]
        rows.append(row)
    df = pd.DataFrame(rows, columns=COLUMNS)
    with_suites = add_suite_rows(df)
    if len(with_suites) > len(df):
        extra = with_suites.iloc[len(df):].copy()
        extra["ci_method"] = "suite row: mean of its tasks' means"
        extra["config_key"] = ""
        extra["model"] = extra["label"] = extra["source"] = ""
        df = pd.concat([df, extra[COLUMNS]], ignore_index=True)
    return _types(df)


def _types(df: pd.DataFrame) -> pd.DataFrame:
    df = df.astype({"shots": "int64", "mean": "float64", "std": "float64", "ci_low": "float64",
                    "ci_high": "float64", "ci_demos_low": "float64", "ci_demos_high": "float64", "n": "int64", "seeds": "int64", "failed": "int64", "primary": "bool"})
    for col in ("task", "metric", "checkpoint", "config_key", "model", "label", "source", "ci_method"):
        df[col] = df[col].astype(str)
    return df.reset_index(drop=True)


def seed_averaged_interval(cells: Sequence[tuple[str, float]]) -> tuple[float, float, str]:
    """95% interval of the mean over seeds of one (checkpoint, task, shots), from the cells'
    per-query scores: (low, high, method), or (nan, nan, why not)."""
    from harness.metrics.stats import mean_with_ci
    from harness.reporting.paired import read_cell, score_scale

    records = [read_cell(f, v) for f, v in cells]
    scales = {score_scale(r) for r in records}
    if len(scales) != 1 or None in scales:
        return math.nan, math.nan, "none: the metric is not the mean of the per-sample scores"
    scale = scales.pop()
    ids = [sorted(r.ids) for r in records]
    if all(i == ids[0] for i in ids):  # the seeds share their queries: average each query over seeds
        per_query = np.mean([r.scores[np.argsort(r.ids, kind="stable")] for r in records], axis=0)
        how = "per-query mean over seeds"
    elif len({len(r.ids) for r in records}) == 1:  # --sample: other queries per seed, the same count
        per_query = np.concatenate([r.scores for r in records])
        how = "the seeds' queries pooled"
    else:
        return math.nan, math.nan, "none: the seeds scored different numbers of queries"
    res = mean_with_ci(per_query, scale=scale, bounded=scale == 100.0)
    return float(res["ci95_low"]), float(res["ci95_high"]), f"{res['ci_method']} over queries ({how})"


def write_tidy(df: pd.DataFrame, path: str | Path) -> Path:
    """The tidy table to ``path``: ``.csv`` or ``.parquet`` (pyarrow)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise HarnessError(f"{path}: folder {path.parent} does not exist; create it or pick another path")
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        df.to_parquet(path, index=False)
    else:
        raise HarnessError(f"{path}: a tidy table is written as .csv or .parquet")
    return path
