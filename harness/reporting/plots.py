"""Metric-vs-shots figures for a paper.

    from harness.reporting.tidy import tidy
    from harness.reporting.plots import plot_tidy
    plot_tidy(tidy(["results/A", "results/B"]), "fig.png", formats=("pdf",))   # fig.png + fig.pdf

Shots on a log2 axis (0 kept, linear between 0 and 1), one line per checkpoint with a band for the
spread over seeds (std) or the 95% interval over queries, the legend below the panels (never over
the data), sized for a paper column (3.3 in wide for one task, the page's 6.9 in for a grid) with
8 pt type. One figure with a panel per task (``layout="grid"``) or a figure per task.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Literal, Sequence

import pandas as pd

from harness.errors import HarnessError

#: widths of a one-column and a two-column figure in a typical two-column paper (inches)
COLUMN_IN, PAGE_IN = 3.3, 6.9
FORMATS = ("png", "pdf", "svg")
Band = Literal["std", "ci", "ci-demos", "none"]
Layout = Literal["grid", "per-task"]
_MARKERS = "osD^vP*X<>"


def plot(paths: Sequence[str | Path], out: str | Path, **kw) -> list[Path]:
    """Plots of the results under ``paths`` (see :func:`plot_tidy`); returns the files written."""
    from harness.reporting.tidy import tidy

    band = kw.get("band", "std")
    return plot_tidy(tidy(paths, ci=band in ("ci", "ci-demos")), out, **kw)


def plot_tidy(df: pd.DataFrame, out: str | Path, band: Band = "std", layout: Layout = "grid",
              formats: Sequence[str] = (), dpi: int = 300) -> list[Path]:
    """Each task's primary metric vs shots, one line per checkpoint. ``out``'s suffix is its format
    (png, pdf or svg); ``formats`` adds the same figure in others beside it (``fig.png`` + ``pdf`` ->
    ``fig.pdf``). ``layout='per-task'`` writes ``<stem>_<task>.<ext>`` per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logging.getLogger("fontTools").setLevel(logging.WARNING)  # its font subsetting logs every glyph at INFO
    out = Path(out)
    exts = _formats(out, formats)
    if band not in ("std", "ci", "none"):
        raise HarnessError(f"plot band {band!r}: std, ci or none")
    if layout not in ("grid", "per-task"):
        raise HarnessError(f"plot layout {layout!r}: grid or per-task")
    df = df[df["primary"] & ~df["task"].str.startswith("suite ")]
    if df.empty:
        raise HarnessError("nothing to plot: no task's primary metric in these results")
    tasks = list(dict.fromkeys(sorted(df["task"])))
    checkpoints = list(dict.fromkeys(df["checkpoint"]))
    style = {ck: (f"C{i % 10}", _MARKERS[i % len(_MARKERS)]) for i, ck in enumerate(checkpoints)}
    groups = [tasks] if layout == "grid" else [[t] for t in tasks]
    written = []
    with plt.rc_context(_RC):
        for group in groups:
            fig = _figure(plt, df, group, checkpoints, style, band)
            base = out if layout == "grid" else out.with_name(f"{out.stem}_{_safe(group[0])}{out.suffix}")
            written += _save(plt, fig, base, exts, dpi)
    return written


#: 8 pt type, thin lines, no top/right spines, fonts embedded as text in PDF/SVG
_RC = {"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
       "legend.fontsize": 7, "lines.linewidth": 1.2, "lines.markersize": 3.5, "axes.spines.top": False,
       "axes.spines.right": False, "pdf.fonttype": 42, "svg.fonttype": "none"}


def _formats(out: Path, formats: Sequence[str]) -> list[str]:
    """``out``'s format and ``formats``' (checked), and ``out``'s folder exists."""
    exts = list(dict.fromkeys([out.suffix.lstrip(".").lower(), *[f.lower().lstrip(".") for f in formats]]))
    bad = [e for e in exts if e not in FORMATS]
    if bad:
        raise HarnessError(f"plot {out}: format {bad[0] or '(no suffix)'!r} is not one of {', '.join(FORMATS)}")
    if not out.parent.is_dir():
        raise HarnessError(f"--plot {out}: folder {out.parent} does not exist; create it or pick another path")
    return exts


def _save(plt, fig, base: Path, exts: Sequence[str], dpi: int) -> list[Path]:
    written = []
    for e in exts:
        target = base.with_suffix(f".{e}")
        fig.savefig(target, dpi=dpi, bbox_inches="tight", pad_inches=0.02)
        written.append(target)
    plt.close(fig)
    return written


def plot_series(df: pd.DataFrame, out: str | Path, band: Band = "std", formats: Sequence[str] = (),
                dpi: int = 300) -> list[Path]:
    """Each task's primary metric vs training step (a :func:`harness.reporting.series.series` table):
    a panel per task, one line per shot count (a line style per run when there are several), a band
    of ±1 std over seeds (``band='none'``: no band). Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logging.getLogger("fontTools").setLevel(logging.WARNING)
    out = Path(out)
    exts = _formats(out, formats)
    if band not in ("std", "none"):
        raise HarnessError(f"--series plots the spread over seeds: --spread std or none, not {band!r}")
    df = df[df["primary"] & ~df["task"].str.startswith("suite ")]
    if df.empty:
        raise HarnessError("nothing to plot: no task's primary metric in these results")
    tasks = sorted(df["task"].unique())
    runs = list(dict.fromkeys(df["run"]))
    shots = sorted(df["shots"].unique())
    colors = {s: f"C{i % 10}" for i, s in enumerate(shots)}
    dashes = ["-", "--", ":", "-."]
    with plt.rc_context(_RC):
        fig, axes, ncols = _grid(plt, len(tasks))
        handles = {}
        for ax, task in zip(axes.flat, tasks):
            sub = df[df["task"] == task]
            for ri, run in enumerate(runs):
                for i, s in enumerate(shots):
                    g = sub[(sub["run"] == run) & (sub["shots"] == s)].sort_values("step")
                    if g.empty:
                        continue
                    name = f"{s}-shot" + (f" {run}" if len(runs) > 1 else "")
                    x, y = g["step"].to_numpy(), g["mean"].to_numpy()
                    (line,) = ax.plot(x, y, color=colors[s], linestyle=dashes[ri % len(dashes)],
                                      marker=_MARKERS[i % len(_MARKERS)], label=name)
                    handles[name] = line
                    if band == "std" and (g["seeds"] > 1).any():
                        sd = g["std"].fillna(0.0).to_numpy()
                        ax.fill_between(x, y - sd, y + sd, color=colors[s], alpha=0.18, linewidth=0)
            _label(ax, task, "training step", sub["metric"].iloc[0])
        _finish(fig, axes, len(tasks), handles, ncols, "band: ±1 std over seeds" if band == "std" else "")
        return _save(plt, fig, out, exts, dpi)


def _grid(plt, n_tasks: int):
    """A panel per task, up to three a row, a column or a page wide: (figure, axes, columns)."""
    ncols = min(3, n_tasks)
    nrows = math.ceil(n_tasks / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(COLUMN_IN if ncols == 1 else PAGE_IN, 2.1 * nrows + 0.1),
                             squeeze=False)
    return fig, axes, ncols


def _label(ax, task: str, xlabel: str, metric: str) -> None:
    ax.set_title(task)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    ax.grid(True, axis="y", linewidth=0.4, alpha=0.5)


def _finish(fig, axes, n_tasks: int, handles: dict, ncols: int, title: str):
    """Unused panels hidden, the layout tightened, one legend below the panels; returns the legend."""
    for ax in list(axes.flat)[n_tasks:]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig.legend(list(handles.values()), list(handles), loc="upper center", bbox_to_anchor=(0.5, 0.0),
                      ncol=min(len(handles), 3 if ncols == 1 else 5), frameon=False, title=title or None,
                      title_fontsize=7)


def _figure(plt, df: pd.DataFrame, tasks: list[str], checkpoints: list[str], style, band: Band):
    fig, axes, ncols = _grid(plt, len(tasks))
    handles = {}
    for ax, task in zip(axes.flat, tasks):
        sub = df[df["task"] == task]
        for ck in checkpoints:
            g = sub[sub["checkpoint"] == ck].sort_values("shots")
            if g.empty:
                continue
            color, marker = style[ck]
            x = g["shots"].to_numpy()
            (line,) = ax.plot(x, g["mean"], color=color, marker=marker, label=ck)
            handles[ck] = line
            lo, hi = _band(g, band)
            if lo is not None:
                ax.fill_between(x, lo, hi, color=color, alpha=0.18, linewidth=0)
        shots = sorted(sub["shots"].unique())
        ax.set_xscale("symlog", base=2, linthresh=1, linscale=0.6)
        ax.set_xticks(shots)
        ax.set_xticklabels([str(s) for s in shots])
        ax.minorticks_off()
        ax.set_xlim(shots[0] - 0.1 if shots[0] == 0 else shots[0] / 1.3, shots[-1] * 1.3 if shots[-1] else 1)
        _label(ax, task, "shots", sub["metric"].iloc[0])
    what = {"std": "band: ±1 std over seeds", "ci": "band: 95% CI over queries",
            "ci-demos": "band: 95% CI over queries and demo draws", "none": ""}[band]
    legend = _finish(fig, axes, len(tasks), handles, ncols, what)
    legend._legend_box.align = "center"
    return fig


def _band(g: pd.DataFrame, band: Band):
    if band == "std" and (g["seeds"] > 1).any():
        std = g["std"].fillna(0.0).to_numpy()
        return g["mean"].to_numpy() - std, g["mean"].to_numpy() + std
    if band == "ci" and g["ci_low"].notna().any():
        return g["ci_low"].fillna(g["mean"]).to_numpy(), g["ci_high"].fillna(g["mean"]).to_numpy()
    if band == "ci-demos" and g["ci_demos_low"].notna().any():
        return g["ci_demos_low"].fillna(g["mean"]).to_numpy(), g["ci_demos_high"].fillna(g["mean"]).to_numpy()
    return None, None


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
