r"""LaTeX tables for a paper: booktabs, a two-level header (checkpoint, then shots), numbers only.

    from harness.reporting.tidy import tidy
    from harness.reporting.latex import latex_table
    print(latex_table(tidy(["results/A", "results/B"]), spread="std", bold_best=True))

Needs ``\usepackage{booktabs}`` in the preamble (nothing else). Cells are the mean over seeds and,
as asked, ``$\pm$`` the std over seeds or the 95% interval ``[low, high]`` in small type; ``n``, the
seeds and what the spread is go in the caption, so the cells stay numbers.
"""

from __future__ import annotations

import math
import re
from typing import Literal, Sequence

import pandas as pd

from harness.errors import HarnessError

Spread = Literal["std", "ci", "ci-demos", "none"]
#: more number columns than this make a two-column-wide ``table*``
WIDE_COLUMNS = 6
SPREADS = ("std", "ci", "ci-demos", "none")

_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
            # OT1, LaTeX's default font encoding, prints < and > as inverted ! and ?
            "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}"}
_SPECIAL_RE = re.compile(r"<=|>=|[\\&%$#_{}~^<>|]")


def escape(text: str) -> str:
    """``text`` as LaTeX text that prints as written in the default fonts (``<=`` as a math sign)."""
    return _SPECIAL_RE.sub(lambda m: {"<=": r"$\leq$", ">=": r"$\geq$"}.get(m.group(), _SPECIAL.get(m.group(), "")),
                           str(text))


def latex_table(df: pd.DataFrame, spread: Spread = "std", bold_best: bool = False, caption: str | None = None,
                label: str = "tab:fewshot", digits: int = 2, wide: bool | None = None, fit: bool = False) -> str:
    r"""A ``table`` environment from :func:`harness.reporting.tidy.tidy`'s rows: one row per task and
    metric (one stub column ``task (metric)`` when every task has one metric), one column group per
    checkpoint with a column per shot count; ``bold_best`` sets in bold the highest mean of each row
    at each shot count (ties all bold). ``caption`` replaces the generated description, which names
    the spread, the seeds and ``n``. ``wide``: a ``table*`` spanning both columns of a two-column
    paper (default: when there are more than :data:`WIDE_COLUMNS` number columns). ``fit`` scales the
    tabular to the text width (``\resizebox``, needs ``\usepackage{graphicx}``)."""
    if spread not in SPREADS:
        raise HarnessError(f"spread {spread!r}: one of {', '.join(SPREADS)}")
    if df.empty:
        raise HarnessError("nothing to tabulate: no rows")
    checkpoints = list(dict.fromkeys(df["checkpoint"]))
    shots = {ck: sorted(df.loc[df["checkpoint"] == ck, "shots"].unique()) for ck in checkpoints}
    columns = [(ck, s) for ck in checkpoints for s in shots[ck]]
    rows = list(dict.fromkeys(zip(df["task"], df["metric"])))
    by = {(r.task, r.metric, r.checkpoint, int(r.shots)): r for r in df.itertuples()}

    def fmt(v: float) -> str:
        return f"{v:.{digits}f}"

    best: dict[tuple[str, str, int], float] = {}
    if bold_best:
        for (task, metric, ck, s), r in by.items():
            key = (task, metric, s)
            if len({c for c in checkpoints if (task, metric, c, s) in by}) > 1 and not math.isnan(r.mean):
                best[key] = max(best.get(key, -math.inf), round(r.mean, digits))

    def cell(task: str, metric: str, ck: str, s: int) -> str:
        r = by.get((task, metric, ck, s))
        if r is None or math.isnan(r.mean):
            return "--"
        text = fmt(r.mean)
        if (task, metric, s) in best and round(r.mean, digits) == best[(task, metric, s)]:
            text = rf"\textbf{{{text}}}"
        if spread == "std" and r.seeds > 1 and not math.isnan(r.std):
            text += rf"{{\scriptsize\,$\pm${fmt(r.std)}}}"
        elif spread == "ci" and not math.isnan(r.ci_low):
            text += rf"{{\scriptsize\,[{fmt(r.ci_low)}, {fmt(r.ci_high)}]}}"
        elif spread == "ci-demos" and not math.isnan(r.ci_demos_low):
            text += rf"{{\scriptsize\,[{fmt(r.ci_demos_low)}, {fmt(r.ci_demos_high)}]}}"
        return text

    one_metric = len({t for t, _ in rows}) == len(rows)
    stub = 1 if one_metric else 2
    spec = "l" * stub + "".join("r" * len(shots[ck]) for ck in checkpoints)
    top, rules, start = [r"\multicolumn{%d}{l}{}" % stub if stub > 1 else ""], [], stub + 1
    for ck in checkpoints:
        k = len(shots[ck])
        top.append(rf"\multicolumn{{{k}}}{{c}}{{{escape(ck)}}}")
        rules.append(rf"\cmidrule(lr){{{start}-{start + k - 1}}}")
        start += k
    env = "table*" if (len(columns) > WIDE_COLUMNS if wide is None else wide) else "table"
    lines = [
        "% needs \\usepackage{booktabs}" + (" and \\usepackage{graphicx}" if fit else ""),
        rf"\begin{{{env}}}[t]",
        r"\centering",
        r"\setlength{\tabcolsep}{4pt}",
        rf"\caption{{{escape(caption) if caption else _caption(df, spread, bold_best)}}}",
        rf"\label{{{label}}}",
        *([r"\resizebox{\textwidth}{!}{%"] if fit else []),
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(top) + r" \\",
        " ".join(rules),
        " & ".join((["Task"] if one_metric else ["Task", "Metric"]) + [str(s) for _, s in columns]) + r" \\",
        r"\midrule",
    ]
    suite_started = False
    for task, metric in rows:
        if str(task).startswith("suite ") and not suite_started:
            lines.append(r"\midrule")
            suite_started = True
        cells = [cell(task, metric, ck, s) for ck, s in columns]
        stub_cells = [f"{escape(task)} ({escape(metric)})"] if one_metric else [escape(task), escape(metric)]
        lines.append(" & ".join(stub_cells + cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}" + ("}" if fit else ""), rf"\end{{{env}}}"]
    return "\n".join(lines) + "\n"


def _caption(df: pd.DataFrame, spread: Spread, bold_best: bool) -> str:
    tasks = df[~df["task"].str.startswith("suite ")]
    seeds = sorted(set(int(s) for s in tasks["seeds"]))
    seed_text = f"{seeds[0]} seeds" if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]} seeds"
    if seeds == [1]:
        seed_text = "one seed"
    parts = [f"Few-shot results: mean over {seed_text} (demonstration draws)"]
    if spread == "std" and max(seeds) > 1:
        parts[0] += r" $\pm$ standard deviation over seeds (population, ddof=0)"
    elif spread == "ci":
        parts[0] += ", [95\\% confidence interval over queries]"
    elif spread == "ci-demos":
        parts[0] += ", [95\\% confidence interval over queries and demonstration draws]"
    parts[0] += "; columns: checkpoint, then shots"
    ns = {}
    for task, g in tasks.groupby("task", sort=False):
        lo, hi = int(g["n"].min()), int(g["n"].max())
        ns[task] = f"{lo}" if lo == hi else f"{lo}-{hi}"
    if len(set(ns.values())) == 1:
        parts.append(f"$n={next(iter(ns.values()))}$ evaluation queries per seed")
    else:
        parts.append("evaluation queries per seed: " + ", ".join(f"{escape(t)} $n={v}$" for t, v in ns.items()))
    failed = int(tasks["failed"].sum())
    if failed:
        parts.append(f"{failed} samples failed and are scored as wrong")
    if bold_best:
        parts.append("Bold: the best mean of each row at each number of shots")
    return ". ".join(parts) + "."


def latex_rows(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Any table of strings (e.g. the paired differences) as a booktabs ``tabular``, escaped."""
    spec = "l" * len(headers)
    lines = [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(escape(h) for h in headers) + r" \\",
             r"\midrule"]
    lines += [" & ".join(escape(c) for c in r) + r" \\" for r in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"
