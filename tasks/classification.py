"""Close-ended classification tasks: HatefulMemes (yes/no ranked by log-likelihood; ROC-AUC)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from harness.errors import DataError
from harness.data.hf_data import Columns
from harness.metrics.classification import prob_of, roc_auc
from harness.metrics.stats import mean_with_ci
from harness.prompts import PromptTemplate
from harness.ranking import RankingOptions
from harness.registry import register_task
from harness.data.tabular import read_jsonl
from harness.task import Task, TaskOptions
from harness.types import Example, Image, SampleRecord

HATEFUL_TEMPLATES = {
    # OpenFlamingo's prompt (no space before the answer; no separator after demos, unlike VQA).
    "openflamingo": PromptTemplate(
        demo="is an image with: '{text}' written on it. Is it hateful? Answer:{answer}",
        query="is an image with: '{text}' written on it. Is it hateful? Answer:",
    ),
    "flamingo": PromptTemplate(
        demo="is an image with: '{text}' written on it. Is it hateful? Answer: {answer}",
        query="is an image with: '{text}' written on it. Is it hateful? Answer:",
    ),
}


@dataclass(frozen=True)
class HatefulMemesOptions(TaskOptions, RankingOptions):
    """HatefulMemes options: ensemble / length_normalization (harness.ranking); image_dir (default <root>)."""

    image_dir: str | None = None


@register_task("hateful_memes")
class HatefulMemes(Task):
    """Hateful Memes (Kiela et al. 2020): rank yes/no by log-likelihood; ROC-AUC of P(yes), plus accuracy."""

    kind = "loglikelihood"
    Options = HatefulMemesOptions
    templates = HATEFUL_TEMPLATES
    default_template = "openflamingo"
    default_support_split = "train"
    default_eval_split = "dev_seen"
    primary_metric = "roc_auc"
    prediction_keys = ("id", "label")
    server_format = "hateful_memes"
    POSITIVE, NEGATIVE = "yes", "no"
    #: the original schema as a dataset (e.g. a save_to_disk of the jsonl files): ``image`` an Image
    #: column, or map ``image:img`` to read file paths relative to ``image_dir`` (default: the dataset folder).
    hf_columns = Columns(required={"id": "id", "image": "image", "text": "text", "label": "label"})

    def example_from_row(self, row, where: str, split: str, index: int) -> Example:
        if row["label"] not in (0, 1):
            raise DataError(f"{where}: label must be 0 or 1, got {row['label']!r}")
        target = self.POSITIVE if row["label"] == 1 else self.NEGATIVE
        return Example(id=str(row["id"]), media=(row["image"],), fields={"text": str(row["text"])},
                       answers=(target,), target=target, meta={"label": int(row["label"])})

    def load(self, split: str) -> list[Example]:
        path = self.root / f"{split}.jsonl"
        layout = ("<data root>/hateful_memes/<split>.jsonl, one {'id', 'img', 'label', 'text'} per line "
                  "(img relative to <data root>/hateful_memes/, e.g. img/42953.png; label 0 or 1)")
        base = Path(self.options.image_dir) if self.options.image_dir else self.root
        out = []
        unlabelled = split.startswith("test")  # test_seen / test_unseen: labels not public
        for i, row in enumerate(read_jsonl(path, f"task hateful_memes ({split})", layout)):
            missing = [k for k in ("id", "img", "label", "text") if k not in row and not (k == "label" and unlabelled)]
            if missing:
                raise DataError(f"{path}: line {i + 1} has no field(s) {', '.join(missing)}"
                                f" (labels are needed for scoring)\nExpected layout: {layout}")
            if "label" not in row:  # a test split: the prediction is kept unscored, for export
                out.append(Example(id=str(row["id"]), media=(Image(str(base / row["img"])),),
                                   fields={"text": str(row["text"])}))
                continue
            if row["label"] not in (0, 1):
                raise DataError(f"{path}: line {i + 1}: label must be 0 or 1, got {row['label']!r}")
            target = self.POSITIVE if row["label"] == 1 else self.NEGATIVE
            out.append(Example(
                id=str(row["id"]),
                media=(Image(str(base / row["img"])),),
                fields={"text": str(row["text"])},
                answers=(target,),
                target=target,
                meta={"label": int(row["label"])},
            ))
        return out

    def candidates(self, example: Example) -> list[str]:
        return [self.POSITIVE, self.NEGATIVE]

    def _answer(self, prediction: str) -> str:
        """yes/no; an official-format file's 1/0 label reads as yes/no."""
        p = prediction.strip().lower()
        return {"1": self.POSITIVE, "0": self.NEGATIVE}.get(p, p)

    def score(self, prediction: str, example: Example) -> float:
        return float(self._answer(prediction) == example.target)

    def record_fields(self, example: Example) -> dict[str, Any]:
        return dict(example.meta)

    def aggregate(self, records: Sequence[SampleRecord]) -> dict[str, Any]:
        """ROC-AUC of P(yes) (softmax over the yes/no log-likelihoods) and accuracy, both 0-100.

        A failed sample counts wrong in both: accuracy 0, and P(yes) = the wrong extreme (1 - label).
        Records without log-likelihoods (``score`` of a file of labels) use the hard yes/no as P(yes).
        """
        labels, probs = [], []
        for r in records:
            label = int(r.fields["label"])
            lp = r.fields.get("candidate_logprobs")
            labels.append(label)
            if r.error:
                probs.append(float(1 - label))
            elif lp:
                probs.append(prob_of(lp, self.POSITIVE))
            else:
                probs.append(float(self._answer(r.prediction) == self.POSITIVE))
        acc = mean_with_ci([r.score for r in records])
        return {
            "roc_auc": roc_auc(labels, probs) * 100.0,
            "accuracy": acc["mean"],
            "accuracy_ci95": [acc["ci95_low"], acc["ci95_high"]],
            "n": acc["n"],
        }
