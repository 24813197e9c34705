"""The Task base class: a dataset, how to prompt it, and how to score it.

A task never calls a model. Subclass it in one file, decorate it with
``@register_task("name")``, and it runs like the built-ins (see examples/my_task.py).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
import os
from collections import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping, Sequence

from harness.data import hf_data
from harness.data.split_cache import example_ids
from harness.errors import DataError, HarnessError
from harness.metrics.stats import mean_with_ci
from harness.options import build_options
from harness.prompts import PromptTemplate, pick_template
from harness.types import Example, GenerationConfig, SampleRecord

log = logging.getLogger(__name__)


def _positive(v: Any) -> bool:
    return v >= 1


#: Range checks of option names shared by many tasks: name -> (accepts the value, what it must be),
#: applied by every task's options when they are built (``None``: the task's default, always passes).
#: Video frame options are checked by the FrameSelection a video task builds from them.
OPTION_RANGES: dict[str, tuple[Any, str]] = {
    "support_size": (_positive, "an integer >= 1 (size of the random support set)"),
    "zero_shot_text_demos": (lambda v: v >= 0, "an integer >= 0"),
    "max_new_tokens": (_positive, "an integer >= 1"),
    "num_beams": (_positive, "an integer >= 1 (1 = greedy)"),
    "length_penalty": (math.isfinite, "a finite number"),
    "ensemble": (_positive, "an integer >= 1 (demo orders to average)"),
    "rices_batch_size": (_positive, "an integer >= 1"),
    "nested_shots": (lambda v: v >= 0, "an integer >= 0 (0: independent draws per shot count)"),
}


def check_option_ranges(options: Any) -> None:
    """Every field of ``options`` named in :data:`OPTION_RANGES` in its range."""
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        rule = OPTION_RANGES.get(f.name)
        if rule is None or value is None or isinstance(value, (str, bool)):
            continue
        ok, what = rule
        if not ok(value):
            raise HarnessError(f"option {f.name}={value}: must be {what}")


@dataclass(frozen=True)
class TaskOptions:
    """Options every task has; a task extends this dataclass with its own.

    template:              a name from the task's ``templates`` (default: the model's
                           preferred style if the task has it, else the task's default).
    support_size:          size of the random support set demos come from (Flamingo: 2048).
    zero_shot_text_demos:  text-only demos (media removed) shown at 0 shots, as Flamingo and
                           OpenFlamingo do for every task, close-ended ones included (0: none).
    support_split / eval_split: which splits provide demos and queries.
    max_new_tokens / num_beams / length_penalty: override the task's generation settings.
    sampler:               how demos are chosen: ``random`` from the support set (seeded), or ``rices``,
                           the most similar images first (harness.evaluation.rices; needs ``rices_encoder``).
    rices_encoder:         RICES features: the local path of a Hugging Face vision model (e.g. CLIP), or
                           ``model`` for the evaluated model's own vision encoder.
    rices_cache:           folder of cached RICES features (default $HARNESS_CACHE/rices or ~/.cache/harness/rices).
    rices_batch_size:      images per batch when computing RICES features.
    eval_source / support_source: where each split comes from: ``files`` (the official files under the
                           data root) or ``hf:PATH_OR_ID[@SPLIT]`` (a Hugging Face dataset: save_to_disk
                           folder, parquet folder/glob, or an id in the local cache; see docs/data.md).
    columns:               for ``hf:`` sources, ``field:column,...`` overriding the task's column mapping.
    nested_shots:          0 (default, as OpenFlamingo): each shot count draws its own demos. N: nested
                           demos: for each (query, seed) the k-shot demos are the first k of its N-shot draw
                           (N = the largest shot count), so shot counts compare like with like and
                           ``compare --baseline-shots`` can pair them (docs/statistics.md).
    context_overflow:      ``refuse`` (default): a cell whose longest prompt (plus the tokens to generate)
                           exceeds the model's context length is refused before any query, with the numbers;
                           ``drop_front``: each prompt that does not fit loses demos from its front, and
                           every sample records ``n_demos`` delivered.
    exclude_overlap:       drop from the support split every example whose image is also an eval image (same
                           file or bytes, or a near-duplicate by perceptual hash: harness.data.overlap), so no
                           demo shows a query's picture; ``check-data`` reports the overlap without changing it.
    protocol:              a published protocol's preset (``flamingo``, ``openflamingo``, ``idefics``:
                           harness.protocols, docs/protocols.md) setting the options above that
                           it fixes; options given explicitly win. ``run --protocol NAME`` sets it for every task.
    """

    template: str | None = None
    support_size: int = 2048
    zero_shot_text_demos: int = 2
    support_split: str | None = None
    eval_split: str | None = None
    max_new_tokens: int | None = None
    num_beams: int | None = None
    length_penalty: float | None = None
    sampler: Literal["random", "rices"] = "random"
    rices_encoder: str | None = None
    rices_cache: str | None = None
    rices_batch_size: int = 32
    eval_source: str = hf_data.FILES
    support_source: str = hf_data.FILES
    columns: str | None = None
    nested_shots: int = 0
    context_overflow: Literal["refuse", "drop_front"] = "refuse"
    exclude_overlap: bool = False
    protocol: str | None = None

    def __post_init__(self) -> None:
        check_option_ranges(self)  # every option checked once, here, wherever the options come from
        if self.nested_shots and self.sampler == "rices":
            raise HarnessError("nested_shots is for random demos; RICES demos are already nested (the k most "
                               "similar images); drop nested_shots")
        if self.sampler == "rices":
            from harness.sampling import check_encoder_path

            if not self.rices_encoder:
                raise HarnessError("sampler=rices needs rices_encoder=PATH (a local Hugging Face vision model, "
                                   "e.g. CLIP) or rices_encoder=model (the evaluated model's own vision encoder)")
            check_encoder_path(self.rices_encoder)
        elif self.rices_encoder:
            raise HarnessError("rices_encoder is set but sampler is random; add sampler=rices (or drop rices_encoder)")


class Task:
    """Base class of all tasks. Subclasses set the class attributes and implement the loaders."""

    registry_name: ClassVar[str] = ""
    #: "generate" (open-ended) or "loglikelihood" (close-ended ranking).
    kind: ClassVar[Literal["generate", "loglikelihood"]] = "generate"
    Options: ClassVar[type] = TaskOptions
    templates: ClassVar[Mapping[str, PromptTemplate]] = {}
    default_template: ClassVar[str] = ""
    generation: ClassVar[GenerationConfig] = GenerationConfig()
    default_support_split: ClassVar[str] = "train"
    default_eval_split: ClassVar[str] = "val"
    #: the metric shown in tables, a key of ``aggregate()``'s result.
    primary_metric: ClassVar[str] = "accuracy"
    #: keys of an official-format predictions file: (id field, answer field).
    prediction_keys: ClassVar[tuple[str, str]] = ("question_id", "answer")
    #: the submission format of the benchmark's evaluation server (harness.evaluation.export.FORMATS), which
    #: ``run_eval.py export`` writes from a cell; None: no server.
    server_format: ClassVar[str | None] = None
    #: whether ``load`` needs files under the data root (False for bundled data).
    needs_data_dir: ClassVar[bool] = True
    #: the most shots the benchmark allows (0: zero-shot only, e.g. RareAct has no training split).
    max_shots: ClassVar[int | None] = None
    #: how ``hf:`` sources are read (harness.data.hf_data.Columns: field -> default column, e.g. the lmms-lab
    #: schema); a task that sets it implements ``example_from_row``. None: files only.
    hf_columns: ClassVar[hf_data.Columns | None] = None
    #: bump it when outputs or scoring change (post-processing, a metric): it is part of every cell's
    #: identity, so a rerun computes new cells instead of printing "already complete" with old numbers.
    version: ClassVar[int] = 1

    def __init__(self, data_dir: str | Path | None = None, options: Mapping[str, Any] | None = None):
        self.name = self.registry_name or type(self).__name__
        given = dict(options or {})
        if given.get("protocol") not in (None, "", "none"):  # a preset's options, under the explicit ones
            from harness.protocols import preset_options

            given = {**preset_options(str(given["protocol"]), type(self), given), **given}
        self.options = build_options(self.Options, given, f"task {self.name}")
        self._data_dir = Path(data_dir) if data_dir else None
        self._cache: dict[str, Sequence[Example]] = {}
        self._datasets_read: dict[str, dict[str, Any]] = {}  # "location@split" -> what load_source read
        self._overlap = None  # harness.data.overlap.Overlap, computed once
        self._support_kept: list[Example] | None = None
        # Parsed now so a bad source or mapping fails before any model loads.
        self._sources = {role: hf_data.parse_source(getattr(self.options, f"{role}_source"),
                                                    f"task {self.name} option {role}_source")
                         for role in ("eval", "support")}
        if any(self._sources.values()) and self.hf_columns is None:
            raise HarnessError(f"task {self.name} reads its official files only (it declares no hf_columns); "
                               f"drop eval_source/support_source or see docs/data.md to add a mapping")
        fields = self.hf_columns.logical if self.hf_columns else []
        self._column_overrides = hf_data.parse_columns(self.options.columns, fields, f"task {self.name} option columns")

    # ---- data -----------------------------------------------------------------
    @property
    def uses_data_dir(self) -> bool:
        """Whether this task, as configured, reads under the data root: not when both splits come from
        ``hf:`` sources (for early checks of --data-dir)."""
        return self.needs_data_dir and any(s is None for s in self._sources.values())

    @property
    def root(self) -> Path:
        """``<data root>/<task name>``, where the data root is --data-dir or $HARNESS_DATA."""
        base = self._data_dir or (Path(os.environ["HARNESS_DATA"]) if os.environ.get("HARNESS_DATA") else None)
        if base is None:
            raise HarnessError(
                f"task {self.name} reads local files: pass --data-dir DIR or set HARNESS_DATA, "
                f"with the files under DIR/{self.name}/ (see README, 'Data layout')"
            )
        return base / self.name

    def load(self, split: str) -> Sequence[Example]:
        """Load one split as Examples (a list, or a harness.data.split_cache.LazyExamples). Subclasses
        implement this."""
        raise NotImplementedError

    def examples(self, split: str) -> Sequence[Example]:
        """The split's examples: a list, or a sequence that builds them when used (a split read
        through harness.data.split_cache)."""
        if split not in self._cache:
            examples = self._load_without_gc(split)
            ids = example_ids(examples)
            if len(set(ids)) != len(ids):
                seen: set[str] = set()
                for i in ids:
                    if i in seen:  # a duplicate would be scored twice and could be its own demo
                        raise DataError(f"task {self.name} split {split}: id {i} appears twice in the data; "
                                        f"ids (question_id, image id...) must be unique")
                    seen.add(i)
            self._cache[split] = examples
        return self._cache[split]

    def _load_without_gc(self, split: str) -> Sequence[Example]:
        # A split is tens of thousands of small objects, all kept: cyclic GC passes over them
        # while they are built only cost time (~40% of easyvqa's load).
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self.load(split)
        finally:
            if was_enabled:
                gc.enable()

    @property
    def support_split(self) -> str:
        return self.options.support_split or self.default_support_split

    @property
    def eval_split(self) -> str:
        return self.options.eval_split or self.default_eval_split

    def support_examples(self) -> Sequence[Example]:
        """The support split the demos come from (less its eval-image overlap with ``exclude_overlap``)."""
        if not getattr(self.options, "exclude_overlap", False):
            return self._support_split_examples()
        if self._support_kept is None:  # one list object: callers key caches by its id
            shared = self.demo_overlap().matches
            self._support_kept = [e for e in self._support_split_examples() if e.id not in shared]
        return self._support_kept

    def _support_split_examples(self) -> Sequence[Example]:
        if self._sources["support"] is None:
            return self.examples(self.support_split)
        return self._source_examples("support")

    def demo_overlap(self, progress: bool = True):
        """Support examples whose image is also an image of the (whole) eval split: a
        :class:`harness.data.overlap.Overlap`, computed once per task."""
        if self._overlap is None:
            from harness.data.overlap import find_overlap

            self._overlap = find_overlap(self.name, self._support_split_examples(), self.eval_examples(), progress)
        return self._overlap

    def eval_examples(self, split: str | None = None) -> Sequence[Example]:
        if self._sources["eval"] is None:
            return self.examples(split or self.eval_split)
        return self._source_examples("eval", split)

    # ---- Hugging Face datasets (harness.data.hf_data) -------------------------------------------
    def _source_split(self, role: str, split: str | None = None) -> tuple[hf_data.SourceSpec, str]:
        """The role's source and split: an explicit split (``score --split``), else the source's @SPLIT,
        else the split option, else the task's default split name."""
        spec = self._sources[role]
        assert spec is not None
        option = self.options.eval_split if role == "eval" else self.options.support_split
        default = self.default_eval_split if role == "eval" else self.default_support_split
        return spec, split or spec.split or option or default

    def _source_examples(self, role: str, split: str | None = None) -> list[Example]:
        spec, split = self._source_split(role, split)
        key = f"{spec.location}@{split}"  # '@' never appears in a files split name
        if key not in self._cache:
            self._cache[key] = self.load_source(hf_data.SourceSpec(spec.location, split), split, f"{role}_source")
        return self._cache[key]

    def load_source(self, source: str | hf_data.SourceSpec, split: str, option: str = "eval_source") -> list[Example]:
        """Examples of one split of a Hugging Face dataset (``hf:PATH_OR_ID[@SPLIT]``), read through
        ``hf_columns`` (with the ``columns`` option's overrides) and ``example_from_row``. Images stay
        in the dataset, decoded when a model uses them. A plug-in task can call it from ``load``."""
        spec = source if isinstance(source, hf_data.SourceSpec) else hf_data.parse_source(source, option)
        if spec is None or self.hf_columns is None:
            raise HarnessError(f"task {self.name}: load_source needs an hf: source and the class attribute hf_columns")
        split = spec.split or split
        opened = hf_data.open_split(spec, split, f"task {self.name} {option}")
        required, optional = self.hf_columns.resolve(self._column_overrides)
        mapping = hf_data.check_columns(opened, required, optional, f"task {self.name}", "columns")
        media_dir = getattr(self.options, "image_dir", None)
        where = opened.description["source"]
        examples = [self.example_from_row(row, f"{where} row {i}", opened.description["split"], i)
                    for i, row in enumerate(hf_data.read_rows(opened, mapping, self.hf_columns.media, media_dir))]
        self._datasets_read[f"{spec.location}@{split}"] = {**opened.description, "columns": mapping}
        ids = {}
        for i, e in enumerate(examples):
            if e.id in ids:
                raise DataError(f"{where}: rows {ids[e.id]} and {i} have the same id {e.id!r} (column "
                                f"{mapping.get('id', '?')!r}); map a unique column with --task-arg columns=id:COLUMN")
            ids[e.id] = i
        return examples

    def example_from_row(self, row: Mapping[str, Any], where: str, split: str, index: int) -> Example:
        """Row ``index`` of a dataset (``hf_columns``' field names -> values, media already lazy Image items;
        ``where`` names it in errors) as an Example."""
        raise NotImplementedError(f"task {self.name} declares hf_columns but no example_from_row")

    def source_config(self) -> dict[str, Any]:
        """Where each split comes from: ``files``, or the dataset (path or id, split, fingerprint, revision)."""
        out: dict[str, Any] = {}
        for role, spec in self._sources.items():
            if spec is None:  # files, unless the task's own load() read a dataset (plug-ins)
                split = self.eval_split if role == "eval" else self.support_split
                read = [d for key, d in self._datasets_read.items() if key.rsplit("@", 1)[1] == split]
                out[role] = read[0] if read else hf_data.FILES
                continue
            self._source_examples(role)  # cached: the runner has loaded it already
            spec, split = self._source_split(role)
            out[role] = self._datasets_read[f"{spec.location}@{split}"]
        return out

    # ---- prompting ------------------------------------------------------------
    def template(self, model_style: str | None = None) -> tuple[str, PromptTemplate]:
        name = self.options.template
        if name is None:
            name = model_style if model_style in self.templates else self.default_template
        return name, pick_template(self.templates, name, f"task {self.name}")

    def check_shots(self, shots: int) -> None:
        """Refuse a shot count the benchmark does not have (before any model loads); that it is
        >= 0 was checked with the other sweep flags (check_sweep_flags)."""
        if self.max_shots is not None and shots > self.max_shots:
            raise HarnessError(f"task {self.name} is evaluated with at most {self.max_shots} shots "
                               f"(it has no split to draw demonstrations from); got --shots {shots}")
        nested = getattr(self.options, "nested_shots", 0)
        if nested and shots > nested:
            raise HarnessError(f"task {self.name}: --shots {shots} is above nested_shots={nested} (every shot count "
                               f"takes the first k of the {nested}-shot draw); pass --task-arg nested_shots={shots}")

    def zero_shot_demos(self) -> int:
        """Demos shown at 0 shots (text only). OpenFlamingo's evaluate.py uses two for every task,
        HatefulMemes included (``compute_effective_num_shots``), so close-ended tasks follow it too."""
        return self.options.zero_shot_text_demos

    def generation_config(self) -> GenerationConfig:
        o = self.options
        overrides = {
            k: getattr(o, k) for k in ("max_new_tokens", "num_beams", "length_penalty") if getattr(o, k) is not None
        }
        return dataclasses.replace(self.generation, **overrides)

    # ---- scoring --------------------------------------------------------------
    def postprocess(self, raw: str, example: Example) -> str:
        return raw.strip()

    def candidates(self, example: Example) -> list[str]:
        """Close-ended tasks: the continuations to rank by log-likelihood."""
        raise NotImplementedError(f"task {self.name} is not close-ended")

    def demo_sampler(self, seed: int):
        """The sampler that picks each query's demos (random from the support set; a task may
        override it, e.g. class-balanced demos for classification)."""
        from harness.sampling import RandomSampler

        return RandomSampler(self.name, self.support_examples(), seed, self.options.support_size,
                             self.options.nested_shots)

    def choose(self, candidates: Sequence[str], scores: Mapping[str, float]) -> str:
        """Close-ended tasks: the predicted candidate from the ranking scores. Default: the highest,
        ties to the first in candidate order (``torch.max``/``argmax``, as NExT-QA's and most
        reference code); a task whose reference picks otherwise overrides it (ImageNet: ``torch.topk``)."""
        return max(candidates, key=lambda c: scores[c])

    def ranking_fields(self, example: Example, logprobs: Mapping[str, float], scores: Mapping[str, float],
                       normalization: str) -> dict[str, Any]:
        """Close-ended tasks: what a record keeps of the candidates' scores (default: all of them;
        a task with 1,000 candidates keeps only its top ones)."""
        fields: dict[str, Any] = {"candidate_logprobs": dict(logprobs)}
        if normalization != "none":
            fields["candidate_scores"] = dict(scores)
        return fields

    def score(self, prediction: str, example: Example) -> float:
        """Per-sample score in [0, 1]."""
        raise NotImplementedError

    def has_answers(self, example: Example) -> bool:
        """Whether ``example`` can be scored: it has reference answers (not so in a test-server split:
        VQAv2 test-dev, VizWiz test, HatefulMemes test_seen, STAR test...)."""
        return bool(example.answers)

    def sample_score(self, prediction: str, example: Example) -> float | None:
        """``score``, or None for an example without answers (its prediction is kept, unscored)."""
        return self.score(prediction, example) if self.has_answers(example) else None

    def compute_metrics(self, records: Sequence[SampleRecord]) -> dict[str, Any]:
        """``aggregate``, or, for a split without answers, no metric: the primary metric NaN, ``n`` and
        ``unscored`` saying why and how to get a number (the benchmark's server, ``export``). A split
        with answers for some queries and not others is an error (it would be scored on a subset)."""
        unscored = sum(1 for r in records if r.score is None and not r.error)
        if not unscored:
            return self.aggregate(records)
        if unscored < sum(1 for r in records if not r.error):
            raise HarnessError(f"task {self.name}: {unscored} of {len(records)} queries of split {self.eval_split} "
                               f"have no reference answers and the others do; score a split with answers for "
                               f"all, or none (a test-server split)")
        note = (f"split {self.eval_split} has no answers (a test-server split): no metric; the {len(records)} "
                f"predictions are kept; write the server's submission file with `python run_eval.py export "
                f"<cell folder>` (docs/benchmarks.md, 'Test-server splits')")
        log.warning("task %s: %s", self.name, note)
        return {self.primary_metric: float("nan"), "n": len(records), "unscored": note}

    def record_fields(self, example: Example) -> dict[str, Any]:
        """Task fields stored with each prediction (answers, types...)."""
        return {"answers": list(example.answers), **dict(example.meta)}

    def aggregate(self, records: Sequence[SampleRecord]) -> dict[str, Any]:
        """Task metrics from the per-sample records (0-100 scale), with n and a 95% CI."""
        stats = mean_with_ci([r.score for r in records])
        return {
            self.primary_metric: stats["mean"],
            f"{self.primary_metric}_ci95": [stats["ci95_low"], stats["ci95_high"]],
            "n": stats["n"],
        }

    def config(self) -> dict[str, Any]:
        """Everything about the task that changes its numbers, recorded in results."""
        return {
            "name": self.name,
            "version": self.version,
            "kind": self.kind,
            "options": identity_options(self.options),
            "support_split": self.support_split,
            "eval_split": self.eval_split,
            "sources": self.source_config(),
            **({"overlap_excluded": self.demo_overlap().count} if getattr(self.options, "exclude_overlap", False)
               else {}),
        }


#: options added after results existed: left out of a cell's identity while at these defaults, so
#: results computed before the option keep their key (a rerun resumes them instead of refusing).
_NEW_OPTION_DEFAULTS: dict[str, Any] = {"protocol": None, "nested_shots": 0, "exclude_overlap": False, "context_overflow": "refuse"}


def identity_options(options: Any) -> dict[str, Any]:
    """A task's options as its cells' identity records them (see ``_NEW_OPTION_DEFAULTS``)."""
    return {k: v for k, v in dataclasses.asdict(options).items()
            if not (k in _NEW_OPTION_DEFAULTS and v == _NEW_OPTION_DEFAULTS[k])}


def read_json(path: Path, what: str, layout: str) -> Any:
    """Read a JSON data file, failing with a message that names the file and the expected layout."""
    if not path.is_file():
        raise DataError(f"{what}: file not found: {path}\nExpected layout: {layout}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(f"{what}: {path} is not valid JSON ({exc})\nExpected layout: {layout}") from None


def require(obj: Any, key: str, path: Path, where: str, layout: str) -> Any:
    """``obj[key]``, or a DataError naming the file, the record and the missing field."""
    if not isinstance(obj, (dict, abc.Mapping)) or key not in obj:  # abc, not typing: 10x faster
        raise DataError(f"{path}: {where} has no field {key!r}\nExpected layout: {layout}")
    return obj[key]
