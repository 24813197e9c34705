"""Paired comparison of checkpoints: B - A over the same queries and seeds, with an interval,
a p-value, and a Holm correction over the table (see docs/statistics.md).

From Python::

    from harness.reporting.paired import paired_compare
    df = paired_compare(["results/A", "results/B"], baseline="A-label")
    df[["task", "shots", "checkpoint", "delta", "ci_low", "ci_high", "p", "p_holm", "significant"]]

Two cells are paired only when everything that decides their queries and demonstrations is
the same (task and its options, data, splits, limit/sample, sampler, shots, seed) and their
prediction files hold the same query ids with the same demo ids; otherwise the row says why
it was refused and has no p-value.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from harness.errors import HarnessError
from harness.metrics.stats import N_PERM, holm, paired_difference
from harness.store.identity import pairing_fields, pairing_mismatch  # noqa: F401  (moved; importable here)
from harness.store.journal import read_records
from harness.store.results import metric_scale

ALPHA = 0.05


@dataclass
class CellRecords:
    """One finished cell: its config and its per-query (score, demo ids), in file order."""

    file: Path
    config: dict[str, Any]
    value: float
    ids: list[str]
    scores: np.ndarray
    demos: dict[str, list[str]]


def read_cell(file: str | Path, value: float) -> CellRecords:
    """A cell's records from the predictions.jsonl beside its metrics.json."""
    file = Path(file)
    metrics = json.loads(file.read_text(encoding="utf-8"))
    preds = file.parent / "predictions.jsonl"
    if not preds.is_file():
        raise HarnessError(f"{file}: no predictions.jsonl beside it; the paired test needs per-query scores")
    ids, scores, demos = [], [], {}
    for r in read_records(preds, torn_tail_ok=False):
        if r.score is None:  # a split without answers: nothing to pair
            raise HarnessError(f"{file}: query {r.query_id} has no score (its split has no answers); the paired "
                               f"test compares scored cells only")
        ids.append(r.query_id)
        scores.append(r.score)
        demos[r.query_id] = list(r.demo_ids)
    return CellRecords(file, metrics["config"], value, ids, np.asarray(scores, dtype=float), demos)


def records_mismatch(a: CellRecords, b: CellRecords, nested: bool = False) -> str | None:
    """Why two cells' records cannot be paired query by query, or None. ``nested`` (two shot counts):
    each query's shorter demo list must be the start of its longer one (task option nested_shots)."""
    sa, sb = set(a.ids), set(b.ids)
    if sa != sb:
        return f"different queries: {len(sa - sb)} only in A, {len(sb - sa)} only in B"
    if nested:
        bad = sum(not _is_prefix(a.demos[q], b.demos[q]) for q in a.ids)
        if bad:
            return (f"the demonstrations are not nested for {bad} of {len(a.ids)} queries (independent draws per "
                    f"shot count); rerun with --task-arg nested_shots=N (N = the largest shot count)")
        return None
    bad = sum(a.demos[q] != b.demos[q] for q in a.ids)
    if bad:
        return f"different demonstrations for {bad} of {len(a.ids)} queries"
    return None


def _is_prefix(x: list[str], y: list[str]) -> bool:
    short, long_ = (x, y) if len(x) <= len(y) else (y, x)
    return long_[: len(short)] == short


def score_scale(cell: CellRecords) -> float | None:
    """100 or 1 if the cell's metric is the mean of its per-sample scores on that scale, else None."""
    return metric_scale(cell.scores, cell.value)


def resolve_baseline(cells: pd.DataFrame, baseline: str) -> str:
    """The checkpoint (as the table shows it) named by ``baseline``: a checkpoint label, or a results folder."""
    names = sorted(cells["checkpoint"].unique())
    if baseline in names:
        return baseline
    target = Path(baseline).resolve()
    # a results folder given to compare, or any folder holding the checkpoint's cells (e.g. results/A/label)
    by_source = sorted({ck for src, file, ck in zip(cells["source"], cells["file"], cells["checkpoint"])
                        if Path(src).resolve() == target or target in Path(file).resolve().parents})
    if len(by_source) == 1:
        return by_source[0]
    if len(by_source) > 1:
        raise HarnessError(f"--baseline {baseline}: that folder holds several checkpoints "
                           f"({', '.join(by_source)}); name one of them")
    raise HarnessError(f"--baseline {baseline!r} is neither a checkpoint of these results "
                       f"({', '.join(names)}) nor one of the results folders")


def paired_compare(paths: Sequence[str | Path], baseline: str | None, seed: int = 0,
                   n_boot: int | None = None, n_perm: int | None = None,
                   baseline_shots: int | None = None) -> pd.DataFrame:
    """Every other checkpoint against ``baseline`` on each (task, primary metric, shots) both have;
    or, with ``baseline_shots``, every other shot count of each checkpoint (only ``baseline``'s if
    given) against its own ``baseline_shots`` cells (needs nested demos: task option nested_shots).

    Columns: task, metric, shots, checkpoint, baseline, seeds, n, baseline_mean, mean, delta,
    ci_low, ci_high, p, p_holm, significant (Holm-adjusted p < 0.05 over the table's rows),
    note (why a row has no test, or what is resampled). ``delta = mean - baseline_mean``.
    """
    from harness.reporting.report import load_results

    cells = load_results(paths)
    base = resolve_baseline(cells, baseline) if baseline is not None else None
    cells = cells[cells["primary"]]
    if base is not None and base not in set(cells["checkpoint"]):
        raise HarnessError(f"--baseline {baseline}: no finished cells of {base}")
    kw = {k: v for k, v in (("n_boot", n_boot), ("n_perm", n_perm)) if v is not None}
    cache: dict[str, CellRecords] = {}

    def load(row: Any) -> CellRecords:
        if row.file not in cache:
            cache[row.file] = read_cell(row.file, row.value)
        return cache[row.file]

    if baseline_shots is not None:
        rows = _across_shots(cells, base, baseline_shots, load, seed, kw)
        if not rows:
            raise HarnessError(f"--baseline-shots {baseline_shots}: no checkpoint has {baseline_shots}-shot cells "
                               f"and cells at another shot count of the same task")
        return _finish(rows)
    if base is None:
        raise HarnessError("paired comparison needs --baseline LABEL or --baseline-shots N")
    rows = []
    for (task, metric, shots), grp in cells.groupby(["task", "metric", "shots"], sort=True):
        a_cells = {r.seed: r for r in grp[grp["checkpoint"] == base].itertuples()}
        if not a_cells:
            continue
        for ck, bgrp in grp[grp["checkpoint"] != base].groupby("checkpoint", sort=True):
            rows.append(_pair_row(task, metric, int(shots), ck, base, a_cells,
                                  {r.seed: r for r in bgrp.itertuples()}, load, seed, kw))
    if not rows:
        raise HarnessError(f"nothing to compare with {base}: no other checkpoint has a (task, shots) it has")
    return _finish(rows)


def _across_shots(cells: pd.DataFrame, base: str | None, base_shots: int, load, seed: int,
                  kw: dict[str, int]) -> list[dict[str, Any]]:
    """Rows of each checkpoint's shot counts against its own ``base_shots`` cells, seed by seed."""
    rows = []
    for (task, metric, ck), grp in cells.groupby(["task", "metric", "checkpoint"], sort=True):
        if base is not None and ck != base:
            continue
        a_cells = {r.seed: r for r in grp[grp["shots"] == base_shots].itertuples()}
        if not a_cells:
            continue
        for shots, bgrp in grp[grp["shots"] != base_shots].groupby("shots", sort=True):
            rows.append(_pair_row(task, metric, int(shots), ck, f"{ck} {base_shots}-shot", a_cells,
                                  {r.seed: r for r in bgrp.itertuples()}, load, seed, kw, across_shots=True))
    return rows


def _pair_row(task: str, metric: str, shots: int, checkpoint: str, baseline: str, a_cells: dict, b_cells: dict,
              load, seed: int, kw: dict[str, int], across_shots: bool = False) -> dict[str, Any]:
    """One row of the paired table: ``b_cells`` against ``a_cells`` (cells by seed) over their common seeds."""
    seeds = sorted(set(a_cells) & set(b_cells))
    row: dict[str, Any] = {
        "task": task, "metric": metric, "shots": shots, "checkpoint": checkpoint, "baseline": baseline,
        "seeds": len(seeds), "n": math.nan,
        "baseline_mean": float(np.mean([a_cells[s].value for s in seeds])) if seeds else math.nan,
        "mean": float(np.mean([b_cells[s].value for s in seeds])) if seeds else math.nan,
        "delta": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p": math.nan, "note": "",
    }
    if seeds:
        row["delta"] = row["mean"] - row["baseline_mean"]
    row.update(_test(task, metric, [(load(a_cells[s]), load(b_cells[s]), s) for s in seeds],
                     sorted(a_cells), sorted(b_cells), seed, kw, across_shots=across_shots))
    return row


def _finish(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    df["p_holm"] = holm(df["p"].to_numpy())
    df["significant"] = df["p_holm"] < ALPHA
    cols = ["task", "metric", "shots", "checkpoint", "baseline", "seeds", "n", "baseline_mean", "mean",
            "delta", "ci_low", "ci_high", "p", "p_holm", "significant", "note"]
    return df[cols]


def _test(task: str, metric: str, pairs: list[tuple[CellRecords, CellRecords, int]], seeds_a: list[int],
          seeds_b: list[int], seed: int, kw: dict[str, int], across_shots: bool = False) -> dict[str, Any]:
    if not pairs:
        return {"note": f"not paired: no common seed (baseline {seeds_a}, this {seeds_b})"}
    a_list, b_list = [], []
    scales = set()
    for a, b, s in pairs:
        why = (pairing_mismatch(a.config, b.config, across_shots=across_shots)
               or records_mismatch(a, b, nested=across_shots))
        if why:
            return {"note": f"not paired (seed {s}): {why}"}
        sa, sb = score_scale(a), score_scale(b)
        if sa is None or sb is None or sa != sb:
            return {"note": f"no paired test: {metric} is not the mean of the per-sample scores"}
        scales.add(sa)
        order = sorted(a.ids)
        ia, ib = {q: i for i, q in enumerate(a.ids)}, {q: i for i, q in enumerate(b.ids)}
        a_list.append(a.scores[[ia[q] for q in order]])
        b_list.append(b.scores[[ib[q] for q in order]])
    res = paired_difference(a_list, b_list, scale=scales.pop(), seed=seed, **kw)
    note = ""
    if metric.lower() == "cider":
        note = "per-image CIDEr resampled (document frequencies of the full eval set held fixed)"
    if len(pairs) < max(len(seeds_a), len(seeds_b)):
        note = "; ".join(x for x in (note, f"on the {len(pairs)} common seeds") if x)
    return {"delta": res.delta, "ci_low": res.ci_low, "ci_high": res.ci_high, "p": res.p,
            "n": res.n_queries, "note": note}


def format_p(p: float, n_perm: int = N_PERM) -> str:
    """A p-value for tables; the smallest a permutation test can give (1/(n_perm+1)) shows as a bound."""
    floor = 1.0 / (n_perm + 1)
    if p <= floor * (1 + 1e-9):
        return f"<={floor:.1g}"
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def render_paired(df: pd.DataFrame, fmt: str = "markdown") -> str:
    """The paired table in the same formats as the comparison table."""
    from harness.reporting.report import render_rows

    headers = ["task", "metric", "shots", "checkpoint", "baseline", "seeds", "n", "baseline mean",
               "mean", "delta (B-A)", "95% CI", "p", "p (Holm)", "sig.", "note"]

    def num(v: float, digits: int = 2) -> str:
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"

    def pval(v: float) -> str:
        return "" if math.isnan(v) else format_p(v)

    rows = []
    for r in df.itertuples():
        ci = f"[{num(r.ci_low)}, {num(r.ci_high)}]" if not math.isnan(r.ci_low) else ""
        rows.append([str(r.task), str(r.metric), str(r.shots), str(r.checkpoint), str(r.baseline), str(r.seeds),
                     "" if math.isnan(r.n) else str(int(r.n)), num(r.baseline_mean), num(r.mean),
                     (f"{r.delta:+.2f}" if not math.isnan(r.delta) else ""), ci, pval(r.p), pval(r.p_holm),
                     "*" if r.significant else "", str(r.note)])
    return render_rows(headers, rows, fmt)
