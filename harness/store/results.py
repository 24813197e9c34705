"""Reading finished cells: the one reader used by report/compare, summary.json, paired and the viewer."""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from harness.metrics.stats import mean_std, two_level_interval
from harness.store.identity import setting_key
from harness.store.journal import read_records, seal_problem
from harness.store.layout import METRICS, PREDICTIONS, SUMMARY, label_dir, read_json, write_json

log = logging.getLogger(__name__)


def check_cell(m: Any) -> None:
    """Raise (ValueError/KeyError/TypeError) unless ``m`` is a finished harness cell's metrics."""
    cfg = m["config"]
    _ = (cfg["label"], cfg["model"]["name"], cfg["task"]["name"], int(cfg["shots"]), int(cfg["seed"]), int(m["n"]))
    if not isinstance(m["metrics"], dict):
        raise TypeError("'metrics' is not an object")
    if "seal" in m and seal_problem(m):
        raise ValueError(f"{seal_problem(m)}; rerun its command to score it again from its predictions")


def read_cells(src: str | Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(file, metrics) of each finished cell under ``src`` (a folder, or one metrics.json); a file that
    is not a harness metrics.json (foreign, corrupt, edited) is skipped with a warning naming it."""
    for file in ([Path(src)] if Path(src).is_file() else sorted(Path(src).rglob(METRICS))):
        try:
            m = read_json(file)
            check_cell(m)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("skipping %s: not a finished harness cell (%s: %s)", file, type(exc).__name__, exc)
            continue
        yield file, m


def failure_note(directory: Path, res: dict[str, Any]) -> str:
    """One line about a cell's failed samples: how many, the first error, where all are listed;
    a demo whose media failed is named once with the number of queries it failed."""
    failures = res["failures"]
    demo_counts: dict[str, int] = {}
    for f in failures:
        if f.get("role") == "demo":
            demo_counts[f["media"]] = demo_counts.get(f["media"], 0) + 1
    demos = "".join(f"; demo media {m} is unreadable and failed all {k} queries that drew it"
                    for m, k in sorted(demo_counts.items()))
    return (f"{directory}: {res['n_failed']} of {res['n']} samples failed (counted wrong){demos}; "
            f"first: {failures[0]['error']}; all are listed under 'failures' in {directory / METRICS}")


def metric_scale(scores: np.ndarray, value: float | None) -> float | None:
    """100 or 1 if a cell's metric ``value`` is the mean of its per-sample ``scores`` on that scale, else None
    (e.g. ROC-AUC): only then do intervals over queries exist for it."""
    if len(scores) == 0 or value is None or math.isnan(value):
        return None
    mean = float(np.mean(scores))
    for scale in (100.0, 1.0):
        if abs(mean * scale - value) <= 1e-6 * max(1.0, abs(value)):
            return scale
    return None


def seed_query_scores(cells: Sequence[tuple[Path, float]]) -> tuple[np.ndarray, float] | str:
    """The (seeds x queries) per-sample score matrix of one setting's cells ((cell folder, metric value)
    each, one per seed), queries sorted by id, and the metric's scale; or why there is none."""
    rows, ids, scales = [], None, set()
    for folder, value in cells:
        preds = Path(folder) / PREDICTIONS
        if not preds.is_file():
            return f"no {PREDICTIONS} in {folder}"
        by_id = {r.query_id: r.score for r in read_records(preds, torn_tail_ok=False)}
        order = sorted(by_id)
        if ids is None:
            ids = order
        elif order != ids:
            return "the seeds scored different queries (--sample): no seeds x queries layout"
        scores = np.asarray([by_id[q] for q in order], dtype=float)
        scales.add(metric_scale(scores, value))
        rows.append(scores)
    if len(scales) != 1 or None in scales:
        return "the metric is not the mean of the per-sample scores"
    return np.vstack(rows), scales.pop()


def seeds_queries_interval(cells: Sequence[tuple[Path, float]], seed: int = 0) -> dict[str, Any]:
    """The two-level (seeds x queries) 95% interval of the mean over seeds (harness.metrics.stats.
    two_level_interval) as summary fields: ``ci95_seeds_queries`` [low, high] and its components, or
    ``ci95_seeds_queries_note`` saying why there is none."""
    if len(cells) < 2:
        return {"ci95_seeds_queries": None,
                "ci95_seeds_queries_note": "one seed: the variance between demonstration draws needs 2+ seeds"}
    got = seed_query_scores(cells)
    if isinstance(got, str):
        return {"ci95_seeds_queries": None, "ci95_seeds_queries_note": got}
    matrix, scale = got
    res = two_level_interval(matrix, scale=scale, seed=seed)
    return {"ci95_seeds_queries": [res.ci_low, res.ci_high],
            "se_seeds": math.sqrt(res.var_seeds), "se_queries": math.sqrt(res.var_queries),
            "ci95_seeds_queries_note": res.method}


def summary_row(label: str, task: str, shots: int, cells: list[tuple[int, Path, dict[str, Any]]]) -> dict[str, Any]:
    """The summary of one setting's cells ((seed, cell folder, metrics) each): mean/std over seeds."""
    cells = sorted(cells, key=lambda c: c[0])
    values = [r["metrics"][r["primary_metric"]] for _, _, r in cells]
    mean, std = mean_std(values)
    return {
        "label": label,
        "task": task,
        "metric": cells[0][2]["primary_metric"],
        "shots": shots,
        "seeds": [s for s, _, _ in cells],
        "per_seed": values,
        "mean": mean,
        "std": std,
        "n": cells[0][2]["n"],
        "n_failed": [r["n_failed"] for _, _, r in cells],
        "wall_time_s": sum(r.get("wall_time_s", 0.0) for _, _, r in cells),
        "compute_time_s": sum(r.get("compute_time_s", r.get("wall_time_s", 0.0)) for _, _, r in cells),
        "failures": [failure_note(d, r) for _, d, r in cells if r.get("n_failed")],
        # both sources of variance: the queries and the demonstrations drawn (docs/statistics.md)
        **seeds_queries_interval([(d, v) for (_, d, _), v in zip(cells, values)]),
    }


def label_summary(output: Path, label: str, task_order: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per (task, shots, configuration) of EVERY finished cell of ``label`` on disk, averaged
    over seeds exactly as ``compare`` averages them (:func:`harness.store.identity.setting_key`)."""
    groups: dict[tuple[str, int, str], list[tuple[int, Path, dict[str, Any]]]] = defaultdict(list)
    root = label_dir(output, label)
    if not root.is_dir():
        return []
    for file, m in read_cells(root):
        cfg = m["config"]
        if cfg["label"] != label:
            continue
        groups[(cfg["task"]["name"], int(cfg["shots"]), setting_key(cfg))].append((int(cfg["seed"]), file.parent, m))
    order = {t: i for i, t in enumerate(task_order or [])}
    rows = []
    for (task, shots, setting), cells in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], len(order)),
                                                                                 kv[0][0], kv[0][1])):
        row = summary_row(label, task, shots, cells)
        if sum(1 for (t, s, _) in groups if t == task and s == shots) > 1:
            row["setting"] = setting  # several configurations of one task x shots: never averaged together
        rows.append(row)
    return rows


def write_label_summary(output: Path, label: str, task_order: list[str] | None = None) -> list[dict[str, Any]]:
    """Write ``<output>/<label>/summary.json`` covering every finished cell of the label on disk."""
    rows = label_summary(output, label, task_order)
    if rows:
        write_json(label_dir(output, label) / SUMMARY, rows)
    return rows
