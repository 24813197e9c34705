"""Classification by ranking class names (OpenFlamingo's ImageNet protocol), and ImageNet.

A query's prompt is its demos ``<image>Output:{class name}<|endofchunk|>`` then
``<image>Output:``; every class name is scored by the model's log-likelihood after it
(1,000 per ImageNet query: the reference ``flamingo`` computes the prompt once and reuses its
key/values for every name, see models/flamingo/scoring.py). Metrics: top-1 and top-5
accuracy. Demos are class-balanced by default (harness/balanced_sampling.py).

:class:`ClassNameTask` is the reusable part (a video classification task such as
Kinetics-700 subclasses it with its own loader and class names).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping, Sequence

from harness.balanced_sampling import ClassBalancedSampler
from harness.errors import DataError, HarnessError
from harness.metrics.ties import top_k
from harness.metrics.stats import mean_with_ci
from harness.prompts import PromptTemplate
from harness.ranking import LengthNorm, RankingOptions
from harness.registry import register_task
from harness.sampling import RandomSampler
from harness.task import Task, TaskOptions
from harness.types import Example, Image, SampleRecord

CLASSIFICATION_TEMPLATES = {
    # OpenFlamingo's ImageNet prompt (no space after "Output:").
    "openflamingo": PromptTemplate(demo="Output:{answer}", query="Output:"),
    "flamingo": PromptTemplate(demo="Output: {answer}", query="Output:"),
}


@dataclass(frozen=True)
class ClassificationOptions(TaskOptions, RankingOptions):
    """Classification options: ensemble / length_normalization (harness.ranking; default ``tokens``, the mean
    token log-prob of the class name, as OpenFlamingo's ImageNet evaluation);
    ``sampler``: ``class_balanced`` demos (default), ``random`` (OpenFlamingo's evaluate.py) or ``rices``
    (with ``rices_encoder``; Flamingo's ImageNet and Kinetics protocol, ``--protocol flamingo``);
    ``keep_top``: how many top classes each prediction record keeps with their scores."""

    length_normalization: LengthNorm = "tokens"
    sampler: Literal["class_balanced", "random", "rices"] = "class_balanced"
    keep_top: int = 5


class ClassNameTask(Task):
    """Close-ended classification: rank every class name by log-likelihood; top-1 / top-5 accuracy.

    Subclasses implement ``load`` (Examples whose ``target`` is the class name) and ``class_names``.
    """

    kind = "loglikelihood"
    Options = ClassificationOptions
    templates = CLASSIFICATION_TEMPLATES
    default_template = "openflamingo"
    primary_metric = "top1"
    #: 2: ties in the ranking broken as torch.topk (OpenFlamingo), over every class.
    version = 2
    prediction_keys = ("id", "label")
    top_k: ClassVar[tuple[int, ...]] = (1, 5)

    def class_names(self) -> list[str]:
        raise NotImplementedError

    def candidates(self, example: Example) -> list[str]:
        # Two classes with one name (the curated ImageNet names have two: "missile", "sunglasses") are
        # one candidate: their log-likelihoods are equal and either is right when predicted, as in
        # OpenFlamingo's evaluation, which compares names.
        if not hasattr(self, "_names"):
            self._names = list(dict.fromkeys(self.class_names()))
        return self._names

    def _class_order(self, scores: Mapping[str, float], k: int) -> list[int]:
        """Indices into ``class_names()`` (duplicate names included, as OpenFlamingo's class list) of
        the ``k`` best classes, in ``torch.topk`` order: ties broken as the reference breaks them."""
        if not hasattr(self, "_all_names"):
            self._all_names = list(self.class_names())
        return top_k([scores[n] for n in self._all_names], k)

    def choose(self, candidates: Sequence[str], scores: Mapping[str, float]) -> str:
        """Top-1 as OpenFlamingo: the first of ``torch.topk(logprobs, k=5)`` over every class."""
        if not scores:
            return ""
        best = self._class_order(scores, max(self.top_k))[0]
        return self._all_names[best]

    def demo_sampler(self, seed: int):
        cls = ClassBalancedSampler if self.options.sampler == "class_balanced" else RandomSampler
        return cls(self.name, self.support_examples(), seed, self.options.support_size, self.options.nested_shots)

    def score(self, prediction: str, example: Example) -> float:
        return float(prediction.strip() == example.target)

    def record_fields(self, example: Example) -> dict[str, Any]:
        return {"label": example.target, **dict(example.meta)}

    def ranking_fields(self, example: Example, logprobs: Mapping[str, float], scores: Mapping[str, float],
                       normalization: str) -> dict[str, Any]:
        """The top classes with their scores (not all 1,000), and the true class's rank.

        The first ``max(top_k)`` (5) are ``torch.topk``'s over every class, as OpenFlamingo ranks
        them (a duplicated name can fill two places); ``keep_top`` beyond that adds the next ones.
        ``label_rank`` is the true class's place among those, else 1 + the number of classes scored
        higher (at least ``max(top_k) + 1``: it was not in the top k)."""
        k = max(self.top_k)
        order = self._class_order(scores, k)
        if self.options.keep_top > k:
            order += [i for i in self._class_order(scores, self.options.keep_top) if i not in order]
        names = [self._all_names[i] for i in order]
        top = names[: max(self.options.keep_top, k)]
        if example.target not in scores:
            rank = None
        elif example.target in names[:k]:
            rank = names.index(example.target) + 1
        else:
            higher = sum(1 for n in self._all_names if scores[n] > scores[example.target])
            rank = max(k + 1, higher + 1)
        return {"top_classes": top, "top_scores": [scores[c] for c in top], "label_rank": rank}

    def aggregate(self, records: Sequence[SampleRecord]) -> dict[str, Any]:
        """top-k accuracy (0-100) for each k in ``top_k``; a failed sample counts wrong."""
        out: dict[str, Any] = {}
        for k in self.top_k:
            hits = []
            for r in records:
                if r.error:
                    hits.append(0.0)
                elif "label_rank" in r.fields and r.fields["label_rank"] is not None:
                    hits.append(float(r.fields["label_rank"] <= k))
                elif "top_classes" in r.fields:
                    hits.append(float(r.fields["label"] in r.fields["top_classes"][:k]))
                elif k == 1:  # a file of hard labels (``score``): top-1 only
                    hits.append(r.score)
            if len(hits) == len(records):
                stats = mean_with_ci(hits)
                out[f"top{k}"] = stats["mean"]
                out[f"top{k}_ci95"] = [stats["ci95_low"], stats["ci95_high"]]
        out["n"] = len(records)
        return out


IMAGENET_LAYOUT = (
    "<data root>/imagenet/<split>/<wnid>/<image>.JPEG (train and val, one folder per class, e.g. "
    "val/n01440764/ILSVRC2012_val_00000293.JPEG); class names: LOC_synset_mapping.txt ('<wnid> <names>' per "
    "line, the 1,000 classes in order) or the class_names option"
)
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


@dataclass(frozen=True)
class ImageNetOptions(ClassificationOptions):
    """ImageNet options. ``class_names``: ``openai`` (the 1,000 curated names OpenFlamingo ranks,
    bundled; needs all 1,000 classes), ``synset`` (the first name of each line of
    LOC_synset_mapping.txt) or a JSON file ``{wnid: name}``."""

    class_names: str = "openai"


@register_task("imagenet")
class ImageNet(ClassNameTask):
    """ImageNet-1k (ILSVRC 2012): rank the 1,000 class names by log-likelihood; top-1 / top-5 accuracy."""

    Options = ImageNetOptions
    default_support_split, default_eval_split = "train", "val"

    def _wnids(self) -> list[str]:
        """The classes in order: LOC_synset_mapping.txt's lines, else the sorted folders of train."""
        mapping = self.root / "LOC_synset_mapping.txt"
        if mapping.is_file():
            return [line.split()[0] for line in mapping.read_text(encoding="utf-8").splitlines() if line.strip()]
        folder = self.root / self.support_split
        if not folder.is_dir():
            raise DataError(f"task imagenet: neither {mapping} nor {folder} exists\nExpected layout: {IMAGENET_LAYOUT}")
        return sorted(p.name for p in folder.iterdir() if p.is_dir())

    def class_map(self) -> dict[str, str]:
        """wnid -> class name, in class order."""
        if hasattr(self, "_class_map"):
            return self._class_map
        choice = self.options.class_names
        if choice == "openai":
            wnids = self._wnids()
            names = json.loads((Path(__file__).parent / "data" / "imagenet_openai_classnames.json").read_text())
            if len(wnids) != len(names):
                raise HarnessError(
                    f"task imagenet: class_names=openai lists the 1,000 ImageNet-1k classes, but the data has "
                    f"{len(wnids)}; add LOC_synset_mapping.txt (all 1,000 wnids in order) or pass "
                    f"--task-arg imagenet:class_names=synset or =PATH.json ({{wnid: name}})")
            result = dict(zip(wnids, names))
        elif choice == "synset":
            path = self.root / "LOC_synset_mapping.txt"
            if not path.is_file():
                raise DataError(f"task imagenet: class_names=synset needs {path}\nExpected layout: {IMAGENET_LAYOUT}")
            result = {}
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    wnid, _, names = line.strip().partition(" ")
                    result[wnid] = names.split(",")[0].strip()
        else:
            path = Path(choice)
            if not path.is_file():
                raise HarnessError(f"task imagenet: class_names={choice}: no such file (openai, synset or a JSON "
                                   f"file {{wnid: name}})")
            try:
                result = {str(k): str(v) for k, v in json.loads(path.read_text(encoding="utf-8")).items()}
            except (json.JSONDecodeError, AttributeError) as exc:
                raise DataError(f"task imagenet: {path} must be a JSON object {{wnid: class name}} ({exc})") from None
        self._class_map = result
        return result

    def class_names(self) -> list[str]:
        return list(self.class_map().values())

    def load(self, split: str) -> list[Example]:
        folder = self.root / split
        if not folder.is_dir():
            raise DataError(f"task imagenet ({split}): folder not found: {folder}\nExpected layout: {IMAGENET_LAYOUT}")
        names = self.class_map()
        out = []
        for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            if class_dir.name not in names:
                raise DataError(f"task imagenet: class folder {class_dir} is not among the {len(names)} classes of "
                                f"the class names ({self.options.class_names})")
            for f in sorted(class_dir.iterdir()):
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    out.append(Example(id=f.stem, media=(Image(str(f)),), fields={},
                                       answers=(names[class_dir.name],), target=names[class_dir.name],
                                       meta={"wnid": class_dir.name}))
        if not out:
            raise DataError(f"task imagenet ({split}): no images under {folder}\nExpected layout: {IMAGENET_LAYOUT}")
        return out
