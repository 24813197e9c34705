"""Tables from results folders: one row per task/metric, one column per checkpoint x shots.

From Python::

    from harness.reporting.report import load_results, compare
    cells = load_results(["results/A", "results/B"])   # one row per cell x metric
    table = compare(["results/A", "results/B"])         # mean, std, seeds, n per (task, metric) x (model, shots)

Paired differences with intervals and p-values: :func:`harness.reporting.paired.paired_compare`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Literal, Sequence

import pandas as pd

from harness.errors import HarnessError
from harness.store.identity import config_diff, environment_diff, setting_key as _setting_key  # noqa: F401
from harness.store.layout import read_json, step_of
from harness.store.results import read_cells as _read_cells
from harness.suites import add_suite_rows

log = logging.getLogger(__name__)

Format = Literal["markdown", "csv", "latex"]


def _flatten(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, name + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and k != "n":
            out[name] = float(v)
    return out


def load_results(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Every finished cell under ``paths``: one row per (cell, metric).

    Cells are averaged over seeds only with cells of the same configuration: where one
    label x task x shots holds several configurations (another --limit, task option,
    checkpoint...), each gets its own column, marked with its configuration key, and a
    warning names the cells and what differs.
    """
    rows = []
    for src in paths:
        if not Path(src).exists():
            raise HarnessError(f"results folder not found: {src}")
        for file, m in _read_cells(src):
            cfg = m["config"]
            for metric, value in _flatten(m["metrics"]).items():
                rows.append({
                    "source": str(src),
                    "label": cfg["label"],
                    "model": cfg["model"]["name"],
                    "fingerprint": cfg["model"].get("fingerprint"),
                    "task": cfg["task"]["name"],
                    "metric": metric,
                    "primary": metric == m.get("primary_metric"),
                    "shots": int(cfg["shots"]),
                    "seed": int(cfg["seed"]),
                    "value": value,
                    "n": int(m["n"]),
                    "n_failed": int(m.get("n_failed", 0)),
                    "setting": _setting_key(cfg),
                    "environment": m.get("environment"),
                    "file": str(file),
                })
    if not rows:
        raise HarnessError(f"no finished cells (metrics.json) under {', '.join(map(str, paths))}")
    df = pd.DataFrame(rows)
    # Same label in two folders (two checkpoints run with the same model name): tell them apart.
    clash = df.groupby("label")["source"].nunique()
    df["run"] = [f"{Path(s).name}/{lab}" if clash[lab] > 1 else lab for s, lab in zip(df["source"], df["label"])]
    # Evaluations along a training run (<output>/step-N/<label>/, harness.training and watch): one
    # checkpoint per step of the run.
    df["step"] = pd.array([step_of(f) for f in df["file"]], dtype="Int64")
    df["checkpoint"] = [run if pd.isna(step) else f"{run} step-{step}" for run, step in zip(df["run"], df["step"])]
    _split_settings(df)
    _note_environments(df)
    return df


def _note_environments(df: pd.DataFrame) -> None:
    """Warn when cells shown side by side were computed by different code (harness revision, or
    torch/transformers/datasets/pycocoevalcap versions): a difference may come from there."""
    for task, sub in df.drop_duplicates("file").groupby("task"):
        diff = environment_diff(list(sub["environment"]))
        if diff:
            log.warning("%s: the cells compared were computed with different code versions (%s); differences "
                        "between them may come from there", task, diff)


def _split_settings(df: pd.DataFrame) -> None:
    """Give each configuration of a checkpoint x task x shots its own column, and say so."""
    groups = df.groupby(["checkpoint", "task", "shots"])["setting"].nunique()
    mixed = groups[groups > 1]
    if mixed.empty:
        return
    for (ck, task, shots) in mixed.index:
        sel = (df["checkpoint"] == ck) & (df["task"] == task) & (df["shots"] == shots)
        files = df.loc[sel].drop_duplicates("setting")["file"].tolist()
        configs = [read_json(Path(f))["config"] for f in files[:2]]
        log.warning("%s %s %d-shot: cells of %d different configurations are shown in separate columns "
                    "[cfg KEY], not averaged together: %s; e.g. %s vs %s differ in %s",
                    ck, task, shots, len(files), ", ".join(files), files[0], files[1],
                    config_diff({**configs[0], "seed": None}, {**configs[1], "seed": None}))
        df.loc[sel, "checkpoint"] = [f"{ck} [cfg {k[:6]}]" for k in df.loc[sel, "setting"]]


def summarize(cells: pd.DataFrame) -> pd.DataFrame:
    """Mean and std (population, as OpenFlamingo) over seeds, per checkpoint x task x metric x shots."""
    g = cells.groupby(["task", "metric", "checkpoint", "shots"], sort=True)
    out = g.agg(
        mean=("value", "mean"),
        std=("value", lambda v: float(v.std(ddof=0)) if len(v) else math.nan),
        seeds=("seed", "nunique"),
        n=("n", "min"),
        failed=("n_failed", "sum"),
        primary=("primary", "first"),
    ).reset_index()
    return out


def compare(paths: Sequence[str | Path], metrics: str = "primary", spread: str = "std") -> pd.DataFrame:
    """The comparison table as a DataFrame: rows (task, metric), columns (checkpoint, shots),
    cells ``mean (std) n=N``. ``metrics='all'`` adds the breakdowns (e.g. per answer type). A suite
    (harness.suites) whose tasks are all present adds a row: the mean of their primary metrics.
    ``spread='ci'`` shows ``mean [low, high] n=N`` with the 95% interval over queries instead of the std,
    ``'ci-demos'`` the interval over queries and demonstration draws (docs/statistics.md)."""
    if spread in ("ci", "ci-demos"):
        from harness.reporting.tidy import tidy

        df = tidy(paths, metrics=metrics)
        lo, hi = ("ci_low", "ci_high") if spread == "ci" else ("ci_demos_low", "ci_demos_high")
        df = df.assign(cell=[_interval_cell(r.mean, getattr(r, lo), getattr(r, hi), r.n, r.failed)
                             for r in df.itertuples()])
        table = df.pivot_table(index=["task", "metric"], columns=["checkpoint", "shots"], values="cell",
                               aggfunc="first", sort=False)
        return table.sort_index(axis=1, level=[0, 1])
    summary = summarize(load_results(paths))
    if metrics == "primary":
        summary = summary[summary["primary"]]
    return _pivot(add_suite_rows(summary))


def summary_table(summaries: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The same table from a sweep's in-memory summaries (see harness.evaluation.sweep.run_sweep)."""
    df = pd.DataFrame([
        {"task": s["task"], "metric": s["metric"], "checkpoint": s["label"], "shots": s["shots"],
         "mean": s["mean"], "std": s["std"], "seeds": len(s["seeds"]), "n": s["n"], "primary": True,
         "failed": sum(s.get("n_failed", []))}
        for s in summaries
    ])
    return _pivot(add_suite_rows(df))


def _pivot(summary: pd.DataFrame) -> pd.DataFrame:
    summary = summary.assign(cell=[_cell(r) for r in summary.itertuples()])
    table = summary.pivot_table(index=["task", "metric"], columns=["checkpoint", "shots"], values="cell",
                                aggfunc="first", sort=False)
    return table.sort_index(axis=1, level=[0, 1])


def _interval_cell(mean: float, lo: float, hi: float, n: int, failed: int) -> str:
    ci = f" [{lo:.2f}, {hi:.2f}]" if not math.isnan(lo) else ""
    return f"{mean:.2f}{ci} n={n}" + (f" ({failed} failed)" if failed else "")


def _cell(r: Any) -> str:
    if r.mean != r.mean:  # NaN: a split without answers (test server: `export`), or an undefined metric
        return f"no metric n={r.n}"
    std = f" ({r.std:.2f})" if r.seeds > 1 else ""
    failed = getattr(r, "failed", 0)
    note = f" ({failed} failed{' over ' + str(r.seeds) + ' seeds' if r.seeds > 1 else ''})" if failed else ""
    return f"{r.mean:.2f}{std} n={r.n}{note}"


def render(table: pd.DataFrame, fmt: Format = "markdown") -> str:
    """Render a :func:`compare` table of strings as markdown, CSV or LaTeX (a plain booktabs tabular).

    For numbers (a paper's LaTeX table, a tidy CSV/Parquet) use :func:`harness.reporting.tidy.tidy`
    with :func:`harness.reporting.latex.latex_table` or :func:`harness.reporting.tidy.write_tidy`."""
    headers = ["task", "metric"] + [f"{ck} {shots}-shot" for ck, shots in table.columns]
    rows = [[str(task), str(metric)] + ["" if pd.isna(v) else str(v) for v in vals]
            for (task, metric), vals in zip(table.index, table.to_numpy())]
    return render_rows(headers, rows, fmt)


#: What a comparison-table cell shows (printed under markdown tables).
TABLE_NOTE = ("cells: mean over seeds (std over seeds, population std ddof=0 as OpenFlamingo reports it; "
              "shown with 2+ seeds) n=queries per seed")
#: The same with ``--spread ci`` / ``--spread ci-demos``.
TABLE_NOTES = {
    "std": TABLE_NOTE,
    "ci": "cells: mean over seeds [95% interval over queries, seeds averaged per query] n=queries per seed",
    "ci-demos": ("cells: mean over seeds [95% interval over queries AND demonstration draws: two-level bootstrap, "
                 "2+ seeds, docs/statistics.md] n=queries per seed"),
    "none": TABLE_NOTE,  # markdown cells keep their std
}


def render_rows(headers: Sequence[str], rows: Sequence[Sequence[str]], fmt: Format = "markdown") -> str:
    """Rows of strings as markdown, CSV or LaTeX."""
    if fmt == "csv":
        flat = pd.DataFrame(rows, columns=headers)
        return flat.to_csv(index=False)
    if fmt == "markdown":
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines) + "\n"
    if fmt == "latex":
        from harness.reporting.latex import latex_rows

        return latex_rows(headers, rows)
    raise HarnessError(f"unknown table format {fmt!r}: markdown, csv or latex")


def plot(paths: Sequence[str | Path], out: str | Path) -> Path:
    """Metric vs shots, one line per checkpoint and one panel per task, at ``out`` (PNG, PDF or SVG by
    its suffix); :mod:`harness.reporting.plots` has the options (band, layout, more formats)."""
    from harness.reporting.plots import plot as plot_paths

    return plot_paths(paths, out)[0]
