"""The command line: run, watch, merge, score, compare, view, list.

    harness run --model NAME [--model-arg k=v ...] --tasks vqav2,okvqa --shots 0 4 32 --seeds 0 1 2
    harness watch CHECKPOINTS --model NAME --tasks vqav2 --shots 0 4 --limit 500   # a training run's checkpoints
    harness score --task vqav2 --predictions preds.json [--split val] [--json]
    harness compare results/A results/B [--format markdown|csv|parquet|latex] [--plot fig.png] [--baseline A]
    harness compare results/run --series [--plot fig.png]   # metric vs training step
    harness view results/A results/B [--output report.html]
    harness merge results            # finish `run --shard K/N` runs
    harness check-data --tasks vqav2,okvqa   # demo/eval image overlap per task
    harness export results/LABEL/vqav2/4shot_seed0   # a test-server submission file
    harness list tasks|models

``harness`` is the console script ``scripts/setup.sh`` installs into ``.venv`` (``source
.venv/bin/activate`` once, or call ``.venv/bin/harness``); ``./run_eval.py`` and ``python -m harness``
run the same command line.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import inspect
import json
import logging
import shlex
import sys
import textwrap
import time
from pathlib import Path
from typing import Sequence

from harness import __version__
from harness.evaluation.batch_size import parse_batch_size
from harness.launch.allocator import retain_freed_memory
from harness.launch.distributed import discover, set_threads, start_group
from harness.errors import HarnessError
from harness.options import describe_options, parse_key_values
from harness.peer_flags import peer_flag_hint
from harness.program import program
from harness.evaluation.deferred import load_or_defer
from harness.registry import get_model_class, get_task_class, model_names, task_names
from harness.plugins import include, load_builtins
from harness.evaluation.validate import check_model_options, check_prompt_media, check_sweep_flags, check_task

log = logging.getLogger("harness")

#: What ``run`` evaluates when no --model/--tasks are given: the default sweep on bundled data.
DEFAULT_MODELS = ("flamingo", "demo-majority", "support-prior")
DEFAULT_TASKS = ("easyvqa",)
#: The default sweep (no --model, --tasks or --limit) evaluates the first N test questions, the
#: same for every model, so that it runs in a few minutes on a 2-core CPU; --limit overrides it.
DEFAULT_LIMIT = 1000
#: Shots when neither --shots nor a suite says otherwise.
DEFAULT_SHOTS = (0, 4, 32)


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


def build_models(names: Sequence[str], model_args: list[str] | None, labels: list[str] | None,
                 defer: bool = False):
    opts = _targeted(model_args, "--model-arg", names)
    labels = list(labels or [])
    if labels and len(labels) != len(names):
        raise HarnessError(f"--label given {len(labels)} times for {len(names)} models; give one per --model")
    out = []
    for i, n in enumerate(names):
        cls = get_model_class(n)
        # a finished rerun needs only the models' identities: a model whose identity is known from an
        # earlier load loads when a cell needs it (harness.evaluation.deferred)
        model = load_or_defer(cls, opts[n], functools.partial(_load_model, cls, n, opts[n])) if defer \
            else _load_model(cls, n, opts[n])
        label = labels[i] if labels else _default_label(n, opts[n])
        out.append((model, label))
    return out


def _checkpoint_errors() -> tuple[type[BaseException], ...]:
    """What loading a broken checkpoint raises: files missing or unreadable (OSError), truncated or
    garbage weights (safetensors, pickle, zip, EOF), weights or configs that do not fit the model
    (RuntimeError, ValueError, KeyError), a package the checkpoint's code needs (ImportError)."""
    import pickle
    import zipfile

    from safetensors import SafetensorError

    return (OSError, ValueError, RuntimeError, KeyError, EOFError, ImportError, pickle.UnpicklingError,
            zipfile.BadZipFile, SafetensorError)


def _load_model(cls: type, name: str, options: dict[str, str]):
    log.info("loading model %s", name)
    try:
        return cls(options)
    except HarnessError:
        raise
    except _checkpoint_errors() as exc:
        log.debug("model %s failed to load", name, exc_info=True)
        given = ", ".join(f"{k}={v}" for k, v in options.items()) or "default options"
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise HarnessError(f"model {name} ({given}) could not be loaded: {type(exc).__name__}: {first}. "
                           f"Is the checkpoint complete and readable? (-v shows the traceback)") from None


def _default_label(name: str, opts: dict[str, str]) -> str:
    from harness.store.layout import safe_name

    path = opts.get("path") or opts.get("checkpoint")
    return safe_name(f"{name}@{Path(path).name}" if path else name)


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


def _protocol_task_args(protocol: str | None, suite_protocols, names: Sequence[str]) -> list[str]:
    """``--protocol NAME`` for every task, else each suite's own preset for its tasks, as
    ``task:protocol=NAME`` items (before the flags and --task-arg, which win over the preset)."""
    from harness.protocols import get_protocol

    if protocol is not None:
        if protocol != "none":
            get_protocol(protocol)  # an unknown name fails here, naming the presets
        return [f"{n}:protocol={protocol}" for n in names]
    return [f"{n}:protocol={suite_protocols[n]}" for n in names if n in suite_protocols]


# ---- subcommands ---------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from harness.reporting.report import TABLE_NOTE, render, summary_table
    from harness.suites import expand
    from harness.evaluation.sweep import SweepSpec, run_sweep

    model_list = _names(args.model, "--model") or list(DEFAULT_MODELS)
    # Suites expand to their tasks, with their published shots unless --shots is given.
    expansion = expand(_names(args.tasks, "--tasks") or list(DEFAULT_TASKS), args.shots, DEFAULT_SHOTS, task_names())
    task_list = list(expansion.tasks)
    if not args.model and not args.tasks and args.limit is None:
        args.limit = DEFAULT_LIMIT
        log.info("default sweep: the first %d eval questions of each task (pass --limit N to change)", DEFAULT_LIMIT)
    if len(set(model_list)) != len(model_list):
        raise HarnessError("the same --model is named twice; run it twice with different --output or --label")
    from harness.store.layout import check_label

    for label in args.label or []:
        check_label(label)  # one safe path component, before anything loads
    # Validate everything before any model is constructed (see harness.evaluation.validate).
    shots = tuple(args.shots or DEFAULT_SHOTS)
    check_sweep_flags(shots, args.seeds, args.limit, args.batch_size, args.sample)
    from harness.loggers import make_loggers

    loggers = make_loggers(args.log_to, Path(args.output))  # an unknown or missing logger fails now
    if loggers and args.shard:
        raise HarnessError("--log-to with --shard: a shard has no metrics yet; give --log-to to the run "
                           "command without --shard, which merges the shards and logs the metrics")
    launch = discover(_shard(args.shard))  # torchrun ranks, --shard K/N or a SLURM array task
    if launch.kind == "torchrun" and not launch.is_main:
        logging.getLogger("harness").setLevel(logging.WARNING)  # rank 0 reports for all
    set_threads(args.threads, launch)
    retain_freed_memory()  # before any model allocates: batches reuse freed memory (see allocator.py)
    model_options = check_model_options(model_list, _targeted(args.model_arg, "--model-arg", model_list))
    tasks = build_tasks(task_list, _protocol_task_args(args.protocol, expansion.protocols, task_list)
                        + _flag_task_args(args, task_list) + list(args.task_arg or []), args.data_dir)
    for task in tasks:
        check_task(task, expansion.shots.get(task.name, shots), args.limit, args.sample)
        check_prompt_media(model_list, model_options, task, expansion.shots.get(task.name, shots))
    _check_rices_models(tasks, model_list)
    _report_overlap(tasks)
    models = build_models(model_list, args.model_arg, args.label, defer=not args.overwrite)
    # The models and the data live for the whole run: keep the cyclic GC from walking them again
    # at every collection (a torchrun merge spent 0.2 s in such passes reading 1,000 records).
    gc.freeze()
    spec = SweepSpec(shots, tuple(args.seeds), args.limit, args.batch_size, launch.shard,
                     task_shots=expansion.shots, sample=args.sample, overwrite=args.overwrite)
    output = Path(args.output)
    t0 = time.time()
    # NCCL only when the models run on this rank's GPU; the group carries small objects, so gloo
    # serves CPU models (on a GPU machine too, where ranks may outnumber the GPUs).
    group = start_group(launch, on_gpu=any(str(model.device).startswith("cuda") for model, _ in models))
    try:
        summaries = run_sweep(models, tasks, spec, output, progress=not args.quiet, group=group)
    finally:
        if group is not None:
            group.close()
    if not launch.is_main and launch.kind == "torchrun":
        return 0  # rank 0 prints the table
    if spec.shard:
        data = f" --data-dir {shlex.quote(args.data_dir)}" if args.data_dir else ""
        print(f"shard {args.shard} done in {time.time() - t0:.1f}s; when every shard is done, merge them and "
              f"compute the metrics: {program()} merge {shlex.quote(str(output))}{data} (or rerun this command "
              "without --shard)")
        return 0
    if loggers:
        from harness.api import log_sweep

        try:
            log_sweep(loggers, output, models, tasks, spec, args.log_step)
        finally:
            for logger in loggers:
                logger.close()
    table = summary_table(summaries)
    print(render(table, "markdown"), end="")
    print(TABLE_NOTE)
    print(f"\n{len(summaries) * len(spec.seeds)} cells in {time.time() - t0:.1f}s; results under {output}/")
    for s in summaries:  # failed samples are counted wrong: never let them pass unseen
        for note in s.get("failures", []):
            log.warning("%s", note)
    data = f" --data-dir {shlex.quote(args.data_dir)}" if args.data_dir else ""
    out = shlex.quote(str(output))
    print(f"browse the samples: {program()} view {out}{data} --output {shlex.quote(f'{output}/report.html')}")
    return 0


def _report_overlap(tasks) -> None:
    """Before a run: demo/eval image overlap per task. With exclude_overlap the full check (already run
    to build the support set); otherwise the cheap same-file check, pointing to check-data for the rest."""
    from harness.data.overlap import same_file_count

    for task in tasks:
        if getattr(task.options, "exclude_overlap", False):
            log.info("%s; excluded from the support set (exclude_overlap)", task.demo_overlap().line())
        elif task.max_shots != 0:
            n = same_file_count(task.support_examples(), task.eval_examples())
            if n:
                log.warning("task %s: %d support examples show the same image file as an eval example (a demo can "
                            "show the query's picture); `check-data` also finds re-encoded copies, "
                            "--task-arg exclude_overlap=true removes them", task.name, n)


def cmd_check_data(args: argparse.Namespace) -> int:
    """Per task: support examples whose image is also an eval image (same file/bytes or near-duplicate)."""
    tasks = build_tasks(_names(args.tasks, "--tasks"), list(args.task_arg or []), args.data_dir)
    for task in tasks:
        if task.max_shots == 0:
            print(f"task {task.name}: zero-shot only (no support set)")
            continue
        report = task.demo_overlap(progress=not args.quiet)
        print(report.line())
        for ex_id, (how, image) in list(report.matches.items())[: args.show]:
            print(f"  support {ex_id}: {how} of eval image {image}")
        if report.count > args.show:
            print(f"  ... {report.count - args.show} more")
        if report.count and not getattr(task.options, "exclude_overlap", False):
            print(f"  exclude them from the support set with --task-arg {task.name}:exclude_overlap=true")
    return 0


def _names(values: Sequence[str] | None, flag: str) -> list[str]:
    """Names of a comma-list flag; given but empty (``--model ,``) is an error, not the default sweep."""
    names = _split_names(values)
    if values and not names:
        raise HarnessError(f"{flag} {' '.join(values)!r}: no name given; see `list models` / `list tasks`")
    return names


def _check_rices_models(tasks, model_names: Sequence[str]) -> None:
    """rices_encoder=model needs models that offer a vision encoder, and rices_encoder=PATH a vision model
    folder: say so before any model loads."""
    from harness.evaluation.rices import validate_encoder

    for path in sorted({t.options.rices_encoder for t in tasks if getattr(t.options, "rices_encoder", None)}):
        validate_encoder(path)
    if any(getattr(t.options, "rices_encoder", None) == "model" for t in tasks):
        from harness.evaluation.rices import check_model_encoder

        for n in model_names:
            check_model_encoder(get_model_class(n), n)


def _shard(value: str | None) -> tuple[int, int] | str | None:
    if value is None or value == "slurm":
        return value
    try:
        k, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise HarnessError(f"--shard {value!r}: expected K/N, e.g. 0/4") from None
    if not (n >= 1 and 0 <= k < n):
        raise HarnessError(f"--shard {value!r}: need 0 <= K < N")
    return k, n


def cmd_watch(args: argparse.Namespace) -> int:
    from harness.api import check_request, evaluate
    from harness.evaluation.watch import Watcher
    from harness.loggers import make_loggers
    from harness.store.layout import check_label, safe_name, step_dir

    root = Path(args.folder)
    if not root.is_dir():
        raise HarnessError(f"watch {root}: not a folder (give the folder the training run saves its checkpoints in)")
    model = args.model
    option = get_model_class(model).checkpoint_option
    if option is None:
        raise HarnessError(f"watch --model {model}: this model has no checkpoint option to set to each folder; "
                           f"use a model that loads checkpoints (see `list models`)")
    items = list(args.model_arg or [])
    if any(i.split("=", 1)[0].split(":")[-1].strip() == option for i in items):
        raise HarnessError(f"watch: --model-arg {option}=... is set to each checkpoint folder by watch; leave it out")
    label = check_label(args.label or safe_name(f"{model}@{root.resolve().name}"))
    task_list = _names(args.tasks, "--tasks")
    if not task_list:
        raise HarnessError("watch: give --tasks (the tasks to evaluate each checkpoint on)")
    task_args = _flag_task_args(args, task_list) + list(args.task_arg or [])
    request = dict(model=model, model_args=items, label=label, tasks=task_list, shots=args.shots, seeds=args.seeds,
                   limit=args.limit, sample=args.sample, task_args=task_args, data_dir=args.data_dir)
    # everything checked once, before any checkpoint loads (the checkpoint option: this folder for now)
    check_request(model, task_list, args.shots, args.seeds, args.limit, model_args=[*items, f"{option}={root}"],
                  task_args=task_args, label=label, data_dir=args.data_dir, batch_size=args.batch_size,
                  sample=args.sample)
    output = Path(args.output)
    loggers = make_loggers(args.log_to, output)

    def one(step: int, folder: Path) -> None:
        df = evaluate(model, task_list, args.shots, args.seeds, args.limit, step_dir(output, step),
                      model_args=[*items, f"{option}={folder}"], task_args=task_args, label=label,
                      data_dir=args.data_dir, batch_size=args.batch_size, sample=args.sample,
                      overwrite=args.overwrite, progress=not args.quiet, log_to=loggers, step=step)
        prim = df[df["primary"]].groupby(["task", "shots"])["value"].mean()
        print(f"step {step} ({folder.name}): " + ", ".join(f"{t} {s}-shot {v:.2f}" for (t, s), v in prim.items()),
              flush=True)

    watcher = Watcher(root, output, one, request, label, settle=args.settle)
    total = 0
    try:
        if args.once:
            total = watcher.run_once()
        else:
            idle = f", exiting after {args.idle_exit:g}s with nothing new" if args.idle_exit is not None else \
                " (Ctrl-C stops)"
            log.info("watching %s every %gs%s", root, args.interval, idle)
            for n in watcher.loop(args.interval, args.idle_exit):
                total += n
    except KeyboardInterrupt:
        log.info("watch stopped")
    finally:
        for logger in loggers:
            logger.close()
    out = shlex.quote(str(output))
    failed = f"; {len(watcher.failed)} failed (above), retried when they change" if watcher.failed else ""
    print(f"{total} checkpoint(s) evaluated{failed}; results under {output}/step-N/{label}/; "
          f"the series: {program()} compare {out} --series")
    return 1 if watcher.failed else 0


def cmd_merge(args: argparse.Namespace) -> int:
    from harness.evaluation.merge import merge_results
    from harness.reporting.report import render, summary_table

    summaries = merge_results(args.results, args.data_dir, progress=not args.quiet)
    print(render(summary_table(summaries), "markdown"), end="")
    print(f"\nmerged the shards under {', '.join(args.results)}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from harness.evaluation.scoring import score_predictions

    task_args = list(args.task_arg or [])
    if args.metrics:  # shorthand for --task-arg metrics=... (tasks with a choice of metrics, e.g. captioning)
        task_args.append(f"metrics={args.metrics}")
    task = build_tasks([args.task], task_args, args.data_dir)[0]
    metrics = score_predictions(task, args.predictions, args.split)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(format_metrics(metrics), end="")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from harness.evaluation.export import export_cell

    if args.output and len(args.cells) > 1:
        raise HarnessError("export --output names one file: give one cell, or leave --output out (each cell's "
                           "file goes in its folder)")
    for cell in args.cells:
        path, fmt, n = export_cell(cell, args.data_dir, args.output, args.normalize, args.overwrite, args.partial)
        print(f"wrote {path} ({n} predictions; {fmt.name} format for {fmt.server}: {fmt.schema})")
    return 0


def format_metrics(metrics: dict) -> str:
    """``score``'s metrics as an aligned two-column table: numbers to 2 decimals, a metric's
    ``<name>_ci95`` beside it, breakdowns (e.g. per answer type) indented under their metric."""
    rows: list[tuple[str, str]] = []

    def num(v) -> str:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return str(v)
        return str(v) if isinstance(v, int) else f"{v:.2f}" if abs(v) >= 1 else f"{v:.4f}"  # CIDEr ~0.8

    def walk(d: dict, depth: int) -> None:
        for k, v in d.items():
            if str(k).endswith("_ci95") and str(k)[:-5] in d:
                continue  # shown beside its metric
            name = "  " * depth + str(k)
            if isinstance(v, dict):
                rows.append((name, ""))
                walk(v, depth + 1)
                continue
            if isinstance(v, (list, tuple)):
                text = "[" + ", ".join(num(x) for x in v) + "]"
            else:
                text = num(v)
            ci = d.get(f"{k}_ci95")
            if isinstance(ci, (list, tuple)) and len(ci) == 2:
                text += f"  (95% CI {num(ci[0])}-{num(ci[1])})"
            rows.append((name, text))

    walk(metrics, 0)
    width = max(len(r[0]) for r in rows) if rows else 0
    return "".join(f"{name:<{width}}  {text}".rstrip() + "\n" for name, text in rows)


def cmd_compare(args: argparse.Namespace) -> int:
    from harness.reporting.report import TABLE_NOTES, compare, render

    fmt = args.format or _format_of(args.output)
    if fmt == "parquet" and not args.output:
        raise HarnessError("--format parquet writes a file: add --output FILE.parquet")
    if args.series:
        return _compare_series(args, fmt)
    text = []
    paired_wanted = args.baseline is not None or args.baseline_shots is not None
    if fmt in ("csv", "parquet") and not paired_wanted:
        from harness.reporting.tidy import tidy

        return _emit_table(tidy(args.results, metrics=args.metrics), fmt, args.output, args)
    if fmt == "latex":
        from harness.reporting.latex import latex_table
        from harness.reporting.tidy import tidy

        df = tidy(args.results, metrics=args.metrics, ci=args.spread in ("ci", "ci-demos"))
        text.append(latex_table(df, spread=args.spread, bold_best=args.bold_best, caption=args.caption,
                                label=args.tex_label, fit=args.tex_fit))
    elif fmt == "markdown":
        text.append(render(compare(args.results, metrics=args.metrics, spread=args.spread), "markdown"))
        text.append(f"\n{TABLE_NOTES[args.spread]}\n")
    if paired_wanted:
        from harness.reporting.paired import paired_compare, render_paired

        paired = paired_compare(args.results, args.baseline, seed=args.bootstrap_seed,
                                baseline_shots=args.baseline_shots)
        if fmt in ("csv", "parquet"):  # one table per file: the paired one, which has both means
            return _emit_table(paired, fmt, args.output, args)
        if fmt == "markdown":
            versus = (f"{args.baseline_shots} shots of the same checkpoint" if args.baseline_shots is not None
                      else paired['baseline'].iloc[0])
            text.append(f"\nPaired differences vs {versus} (95% paired bootstrap CI over queries, "
                        f"sign-flip permutation p, * = significant after Holm over the {paired['p'].notna().sum()} "
                        "tested rows; see docs/statistics.md)\n\n")
        text.append(render_paired(paired, fmt))
    _emit_text("".join(text), args.output)
    _plot(args)
    return 0


def _compare_series(args: argparse.Namespace, fmt: str) -> int:
    """compare --series: rows = checkpoints by step, columns = task x shots; --plot: metric vs step."""
    from harness.reporting.report import TABLE_NOTE
    from harness.reporting.series import render_series, series, series_table

    if args.baseline:
        raise HarnessError("--series with --baseline: compare two checkpoints' folders (step-N/...) without --series")
    if fmt == "latex":
        raise HarnessError("--series prints markdown, csv or parquet (the tidy table with run and step columns)")
    if args.spread == "ci" and args.plot:
        raise HarnessError("--series plots the spread over seeds: --spread std or none")
    df = series(args.results, metrics=args.metrics, ci=fmt in ("csv", "parquet"))
    if fmt in ("csv", "parquet"):
        _emit_table(df, fmt, args.output, None)  # the series plot below, not compare's
    else:
        _emit_text(render_series(series_table(df)) + f"\n{TABLE_NOTE}\n", args.output)
    if args.plot:
        from harness.reporting.plots import plot_series

        formats = _split_names([args.plot_formats]) if args.plot_formats else []
        for f in plot_series(df, args.plot, band=args.spread, formats=formats):
            log.info("wrote %s", f)
    return 0


def _format_of(output: str | None) -> str:
    """--format from --output's suffix when not given: .csv, .parquet, .tex, else markdown."""
    suffix = Path(output).suffix.lower() if output else ""
    return {".csv": "csv", ".parquet": "parquet", ".tex": "latex"}.get(suffix, "markdown")


def _emit_table(df, fmt: str, output: str | None, args: argparse.Namespace | None) -> int:
    if output:
        _check_folder(output, "--output")
        df.to_parquet(output, index=False) if fmt == "parquet" else df.to_csv(output, index=False)
        log.info("wrote %s (%d rows)", output, len(df))
    else:
        print(df.to_csv(index=False), end="")
    if args is not None:
        _plot(args)
    return 0


def _emit_text(text: str, output: str | None) -> None:
    if output:
        _check_folder(output, "--output")
        Path(output).write_text(text, encoding="utf-8")
        log.info("wrote %s", output)
    else:
        print(text, end="")


def _check_folder(path: str, flag: str) -> None:
    if not Path(path).parent.is_dir():
        raise HarnessError(f"{flag} {path}: folder {Path(path).parent} does not exist; create it or pick another path")


def _plot(args: argparse.Namespace) -> None:
    if not args.plot:
        return
    from harness.reporting.plots import plot

    formats = _split_names([args.plot_formats]) if args.plot_formats else []
    for f in plot(args.results, args.plot, band=args.spread, layout=args.plot_layout, formats=formats):
        log.info("wrote %s", f)


def cmd_view(args: argparse.Namespace) -> int:
    from harness.reporting.viewer import write_viewer

    info = write_viewer(args.results, args.output, data_dir=args.data_dir, thumb_size=args.thumb_size,
                        max_images=args.max_images)
    print(f"wrote {info.path} ({info.size_bytes / 1e6:.1f} MB: {info.n_samples} samples in {info.n_cells} cells, "
          f"{info.n_images} thumbnails embedded{info.note})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    load_builtins()
    if args.what == "protocols":
        from harness.protocols import PROTOCOLS

        for p in sorted(PROTOCOLS.values(), key=lambda p: p.name):
            print(f"{p.name:16s} {p.description}\n{'':17s}source: {p.source}")
            if args.verbose:
                for rule in p.rules:
                    print(f"{'':18s}{rule.match}: {', '.join(f'{k}={v}' for k, v in rule.options.items())}")
        return 0
    names, lookup = (task_names(), get_task_class) if args.what == "tasks" else (model_names(), get_model_class)
    for n in names:
        cls = lookup(n)
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        kind = f"{cls.kind:13s} " if args.what == "tasks" else ""
        print(f"{n:16s} {kind}{doc}")
        if args.verbose:
            for name, typ, default in describe_options(cls.Options):
                print(f"{'':18s}{name} ({typ}) = {default}")
            doc = inspect.cleandoc(cls.Options.__doc__ or "")
            if doc and not doc.startswith(cls.Options.__name__ + "("):  # not the dataclass's generated one
                print(textwrap.indent(doc, " " * 18))
    if args.what == "tasks":
        from harness.suites import suites

        print("\nsuites (--tasks NAME; shots default to the published ones):")
        for suite in suites():
            missing = [t for t in suite.tasks if t not in names]
            note = f"; not yet registered: {', '.join(missing)}" if missing else ""
            preset = f", protocol {suite.protocol}" if suite.protocol else ""
            print(f"{suite.name:16s} {len(suite.tasks)} tasks, shots {' '.join(map(str, suite.shots))}{preset}: "
                  f"{suite.description}{note}")
            if args.verbose:
                print(f"{'':18s}{', '.join(suite.tasks)}")
    return 0


# ---- parser --------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=program(),
        description="Few-shot evaluation of Flamingo-style vision-language models.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    p.add_argument("--version", action="version", version=f"harness {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--include", "--include_path", action="append", default=[], metavar="PATH",
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
    r.add_argument("--tasks", action="append", metavar="T1,T2",
                   help="registered tasks or suites (comma list), e.g. vqav2,okvqa or flamingo16, openflamingo, video")
    r.add_argument("--shots", type=int, nargs="+",
                   help=f"shots for every task (default: {' '.join(map(str, DEFAULT_SHOTS))}; a suite's tasks: "
                        "the suite's published shots, see `list tasks`)")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--limit", type=int, help="evaluate only the first N eval examples (same for every seed; "
                   f"default sweep: {DEFAULT_LIMIT})")
    r.add_argument("--sample", type=int, metavar="N",
                   help="evaluate a random subset of N eval examples, a different one per seed "
                        "(OpenFlamingo's --num_samples); after --limit if both are given")
    r.add_argument("--batch-size", "--batch_size", type=parse_batch_size, default=8, metavar="N|auto",
                   help="queries per model call (default 8), or auto: the fastest of 1, 2, 4, 8... on each cell's "
                        "first batches (recorded in metrics.json; outputs do not depend on it)")
    r.add_argument("--output", default="results", help="results folder (default: results/); reruns resume")
    r.add_argument("--shard", metavar="K/N|slurm",
                   help="evaluate only shard K of N (balanced by prompt length; one of N independent processes, "
                        "e.g. one per GPU), or `slurm`: this SLURM array task's shard; then rerun without --shard "
                        "to merge. Under torchrun no --shard is needed: ranks share each cell and merge in the run "
                        "(docs/distributed.md)")
    r.add_argument("--threads", type=int, metavar="N",
                   help="torch intra-op threads per process (default: $OMP_NUM_THREADS if set outside torchrun, "
                        "else the cores left free by other work divided by this machine's processes of the run)")
    r.add_argument("--overwrite", action="store_true",
                   help="replace results of another configuration found in a cell's folder (default: refuse, "
                        "naming the cell and what differs; see README 'Results layout')")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    r.add_argument("--log-to", metavar="L1,L2",
                   help="also log every cell's metrics and the run's configuration to wandb, mlflow and/or "
                        "tensorboard (comma list; README 'Evaluating during training')")
    r.add_argument("--log-step", type=int, metavar="N", help="the step the --log-to metrics are logged at")
    r.add_argument("--frames", type=int, help="video tasks: frames per video, chosen uniformly (default 8)")
    r.add_argument("--fps", type=float, help="video tasks: take frames at R per second instead (with --max-frames)")
    r.add_argument("--max-frames", type=int, help="video tasks: cap on frames with --fps (default: --frames)")
    r.add_argument("--ensemble", type=int, metavar="P",
                   help="close-ended tasks: average log-likelihoods over P demo orders (Flamingo: 6)")
    r.add_argument("--protocol", metavar="NAME",
                   help="a published protocol's preset for every task: flamingo, openflamingo, idefics (templates, "
                        "demo selection, decoding, ensembling, video frames; recorded in the config; explicit "
                        "options win; `none`: no preset, even for a suite's tasks). Default: a suite's tasks get "
                        "their paper's preset, other tasks none. See docs/protocols.md")
    common(r)
    r.set_defaults(func=cmd_run)

    w = sub.add_parser("watch", help="evaluate every checkpoint of a training run as it appears",
                       description="Evaluate each checkpoint folder in FOLDER (checkpoint-500, step_500, ...: the step "
                       "is the number its name ends in) once, and new ones as they appear, until stopped (Ctrl-C) or "
                       "--idle-exit. Results go to OUTPUT/step-N/LABEL/ (compare --series reads them). Resumable: "
                       "a restarted watch skips the checkpoints it finished (OUTPUT/step-N/LABEL/watch.json) "
                       "without loading them, and resumes an unfinished one.")
    w.add_argument("folder", help="the folder the training run saves its checkpoint folders in")
    w.add_argument("--model", required=True, metavar="NAME",
                   help="registered model that loads a checkpoint (its path/checkpoint option is set to each folder)")
    w.add_argument("--model-arg", action="append", metavar="KEY=VALUE", help="other model options (see `list models -v`)")
    w.add_argument("--label", help="name of the results (default: MODEL@FOLDER name, the same at every step)")
    w.add_argument("--tasks", action="append", metavar="T1,T2", required=True, help="tasks or suites (comma list)")
    w.add_argument("--shots", type=int, nargs="+", help=f"shots (default: {' '.join(map(str, DEFAULT_SHOTS))})")
    w.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    w.add_argument("--limit", type=int, help="the first N eval examples (a fixed subset: the same at every step)")
    w.add_argument("--sample", type=int, metavar="N", help="a random N eval examples per seed (after --limit)")
    w.add_argument("--batch-size", "--batch_size", type=int, default=8)
    w.add_argument("--output", default="results", help="results folder (default: results/)")
    w.add_argument("--interval", type=float, default=60.0, metavar="S", help="seconds between looks (default 60)")
    w.add_argument("--settle", type=float, default=30.0, metavar="S",
                   help="a checkpoint is taken once none of its files changed for S seconds (default 30)")
    w.add_argument("--idle-exit", type=float, metavar="S", help="stop after S seconds with nothing new to evaluate")
    w.add_argument("--once", action="store_true", help="evaluate what is there now and exit")
    w.add_argument("--overwrite", action="store_true", help="as run --overwrite")
    w.add_argument("--log-to", metavar="L1,L2", help="also log each checkpoint's metrics at its step to wandb, mlflow "
                   "and/or tensorboard (comma list)")
    w.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    common(w)
    w.set_defaults(func=cmd_watch)

    m = sub.add_parser("merge", help="finish `run --shard` runs: merge their journals, write metrics and summaries",
                       description="Merge the shard journals under RESULTS (from `run --shard K/N` or `--shard slurm`) "
                       "into each cell's predictions.jsonl, in eval order, and write metrics.json and summary.json as "
                       "the run's command without --shard would; no model is loaded. Fails, naming the cell, if a "
                       "shard is unfinished.")
    m.add_argument("results", nargs="+", help="results folders (the runs' --output)")
    m.add_argument("--data-dir", help="the data root the runs used (default: $HARNESS_DATA)")
    m.add_argument("--include", action="append", default=[], metavar="PATH", help="the plug-ins the runs used")
    m.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    m.set_defaults(func=cmd_merge)

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

    e = sub.add_parser("export", help="write a finished cell's predictions as its benchmark server's submission file",
                       description="Write the exact file the benchmark's evaluation server takes (VQAv2/OK-VQA/TextVQA "
                       "results JSON, VizWiz JSON, HatefulMemes CSV, STAR JSON, VisDial ranks JSON) from a finished "
                       "cell, e.g. a run on a test-server split (no answers: no metric, predictions kept). Formats "
                       "and schemas: docs/benchmarks.md, 'Test-server splits'.")
    e.add_argument("cells", nargs="+", metavar="CELL",
                   help="finished cell folders (<output>/<label>/<task>/<shots>shot_seed<seed>) or their metrics.json")
    e.add_argument("--output", help="file to write (default: submission_<task>_<split>.<ext> in the cell's folder)")
    e.add_argument("--data-dir", help="data root of the run: the split's questions are read to check the cell "
                   "covers every one (VQAv2 test-dev also reads the test2015 questions; STAR the choices) "
                   "(default: $HARNESS_DATA)")
    e.add_argument("--normalize", action="store_true",
                   help="VQA formats: apply the VQA answer normaliser first, as OpenFlamingo's fill script does")
    e.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    e.add_argument("--partial", action="store_true",
                   help="write a cell that predicts only part of its split (--limit/--sample); servers reject it")
    e.add_argument("--include", action="append", default=[], metavar="PATH", help="the plug-ins the run used")
    e.set_defaults(func=cmd_export)

    c = sub.add_parser("compare", help="compare result folders in one table")
    c.add_argument("results", nargs="+", help="results folders (or metrics.json files)")
    c.add_argument("--format", choices=["markdown", "csv", "parquet", "latex"],
                   help="markdown (default): mean (std) n=N cells; csv/parquet: a tidy long table, one row per task x "
                        "metric x checkpoint x shots with numeric columns (mean, std, ci_low, ci_high, n, seeds, "
                        "failed, config_key, ...); latex: a booktabs table for a paper (default: from --output's "
                        "suffix .csv/.parquet/.tex)")
    c.add_argument("-o", "--output", metavar="FILE", help="write the table to FILE instead of printing it "
                   "(needed for parquet)")
    c.add_argument("--metrics", choices=["primary", "all"], default="primary",
                   help="only each task's main metric, or breakdowns too")
    c.add_argument("--spread", choices=["std", "ci", "ci-demos", "none"], default="std",
                   help="what cells show after the mean (markdown, LaTeX) and the plots' band: std over seeds "
                        "(default), the 95%% interval over queries (ci), the 95%% interval over queries and "
                        "demonstration draws (ci-demos: two-level bootstrap, 2+ seeds), or nothing")
    c.add_argument("--bold-best", action="store_true", help="LaTeX: bold the best mean of each row at each shot count")
    c.add_argument("--tex-fit", action="store_true",
                   help="LaTeX: scale the table to the text width (\\resizebox; needs \\usepackage{graphicx})")
    c.add_argument("--caption", help="LaTeX: the caption (default: what the cells are, the seeds and n)")
    c.add_argument("--tex-label", default="tab:fewshot", metavar="LABEL", help="LaTeX: the \\label (default tab:fewshot)")
    c.add_argument("--plot", metavar="FILE", help="also write metric-vs-shots plots: FILE.png, .pdf or .svg "
                   "(log2 shots axis, a band for --spread, legend below, sized for a paper column)")
    c.add_argument("--plot-formats", metavar="F1,F2", help="the same figure in more formats beside --plot, e.g. pdf,svg")
    c.add_argument("--plot-layout", choices=["grid", "per-task"], default="grid",
                   help="one figure with a panel per task (default), or FILE_<task>.png per task")
    c.add_argument("--series", action="store_true",
                   help="a training run's checkpoints over time (results in step-N folders, from harness.training or "
                        "`watch`): rows = checkpoints by step, columns = task x shots; with --plot, each metric vs "
                        "step, one line per shot count, a band of ±1 std over seeds")
    c.add_argument("--baseline", metavar="LABEL|FOLDER",
                   help="add each other checkpoint's paired difference from this one (a checkpoint as the "
                        "table names it, or its results folder): 95%% interval, p-value, Holm-marked rows "
                        "(with --format csv only this paired table is printed)")
    c.add_argument("--baseline-shots", type=int, metavar="N",
                   help="paired differences between shot counts of one checkpoint: each other shot count against "
                        "N shots (e.g. 0), of every checkpoint or of --baseline's only; needs nested demos "
                        "(--task-arg nested_shots=N at run time), otherwise the rows say why they are not paired")
    c.add_argument("--bootstrap-seed", type=int, default=0,
                   help="seed of the bootstrap and permutation draws (default 0: reproducible output)")
    c.add_argument("--include", action="append", default=[], metavar="PATH",
                   help="a plug-in file defining suites (harness.suites.define_suite) whose summary rows to add")
    c.set_defaults(func=cmd_compare)

    v = sub.add_parser("view", help="write a self-contained HTML results viewer (table, plots, samples, images)",
                       description="One static HTML file, opened from disk, no server or network: the comparison "
                       "table and metric-vs-shots plots, then per cell a sample browser (demo images and texts, "
                       "prompt, raw output, prediction, references, score) with wrong/failed filters, search, "
                       "and the queries two checkpoints disagree on. Images are embedded as JPEG thumbnails.")
    v.add_argument("results", nargs="+", help="results folders (or metrics.json files)")
    v.add_argument("--output", default="report.html", help="HTML file to write (default: report.html)")
    v.add_argument("--data-dir", help="data root the tasks read images from (default: $HARNESS_DATA)")
    v.add_argument("--thumb-size", type=int, default=96, help="longest side of embedded thumbnails in px (default 96)")
    v.add_argument("--max-images", type=int, default=2000,
                   help="cap on distinct embedded images; samples past it show their file name only (default 2000)")
    v.add_argument("--include", action="append", default=[], metavar="PATH",
                   help="plug-in tasks the results used (to find their images)")
    v.set_defaults(func=cmd_view)

    cd = sub.add_parser("check-data", help="report support examples whose image is also an eval image",
                        description="For each task, compare the support split's images with the eval split's: "
                        "the same file or bytes, or a near-duplicate (resized, re-encoded) by two perceptual "
                        "hashes (harness.data.overlap). Nothing is changed; --task-arg exclude_overlap=true "
                        "makes a run drop them from the support set.")
    cd.add_argument("--tasks", action="append", required=True, metavar="T1,T2", help="registered tasks (comma list)")
    cd.add_argument("--show", type=int, default=5, metavar="N", help="matches listed per task (default 5)")
    cd.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    common(cd)
    cd.set_defaults(func=cmd_check_data)

    ls = sub.add_parser("list", help="list registered tasks, models (plug-ins included) or protocol presets")
    ls.add_argument("what", choices=["tasks", "models", "protocols"])
    ls.add_argument("--include", action="append", default=[], metavar="PATH")
    ls.add_argument("-v", "--verbose", action="store_true", help="show each one's options")
    ls.set_defaults(func=cmd_list)
    # -v anywhere on the line (messages say "-v shows the traceback"): every subcommand takes it too;
    # SUPPRESS keeps a -v given before the subcommand.
    for name, parser in sub.choices.items():
        if name != "list":
            parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                                help="debug logging (tracebacks of load failures)")
    return p


def _fresh_line() -> None:
    """Close any progress bar still drawn, so an ``error:`` line starts on a line of its own."""
    from tqdm import tqdm

    bars = list(getattr(tqdm, "_instances", []) or [])
    for bar in bars:
        bar.close()
    if bars:
        sys.stderr.write("\n")
        sys.stderr.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; exit status 0 on success, 2 on bad input (one ``error:`` line),
    130 on Ctrl-C. With no subcommand it prints the help and exits 0."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    hint = peer_flag_hint(argv)
    if hint:
        print(f"{parser.prog}: error: {hint}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    with _logging_to_stderr(logging.DEBUG if getattr(args, "verbose", False) and args.command != "list"
                            else logging.INFO):
        return _dispatch(args)


@contextlib.contextmanager
def _logging_to_stderr(level: int):
    """Log to this call's ``sys.stderr`` for the length of one command, then put the root logger back:
    ``main`` can run many times in one process (tests, notebooks) without handlers piling up."""
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def _dispatch(args: argparse.Namespace) -> int:
    """Run the parsed command, turning the user's mistakes into one ``error:`` line and exit status 2."""
    try:
        load_builtins()
        for path in getattr(args, "include", []) or []:
            include(path)
        return args.func(args)
    except HarnessError as exc:
        _fresh_line()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.filename is None:  # not about a path the user can fix
            raise
        _fresh_line()
        kept = ("; samples already finished are kept in their journals: fix the folder (space, permissions) "
                "or pick another --output, and rerun the same command to resume") if args.command == "run" else ""
        print(f"error: {exc.filename}: {exc.strerror}{kept}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _fresh_line()
        print("interrupted: finished samples are kept; rerun the same command to resume", file=sys.stderr)
        return 130
