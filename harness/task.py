"""The Task base class: a dataset, how to prompt it, and how to score it.

A task never calls a model. Subclass it in one file, decorate it with
``@register_task("name")``, and it runs like the built-ins (see examples/my_task.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping, Sequence

from .errors import DataError, HarnessError
from .metrics.stats import mean_with_ci
from .options import build_options
from .prompts import PromptTemplate, pick_template
from .types import Example, GenerationConfig, SampleRecord


@dataclass(frozen=True)
class TaskOptions:
    """Options every task has; a task extends this dataclass with its own.

    template:              a name from the task's ``templates`` (default: the model's
                           preferred style if the task has it, else the task's default).
    support_size:          size of the random support set demos come from (Flamingo: 2048).
    zero_shot_text_demos:  text-only demos (media removed) shown at 0 shots, as Flamingo does.
    support_split / eval_split: which splits provide demos and queries.
    max_new_tokens / num_beams / length_penalty: override the task's generation settings.
    """

    template: str | None = None
    support_size: int = 2048
    zero_shot_text_demos: int = 2
    support_split: str | None = None
    eval_split: str | None = None
    max_new_tokens: int | None = None
    num_beams: int | None = None
    length_penalty: float | None = None


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
    #: whether ``load`` needs files under the data root (False for bundled data).
    needs_data_dir: ClassVar[bool] = True

    def __init__(self, data_dir: str | Path | None = None, options: Mapping[str, Any] | None = None):
        self.name = self.registry_name or type(self).__name__
        self.options = build_options(self.Options, dict(options or {}), f"task {self.name}")
        self._data_dir = Path(data_dir) if data_dir else None
        self._cache: dict[str, list[Example]] = {}

    # ---- data -----------------------------------------------------------------
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

    def load(self, split: str) -> list[Example]:
        """Load one split as Examples. Subclasses implement this."""
        raise NotImplementedError

    def examples(self, split: str) -> list[Example]:
        if split not in self._cache:
            examples = self.load(split)
            seen: set[str] = set()
            for e in examples:
                if e.id in seen:  # a duplicate would be scored twice and could be its own demo
                    raise DataError(f"task {self.name} split {split}: id {e.id} appears twice in the data; "
                                    f"ids (question_id, image id...) must be unique")
                seen.add(e.id)
            self._cache[split] = examples
        return self._cache[split]

    @property
    def support_split(self) -> str:
        return self.options.support_split or self.default_support_split

    @property
    def eval_split(self) -> str:
        return self.options.eval_split or self.default_eval_split

    def support_examples(self) -> list[Example]:
        return self.examples(self.support_split)

    def eval_examples(self, split: str | None = None) -> list[Example]:
        return self.examples(split or self.eval_split)

    # ---- prompting ------------------------------------------------------------
    def template(self, model_style: str | None = None) -> tuple[str, PromptTemplate]:
        name = self.options.template
        if name is None:
            name = model_style if model_style in self.templates else self.default_template
        return name, pick_template(self.templates, name, f"task {self.name}")

    def zero_shot_demos(self) -> int:
        return self.options.zero_shot_text_demos if self.kind == "generate" else 0

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

    def score(self, prediction: str, example: Example) -> float:
        """Per-sample score in [0, 1]."""
        raise NotImplementedError

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
            "kind": self.kind,
            "options": dataclasses.asdict(self.options),
            "support_split": self.support_split,
            "eval_split": self.eval_split,
        }


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
    if not isinstance(obj, Mapping) or key not in obj:
        raise DataError(f"{path}: {where} has no field {key!r}\nExpected layout: {layout}")
    return obj[key]
