"""A training run's checkpoints over time: ``compare --series`` and the viewer's series view.

The results of evaluations along a run live in ``<output>/step-<N>/<label>/`` (written by
:mod:`harness.training` and ``watch``). The series is the tidy table (:mod:`harness.reporting.tidy`,
the one place that averages seeds) with the ``run`` (the label; ``folder/label`` when the same
label comes from two folders) and ``step`` of each row::

    from harness.reporting.series import series, series_table
    df = series(["results/run1"])        # run, step, task, metric, shots, mean, std, n, seeds, ...
    print(series_table(df))             # rows = run x step, columns = task x shots

:func:`harness.reporting.plots.plot_series` draws each task's metric vs step, one line per shot
count (and run), with the spread over seeds as a band.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from harness.errors import HarnessError

#: the series table's first columns; the tidy table's follow (harness.reporting.tidy.COLUMNS)
LEAD = ["run", "step"]


def series(paths: Sequence[str | Path], metrics: str = "primary", ci: bool = False) -> pd.DataFrame:
    """The tidy table of the step-N results under ``paths``, with ``run`` and ``step``, ordered by
    run, task, metric, shots and step. Results outside a ``step-N`` folder are an error naming them."""
    from harness.reporting.report import load_results
    from harness.reporting.tidy import COLUMNS, tidy_cells

    cells = load_results(paths)
    outside = cells[cells["step"].isna()]
    if len(outside):
        files = sorted(set(outside["file"]))
        raise HarnessError(f"--series: {len(files)} cell(s) are not under a step-N folder, e.g. {files[0]}; a series "
                           f"reads <output>/step-N/<label>/ as harness.training and `watch` write it (compare "
                           f"without --series shows them)")
    df = tidy_cells(cells, metrics=metrics, ci=ci)
    where = cells.drop_duplicates("checkpoint").set_index("checkpoint")
    df = df[df["checkpoint"].isin(where.index)]  # suite rows keep their checkpoint; nothing else is dropped
    df.insert(0, "step", [int(where.loc[ck, "step"]) for ck in df["checkpoint"]])
    df.insert(0, "run", [str(where.loc[ck, "run"]) for ck in df["checkpoint"]])
    df = df.sort_values(["run", "task", "metric", "shots", "step"], kind="stable").reset_index(drop=True)
    return df[LEAD + COLUMNS]


def series_table(df: pd.DataFrame) -> pd.DataFrame:
    """Rows = (run, step) by step, columns = ``task Kshot`` (each task's primary metric), cells
    ``mean (std) n=N`` (std over seeds, shown with more than one seed)."""
    prim = df[df["primary"]]
    if prim.empty:
        raise HarnessError("--series: no task's primary metric in these results")
    prim = prim.assign(column=[f"{t} {s}-shot" for t, s in zip(prim["task"], prim["shots"])],
                       text=[f"{m:.2f}" + (f" ({sd:.2f})" if k > 1 else "") + f" n={n}"
                             for m, sd, k, n in zip(prim["mean"], prim["std"], prim["seeds"], prim["n"])])
    order = list(dict.fromkeys(prim.sort_values(["task", "shots"])["column"]))
    table = prim.pivot_table(index=["run", "step"], columns="column", values="text", aggfunc="first")
    return table.reindex(columns=order).sort_index()


def render_series(table: pd.DataFrame) -> str:
    """The series table as markdown (a blank where a checkpoint lacks a cell)."""
    from harness.reporting.report import render_rows

    rows = [[str(run), str(step)] + ["" if pd.isna(v) else str(v) for v in vals]
            for (run, step), vals in zip(table.index, table.to_numpy())]
    return render_rows(["run", "step", *table.columns], rows, "markdown")
