"""The command line: run, score, compare, list.

    python run_eval.py run --model NAME [--model-arg k=v ...] --tasks vqav2,okvqa --shots 0 4 32 --seeds 0 1 2
    python run_eval.py score --task vqav2 --predictions preds.json [--split val] [--json]
    python run_eval.py compare results/A results/B [--format markdown|csv|latex] [--plot out.png]
    python run_eval.py list tasks|models
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

from . import __version__
from .errors import HarnessError
from .options import describe_options, parse_key_values
from .registry import get_model_class, get_task_class, include, load_builtins, model_names, task_names
from .validate import check_model_options, check_sweep_flags, check_task

log = logging.getLogger("harness")

#: What ``run`` evaluates when no --model/--tasks are given: the default sweep on bundled data.
DEFAULT_MODELS = ("flamingo", "demo-majority", "support-prior")
DEFAULT_TASKS = ("easyvqa",)
#: The default sweep (no --model, --tasks or --limit) evaluates the first N test questions, the
#: same for every model, so that it runs in a few minutes on a 2-core CPU; --limit overrides it.
DEFAULT_LIMIT = 1000


def _split_names(values: Sequence[str] | None) -> list[str]:
    return [n.strip() for v in values or [] for n in v.split(",") if n.strip()]


def _targeted(items: list[str] | None, flag: str, names: Sequence[str]) -> dict[str, dict[str, str]]:
    """``[name:]key=value`` items -> {name: {key: value}}; an untargeted item applies to every name."""
    out: dict[str, dict[str, str]] = {n: {} for n in names}
    for target, key, value in parse_key_values(items, flag):
        if target is not None and target not in out:
            raise HarnessError(f"{flag} {target}:{key}={value}: {target!r} is not one of {', '.join(names)}")
        for n in ([target] if target else names):
            out[n][key] = value
    return out


def build_tasks(names: Sequence[str], task_args: list[str] | None, data_dir: str | None):
    opts = _targeted(task_args, "--task-arg", names)
    return [get_task_class(n)(data_dir, opts[n]) for n in names]


def build_models(names: Sequence[str], model_args: list[str] | None, labels: list[str] | None):
    opts = _targeted(model_args, "--model-arg", names)
    labels = list(labels or [])
    if labels and len(labels) != len(names):
        raise HarnessError(f"--label given {len(labels)} times for {len(names)} models; give one per --model")
    out = []
    for i, n in enumerate(names):
        cls = get_model_class(n)
        log.info("loading model %s", n)
        try:
            model = cls(opts[n])
        except (HarnessError, KeyboardInterrupt):
            raise
        except Exception as exc:  # a broken checkpoint (corrupt weights, missing tokenizer files...)
            log.debug("model %s failed to load", n, exc_info=True)
            given = ", ".join(f"{k}={v}" for k, v in opts[n].items()) or "default options"
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise HarnessError(f"model {n} ({given}) could not be loaded: {type(exc).__name__}: {first}. "
                               f"Is the checkpoint complete and readable? (-v shows the traceback)") from None
        label = labels[i] if labels else _default_label(n, opts[n])
        out.append((model, label))
    return out


def _default_label(name: str, opts: dict[str, str]) -> str:
    path = opts.get("path") or opts.get("checkpoint")
    return f"{name}@{Path(path).name}" if path else name


#: run flags that set a task option of the same meaning: flag attribute -> option name.
FLAG_OPTIONS = {"frames": "frames", "fps": "fps", "max_frames": "max_frames", "ensemble": "ensemble"}


def _flag_task_args(args: argparse.Namespace, names: Sequence[str]) -> list[str]:
    """``--frames/--fps/--max-frames/--ensemble`` as ``task:key=value`` items for the tasks that take them
    (an explicit --task-arg still wins); a flag no task takes is an error."""
    import dataclasses

    out = []
    for attr, key in FLAG_OPTIONS.items():
        value = getattr(args, attr, None)
        if value is None:
            continue
        takers = [n for n in names if key in {f.name for f in dataclasses.fields(get_task_class(n).Options)}]
        if not takers:
            flag = "--" + attr.replace("_", "-")
            kind = "close-ended tasks" if key == "ensemble" else "video tasks"
            raise HarnessError(f"{flag} applies to {kind}; none of {', '.join(names)} takes it (see `list tasks -v`)")
        out.extend(f"{n}:{key}={value}" for n in takers)
    return out


# ---- subcommands ---------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from .report import render, summary_table
    from .sweep import SweepSpec, run_sweep

    model_list = _names(args.model, "--model") or list(DEFAULT_MODELS)
    task_list = _names(args.tasks, "--tasks") or list(DEFAULT_TASKS)
    if not args.model and not args.tasks and args.limit is None:
        args.limit = DEFAULT_LIMIT
        log.info("default sweep: the first %d eval questions of each task (pass --limit N to change)", DEFAULT_LIMIT)
    if len(set(model_list)) != len(model_list):
        raise HarnessError("the same --model is named twice; run it twice with different --output or --label")
    # Validate everything before any model is constructed (see harness.validate).
    check_sweep_flags(args.shots, args.seeds, args.limit, args.batch_size)
    shard = _shard(args.shard)
    check_model_options(model_list, _targeted(args.model_arg, "--model-arg", model_list))
    tasks = build_tasks(task_list, _flag_task_args(args, task_list) + list(args.task_arg or []), args.data_dir)
    for task in tasks:
        check_task(task, args.shots, args.limit)
    models = build_models(model_list, args.model_arg, args.label)
    spec = SweepSpec(tuple(args.shots), tuple(args.seeds), args.limit, args.batch_size, shard, args.overwrite)
    output = Path(args.output)
    t0 = time.time()
    summaries = run_sweep(models, tasks, spec, output, progress=not args.quiet)
    if spec.shard:
        print(f"shard {args.shard} done in {time.time() - t0:.1f}s; when every shard is done, run the same "
              f"command without --shard to merge them and compute the metrics")
        return 0
    table = summary_table(summaries)
    print(render(table, "markdown"), end="")
    print(f"\n{len(summaries) * len(spec.seeds)} cells in {time.time() - t0:.1f}s; results under {output}/")
    for s in summaries:  # failed samples are counted wrong: never let them pass unseen
        for note in s.get("failures", []):
            log.warning("%s", note)
    return 0


def _names(values: Sequence[str] | None, flag: str) -> list[str]:
    """Names of a comma-list flag; given but empty (``--model ,``) is an error, not the default sweep."""
    names = _split_names(values)
    if values and not names:
        raise HarnessError(f"{flag} {' '.join(values)!r}: no name given; see `list models` / `list tasks`")
    return names


def _shard(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        k, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise HarnessError(f"--shard {value!r}: expected K/N, e.g. 0/4") from None
    if not (n >= 1 and 0 <= k < n):
        raise HarnessError(f"--shard {value!r}: need 0 <= K < N")
    return k, n


def cmd_score(args: argparse.Namespace) -> int:
    from .scoring import score_predictions

    task_args = list(args.task_arg or [])
    if args.metrics:  # shorthand for --task-arg metrics=... (tasks with a choice of metrics, e.g. captioning)
        task_args.append(f"metrics={args.metrics}")
    task = build_tasks([args.task], task_args, args.data_dir)[0]
    metrics = score_predictions(task, args.predictions, args.split)
    if args.json:
        print(json.dumps(metrics))
    else:
        for k, v in metrics.items():
            print(f"{k}: {v}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .report import compare, plot, render

    table = compare(args.results, metrics=args.metrics)
    print(render(table, args.format), end="")
    if args.plot:
        log.info("wrote %s", plot(args.results, args.plot))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    load_builtins()
    names, lookup = (task_names(), get_task_class) if args.what == "tasks" else (model_names(), get_model_class)
    for n in names:
        cls = lookup(n)
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        kind = f"{cls.kind:13s} " if args.what == "tasks" else ""
        print(f"{n:16s} {kind}{doc}")
        if args.verbose:
            for name, typ, default in describe_options(cls.Options):
                print(f"{'':18s}{name} ({typ}) = {default}")
    return 0


# ---- parser --------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_eval.py",
        description="Few-shot evaluation of Flamingo-style vision-language models.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    p.add_argument("--version", action="version", version=f"harness {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--include", action="append", default=[], metavar="PATH",
                        help="a .py file or folder of plug-in tasks/models to register (repeatable)")
        sp.add_argument("--data-dir", help="data root; each task reads <root>/<task>/ (default: $HARNESS_DATA)")
        sp.add_argument("--task-arg", action="append", metavar="[TASK:]KEY=VALUE",
                        help="task option, for one task or all (see `list tasks -v`)")

    r = sub.add_parser("run", help="evaluate models on tasks over shots x seeds",
                       description="Evaluate every task x shots x seed cell for each model. With no --model "
                       f"and --tasks it runs the default sweep: {', '.join(DEFAULT_MODELS)} on "
                       f"{', '.join(DEFAULT_TASKS)} (first {DEFAULT_LIMIT} eval questions unless --limit).")
    r.add_argument("--model", action="append", metavar="NAME", help="registered model (repeatable or comma list)")
    r.add_argument("--model-arg", action="append", metavar="[MODEL:]KEY=VALUE",
                   help="model option, e.g. path=DIR (see `list models -v`)")
    r.add_argument("--label", action="append", help="name of each model's results (default: model@checkpoint)")
    r.add_argument("--tasks", action="append", metavar="T1,T2", help="registered tasks (comma list)")
    r.add_argument("--shots", type=int, nargs="+", default=[0, 4, 32])
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--limit", type=int, help="evaluate only the first N eval examples (same for every seed; "
                   f"default sweep: {DEFAULT_LIMIT})")
    r.add_argument("--batch-size", type=int, default=8)
    r.add_argument("--output", default="results", help="results folder (default: results/); reruns resume")
    r.add_argument("--shard", metavar="K/N",
                   help="evaluate only every N-th query from K (one of N processes, e.g. one per GPU); "
                        "then rerun without --shard to merge. Demos are the same as in a single process")
    r.add_argument("--overwrite", action="store_true",
                   help="replace results of another configuration found in a cell's folder (default: refuse, "
                        "naming the cell and what differs; see README 'Results layout')")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    r.add_argument("--frames", type=int, help="video tasks: frames per video, chosen uniformly (default 8)")
    r.add_argument("--fps", type=float, help="video tasks: take frames at R per second instead (with --max-frames)")
    r.add_argument("--max-frames", type=int, help="video tasks: cap on frames with --fps (default: --frames)")
    r.add_argument("--ensemble", type=int, metavar="P",
                   help="close-ended tasks: average log-likelihoods over P demo orders (Flamingo: 6)")
    common(r)
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("score", help="score an existing predictions file, no model needed")
    s.add_argument("--task", required=True)
    s.add_argument("--predictions", required=True,
                   help='official results file ([{"question_id": ..., "answer": ...}]) or a predictions.jsonl')
    s.add_argument("--split", help="split to score against (default: the task's eval split)")
    s.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    s.add_argument("--metrics", metavar="M1,M2",
                   help="metrics to compute, for tasks that offer a choice (captioning: cider,bleu,rouge,meteor,spice)")
    common(s)
    s.set_defaults(func=cmd_score)

    c = sub.add_parser("compare", help="compare result folders in one table")
    c.add_argument("results", nargs="+", help="results folders (or metrics.json files)")
    c.add_argument("--format", choices=["markdown", "csv", "latex"], default="markdown")
    c.add_argument("--metrics", choices=["primary", "all"], default="primary",
                   help="only each task's main metric, or breakdowns too")
    c.add_argument("--plot", metavar="PNG", help="also write metric-vs-shots plots")
    c.add_argument("--include", action="append", default=[], help=argparse.SUPPRESS)
    c.set_defaults(func=cmd_compare)

    ls = sub.add_parser("list", help="list registered tasks or models (plug-ins included)")
    ls.add_argument("what", choices=["tasks", "models"])
    ls.add_argument("--include", action="append", default=[], metavar="PATH")
    ls.add_argument("-v", "--verbose", action="store_true", help="show each one's options")
    ls.set_defaults(func=cmd_list)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; exit status 0 on success, 2 on bad input (one ``error:`` line),
    130 on Ctrl-C. With no subcommand it prints the help and exits 0."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) and args.command != "list" else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        load_builtins()
        for path in getattr(args, "include", []) or []:
            include(path)
        return args.func(args)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.filename is None:  # not about a path the user can fix
            raise
        kept = ("; samples already finished are kept in their journals: fix the folder (space, permissions) "
                "or pick another --output, and rerun the same command to resume") if args.command == "run" else ""
        print(f"error: {exc.filename}: {exc.strerror}{kept}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished samples are kept; rerun the same command to resume", file=sys.stderr)
        return 130
