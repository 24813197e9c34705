"""TextVQA and VizWiz-VQA: open-ended VQA in their own official file layouts.

Both reuse the VQA family (tasks.vqa.VQATask): the OpenFlamingo/Flamingo prompts, the
answer post-processing and the demo-answer choice. What differs:

- TextVQA (Singh et al. 2019): TextVQA's own accuracy (mmf's ``TextVQAAccuracyEvaluator``, see
  harness/metrics/textvqa.py); max 10 new tokens (OpenFlamingo); OCR tokens optionally in the
  prompt (``ocr=true``; off by default, as in Flamingo).
- VizWiz (Gurari et al. 2018): the VizWiz evaluation's accuracy (prediction normalised, references
  as written), accuracy per answer type including ``unanswerable``, and the answerability metrics
  (average precision / F1 of answering "unanswerable"); see harness/metrics/vizwiz.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

from harness.errors import DataError
from harness.metrics.textvqa import textvqa_accuracy
from harness.metrics.vizwiz import unanswerability, vizwiz_accuracy
from harness.metrics.vqa import vqa_accuracy
from harness.prompts import PromptTemplate
from harness.registry import register_task
from harness.task import read_json, require
from harness.types import Example, GenerationConfig, Image, SampleRecord

from .vqa import VQAOptions, VQATask, choose_answer

TEXTVQA_LAYOUT = (
    "<data root>/textvqa/TextVQA_0.5.1_<split>.json = {'dataset_name': 'textvqa', 'data': [{'question', "
    "'question_id', 'image_id', 'answers': [10 strings] (not in test), ...}]}; images "
    "<data root>/textvqa/train_images/<image_id>.jpg (train and val; test: test_images/); with ocr=true also "
    "TextVQA_Rosetta_OCR_v0.2_<split>.json = {'data': [{'image_id', 'ocr_tokens': [...]}]} (or 'ocr_tokens' in "
    "each question)"
)


@dataclass(frozen=True)
class TextVQAOptions(VQAOptions):
    """TextVQA options. ``normalization``: ``textvqa`` (TextVQA's own evaluator, mmf's
    TextVQAAccuracyEvaluator: prediction and answers always normalised by EvalAI's answer processor),
    or the VQA script's ``official`` / ``always``. ``ocr``: put the image's OCR tokens in the prompt
    (``OCR:tok1 tok2 ...`` before the question); off by default, as Flamingo evaluates. ``image_dir``:
    default <root>/train_images (val images are there too), <root>/test_images for test."""

    normalization: Literal["textvqa", "official", "always"] = "textvqa"
    ocr: bool = False
    max_ocr_tokens: int = 50


@register_task("textvqa")
class TextVQA(VQATask):
    """TextVQA (Singh et al. 2019): VQA on text in images; official TextVQA_0.5.1 JSON; 10 new tokens."""

    Options = TextVQAOptions
    #: 2: scored by TextVQA's own evaluator (mmf) instead of the VQA script.
    version = 2
    server_format = "vqa"
    generation = GenerationConfig(max_new_tokens=10, num_beams=3, length_penalty=0.0)
    default_support_split, default_eval_split = "train", "val"

    def score(self, prediction: str, example: Example) -> float:
        if self.options.normalization == "textvqa":
            return textvqa_accuracy(prediction, example.answers)
        return vqa_accuracy(prediction, example.answers, self.options.normalization)

    def template(self, model_style: str | None = None) -> tuple[str, PromptTemplate]:
        name, tpl = super().template(model_style)
        if not self.options.ocr:
            return name, tpl
        sep = "" if name == "openflamingo" else " "
        return f"{name}+ocr", PromptTemplate(demo=f"OCR:{sep}{{ocr}} " + tpl.demo, query=f"OCR:{sep}{{ocr}} " + tpl.query)

    def _ocr_tokens(self, split: str) -> dict[str, list[str]]:
        path = self.root / f"TextVQA_Rosetta_OCR_v0.2_{split}.json"
        data = require(read_json(path, f"task textvqa OCR tokens ({split})", TEXTVQA_LAYOUT), "data", path,
                       "the top-level object", TEXTVQA_LAYOUT)
        return {str(require(d, "image_id", path, f"data[{i}]", TEXTVQA_LAYOUT)): list(d.get("ocr_tokens", []))
                for i, d in enumerate(data)}

    def load(self, split: str) -> list[Example]:
        path = self.root / f"TextVQA_0.5.1_{split}.json"
        data = require(read_json(path, f"task textvqa ({split})", TEXTVQA_LAYOUT), "data", path,
                       "the top-level object", TEXTVQA_LAYOUT)
        if not isinstance(data, list):
            raise DataError(f"{path}: 'data' must be a list\nExpected layout: {TEXTVQA_LAYOUT}")
        default_dir = "test_images" if split == "test" else "train_images"
        image_dir = Path(self.options.image_dir) if self.options.image_dir else self.root / default_dir
        ocr = None
        if self.options.ocr and not all("ocr_tokens" in d for d in data if isinstance(d, dict)):
            ocr = self._ocr_tokens(split)
        out = []
        for i, d in enumerate(data):
            qid = require(d, "question_id", path, f"data[{i}]", TEXTVQA_LAYOUT)
            where = f"data[{i}] (question_id {qid})"
            image_id = str(require(d, "image_id", path, where, TEXTVQA_LAYOUT))
            question = require(d, "question", path, where, TEXTVQA_LAYOUT)
            answers = tuple(str(a) for a in d.get("answers", []))
            if not answers and split != "test":
                raise DataError(f"{path}: {where} has no 'answers' (10 reference answers are needed for scoring)")
            fields: dict[str, Any] = {"question": question}
            if self.options.ocr:
                tokens = d["ocr_tokens"] if "ocr_tokens" in d else ocr.get(image_id) if ocr is not None else None
                if tokens is None:
                    raise DataError(f"{path}: {where}: image {image_id} has no OCR tokens in "
                                    f"TextVQA_Rosetta_OCR_v0.2_{split}.json (needed with ocr=true)")
                fields["ocr"] = " ".join(str(t) for t in tokens[: self.options.max_ocr_tokens])
            out.append(Example(
                id=str(qid), media=(Image(str(image_dir / f"{image_id}.jpg")),), fields=fields, answers=answers,
                target=choose_answer(answers, self.options.answer_choice),
                meta={"image_id": image_id},
            ))
        return out


VIZWIZ_LAYOUT = (
    "<data root>/vizwiz/Annotations/<split>.json = [{'image': 'VizWiz_<split>_00000000.jpg', 'question', "
    "'answers': [{'answer', 'answer_confidence'} x10], 'answer_type', 'answerable'}, ...] (test: no answers); "
    "images <data root>/vizwiz/<split>/<image>"
)


@dataclass(frozen=True)
class VizWizOptions(VQAOptions):
    """VizWiz options. ``normalization``: ``vizwiz`` (the VizWiz evaluation: normalise the prediction,
    compare with the references as written), or the VQA modes ``official`` / ``always``."""

    normalization: Literal["vizwiz", "official", "always"] = "vizwiz"


@register_task("vizwiz")
class VizWiz(VQATask):
    """VizWiz-VQA (Gurari et al. 2018): VizWiz accuracy, per answer type incl. unanswerable; answerability AP/F1.

    Questions from blind users; the accuracy is the VizWiz evaluation's (harness/metrics/vizwiz.py)."""

    Options = VizWizOptions
    #: 2: the VizWiz API's own contraction table (typographic apostrophes).
    version = 2
    server_format = "vizwiz"
    default_support_split, default_eval_split = "train", "val"
    prediction_keys = ("image", "answer")

    def load(self, split: str) -> list[Example]:
        path = self.root / "Annotations" / f"{split}.json"
        rows = read_json(path, f"task vizwiz ({split})", VIZWIZ_LAYOUT)
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a list of questions\nExpected layout: {VIZWIZ_LAYOUT}")
        image_dir = Path(self.options.image_dir) if self.options.image_dir else self.root / split
        out = []
        for i, row in enumerate(rows):
            image = require(row, "image", path, f"item #{i}", VIZWIZ_LAYOUT)
            where = f"item #{i} ({image})"
            question = require(row, "question", path, where, VIZWIZ_LAYOUT)
            answers = tuple(str(require(a, "answer", path, f"{where} answers[{j}]", VIZWIZ_LAYOUT))
                            for j, a in enumerate(row.get("answers", [])))
            if not answers and split != "test":
                raise DataError(f"{path}: {where} has no 'answers' (10 reference answers are needed for scoring)")
            meta = {"answer_type": row.get("answer_type")}
            if "answerable" in row:
                meta["answerable"] = int(row["answerable"])
            out.append(Example(
                id=str(image), media=(Image(str(image_dir / image)),), fields={"question": question},
                answers=answers, target=choose_answer(answers, self.options.answer_choice), meta=meta,
            ))
        return out

    def score(self, prediction: str, example: Example) -> float:
        if self.options.normalization == "vizwiz":
            return vizwiz_accuracy(prediction, example.answers)
        return vqa_accuracy(prediction, example.answers, self.options.normalization, self.options.non_ten_answers)

    def aggregate(self, records: Sequence[SampleRecord]) -> dict[str, Any]:
        out = super().aggregate(records)
        rated = [r for r in records if r.fields.get("answerable") is not None]
        if rated:  # a failed sample counts as answering (it did not say "unanswerable")
            out["unanswerability"] = unanswerability([r.fields["answerable"] for r in rated],
                                                     [r.prediction for r in rated])
        return out


__all__ = ["TextVQA", "VizWiz"]
