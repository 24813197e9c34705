"""Numbers ready for a paper: the tidy table (CSV/Parquet, numeric columns, the 95% interval computed
here from the predictions), the booktabs LaTeX table compiled by a real pdflatex, and the plots
(log2 shots axis, a band, the legend outside the data, PNG/PDF/SVG), on real runs of the two baselines."""

from __future__ import annotations

import io
import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli

SHOTS, SEEDS, LIMIT = ("0", "4"), ("0", "1"), 40
# labels with LaTeX's special characters: they must print as written
LABELS = ("base_1+co", "prior@2.x")  # labels are one safe path component; other specials: test_escape


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("paper") / "res"
    run_cli("run", "--model", "demo-majority,support-prior", "--label", LABELS[0], "--label", LABELS[1],
            "--tasks", "easyvqa", "--shots", *SHOTS, "--seeds", *SEEDS, "--limit", str(LIMIT), "--output", str(out), "-q")
    return out


def _cell(results: Path, label: str, shots: int, seed: int) -> Path:
    """The folder of a cell, found by its recorded configuration (labels are sanitised into folder names)."""
    (found,) = [p.parent for p in results.rglob("metrics.json")
                if (c := json.loads(p.read_text())["config"])["label"] == label and c["shots"] == shots
                and c["seed"] == seed]
    return found


def _predictions(results: Path, label: str, shots: int) -> list[dict[str, dict]]:
    """Per seed: query id -> record."""
    out = []
    for seed in SEEDS:
        f = _cell(results, label, shots, int(seed)) / "predictions.jsonl"
        out.append({r["query_id"]: r for r in map(json.loads, f.read_text().splitlines())})
    return out


def _wilson(m: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval, written out from its formula (docs/statistics.md)."""
    centre = m + z * z / (2 * n)
    half = z * math.sqrt(m * (1 - m) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


# ---- tidy ---------------------------------------------------------------------------------------------
def test_tidy_rows_are_numbers_computed_from_the_cells(results):
    from harness.reporting.tidy import COLUMNS, tidy

    df = tidy([results])
    assert list(df.columns) == COLUMNS and len(df) == 2 * 2  # checkpoints x shots
    for col in ("mean", "std", "ci_low", "ci_high"):
        assert df[col].dtype == np.float64
    for col in ("shots", "n", "seeds", "failed"):
        assert df[col].dtype == np.int64
    for r in df.itertuples():
        seeds = _predictions(results, r.checkpoint, r.shots)
        per_seed = [100 * np.mean([x["score"] for x in s.values()]) for s in seeds]
        assert r.mean == pytest.approx(np.mean(per_seed)) and r.std == pytest.approx(np.std(per_seed))
        assert (r.n, r.seeds, r.failed) == (LIMIT, 2, 0)
        # the interval: per query, its mean over the seeds; then Wilson over the queries
        per_query = [np.mean([s[q]["score"] for s in seeds]) for q in seeds[0]]
        lo, hi = _wilson(float(np.mean(per_query)), len(per_query))
        assert (r.ci_low, r.ci_high) == (pytest.approx(100 * lo), pytest.approx(100 * hi))
        assert r.ci_low < r.mean < r.ci_high and "wilson" in r.ci_method
        cfg = json.loads((_cell(results, r.checkpoint, r.shots, 0) / "metrics.json").read_text())
        assert r.model == cfg["config"]["model"]["name"] and r.label == r.checkpoint and len(r.config_key) >= 6


def test_compare_csv_and_parquet_are_the_tidy_table(results, tmp_path):
    from harness.reporting.tidy import tidy

    df = tidy([results])
    csv = run_cli("compare", str(results), "--format", "csv").stdout
    back = pd.read_csv(io.StringIO(csv))
    assert list(back.columns) == list(df.columns)
    assert back["mean"].dtype == np.float64 and back["n"].dtype == np.int64  # numbers, not "86.20 (0.22) n=1000"
    np.testing.assert_allclose(back[["mean", "std", "ci_low", "ci_high"]], df[["mean", "std", "ci_low", "ci_high"]])
    pq = tmp_path / "t.parquet"
    run_cli("compare", str(results), "-o", str(pq))  # format from the suffix
    pd.testing.assert_frame_equal(pd.read_parquet(pq), df, check_dtype=False)
    assert pd.read_parquet(pq)["seeds"].dtype == np.int64
    proc = run_cli("compare", str(results), "--format", "parquet", check=False)
    assert proc.returncode == 2 and "--output FILE.parquet" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("compare", str(results), "-o", str(tmp_path / "no" / "t.csv"), check=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_markdown_is_unchanged(results):
    md = run_cli("compare", str(results)).stdout
    assert md.splitlines()[0] == ("| task | metric | base_1+co 0-shot | base_1+co 4-shot | prior@2.x 0-shot "
                                  "| prior@2.x 4-shot |")
    assert " n=40 |" in md.splitlines()[2] and "population std ddof=0" in md


# ---- LaTeX ---------------------------------------------------------------------------------------------
def _pdflatex() -> str:
    """pdflatex with booktabs (``./scripts/setup.sh --tests`` installs it); else the test is skipped."""
    def ready() -> bool:
        return bool(shutil.which("pdflatex")) and subprocess.run(["kpsewhich", "booktabs.sty"],
                                                                 capture_output=True).returncode == 0
    if not ready():
        pytest.skip("no pdflatex with booktabs: ./scripts/setup.sh --tests installs it (as root)")
    return shutil.which("pdflatex")


def _compile(tex: str, folder: Path, options: str = "", packages: str = "booktabs") -> tuple[str, str]:
    """(log, text of the PDF) of a document holding ``tex``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "table.tex").write_text(tex)
    (folder / "doc.tex").write_text(f"\\documentclass[{options}]{{article}}\n\\usepackage{{{packages}}}\n"
                                    "\\begin{document}\n\\input{table.tex}\n\\end{document}\n")
    proc = subprocess.run([_pdflatex(), "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=folder,
                          capture_output=True, text=True)
    log = (folder / "doc.log").read_text(errors="replace")
    assert proc.returncode == 0, log[-3000:]
    text = ""
    if shutil.which("pdftotext"):
        text = subprocess.run(["pdftotext", "-layout", str(folder / "doc.pdf"), "-"], capture_output=True,
                              text=True).stdout
    return log, text


def test_latex_table_structure(results):
    from harness.reporting.latex import latex_table
    from harness.reporting.tidy import tidy

    df = tidy([results])
    tex = latex_table(df, bold_best=True, label="tab:base")
    lines = tex.splitlines()
    assert lines[0] == "% needs \\usepackage{booktabs}" and "\\begin{table}[t]" in lines  # 4 columns: not wide
    assert "\\label{tab:base}" in tex and "\\toprule" in tex and "\\bottomrule" in tex
    # two-level header: checkpoints over their shots, a rule under each group
    assert " & \\multicolumn{2}{c}{base\\_1+co} & \\multicolumn{2}{c}{prior@2.x} \\\\" in lines
    assert "\\cmidrule(lr){2-3} \\cmidrule(lr){4-5}" in lines and "Task & 0 & 4 & 0 & 4 \\\\" in lines
    row = next(x for x in lines if x.startswith("easyvqa (accuracy) & "))
    cells = row.removesuffix(" \\\\").split(" & ")[1:]
    assert "n=" not in row  # numbers only; n is in the caption
    assert f"$n={LIMIT}$ evaluation queries per seed" in tex and "2 seeds" in tex
    for (r, c) in zip(df.sort_values(["checkpoint", "shots"]).itertuples(), cells):
        assert f"{r.mean:.2f}" in c and f"$\\pm${r.std:.2f}" in c
    # the best mean at each shot count is bold, the other not
    for shots in (0, 4):
        sub = df[df.shots == shots]
        best = sub.loc[sub["mean"].idxmax()]
        assert f"\\textbf{{{best['mean']:.2f}}}" in row
        other = sub.loc[sub["mean"].idxmin()]
        assert f"\\textbf{{{other['mean']:.2f}}}" not in row
    ci = latex_table(df, spread="ci")
    r0 = df.iloc[0]
    assert f"[{r0.ci_low:.2f}, {r0.ci_high:.2f}]" in ci and "95\\% confidence interval" in ci and "\\textbf" not in ci
    assert "\\pm" not in latex_table(df, spread="none").split("\\label")[1]


def test_latex_compiles_cleanly_and_prints_as_written(results, tmp_path):
    from harness.reporting.latex import latex_rows, latex_table
    from harness.reporting.tidy import tidy

    df = tidy([results])
    log, text = _compile(latex_table(df, bold_best=True), tmp_path / "narrow")
    warnings = [x for x in log.splitlines() if "Warning" in x and "Label(s) may have changed" not in x]
    assert "Overfull" not in log and not warnings, warnings
    if text:
        # (OT1 draws \_ as a rule, which pdftotext reads as a space)
        assert "1+co" in text and "prior@2.x" in text and "n = 40" in text and "±" in text and "\\" not in text
    # a p-value bound and comparison signs: math, not OT1's inverted ! and ?
    log, text = _compile(latex_rows(["p", "note"], [["<=0.0001", "a < b > c"]]), tmp_path / "signs")
    if text:
        assert "≤0.0001" in text and "a<b>c" in text.replace(" ", "") and "¡" not in text and "¿" not in text
    # every LaTeX special (a plug-in task's name, a caption's words) prints as written
    log, text = _compile(latex_rows(["name"], [["base_1&co #2 ~x 50% $5 {a} b^c d\\e f|g"]]), tmp_path / "specials")
    assert "Undefined control sequence" not in log and "Missing" not in log
    if text:  # (pdftotext reads OT1's ~ and ^ accents as their spacing forms)
        assert "base 1&co #2 ˜x 50% $5 {a} bˆc d\\e f|g" in text
    # the README's table (3 checkpoints x 3 shots): table* across a two-column page, scaled to fit
    wide = pd.concat([df, df.assign(checkpoint="third"), df[df.shots == 0].assign(shots=32)], ignore_index=True)
    tex = latex_table(wide, fit=True)
    assert "\\begin{table*}[t]" in tex and "\\resizebox{\\textwidth}{!}{%" in tex
    log, _ = _compile(tex, tmp_path / "wide", options="twocolumn", packages="booktabs,graphicx")
    assert "Overfull" not in log


def test_compare_latex_cli(results, tmp_path):
    out = tmp_path / "t.tex"
    run_cli("compare", str(results), "-o", str(out), "--bold-best", "--spread", "ci", "--tex-label", "tab:x",
            "--caption", "My caption_1.")
    tex = out.read_text()
    assert "\\caption{My caption\\_1.}" in tex and "\\label{tab:x}" in tex and "\\textbf{" in tex
    proc = run_cli("compare", str(results), "--format", "latex", "--baseline", LABELS[0])
    assert proc.stdout.startswith("% needs \\usepackage{booktabs}")
    assert "\\begin{tabular}{lllllllllllllll}" in proc.stdout  # then the paired table
    assert "<=" not in proc.stdout  # p-value bounds as \leq


# ---- plots ---------------------------------------------------------------------------------------------
def test_plot_files_axis_band_and_legend(results, tmp_path):
    from PIL import Image

    run_cli("compare", str(results), "--plot", str(tmp_path / "fig.png"), "--plot-formats", "pdf,svg")
    png = Image.open(tmp_path / "fig.png")
    # one task: a paper column (3.3 in at 300 dpi, cropped to the drawing)
    assert 800 <= png.size[0] <= 1100 and 500 <= png.size[1] <= 1000
    assert (tmp_path / "fig.pdf").read_bytes().startswith(b"%PDF")
    assert "<svg" in (tmp_path / "fig.svg").read_text()[:500]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from harness.reporting.plots import _figure
    from harness.reporting.tidy import tidy

    df = tidy([results])
    style = {ck: (f"C{i}", "o") for i, ck in enumerate(LABELS)}
    fig = _figure(plt, df, ["easyvqa"], list(LABELS), style, "std")
    fig.canvas.draw()
    ax = fig.axes[0]
    assert ax.get_xscale() == "symlog" and [t.get_text() for t in ax.get_xticklabels()] == ["0", "4"]
    # 4 shots sits log2-spaced from 0: the 0..1 linear part is not stretched over the axis
    x0, x4 = ax.transData.transform([(0, 0), (4, 0)])[:, 0]
    assert x4 > x0
    legend = fig.legends[0].get_window_extent()
    assert not legend.overlaps(ax.get_window_extent())  # the legend is outside the data
    bands = [c for c in ax.collections if c.__class__.__name__ in ("PolyCollection", "FillBetweenPolyCollection")]
    assert len(bands) == 2  # one seed-spread band per checkpoint
    w, h = fig.get_size_inches()
    assert w == pytest.approx(3.3)
    plt.close(fig)


def test_plot_per_task_and_grid_layouts(tmp_path):
    from harness.reporting.plots import plot_tidy

    rows = [{"task": t, "metric": "accuracy", "checkpoint": ck, "shots": s, "mean": 50 + s + i, "std": 1.0,
             "ci_low": 45.0 + s, "ci_high": 55.0 + s + i, "n": 100, "seeds": 3, "primary": True}
            for t in ("okvqa", "vqav2") for i, ck in enumerate(("a", "b")) for s in (0, 4, 8, 16, 32)]
    df = pd.DataFrame(rows)
    written = plot_tidy(df, tmp_path / "f.svg", layout="per-task", band="ci")
    assert [p.name for p in written] == ["f_okvqa.svg", "f_vqav2.svg"]
    written = plot_tidy(df, tmp_path / "g.png", formats=["pdf"])
    assert [p.name for p in written] == ["g.png", "g.pdf"]
    from PIL import Image

    assert Image.open(written[0]).size[0] > 1500  # two panels: the page width (6.9 in)
    from harness.errors import HarnessError

    with pytest.raises(HarnessError, match="jpg"):
        plot_tidy(df, tmp_path / "f.jpg")
    with pytest.raises(HarnessError, match="does not exist"):
        plot_tidy(df, tmp_path / "missing" / "f.png")


def test_latex_breakdowns_suite_rows_and_missing_cells(tmp_path):
    from harness.reporting.latex import latex_table

    rows = [{"task": "vqav2", "metric": m, "checkpoint": ck, "shots": s, "mean": v + s, "std": 0.5, "ci_low": math.nan,
             "ci_high": math.nan, "n": 5000, "seeds": 3, "failed": 0, "primary": m == "accuracy"}
            for m, v in (("accuracy", 50.0), ("accuracy.yes/no", 70.0)) for ck in ("A", "B") for s in (0, 4)
            if not (ck == "B" and s == 4 and m != "accuracy")]
    rows.append({"task": "suite openflamingo", "metric": "mean of 8: ...", "checkpoint": "A", "shots": 0,
                 "mean": 40.0, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 80000, "seeds": 1,
                 "failed": 3, "primary": True})
    tex = latex_table(pd.DataFrame(rows), spread="ci")
    lines = tex.splitlines()
    assert "Task & Metric & 0 & 4 & 0 & 4 \\\\" in lines  # two metrics of a task: a Metric column
    assert "vqav2 & accuracy.yes/no & 70.00 & 74.00 & 70.00 & -- \\\\" in lines  # no interval: the mean alone
    assert lines[lines.index("suite openflamingo & mean of 8: ... & 40.00 & -- & -- & -- \\\\") - 1] == "\\midrule"
    assert "$n=5000$" in tex and "failed" not in tex  # a suite row repeats its tasks' failures: not counted again
    log, _ = _compile(tex, tmp_path)
    assert "Overfull" not in log
