"""A self-contained static HTML results viewer (``run_eval.py view``).

One file, opened from disk with no server and no network: the comparison table, the
metric-vs-shots plot and (with 2+ checkpoints) the paired differences at the top; then per
cell a sample browser: each query with its demonstrations (images and texts, in prompt
order), the rendered prompt, raw output, prediction, references and score; filters for
wrong / failed samples, a search box, and the queries two checkpoints disagree on side by
side. Samples live in embedded JSON and are rendered one page at a time, so a cell of
10,000 samples stays usable.

Images are embedded as JPEG thumbnails (``thumb_size`` px, longest side), each distinct image
once, at most ``max_images`` of them (first the queries and demos of every cell's first page, then
the rest in order); samples past the cap show the file name instead. Demo texts and media are
stored once per example and prompts as indices into a table of pieces, so the file grows with
the number of samples far more slowly than the prompts' total length. The images are found by
re-loading each task's data from its recorded options (``data_dir`` / $HARNESS_DATA, as ``run``);
if that fails the viewer still shows everything else and says why images are missing.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from harness.errors import DataError, HarnessError
from harness.store.journal import read_records
from harness.prompts import PromptTemplate
from harness.types import Example, Media

log = logging.getLogger(__name__)


@dataclass
class ViewerInfo:
    path: Path
    size_bytes: int
    n_cells: int
    n_samples: int
    n_images: int
    note: str = ""


@dataclass
class _TaskData:
    """What the viewer needs of one task configuration: examples by id and a demo formatter."""

    examples: dict[str, Example] = field(default_factory=dict)
    template: PromptTemplate | None = None
    error: str = ""


class _Thumbs:
    """Distinct media -> small JPEG data URLs, capped."""

    def __init__(self, size: int, cap: int):
        self.size, self.cap = size, cap
        self.urls: dict[str, str] = {}
        self.keys: dict[str, str] = {}  # media identity -> short key
        self.skipped = 0
        self.failed = 0

    def key(self, media: Media) -> str | None:
        ident = media.identity
        if ident in self.keys:
            return self.keys[ident]
        if len(self.urls) >= self.cap:
            self.skipped += 1
            return None
        url = self._thumbnail(media)
        if url is None:
            self.failed += 1
            self.keys[ident] = ""
            return None
        k = f"i{len(self.urls)}"
        self.keys[ident] = k
        self.urls[k] = url
        return k

    def _thumbnail(self, media: Media) -> str | None:
        from harness.errors import MediaError
        from harness.data.video import media_as_images

        try:
            frames = media_as_images([media], True)
        except (MediaError, OSError, ValueError) as exc:
            log.warning("viewer: no thumbnail for %s (%s)", media.identity, exc)
            return None
        if not frames:
            return None
        im = frames[len(frames) // 2].copy()  # a video shows its middle frame
        im.thumbnail((self.size, self.size))
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format="JPEG", quality=70)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class _Strings:
    """Prompts as lists of indices into one table of pieces (split after each ``>`` or newline):
    demo chunks recur across thousands of prompts, so a 32-shot prompt costs ~33 numbers, not 2 KB."""

    _SPLIT = re.compile(r"(?<=[>\n])")

    def __init__(self) -> None:
        self.table: list[str] = []
        self.index: dict[str, int] = {}

    def encode(self, text: str) -> list[int]:
        out = []
        for piece in self._SPLIT.split(text):
            if piece:
                if piece not in self.index:
                    self.index[piece] = len(self.table)
                    self.table.append(piece)
                out.append(self.index[piece])
        return out


def _task_data(config: dict[str, Any], data_dir: str | None) -> _TaskData:
    """Re-load the task's support and eval examples as the cell's run did (for media and demo texts)."""
    from harness.registry import get_task_class

    tcfg = config.get("task", {})
    out = _TaskData()
    try:
        tt = tcfg.get("template_text")
        out.template = PromptTemplate(**tt) if isinstance(tt, dict) else None
    except TypeError:
        out.template = None
    try:
        task = get_task_class(tcfg["name"])(data_dir, tcfg.get("options") or {})
        for split in dict.fromkeys([tcfg.get("support_split") or task.support_split,
                                    tcfg.get("eval_split") or task.eval_split]):
            for ex in task.examples(split):
                out.examples.setdefault(ex.id, ex)
        if out.template is None:
            out.template = task.template(None)[1]
    except (HarnessError, KeyError, OSError, ValueError) as exc:
        out.error = f"images and demo texts of task {tcfg.get('name')} unavailable: {exc}"
        log.warning("viewer: %s", out.error)
    return out


def _demo_text(td: _TaskData, ex: Example | None, query: bool = False) -> str:
    """The example's text as a demo (with its answer), or as the query stem."""
    if ex is None or td.template is None:
        return ""
    try:
        return td.template.format_query(ex) if query else td.template.format_demo(ex)
    except HarnessError:
        return ""


def build_data(paths: Sequence[str | Path], data_dir: str | None = None, thumb_size: int = 96,
               max_images: int = 2000) -> dict[str, Any]:
    """Everything the page shows, as one JSON-able dict."""
    from harness.reporting.report import compare, load_results

    cells = load_results(paths)
    thumbs = _Thumbs(thumb_size, max_images)
    task_index: dict[str, int] = {}
    task_data: list[_TaskData] = []
    # Per task configuration: example id -> [media refs, demo text], written once and referenced by
    # id from every sample of every cell (a 32-shot cell repeats the same demos thousands of times).
    tables: list[dict[str, list[Any]]] = []
    notes: list[str] = []
    strings = _Strings()
    out_cells = []
    prim = cells[cells["primary"]].sort_values(["task", "shots", "checkpoint", "seed"])
    for r in prim.itertuples():
        metrics = json.loads(Path(r.file).read_text(encoding="utf-8"))
        config = metrics["config"]
        tkey = json.dumps({k: config.get("task", {}).get(k) for k in ("name", "options", "support_split",
                                                                        "eval_split")}, sort_keys=True, default=str)
        if tkey not in task_index:
            task_index[tkey] = len(task_data)
            task_data.append(_task_data(config, data_dir))
            tables.append({})
            if task_data[-1].error:
                notes.append(task_data[-1].error)
        tix = task_index[tkey]
        td, table = task_data[tix], tables[tix]

        def entry(eid: str, td: _TaskData = td, table: dict[str, list[Any]] = table) -> None:
            if eid not in table:
                ex = td.examples.get(eid)
                table[eid] = [[_media_ref(m) for m in ex.media] if ex else [], _demo_text(td, ex),
                              _demo_text(td, ex, query=True)]

        samples = []
        preds = Path(r.file).parent / "predictions.jsonl"
        records = []
        if preds.is_file():
            try:
                records = [rec.to_json() for rec in read_records(preds, torn_tail_ok=False)]
            except DataError as exc:
                notes.append(f"{exc}; cell {r.checkpoint} {r.task} {r.shots}-shot seed {r.seed} shows no samples")
        else:
            notes.append(f"{preds}: missing; cell {r.checkpoint} {r.task} {r.shots}-shot seed {r.seed} has no samples")
        for rec in records:
            qid = str(rec.get("query_id"))
            demo_ids = [str(d) for d in rec.get("demo_ids", [])]
            for eid in [qid, *demo_ids]:
                entry(eid)
            answers = rec.get("answers", rec.get("references", []))
            samples.append({
                "id": qid,
                "demos": demo_ids,
                "prompt": strings.encode(rec.get("prompt", "")),
                "raw": rec.get("raw_output", ""),
                "pred": rec.get("prediction", ""),
                "refs": [str(a) for a in answers] if isinstance(answers, list) else [str(answers)],
                "score": rec.get("score"),
                "error": rec.get("error"),
            })
        bounded = all(s["score"] is not None and 0.0 <= float(s["score"]) <= 1.0 for s in samples)
        out_cells.append({
            "checkpoint": r.checkpoint, "task": r.task, "shots": int(r.shots), "seed": int(r.seed),
            "metric": r.metric, "value": r.value, "n": int(r.n), "n_failed": int(r.n_failed),
            "bounded": bounded, "ex": tix,
            # Flamingo's zero-shot: text-only demos, their media removed
            "text_only": int(config.get("shots", 0)) == 0,
            "samples": samples,
        })
    _embed(out_cells, tables, thumbs)
    if thumbs.failed:
        notes.append(f"{thumbs.failed} media could not be read for thumbnails (their file names are shown; "
                     "the log names them)")
    if thumbs.skipped:
        notes.append(f"thumbnail cap reached: {len(thumbs.urls)} images embedded, {thumbs.skipped} more media "
                     f"references show their file name only (raise --max-images)")
    table = compare(paths)
    paired_html = ""
    if cells["checkpoint"].nunique() >= 2:
        paired_html = _paired_html(paths, sorted(cells["checkpoint"].unique())[0], notes)
    return {
        "title": "Results: " + ", ".join(sorted(cells["checkpoint"].unique())),
        "series_html": _series_html(paths, notes) if cells["step"].notna().any() else "",
        "table_html": _table_html(table),
        "paired_html": paired_html,
        "plot": _plot_url(paths, notes),
        "cells": out_cells,
        "examples": tables,
        "strings": strings.table,
        "images": thumbs.urls,
        "notes": notes,
        "thumb_size": thumb_size,
        "max_images": max_images,
    }


def _media_ref(m: Media) -> list[Any]:
    """[media, file name]; :func:`_embed` replaces the media by its thumbnail key ("" if none)."""
    return [m, Path(str(m.identity)).name]


def _embed(cells: list[dict[str, Any]], tables: list[dict[str, list[Any]]], thumbs: _Thumbs,
           first_page: int = 50) -> None:
    """Make thumbnails under the cap: first every cell's first page (queries, then demos), then the rest."""
    def refs(cell: dict[str, Any], samples: list[dict[str, Any]]):
        table = tables[cell["ex"]]
        for s in samples:
            yield from table[s["id"]][0]
            if not cell["text_only"]:
                for did in s["demos"]:
                    yield from table[did][0]

    for part in (slice(0, first_page), slice(first_page, None)):
        for c in cells:
            for ref in refs(c, c["samples"][part]):
                if not isinstance(ref[0], str):
                    ref[0] = thumbs.key(ref[0]) or ""
    for table in tables:  # media never shown (0-shot demos only): no thumbnail, no object left in the JSON
        for imgs, *_ in table.values():
            for ref in imgs:
                if not isinstance(ref[0], str):
                    ref[0] = ""


def _table_html(table: pd.DataFrame) -> str:
    from harness.reporting.report import TABLE_NOTE

    head = "".join(f"<th>{html.escape(f'{ck} {shots}-shot')}</th>" for ck, shots in table.columns)
    rows = []
    for (task, metric), vals in zip(table.index, table.to_numpy()):
        cells = "".join(f"<td>{'' if pd.isna(v) else html.escape(str(v))}</td>" for v in vals)
        rows.append(f"<tr><td>{html.escape(str(task))}</td><td>{html.escape(str(metric))}</td>{cells}</tr>")
    return (f"<table class='summary'><tr><th>task</th><th>metric</th>{head}</tr>{''.join(rows)}</table>"
            f"<p class='note'>{html.escape(TABLE_NOTE)}</p>")


def _paired_html(paths: Sequence[str | Path], baseline: str, notes: list[str]) -> str:
    from harness.reporting.paired import format_p, paired_compare

    try:
        df = paired_compare(paths, baseline)
    except HarnessError as exc:
        notes.append(f"paired differences: {exc}")
        return ""
    head = ["task", "shots", "checkpoint", "delta (B-A)", "95% CI", "p", "p (Holm)", "", "note"]
    rows = []
    for r in df.itertuples():
        ci = "" if math.isnan(r.ci_low) else f"[{r.ci_low:.2f}, {r.ci_high:.2f}]"
        delta = "" if math.isnan(r.delta) else f"{r.delta:+.2f}"
        p = "" if math.isnan(r.p) else format_p(r.p)
        ph = "" if math.isnan(r.p_holm) else format_p(r.p_holm)
        vals = [r.task, r.shots, r.checkpoint, delta, ci, p, ph, "*" if r.significant else "", r.note]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in vals) + "</tr>")
    return (f"<h3>Paired differences vs {html.escape(baseline)}</h3><table class='summary'><tr>"
            + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>"
            "<p class='note'>95% paired bootstrap interval over queries; two-sided sign-flip permutation p; "
            "* = significant after Holm over the tested rows (docs/statistics.md)</p>")


def _series_html(paths: Sequence[str | Path], notes: list[str]) -> str:
    """The series view (results along a training run, in step-N folders): compare --series' table
    and its metric-vs-step plot."""
    from harness.reporting.plots import plot_series
    from harness.reporting.report import TABLE_NOTE
    from harness.reporting.series import series, series_table

    try:
        df = series(paths)
        table = series_table(df)
    except HarnessError as exc:
        notes.append(f"no series view: {exc}")
        return ""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in ["run", "step", *table.columns])
    rows = "".join("<tr>" + "".join(f"<td>{'' if pd.isna(v) else html.escape(str(v))}</td>" for v in [run, step, *vals])
                   + "</tr>" for (run, step), vals in zip(table.index, table.to_numpy()))
    img = ""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            (out,) = plot_series(df, Path(tmp) / "series.png", dpi=150)
            img = ("<img alt='metric vs training step' src='data:image/png;base64,"
                   + base64.b64encode(out.read_bytes()).decode("ascii") + "'>")
        except (HarnessError, ValueError) as exc:
            notes.append(f"no series plot: {exc}")
    return (f"<h3>Series: checkpoints by training step</h3><table class='summary series'><tr>{head}</tr>{rows}</table>"
            f"<p class='note'>{html.escape(TABLE_NOTE)}</p>{img}")


def _plot_url(paths: Sequence[str | Path], notes: list[str]) -> str:
    from harness.reporting.report import plot

    with tempfile.TemporaryDirectory() as tmp:
        try:
            out = plot(paths, Path(tmp) / "plot.png")
        except (HarnessError, ValueError) as exc:
            notes.append(f"no plot: {exc}")
            return ""
        return "data:image/png;base64," + base64.b64encode(out.read_bytes()).decode("ascii")


def render_html(data: dict[str, Any]) -> str:
    from harness.reporting.viewer_page import PAGE

    blob = json.dumps(data, separators=(",", ":"), default=str).replace("</", "<\\/")
    return PAGE.replace("__TITLE__", html.escape(data["title"])).replace("__DATA__", blob)


def write_viewer(paths: Sequence[str | Path], output: str | Path, data_dir: str | None = None,
                 thumb_size: int = 96, max_images: int = 2000) -> ViewerInfo:
    """Write the viewer for the results under ``paths`` to ``output``; returns what it holds."""
    if thumb_size < 8:
        raise HarnessError(f"--thumb-size {thumb_size}: must be at least 8 (pixels)")
    if max_images < 0:
        raise HarnessError(f"--max-images {max_images}: must be 0 or more")
    output = Path(output)
    if output.is_dir():
        raise HarnessError(f"--output {output} is a folder; give an .html file path")
    data = build_data(paths, data_dir, thumb_size, max_images)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render_html(data), encoding="utf-8")
    n_samples = sum(len(c["samples"]) for c in data["cells"])
    note = f"; {len(data['notes'])} notes shown at the top of the page" if data["notes"] else ""
    return ViewerInfo(output, output.stat().st_size, len(data["cells"]), n_samples, len(data["images"]), note)
