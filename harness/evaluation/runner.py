"""Evaluate one (model, task, shots, seed) cell, journaling each finished sample."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

from tqdm import tqdm

from harness import __version__
from harness.evaluation.batch_size import AUTO, BatchSize, run_auto
from harness.launch.distributed import Group, WorkQueue, balanced_share
from harness.evaluation.rices import build_sampler
from harness.errors import HarnessError, SampleError
from harness.model import Model
from harness.prompts import PromptBuilder
from harness.ranking import continuation_for, demo_orders, rank
from harness.sampling import rng_for, sampler_config, sampler_inputs
from harness.store.identity import cell_config, config_key, data_fingerprint, environment
from harness.store.journal import Journal, predictions_digest, seal
from harness.store.layout import cell_dir, check_label, write_json
from harness.store.locks import CellLock
from harness.task import Task
from harness.types import Example, GenerateRequest, GenerationConfig, RankRequest, SampleRecord

log = logging.getLogger(__name__)

R = TypeVar("R")

#: the batch size of --batch-size auto under torchrun (the ranks must agree on the batches)
AUTO_UNDER_TORCHRUN = 8


@dataclass(frozen=True)
class CellSpec:
    """What to evaluate in one cell, and how."""

    shots: int
    seed: int
    limit: int | None = None
    #: queries per model call, or ``auto`` (harness.evaluation.batch_size: the fastest on the cell's first batches)
    batch_size: BatchSize = 8
    #: (k, n): evaluate only shard k of n (balanced by prompt length); see Journal for the merge.
    shard: tuple[int, int] | None = None
    #: evaluate a random subset of N eval examples, a different one per seed (OpenFlamingo's --num_samples).
    sample: int | None = None
    #: replace results of another configuration in the cell's folder (else: refuse, see harness.reporting.store).
    overwrite: bool = False


def select_queries(task: Task, limit: int | None, sample: int | None = None, seed: int = 0) -> list[Example]:
    """The eval examples, in file order. ``limit`` takes the first N (the same for every seed);
    ``sample`` then draws N of them at random, a pure function of (seed, task), kept in file order."""
    examples = task.eval_examples()  # limit and sample were checked with the other flags (check_sweep_flags)
    if limit is not None:
        examples = examples[:limit]
    if sample is not None:
        if sample < len(examples):
            picks = rng_for("sample", seed, task.name, task.eval_split).choice(len(examples), size=sample, replace=False)
            examples = [examples[i] for i in sorted(picks)]
    if not examples:
        raise HarnessError(f"task {task.name}: the eval split {task.eval_split!r} is empty")
    return examples


def check_media(model: Model, examples: Sequence[Example], task: Task) -> None:
    kinds = {m.kind for e in examples for m in e.media}
    missing = kinds - set(model.media_kinds)
    if "video" in missing and model.video_as_frames:
        missing.discard("video")  # the adapter takes each video as its frames, in order
    if missing:
        hint = ("; it can take each video as its frames in order with --model-arg video_as_frames=true"
                if "video" in missing and hasattr(model.options, "video_as_frames") else "")
        raise HarnessError(
            f"model {model.name} takes {', '.join(sorted(model.media_kinds))} but task {task.name} has "
            f"{', '.join(sorted(missing))}{hint or '; pick a model that takes it'}"
        )


def _call_batch(fn: Callable[[list[Any]], list[R]], batch: list[Any]) -> list[R | SampleError]:
    """Call ``fn`` on a batch; if one bad sample fails the batch, retry sample by sample,
    so an unreadable image fails that sample only."""
    try:
        results: list[R | SampleError] = list(fn(batch))
    except SampleError:
        results = []
        for item in batch:
            try:
                results.append(fn([item])[0])
            except SampleError as exc:
                results.append(exc)
    if len(results) != len(batch):
        raise RuntimeError(f"model returned {len(results)} results for a batch of {len(batch)}")
    return results


@dataclass
class _Cell:
    """What the two request paths of one cell share."""

    task: Task
    spec: CellSpec
    builder: PromptBuilder
    demos_for: Callable[[Example], list[Example]]
    journal: Journal
    bar: Any
    #: torchrun: the cell's shared counter; the ranks claim its batches first come, first served
    queue: WorkQueue | None = None
    shown: int = 0  # samples computed by all ranks that the bar has counted (torchrun)
    #: --batch-size auto: what was measured and chosen (recorded in metrics.json)
    batch_choice: dict[str, Any] | None = None

    @property
    def text_only(self) -> bool:
        return self.spec.shots == 0  # Flamingo's zero-shot: demos without their media

    def claims(self, n: int) -> Iterable[int]:
        """The batches (of ``n``) this process computes: all of them, or those its rank claims."""
        return range(n) if self.queue is None else self.queue.claims(n)

    def advance(self, n: int) -> None:
        """Count ``n`` finished samples; under torchrun the bar shows every rank's."""
        if self.queue is not None:
            everyone = self.queue.report_done(n)
            n, self.shown = everyone - self.shown, everyone
        self.bar.update(n)


@dataclass
class CellPlan:
    """Everything decided about a cell before any model call: its queries, demos and identity."""

    task: Task
    spec: CellSpec
    queries: list[Example]
    sampler: Any
    n_demos: int
    template: Any
    gen: GenerationConfig
    config: dict[str, Any]
    key: str
    directory: Path
    journal: Journal
    #: (context length, tokens reserved for the output) when prompts are dropped to fit, else None
    fit: tuple[int, int] | None = None
    context_checked: bool = False

    @property
    def desc(self) -> str:
        return f"{self.config['label']} {self.task.name} {self.spec.shots}-shot seed {self.spec.seed}"


@dataclass
class Computed:
    """What :meth:`Runner.compute` found and did for (its share of) a cell."""

    resumed: list[SampleRecord]  # read back from the journal (earlier runs, other shards)
    new: list[SampleRecord]  # computed by this call
    share: int  # samples in this process's share of the cell
    stats: dict[str, int]  # the model's counters' increase (cache hits, vision encodes)
    batch_choice: dict[str, Any] | None = None  # --batch-size auto: what was measured and chosen


class Runner:
    """Runs cells for one model, writing under ``output/label``.

    A cell goes through three steps: :meth:`plan` (queries, demos, identity; no model call),
    :meth:`compute` (resume the journal, compute what this process's share lacks) and
    :meth:`finalize` (score the whole cell, write metrics.json). Each launch mode composes them:
    one process (``_run_whole``: plan, compute, finalize), an independent ``--shard K/N``
    (``_run_shard``: plan, compute), a torchrun rank (``_run_rank``: plan, compute its claimed
    batches, then rank 0 runs ``_run_whole``, with nothing left to compute) and ``merge`` (a
    :class:`~harness.evaluation.merge.RecordedModel` through ``_run_whole``).

    With a torchrun ``group`` every rank runs every cell: rank 0 first merges what earlier runs
    left, the ranks claim the remaining batches (those one process would run) from a shared counter
    and journal them into their own shard journals, and after a barrier rank 0 merges the shards
    and writes the metrics (every rank returns them).
    """

    def __init__(self, model: Model, output: Path, label: str | None = None, progress: bool = True,
                 group: Group | None = None):
        self.model = model
        self.output = Path(output)
        self.label = check_label(label or model.name)
        self.group = group
        self.progress = progress and (group is None or group.is_main)
        self._data_fp: dict[tuple[str, str, int], str] = {}
        self._samplers: dict[tuple, tuple[Task, Any]] = {}

    def plan(self, task: Task, spec: CellSpec) -> CellPlan:
        """The cell's queries, sampler and configuration. ``config`` is the cell's identity:
        everything in it is hashed into ``config_key`` (see harness.reporting.store)."""
        queries = select_queries(task, spec.limit, spec.sample, spec.seed)
        check_media(self.model, queries, task)  # shots and options were checked before any model loaded
        sampler = self._sampler(task, spec.seed, queries)
        if getattr(task.options, "length_normalization", None) == "tokens":
            self.model.count_tokens("a")  # a model that cannot count tokens fails here, before any sample
        n_demos = spec.shots if spec.shots > 0 else task.zero_shot_demos()
        sampler.check_shots(n_demos, queries)
        template_name, template = task.template(self.model.template_style)
        gen = task.generation_config()

        config = cell_config(
            model=self.model.config(), label=self.label, task=task.config(), template_name=template_name,
            template=template, shots=spec.shots, seed=spec.seed, limit=spec.limit, sample=spec.sample,
            sampler=sampler_config(sampler), zero_shot_text_demos=0 if spec.shots else n_demos,
            generation=gen if task.kind == "generate" else None, queries_fp=data_fingerprint(queries),
            support_fp=self._support_fingerprint(task), harness_version=__version__)
        key = config_key(config)
        directory = cell_dir(self.output, self.label, task.name, spec.shots, spec.seed)
        return CellPlan(task, spec, queries, sampler, n_demos, template, gen, config, key, directory,
                        Journal(directory, key, config, spec.shard))

    def check_context(self, plan: CellPlan) -> None:
        """The model's checks of a planned cell: ``Model.check_task`` and the context length (once; a sweep
        runs them for every cell after the conflict check and before any query). A finished cell asks no
        query: it is skipped, so a finished rerun never loads a deferred model for it."""
        if plan.context_checked:
            return
        if plan.journal.completed_metrics() is None:
            # can this model evaluate the task as configured (a duck-typed plug-in may lack the hook)
            getattr(self.model, "check_task", lambda t: None)(plan.task)
            plan.fit = self._check_context(plan.task, plan.spec, plan.queries, plan.sampler, plan.n_demos,
                                           plan.template, plan.gen)
        plan.context_checked = True

    def _check_context(self, task: Task, spec: CellSpec, queries: list[Example], sampler, n_demos: int, template,
                       gen: GenerationConfig) -> tuple[int, int] | None:
        """Before any query: the cell's longest rendered prompt (plus the tokens to generate) against the
        model's context length. Refuse with the numbers, or with ``context_overflow=drop_front`` return
        (context, reserve) so each prompt that does not fit loses demos from its front."""
        ctx = self.model.context_length() if hasattr(self.model, "context_length") else None
        if ctx is None or not queries:
            return None
        builder = PromptBuilder(template)
        text_only = spec.shots == 0
        longest = max(queries, key=lambda q: len(self.model.render_prompt(
            builder.build(sampler.demos(q, n_demos), q, text_only))))
        counted = self.model.prompt_length(builder.build(sampler.demos(longest, n_demos), longest, text_only))
        if counted is None:
            return None
        reserve = gen.max_new_tokens if task.kind == "generate" else 0
        need = counted[0] + reserve
        if need <= ctx:
            return None
        what = (f"task {task.name}: {spec.shots} shots need {need:,} tokens (the longest prompt, query "
                f"{longest.id}: {counted[0]:,}, {counted[1]:,} of them image tokens"
                f"{f', + {reserve} to generate' if reserve else ''}); model {self.model.name} takes {ctx:,}")
        if getattr(task.options, "context_overflow", "refuse") != "drop_front":
            raise HarnessError(f"{what}; use fewer shots, or --task-arg context_overflow=drop_front to drop demos "
                               f"from the front of each prompt that does not fit (recorded per sample as n_demos)")
        alone = self.model.prompt_length(builder.build([], longest, text_only))
        if alone is not None and alone[0] + reserve > ctx:
            raise HarnessError(f"{what}; even without demos query {longest.id} needs {alone[0] + reserve:,}")
        log.warning("%s; context_overflow=drop_front: prompts that do not fit lose demos from the front (each "
                    "sample records n_demos delivered)", what)
        return ctx, reserve

    def _fitted(self, plan: "CellPlan", builder: PromptBuilder, q: Example, demos: list[Example]) -> list[Example]:
        """``demos`` less as many from the front as the prompt needs to fit the context (plan.fit)."""
        if plan.fit is None:
            return demos
        ctx, reserve = plan.fit
        text_only = plan.spec.shots == 0
        while demos:
            counted = self.model.prompt_length(builder.build(demos, q, text_only))
            if counted is None or counted[0] + reserve <= ctx:
                break
            demos = demos[1:]
        return demos

    def _delivered(self, prompt, demos: Sequence[Example]) -> dict[str, Any]:
        """What reached the model, per sample: demos, and prompt / image tokens where the adapter counts them."""
        out: dict[str, Any] = {"n_demos": len(demos)}
        counted = getattr(self.model, "prompt_length", lambda p: None)(prompt)
        if counted is not None:
            out["prompt_tokens"], out["image_tokens"] = counted
        return out

    def _sampler(self, task: Task, seed: int, queries: list[Example]):
        """The cell's sampler, shared by every cell of this runner with the same inputs (a RICES
        sampler, whose features are the expensive part, serves every shot count and seed of a task)."""
        key = (id(task), *sampler_inputs(task, seed, queries))
        if key not in self._samplers:  # the task is kept with it: its id is never reused for another
            self._samplers[key] = (task, build_sampler(task, seed, self.model, queries, self.progress))
        return self._samplers[key][1]

    def _support_fingerprint(self, task: Task) -> str:
        """Of the whole support split (the pool is a function of it, support_size and the seed),
        computed once per task and split."""
        examples = task.support_examples()
        key = (task.name, task.support_split, id(examples))
        if key not in self._data_fp:
            self._data_fp[key] = data_fingerprint(examples)
        return self._data_fp[key]

    # ---- launch modes: each composes the steps plan -> compute -> finalize ----------------
    def run_cell(self, task: Task, spec: CellSpec, wait: bool = True) -> dict[str, Any] | None:
        """Evaluate one cell (or resume it, or return its finished metrics) under the cell's lock.

        If another live process holds the lock: with ``wait`` wait for it (then usually read its
        finished metrics), else return None at once so the caller can come back later. Under
        torchrun each rank locks only its own shard of the cell (see ``_run_rank``)."""
        return self.run_plan(self.plan(task, spec), wait)

    def run_plan(self, plan: CellPlan, wait: bool = True) -> dict[str, Any] | None:
        """:meth:`run_cell` for a cell already planned (a sweep plans every cell once, up front).
        Returns the cell's metrics, or for ``--shard K/N`` a summary of this process's share."""
        if self.group is not None:
            return self._run_rank(plan)
        lock = plan.journal.lock()
        if not lock.acquire(wait=False):
            if not wait:
                log.info("%s: %s is working on it; coming back to it later", plan.directory, lock.holder())
                return None
            log.info("%s: waiting for %s to finish it", plan.directory, lock.holder())
            lock.acquire(wait=True)
        try:
            return self._run_shard(plan) if plan.spec.shard is not None else self._run_whole(plan)
        finally:
            lock.release()

    def _run_whole(self, plan: CellPlan) -> dict[str, Any]:
        """One process: compute what the cell lacks (after any shard processes still writing it),
        then score it. Also how a merge finishes a sharded cell: nothing is left to compute."""
        finished = self._start(plan)
        if finished is not None:
            return finished
        self._wait_for_shards(plan.journal)
        return self.finalize(plan, self.compute(plan))

    def _run_shard(self, plan: CellPlan) -> dict[str, Any]:
        """``--shard K/N``: compute a fixed, balanced share into the shard's journal; a later
        unsharded run (or ``merge``) scores the cell."""
        finished = self._start(plan)
        if finished is not None:
            return finished
        done = self.compute(plan)
        plan.journal.record_time()
        assert plan.spec.shard is not None
        return {"shard": list(plan.spec.shard), "n": done.share, "journal": str(plan.journal.path)}

    def _run_rank(self, plan: CellPlan) -> dict[str, Any]:
        """torchrun: rank 0 merges earlier runs' journals, so every rank sees the same finished
        samples; each rank computes the batches it claims into its own shard journal, then
        ``_merge_ranks`` scores the cell on rank 0."""
        group = self.group
        assert group is not None
        start = time.time()
        if plan.spec.shard is not None:
            raise HarnessError("a cell is either sharded by torchrun or by --shard, not both")

        def prepare() -> dict[str, Any] | None:
            if plan.spec.overwrite and plan.journal.replaceable():
                plan.journal.clear()
            return plan.journal.prepare()

        finished = group.from_main(prepare)
        if finished is not None:
            log.info("%s: already complete, skipping", plan.directory)
            return finished
        spec = replace(plan.spec, shard=group.shard)
        mine = replace(plan, spec=spec, journal=Journal(plan.directory, plan.key, plan.config, spec.shard))
        lock = mine.journal.lock()
        lock.acquire(wait=True)
        try:
            done = self.compute(mine, queue=group.work_queue(plan.key))
            mine.journal.record_time()
        finally:
            lock.release()
        # the merge runs the same plan (queries, sampler, identity) over the whole cell's journal
        return self._merge_ranks(replace(plan, journal=Journal(plan.directory, plan.key, plan.config)),
                                 start, len(done.new))

    def _start(self, plan: CellPlan) -> dict[str, Any] | None:
        """The cell's finished metrics if it has them; else make way for computing it (--overwrite)."""
        finished = plan.journal.completed_metrics()
        if finished is not None:
            log.info("%s: already complete, skipping", plan.directory)
            return finished
        if plan.spec.overwrite and plan.journal.replaceable():
            plan.journal.clear()
        return None

    # ---- the steps -------------------------------------------------------------------
    def compute(self, plan: CellPlan, queue: WorkQueue | None = None) -> Computed:
        """Resume the cell's journal and compute what this process's share still lacks, journaling
        each batch. The share is the whole cell; with ``--shard K/N``, a fixed balanced part of it;
        with a torchrun ``queue``, the batches this rank claims from the shared counter."""
        task, spec, journal = plan.task, plan.spec, plan.journal
        self.check_context(plan)
        queries, sampler, n_demos = plan.queries, plan.sampler, plan.n_demos
        builder = PromptBuilder(plan.template)

        stats = getattr(self.model, "stats", dict)  # Model.stats(); a duck-typed plug-in may lack it
        stats_before = stats()
        done = journal.resume()
        done_ids = {r.query_id for r in done}

        fitted: dict[str, list[Example]] = {}

        def demos_for(q: Example) -> list[Example]:
            if q.id not in fitted:
                fitted[q.id] = self._fitted(plan, builder, q, sampler.demos(q, n_demos))
            return fitted[q.id]

        mine = queries
        if spec.shard is not None and queue is None:
            # independent shards cannot know what the others finished: each takes a fixed, balanced
            # share of the whole cell
            mine = balanced_share(queries, [self._cost(task, builder, demos_for(q), q, spec.shots == 0)
                                            for q in queries], *spec.shard)
        todo = [q for q in mine if q.id not in done_ids]
        if todo:
            ranks = f" over {self.group.world_size} ranks" if queue is not None and self.group else ""
            log.info("%s: computing %d samples%s in %s", plan.desc, len(todo), ranks, plan.directory)
        self.model.observe_support(task.name, sampler.pool)
        if todo and queue is None:  # torchrun ranks claim batches as they go: each encodes its own
            self._prefetch(todo, demos_for, spec.shots == 0)

        bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=plan.desc, disable=not self.progress,
                   leave=False)
        cell = _Cell(task, spec, builder, demos_for, journal, bar, queue)
        new = (self._generate(cell, todo, plan.gen) if task.kind == "generate"
               else self._rank(cell, todo, plan.template))
        bar.close()
        return Computed(done, new, len(mine), {k: v - stats_before.get(k, 0) for k, v in stats().items()},
                        cell.batch_choice)

    def finalize(self, plan: CellPlan, computed: Computed) -> dict[str, Any]:
        """Score the whole cell from its records, in eval order, and write its sealed metrics.json."""
        task, queries, journal = plan.task, plan.queries, plan.journal
        by_id = {r.query_id: r for r in computed.resumed + computed.new}
        records = [by_id[q.id] for q in queries]
        failures = failure_list(records, queries, plan.sampler.pool)
        if failures and len(failures) == len(records):
            raise HarnessError(
                f"{plan.desc}: every sample failed; first error: {failures[0]['error']} "
                f"(details in {journal.path})"
            )
        metrics = task.compute_metrics(records)  # aggregate(), or no metric for a split without answers
        # Corpus-level metrics (CIDEr) set per-sample scores only in aggregate(): store the final ones,
        # in eval order.
        journal.rewrite(records)
        wall = journal.record_time()
        parts = journal.parts()
        result = {
            "metrics": metrics,
            "primary_metric": task.primary_metric,
            "n": len(records),
            "n_failed": len(failures),
            "failures": failures,
            # compute time of every process that worked on the cell (resumes, shards), and each one's
            "compute_time_s": round(sum(p["wall_time_s"] for p in parts), 3),
            "parts": parts,
            "wall_time_s": wall,  # this process's part
            # this run's counters (cache hits, vision encodes): outside the config, they vary by run
            "model_stats": computed.stats,
            **({"batch_size": computed.batch_choice} if computed.batch_choice is not None else {}),
            # cache sizes and places this run used: outside the config, they never change an output
            "model_runtime_options": getattr(self.model, "runtime_config", dict)(),
            "config_key": plan.key,
            "config": plan.config,
            # what produced the numbers, outside the identity: compare says when side-by-side cells differ
            "environment": environment(),
            "predictions_digest": predictions_digest(records),
        }
        result["seal"] = seal(result)  # a hand edit of the numbers is caught on rerun and by compare
        write_json(plan.directory / "metrics.json", result)
        return result

    def _prefetch(self, todo: list[Example], demos_for: Callable[[Example], list[Example]], text_only: bool) -> None:
        """The media the cell's remaining prompts show, lazily, to the model's ``prefetch_media`` (a
        model that does not prefetch never draws a demo for it; a duck-typed plug-in may lack the hook)."""
        prefetch = getattr(self.model, "prefetch_media", None)
        if prefetch is not None:
            prefetch(m for q in todo for ex in ([] if text_only else demos_for(q)) + [q] for m in ex.media)

    @staticmethod
    def _wait_for_shards(journal: Journal) -> None:
        """A merge waits for shard processes still writing this configuration's shards."""
        if not journal.shard_dir.is_dir():
            return
        for lock_path in sorted(journal.shard_dir.glob("*.lock")):
            lock = CellLock(lock_path)
            if not lock.acquire(wait=False):
                log.info("%s: waiting for %s to finish its shard", journal.dir, lock.holder())
                lock.acquire(wait=True)
            lock.release()

    def _cost(self, task: Task, builder: PromptBuilder, demos: list[Example], q: Example, text_only: bool) -> int:
        """The work a query costs, for balanced shares: its rendered prompt's length (times the
        candidates a close-ended task scores)."""
        prompt = builder.build(demos, q, text_only)
        n = 1 if task.kind == "generate" else len(task.candidates(q)) * getattr(task.options, "ensemble", 1)
        return len(self.model.render_prompt(prompt)) * n

    def _merge_ranks(self, plan: CellPlan, start: float, n_computed: int) -> dict[str, Any]:
        """torchrun: wait for every rank, then rank 0 merges their journals and scores the cell
        as one process would (it computes anything a rank left missing); every rank gets the result."""
        group = self.group
        assert group is not None
        computed_s = time.time() - start
        ranks = group.all_gather({"rank": group.rank, "n": n_computed, "compute_s": round(computed_s, 3)})
        slowest = max(r["compute_s"] for r in ranks)
        for r in ranks:
            r["idle_s"] = round(slowest - r["compute_s"], 3)

        def merge() -> dict[str, Any]:
            merger = Runner(self.model, self.output, self.label, progress=False)
            result = merger.run_plan(plan)
            result["wall_time_s"] = round(time.time() - start, 3)
            result["distributed"] = {"world_size": group.world_size, "backend": group.backend, "ranks": ranks}
            write_json(plan.directory / "metrics.json", result)
            return result

        return group.from_main(merge)

    def _generate(self, cell: "_Cell", todo: list[Example], gen: GenerationConfig) -> list[SampleRecord]:
        """Open-ended: batched generation, longest prompts first, journaled batch by batch."""
        requests = []
        for q in todo:
            demos = cell.demos_for(q)
            requests.append(GenerateRequest(cell.builder.build(demos, q, cell.text_only), gen, q, tuple(demos)))
        # Longest prompts first: batches of similar length pad less, and OOM shows up early.
        requests.sort(key=lambda r: -len(self.model.render_prompt(r.prompt)))
        records: list[SampleRecord] = []

        def compute(batch: list[GenerateRequest]) -> None:
            outputs = _call_batch(self.model.generate, batch)
            batch_records = [self._generated_record(cell.task, r, o) for r, o in zip(batch, outputs)]
            cell.journal.append(batch_records)
            records.extend(batch_records)
            cell.advance(len(batch_records))

        size = cell.spec.batch_size
        if size == AUTO:
            if cell.queue is None:
                cell.batch_choice = run_auto(requests, compute, lambda r: len(self.model.render_prompt(r.prompt)))
                return records
            # torchrun ranks claim batches by index: they must agree on them, so no timing decides
            log.info("--batch-size auto: under torchrun every rank uses batches of %d", AUTO_UNDER_TORCHRUN)
            size = AUTO_UNDER_TORCHRUN
        batches = [requests[start : start + size] for start in range(0, len(requests), size)]
        for i in cell.claims(len(batches)):
            compute(batches[i])
        return records

    def _rank(self, cell: "_Cell", todo: list[Example], template) -> list[SampleRecord]:
        """Close-ended: every candidate under each demo order (prompt ensembling), averaged in rank()."""
        task = cell.task
        ensemble = getattr(task.options, "ensemble", 1)
        norm = getattr(task.options, "length_normalization", "none")
        records: list[SampleRecord] = []
        for q in map(todo.__getitem__, cell.claims(len(todo))):
            demos = cell.demos_for(q)
            prompts = [cell.builder.build(o, q, cell.text_only)
                       for o in demo_orders(demos, ensemble, cell.spec.seed, task.name, q.id)]
            cands = task.candidates(q)
            conts = [continuation_for(template, q, c) for c in cands]
            # One request per prompt with all its candidates, so the model can compute the prompt once.
            groups = [RankRequest(p, tuple(conts), q, tuple(demos)) for p in prompts]
            outs = [x for o in _call_batch(self.model.rank_candidates, groups)
                    for x in (o if isinstance(o, list) else [o] * len(conts))]
            record = self._ranked_record(task, q, demos, prompts, cands, conts, outs, norm)
            cell.journal.append([record])
            records.append(record)
            cell.advance(1)
        return records

    def _generated_record(self, task: Task, req: GenerateRequest, out: str | SampleError) -> SampleRecord:
        q = req.query
        common = dict(
            query_id=q.id,
            demo_ids=[d.id for d in req.demos],
            prompt=self.model.render_prompt(req.prompt),
            fields={**task.record_fields(q), **self._delivered(req.prompt, req.demos)},
        )
        if isinstance(out, SampleError):
            return SampleRecord(raw_output="", prediction="", score=0.0, error=str(out), **common)
        usage = getattr(out, "usage", None)  # a served model's tokens for this sample (models/served.py)
        if usage:
            common["fields"] = {**common["fields"], "usage": usage}
        out = str(out)
        prediction = task.postprocess(out, q)
        return SampleRecord(raw_output=out, prediction=prediction, score=task.sample_score(prediction, q), **common)

    def _ranked_record(self, task, q, demos, prompts, cands, conts, outs, norm) -> SampleRecord:
        common = dict(
            query_id=q.id,
            demo_ids=[d.id for d in demos],
            prompt=self.model.render_prompt(prompts[0]),
        )
        errors = [o for o in outs if isinstance(o, SampleError)]
        if errors:
            return SampleRecord(raw_output="", prediction="", score=0.0, error=str(errors[0]),
                                fields={**task.record_fields(q), **self._delivered(prompts[0], demos)}, **common)
        per_order = [[float(o) for o in outs[i : i + len(cands)]] for i in range(0, len(outs), len(cands))]
        counts = [self.model.count_tokens(c) for c in conts] if norm == "tokens" else None
        _, logprobs, scores = rank(cands, conts, per_order, norm, counts)
        prediction = task.choose(cands, scores)  # ties as the task's reference breaks them
        fields = {**task.record_fields(q), **task.ranking_fields(q, logprobs, scores, norm), "n_orders": len(prompts),
                  **self._delivered(prompts[0], demos)}
        return SampleRecord(raw_output=prediction, prediction=prediction, score=task.sample_score(prediction, q),
                            fields=fields, **common)


def failure_list(records: Sequence[SampleRecord], queries: Sequence[Example],
                 pool: Sequence[Example]) -> list[dict[str, Any]]:
    """The failed samples, each with its error and, where the error names one, the media that
    failed and whether it was the query's or a demo's (a bad demo image fails every query drawing it)."""
    by_id = {e.id: e for e in pool}
    by_id.update({q.id: q for q in queries})
    out = []
    for r in records:
        if not r.error:
            continue
        entry: dict[str, Any] = {"query_id": r.query_id, "error": r.error}
        candidates = [("query", r.query_id)] + [("demo", d) for d in r.demo_ids]
        for role, ex_id in candidates:
            ex = by_id.get(ex_id)
            hit = next((m.identity for m in (ex.media if ex else ()) if m.identity in r.error), None)
            if hit:
                entry.update(media=hit, role=role, **({"demo_id": ex_id} if role == "demo" else {}))
                break
        out.append(entry)
    return out
