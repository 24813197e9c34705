"""Open-ended VQA tasks: VQAv2, OK-VQA (official local files) and easy-VQA (bundled)."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

from harness.errors import DataError
from harness.data.hf_data import Columns, answer_strings
from harness.metrics.stats import mean_with_ci
from harness.metrics.vqa import vqa_accuracy
from tasks.postprocess import vqa_answer
from harness.prompts import PromptTemplate
from harness.registry import register_task
from harness.task import Task, TaskOptions, read_json, require
from harness.types import Example, GenerationConfig, Image, SampleRecord

VQA_TEMPLATES = {
    # OpenFlamingo's evaluation prompt; the model adds <image> and <|endofchunk|>, then "\n" after
    # each demo (open_flamingo/eval/evaluate.py at its current head; not in the 2.0.0 tag).
    "openflamingo": PromptTemplate(demo="Question:{question} Short answer:{answer}", query="Question:{question} Short answer:",
                                   separator="\n"),
    # The Flamingo paper's prompt.
    "flamingo": PromptTemplate(demo="Question: {question} Answer: {answer}", query="Question: {question} Answer:"),
}


@dataclass(frozen=True)
class VQAOptions(TaskOptions):
    """VQA options.

    answer_choice:  the answer written into demos: ``first`` annotator's (OpenFlamingo)
                    or ``most_common`` of the ten (IDEFICS; ties go to the earliest).
    normalization:  ``official`` (normalise only when the ten answers disagree, as the
                    official script) or ``always`` (OpenFlamingo, lmms-eval).
    image_dir:      folder of the images; default ``<root>/<split>`` (e.g. val2014).
    non_ten_answers: how a question with other than ten answers is scored (the official formula assumes
                    ten annotators): ``exact`` (default) 1 if the prediction equals any answer, else 0;
                    ``min3`` min(1, matches/3) over the answers there are. Ten answers: the official formula.
    """

    answer_choice: Literal["first", "most_common"] = "first"
    normalization: Literal["official", "always"] = "official"
    image_dir: str | None = None
    non_ten_answers: Literal["exact", "min3"] = "exact"


#: Hugging Face datasets in the lmms-lab VQA schema (lmms-lab/VQAv2, lmms-lab/OK-VQA): answers as ten
#: ``{answer, answer_confidence, answer_id}`` dicts (VQAv2) or ten strings (OK-VQA); image_id,
#: question_type and answer_type are read where the dataset has them.
VQA_COLUMNS = Columns(
    required={"id": "question_id", "image": "image", "question": "question", "answers": "answers"},
    optional={"image_id": "image_id", "question_type": "question_type", "answer_type": "answer_type"},
)


def choose_answer(answers: Sequence[str], how: str) -> str:
    if not answers:
        return ""
    if how == "first":
        return answers[0]
    return Counter(answers).most_common(1)[0][0]  # Counter keeps first-seen order among ties


def question_type_of(question: str, words: int = 3) -> str:
    """A question's type as its first words, for data without an official question_type."""
    return " ".join(question.lower().rstrip("?").split()[:words])


class VQATask(Task):
    """Shared scoring of the VQA family: OpenFlamingo post-processing and the official VQA accuracy."""

    Options = VQAOptions
    templates = VQA_TEMPLATES
    default_template = "openflamingo"
    generation = GenerationConfig(max_new_tokens=5, num_beams=3, length_penalty=0.0)
    prediction_keys = ("question_id", "answer")

    hf_columns = VQA_COLUMNS

    def example_from_row(self, row, where: str, split: str, index: int) -> Example:
        answers = answer_strings(row["answers"], where)
        if not answers:
            raise DataError(f"{where}: no answers (a test split without annotations cannot be scored or "
                            f"give demos); pick a split with answers")
        return Example(
            id=str(row["id"]),
            media=(row["image"],),
            fields={"question": str(row["question"])},
            answers=answers,
            target=choose_answer(answers, self.options.answer_choice),
            meta={"image_id": row.get("image_id"), "question_type": row.get("question_type"),
                  "answer_type": row.get("answer_type")},
        )

    def postprocess(self, raw: str, example: Example) -> str:
        return vqa_answer(raw)

    def score(self, prediction: str, example: Example) -> float:
        return vqa_accuracy(prediction, example.answers, self.options.normalization, self.options.non_ten_answers)

    def aggregate(self, records: Sequence[SampleRecord]) -> dict[str, Any]:
        out = super().aggregate(records)
        by_type: dict[str, list[float]] = defaultdict(list)
        for r in records:
            if r.fields.get("answer_type") is not None:
                by_type[r.fields["answer_type"]].append(r.score)
        if by_type:
            out["accuracy_by_answer_type"] = {k: mean_with_ci(v)["mean"] for k, v in sorted(by_type.items())}
        return out


class COCOVQATask(VQATask):
    """VQA data in the official VQA (v2) schema over COCO images.

    Files under ``<root>/<task>/``: ``{questions_file}`` and ``{annotations_file}``
    for each split (``train2014``, ``val2014``), images
    ``<root>/<task>/<split>/COCO_<split>_<image_id:012d>.jpg``.
    """

    questions_file = ""
    annotations_file = ""

    def _layout(self) -> str:
        q = self.questions_file.format(split="<split>")
        a = self.annotations_file.format(split="<split>")
        return (
            f"<data root>/{self.name}/{q} = {{'questions': [{{'image_id', 'question', 'question_id'}}, ...]}}; "
            f"<data root>/{self.name}/{a} = {{'annotations': [{{'question_id', 'image_id', 'question_type', "
            f"'answer_type', 'multiple_choice_answer', 'answers': [{{'answer', 'answer_confidence', 'answer_id'}} x10]}}, ...]}}; "
            f"images <data root>/{self.name}/<split>/COCO_<split>_<image_id:012d>.jpg (split e.g. val2014)"
        )

    @staticmethod
    def full_split(split: str) -> str:
        """``val`` -> ``val2014``; the test-server splits are 2015's (``test-dev`` -> ``test-dev2015``)."""
        if any(c.isdigit() for c in split):
            return split
        return f"{split}2015" if split.startswith("test") else f"{split}2014"

    @staticmethod
    def image_split(split: str) -> str:
        """The image folder and file prefix of a split: test-dev2015's images are test2015's."""
        return "test2015" if split.startswith("test") else split

    def load(self, split: str) -> list[Example]:
        split = self.full_split(split)
        layout = self._layout()
        qpath = self.root / self.questions_file.format(split=split)
        apath = self.root / self.annotations_file.format(split=split)
        qdata = read_json(qpath, f"task {self.name} questions ({split})", layout)
        questions = require(qdata, "questions", qpath, "the top-level object", layout)
        if split.startswith("test") and not apath.is_file():
            # a test-server split: questions only; predictions are kept unscored and exported
            annotations = None
        else:
            adata = read_json(apath, f"task {self.name} annotations ({split})", layout)
            annotations = require(adata, "annotations", apath, "the top-level object", layout)
        if annotations is None:
            return self._unanswered(questions, qpath, split, layout)
        if not isinstance(questions, list) or not isinstance(annotations, list):
            raise DataError(f"{qpath} / {apath}: 'questions' and 'annotations' must be lists\nExpected layout: {layout}")

        ann_by_qid: dict[Any, dict] = {}
        for i, ann in enumerate(annotations):
            qid = require(ann, "question_id", apath, f"annotation #{i}", layout)
            answers = require(ann, "answers", apath, f"annotation #{i} (question_id {qid})", layout)
            if not isinstance(answers, list) or not answers:
                raise DataError(f"{apath}: annotation #{i} (question_id {qid}): 'answers' must be a non-empty list")
            for j, a in enumerate(answers):
                require(a, "answer", apath, f"annotation #{i} (question_id {qid}) answers[{j}]", layout)
            if qid in ann_by_qid:
                raise DataError(f"{apath}: question_id {qid} is annotated twice (annotation #{i}); ids must be unique")
            ann_by_qid[qid] = ann

        image_dir = Path(self.options.image_dir) if self.options.image_dir else self.root / split
        examples, missing = [], []
        for i, q in enumerate(questions):
            qid = require(q, "question_id", qpath, f"question #{i}", layout)
            image_id = require(q, "image_id", qpath, f"question #{i} (question_id {qid})", layout)
            text = require(q, "question", qpath, f"question #{i} (question_id {qid})", layout)
            if isinstance(image_id, bool) or not str(image_id).isdigit():
                raise DataError(f"{qpath}: question #{i} (question_id {qid}): image_id must be an integer "
                                f"(it names COCO_<split>_<image_id:012d>.jpg), got {image_id!r}")
            ann = ann_by_qid.get(qid)
            if ann is None:
                missing.append(qid)
                continue
            answers = tuple(str(a["answer"]) for a in ann["answers"])
            examples.append(
                Example(
                    id=str(qid),
                    media=(Image(str(image_dir / f"COCO_{split}_{int(image_id):012d}.jpg")),),
                    fields={"question": text},
                    answers=answers,
                    target=choose_answer(answers, self.options.answer_choice),
                    meta={
                        "image_id": image_id,
                        "question_type": ann.get("question_type"),
                        "answer_type": ann.get("answer_type"),
                    },
                )
            )
        if missing:
            raise DataError(
                f"{apath}: {len(missing)} of {len(questions)} questions in {qpath.name} have no annotation "
                f"(first question_id: {missing[0]}); questions and annotations are joined by question_id"
            )
        return examples

    def _unanswered(self, questions, qpath: Path, split: str, layout: str) -> list[Example]:
        """The questions of a split without annotations (VQAv2 test-dev2015 / test2015), unscored."""
        if not isinstance(questions, list):
            raise DataError(f"{qpath}: 'questions' must be a list\nExpected layout: {layout}")
        images = self.image_split(split)
        image_dir = Path(self.options.image_dir) if self.options.image_dir else self.root / images
        out = []
        for i, q in enumerate(questions):
            qid = require(q, "question_id", qpath, f"question #{i}", layout)
            image_id = require(q, "image_id", qpath, f"question #{i} (question_id {qid})", layout)
            text = require(q, "question", qpath, f"question #{i} (question_id {qid})", layout)
            out.append(Example(id=str(qid), media=(Image(str(image_dir / f"COCO_{images}_{int(image_id):012d}.jpg")),),
                               fields={"question": text}, answers=(), target="",
                               meta={"image_id": image_id, "question_type": None, "answer_type": None}))
        return out


@register_task("vqav2")
class VQAv2(COCOVQATask):
    """VQAv2 (Goyal et al. 2017): demos from train2014, evaluation on val2014."""

    questions_file = "v2_OpenEnded_mscoco_{split}_questions.json"
    annotations_file = "v2_mscoco_{split}_annotations.json"
    server_format = "vqav2"


@dataclass(frozen=True)
class OKVQAOptions(VQAOptions):
    """OK-VQA options. ``stem``: stem predictions as OpenFlamingo does (needs nltk data; see README)."""

    stem: bool = False


@register_task("okvqa")
class OKVQA(COCOVQATask):
    """OK-VQA (Marino et al. 2019), same schema as VQAv2."""

    Options = OKVQAOptions
    server_format = "vqa"
    questions_file = "OpenEnded_mscoco_{split}_questions.json"
    annotations_file = "mscoco_{split}_annotations.json"

    def __init__(self, data_dir=None, options=None):
        super().__init__(data_dir, options)
        if self.options.stem:
            from harness.metrics.okvqa_stem import check_available

            check_available()  # fail before any sample is computed, not after

    def postprocess(self, raw: str, example: Example) -> str:
        answer = super().postprocess(raw, example)
        if self.options.stem:
            from harness.metrics.okvqa_stem import stem

            answer = stem(answer)
        return answer


@register_task("easyvqa")
class EasyVQA(VQATask):
    """easy-VQA (the ``easy-vqa`` package, MIT): 64x64 shapes, 13 answers; train = support, test = eval.

    Each question has one answer; it is repeated as ten annotators so the VQA
    accuracy is 100 for a (normalised) match and 0 otherwise.
    """

    needs_data_dir = False
    default_eval_split = "test"

    def load(self, split: str) -> list[Example]:
        try:
            import easy_vqa
        except ImportError:
            raise DataError("task easyvqa needs the easy-vqa package: pip install easy-vqa") from None
        if split == "train":
            qs, paths = easy_vqa.get_train_questions(), easy_vqa.get_train_image_paths()
        elif split == "test":
            qs, paths = easy_vqa.get_test_questions(), easy_vqa.get_test_image_paths()
        else:
            raise DataError(f"task easyvqa has splits 'train' and 'test', not {split!r}")
        texts, answers, image_ids = qs
        return [
            Example(
                id=f"{split}-{i}",
                media=(Image(paths[image_id]),),
                fields={"question": text},
                answers=(answer,) * 10,
                target=answer,
                meta={"image_id": image_id, "question_type": question_type_of(text)},
            )
            for i, (text, answer, image_id) in enumerate(zip(texts, answers, image_ids))
        ]

    def record_fields(self, example: Example) -> dict[str, Any]:
        return {"answers": list(example.answers[:1]), **dict(example.meta)}
