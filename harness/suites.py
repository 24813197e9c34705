"""Named suites of tasks: ``--tasks flamingo16`` runs a published benchmark set with its shots.

A suite names its tasks (by registered name, so a suite resolves once a plug-in or a later
module registers them), the shots its paper reports, and optionally per-task shots (a
zero-shot-only benchmark). ``compare`` and the run summary add one row per suite: the mean
of its tasks' primary metrics (each on 0-100), only where every task of the suite is present.

Define your own in a plug-in file (``--include my_suites.py``)::

    from harness.suites import define_suite
    define_suite("my_vqa", tasks=["vqav2", "okvqa", "textvqa"], shots=[0, 4], description="my VQA set")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from harness.errors import HarnessError



@dataclass(frozen=True)
class Suite:
    """A named set of tasks with the shots they are reported at.

    task_shots: per-task shots that replace ``shots`` (e.g. RareAct is zero-shot only); in the
    summary row such a task contributes its score at its largest shots not above the row's.
    protocol: the preset of the paper the suite comes from (harness.protocols), applied to
    its tasks unless ``run --protocol`` (or a task's own ``protocol`` option) says otherwise.
    """

    name: str
    tasks: tuple[str, ...]
    shots: tuple[int, ...]
    description: str = ""
    task_shots: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    protocol: str | None = None

    def shots_for(self, task: str) -> tuple[int, ...]:
        return tuple(self.task_shots.get(task, self.shots))


_SUITES: dict[str, Suite] = {}


def define_suite(name: str, tasks: Sequence[str], shots: Sequence[int], description: str = "",
                 task_shots: Mapping[str, Sequence[int]] | None = None, protocol: str | None = None) -> Suite:
    """Register a suite (built-in or from a plug-in file). A name may not be taken twice."""
    if not tasks:
        raise HarnessError(f"suite {name!r}: give at least one task")
    if name in _SUITES and _SUITES[name].tasks != tuple(tasks):
        raise HarnessError(f"suite {name!r} is defined twice with different tasks")
    extra = set(task_shots or {}) - set(tasks)
    if extra:
        raise HarnessError(f"suite {name!r}: task_shots names {', '.join(sorted(extra))}, not among its tasks")
    suite = Suite(name, tuple(tasks), tuple(int(s) for s in shots), description,
                  {k: tuple(int(s) for s in v) for k, v in (task_shots or {}).items()}, protocol)
    _SUITES[name] = suite
    return suite


def get_suite(name: str) -> Suite | None:
    return _SUITES.get(name)


def suites() -> list[Suite]:
    return [_SUITES[n] for n in sorted(_SUITES)]


@dataclass(frozen=True)
class Expansion:
    """``--tasks`` with suites expanded: task names (each once, in order), per-task shots and the
    protocol preset of the suite each task came from (none for tasks named alone)."""

    tasks: tuple[str, ...]
    shots: Mapping[str, tuple[int, ...]]
    protocols: Mapping[str, str] = field(default_factory=dict)


def expand(names: Sequence[str], explicit_shots: Sequence[int] | None, default_shots: Sequence[int],
           registered: Sequence[str]) -> Expansion:
    """Expand suites in ``names``. Shots: explicit ``--shots`` for every task; otherwise a suite's
    tasks get the suite's published shots and plain tasks ``default_shots``. A suite whose tasks are
    not all registered is an error naming the missing ones."""
    tasks: list[str] = []
    shots: dict[str, tuple[int, ...]] = {}
    protocols: dict[str, str] = {}
    known = set(registered)
    for n in names:
        suite = _SUITES.get(n)
        if suite is None:
            members, own = [n], tuple(default_shots)
        else:
            missing = [t for t in suite.tasks if t not in known]
            if missing:
                raise HarnessError(
                    f"suite {n} needs tasks that are not registered: {', '.join(missing)} "
                    f"(add them with --include or a plug-in package, or run the registered ones by name)")
            members, own = list(suite.tasks), None
        for t in members:
            task_shots = tuple(explicit_shots) if explicit_shots else (own or suite.shots_for(t))
            if t in shots and shots[t] != task_shots and not explicit_shots:
                task_shots = tuple(sorted(set(shots[t]) | set(task_shots)))
            if t not in shots:
                tasks.append(t)
            shots[t] = task_shots
            if suite is not None and suite.protocol and t not in protocols:
                protocols[t] = suite.protocol
    return Expansion(tuple(tasks), shots, protocols)


# ---- built-in suites (by task name; the video tasks resolve once registered) ----------------------
FLAMINGO_SHOTS = (0, 4, 32)  # Flamingo, Table 1
OPENFLAMINGO_SHOTS = (0, 4, 8, 16, 32)  # OpenFlamingo technical report, Table 1
FLAMINGO_VIDEO = ("msvd_qa", "vatex", "msrvtt_qa", "ivqa", "youcook2", "star", "nextqa_mc", "rareact")

define_suite(
    "flamingo16",
    tasks=("okvqa", "vqav2", "coco", "msvd_qa", "vatex", "vizwiz", "flickr30k", "msrvtt_qa", "ivqa", "youcook2",
           "star", "visdial", "textvqa", "nextqa_mc", "hateful_memes", "rareact"),
    shots=FLAMINGO_SHOTS, task_shots={"rareact": (0,)}, protocol="flamingo",
    description="the 16 benchmarks of Flamingo (Alayrac et al. 2022, Table 1) at 0/4/32 shots; RareAct zero-shot",
)
define_suite(
    "openflamingo",
    tasks=("coco", "flickr30k", "vqav2", "okvqa", "textvqa", "vizwiz", "hateful_memes", "imagenet"),
    shots=OPENFLAMINGO_SHOTS, protocol="openflamingo",
    description="the 8 benchmarks of OpenFlamingo (Awadalla et al. 2023) at 0/4/8/16/32 shots",
)
define_suite(
    "video", tasks=FLAMINGO_VIDEO, shots=FLAMINGO_SHOTS, task_shots={"rareact": (0,)}, protocol="flamingo",
    description="the 8 video benchmarks of Flamingo's 16 at 0/4/32 shots; RareAct zero-shot",
)


def add_suite_rows(summary):
    """``summary`` (a DataFrame of task, metric, checkpoint, shots, mean, seeds, n[, primary]) plus one row
    per suite x checkpoint x shots where every task of the suite has its primary metric: the mean of
    those (each 0-100), metric ``mean of N: task1, task2, ...``. A task with its own shots (zero-shot
    only) counts at its largest shots not above the row's."""
    import pandas as pd

    if summary.empty:
        return summary
    prim = summary[summary["primary"]] if "primary" in summary.columns else summary
    value = {(r.checkpoint, r.task, int(r.shots)): (float(r.mean), int(r.n), int(getattr(r, "failed", 0) or 0))
             for r in prim.itertuples()}
    rows = []
    for suite in suites():
        for ck in sorted(set(prim["checkpoint"])):
            row_shots = sorted({s for (c, t, s) in value if c == ck and t in suite.tasks})
            for shots in row_shots:
                got = []
                for t in suite.tasks:
                    hit = value.get((ck, t, shots))
                    if hit is None and t in suite.task_shots:
                        own = [s for s in suite.task_shots[t] if s <= shots and (ck, t, s) in value]
                        hit = value[(ck, t, max(own))] if own else None
                    if hit is None:
                        break
                    got.append(hit)
                else:
                    rows.append({"task": f"suite {suite.name}",
                                 "metric": f"mean of {len(got)}: {', '.join(suite.tasks)}",
                                 "checkpoint": ck, "shots": shots, "mean": sum(g[0] for g in got) / len(got),
                                 "std": float("nan"), "seeds": 1, "n": sum(g[1] for g in got),
                                 "failed": sum(g[2] for g in got), "primary": True})
    if not rows:
        return summary
    return pd.concat([summary, pd.DataFrame(rows)], ignore_index=True)
