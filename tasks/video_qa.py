"""Video QA tasks: MSVD-QA, MSRVTT-QA, iVQA (open-ended) and NExT-QA multiple choice (close-ended).

Each video is one media item of F frames (harness.data.video); which frames is a
task option (``frames``, or ``fps`` + ``max_frames``), set by the run flags
``--frames/--fps/--max-frames`` and recorded with the results.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

from harness.errors import DataError, HarnessError
from harness.data.hf_data import Columns
from harness.metrics.stats import mean_with_ci
from harness.metrics.video_qa import IVQAMatch, exact_match, ivqa_accuracy
from tasks.postprocess import vqa_answer
from harness.ranking import RankingOptions
from harness.registry import register_task
from harness.data.tabular import read_csv
from harness.task import Task, TaskOptions, read_json, require
from harness.types import Example, GenerationConfig, SampleRecord
from harness.data.video import FrameSelection, SampledVideo

from .vqa import VQA_TEMPLATES


@dataclass(frozen=True)
class VideoOptions(TaskOptions):
    """Video task options.

    frames:        frames per video, uniformly over the clip (Flamingo evaluation: 8 at 1 FPS in training).
    fps:           instead, one frame every 1/fps seconds, at most ``max_frames`` (default: ``frames``).
    frame_size:    frames are resized once to frame_size x frame_size when decoded.
    video_dir:     folder of the videos (default ``<root>/videos``).
    video_pattern: file name of a video, formatted with the sample's row (default per task).
    """

    frames: int = 8
    fps: float | None = None
    max_frames: int | None = None
    frame_size: int = 224
    video_dir: str | None = None
    video_pattern: str | None = None


class VideoTask(Task):
    """Shared video handling: frame selection from the options, video paths from a pattern."""

    Options = VideoOptions
    templates = VQA_TEMPLATES
    default_template = "flamingo"
    default_support_split = "train"
    default_eval_split = "test"
    video_pattern: ClassVar[str] = "{video_id}.mp4"
    #: default folder of the videos under the task's data folder (option ``video_dir`` overrides).
    video_folder: ClassVar[str] = "videos"

    def __init__(self, data_dir=None, options=None):
        super().__init__(data_dir, options)
        o = self.options
        # Validates the combination now, so a bad flag fails before any model loads.
        self.selection = FrameSelection(frames=o.frames, fps=o.fps, max_frames=o.max_frames, size=o.frame_size)

    def video(self, row: Mapping[str, Any], where: str) -> SampledVideo:
        pattern = self.options.video_pattern or self.video_pattern
        try:
            name = pattern.format(**row)
        except KeyError as exc:
            raise DataError(f"task {self.name}: video_pattern {pattern!r} uses {{{exc.args[0]}}}, which {where} "
                            f"does not have (fields: {', '.join(sorted(map(str, row)))})") from None
        base = Path(self.options.video_dir) if self.options.video_dir else self.root / self.video_folder
        return SampledVideo(str(base / name), selection=self.selection)

    def clip(self, video: SampledVideo, start: Any, end: Any, where: str) -> SampledVideo:
        """``video`` restricted to ``[start, end]`` seconds (a segment of a longer file)."""
        try:
            return SampledVideo(video.path, selection=self.selection.clip(float(start), float(end)))
        except (TypeError, ValueError, HarnessError) as exc:
            raise DataError(f"task {self.name}: {where}: bad clip start/end {start!r}, {end!r} "
                            f"(seconds, 0 <= start < end): {exc}") from None

    def config(self) -> dict[str, Any]:
        return {**super().config(), "frame_selection": self.selection.describe()}


class OpenVideoQA(VideoTask):
    """Open-ended video QA: OpenFlamingo post-processing, top-1 exact match after VQA normalisation."""

    generation = GenerationConfig(max_new_tokens=5, num_beams=3, length_penalty=0.0)
    prediction_keys = ("id", "answer")

    def postprocess(self, raw: str, example: Example) -> str:
        return vqa_answer(raw)

    def score(self, prediction: str, example: Example) -> float:
        return exact_match(prediction, example.answers[0])


class MSQA(OpenVideoQA):
    """MSVD-QA / MSRVTT-QA (Xu et al. 2017): ``{split}_qa.json`` = ``[{question, answer, video_id, id}]``."""

    #: the same fields as a dataset; videos stay files (video_dir / video_pattern, formatted with the row).
    hf_columns = Columns(required={"id": "id", "question": "question", "answer": "answer", "video_id": "video_id"},
                         media=())

    def _layout(self) -> str:
        return (f"<data root>/{self.name}/<split>_qa.json = [{{'question', 'answer', 'video_id', 'id'}}, ...]; "
                f"videos <data root>/{self.name}/videos/{self.video_pattern} (options video_dir, video_pattern)")

    def load(self, split: str) -> list[Example]:
        path = self.root / f"{split}_qa.json"
        layout = self._layout()
        rows = read_json(path, f"task {self.name} ({split})", layout)
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a JSON list of questions\nExpected layout: {layout}")
        out = []
        for i, row in enumerate(rows):
            for key in ("question", "answer", "video_id", "id"):
                require(row, key, path, f"item #{i}", layout)
            out.append(self.example_from_row(row, f"item #{i} of {path}", split, i))
        return out

    def example_from_row(self, row, where: str, split: str, index: int) -> Example:
        answer = str(row["answer"])
        return Example(
            id=str(row["id"]),
            media=(self.video(row, where),),
            fields={"question": str(row["question"])},
            answers=(answer,),
            target=answer,
            meta={"video_id": row["video_id"]},
        )


@register_task("msvd_qa")
class MSVDQA(MSQA):
    """MSVD-QA: demos from train, evaluation on test; top-1 accuracy."""

    video_pattern = "vid{video_id}.avi"


@register_task("msrvtt_qa")
class MSRVTTQA(MSQA):
    """MSRVTT-QA: demos from train, evaluation on test; top-1 accuracy."""

    video_pattern = "video{video_id}.mp4"


@dataclass(frozen=True)
class IVQAOptions(VideoOptions):
    """iVQA options. ``match``: ``exact`` (the official evaluation, antoyang/just-ask: the prediction
    equals an annotator's answer as written) or ``vqa`` (after the VQA normalisation on both sides)."""

    match: IVQAMatch = "exact"


@register_task("ivqa")
class IVQA(OpenVideoQA):
    """iVQA (Yang et al. 2021): five answers per question; accuracy min(1, #annotators agreeing / 2)."""

    Options = IVQAOptions
    #: 2: exact match on the raw answers (just-ask), not after the VQA normalisation.
    version = 2
    ANSWERS: ClassVar[tuple[str, ...]] = tuple(f"answer{i}" for i in range(1, 6))
    hf_columns = Columns(required={"video_id": "video_id", "question": "question", **{a: a for a in ANSWERS}},
                         optional={"start": "start", "end": "end"}, media=())

    def load(self, split: str) -> list[Example]:
        path = self.root / f"{split}.csv"
        layout = (f"<data root>/ivqa/<split>.csv with columns video_id, question, answer1..answer5 (+ start, end); "
                  f"videos <data root>/ivqa/videos/{self.video_pattern} (options video_dir, video_pattern)")
        rows = read_csv(path, f"task ivqa ({split})", layout, ("video_id", "question", *self.ANSWERS))
        return [self._example(i, row, f"{path}: row {i + 2}") for i, row in enumerate(rows)]

    def example_from_row(self, row, where: str, split: str, index: int) -> Example:
        # ids are row numbers, as in the csv
        return self._example(index, {k: ("" if v is None else str(v)) for k, v in row.items()}, where)

    def _example(self, i: int, row, where: str) -> Example:
        # The answers as written (the official count compares raw strings); empty slots dropped.
        answers = tuple(row[k] for k in self.ANSWERS if row[k] and row[k].strip())
        if not answers:
            raise DataError(f"{where} (video {row['video_id']}) has no answer in answer1..answer5")
        return Example(
            id=str(i),
            media=(self.video(row, where),),
            fields={"question": row["question"]},
            answers=answers,
            # the demo answer: most annotators; ties: first listed
            target=Counter(a.strip() for a in answers).most_common(1)[0][0],
            meta={"video_id": row["video_id"]},
        )

    def score(self, prediction: str, example: Example) -> float:
        return ivqa_accuracy(prediction, example.answers, self.options.match)


@dataclass(frozen=True)
class NextQAOptions(VideoOptions, RankingOptions):
    """NExT-QA MC options: the video options plus ensemble / length_normalization (see harness.ranking)."""


class VideoMultipleChoice(VideoTask):
    """Close-ended video QA: rank the example's choices by log-likelihood; accuracy (+ by question type).

    Examples carry ``fields["choices"]``, the right choice as ``target`` and the question type in ``meta["type"]``.
    """

    kind = "loglikelihood"
    Options = NextQAOptions
    default_eval_split = "val"

    def candidates(self, example: Example) -> list[str]:
        return list(example.fields["choices"])

    def score(self, prediction: str, example: Example) -> float:
        return float(prediction == example.target)

    def aggregate(self, records: Sequence[SampleRecord]) -> dict[str, Any]:
        stats = mean_with_ci([r.score for r in records])
        out: dict[str, Any] = {"accuracy": stats["mean"], "accuracy_ci95": [stats["ci95_low"], stats["ci95_high"]],
                               "n": stats["n"]}
        by_type: dict[str, list[float]] = defaultdict(list)
        for r in records:
            if r.fields.get("type"):
                by_type[str(r.fields["type"])].append(r.score)
        if by_type:
            out["accuracy_by_type"] = {k: mean_with_ci(v)["mean"] for k, v in sorted(by_type.items())}
        return out


#: NExT-QA's question types as its ``eval_mc.py`` groups them (TP counts as TN), then the three families.
NEXTQA_TYPES = {"CW": "Why", "CH": "How", "TN": "Bef&Aft", "TC": "When", "DC": "Cnt", "DL": "Loc", "DO": "Other"}
NEXTQA_FAMILIES = {"C": "Acc_C", "T": "Acc_T", "D": "Acc_D"}


@register_task("nextqa_mc")
class NextQAMC(VideoMultipleChoice):
    """NExT-QA multiple choice (Xiao et al. 2021): rank a0..a4 by log-likelihood; accuracy of the chosen index.

    As the official ``eval_mc.py``, a prediction is right when its INDEX is the answer's: when two
    options have the same text (the real val and test CSVs have such rows), ranking gives them the
    same score, the first of them is chosen (``torch.max``'s tie rule), and it is right only if it
    is the answer's index. ``accuracy_by_type`` groups types as ``eval_mc.py`` does (TP with TN;
    C, T, D families)."""

    #: 2: index comparison (eval_mc.py), official type groups; was: answer text.
    version = 2
    video_pattern = "{video}.mp4"
    CHOICES: ClassVar[tuple[str, ...]] = tuple(f"a{i}" for i in range(5))
    hf_columns = Columns(required={"video": "video", "question": "question", **{c: c for c in CHOICES},
                                   "answer": "answer"}, optional={"qid": "qid", "type": "type"}, media=())

    def load(self, split: str) -> list[Example]:
        path = self.root / f"{split}.csv"
        layout = (f"<data root>/nextqa_mc/<split>.csv with columns video, question, a0..a4, answer (index 0-4) "
                  f"(+ qid, type); videos <data root>/nextqa_mc/videos/{self.video_pattern}")
        rows = read_csv(path, f"task nextqa_mc ({split})", layout, ("video", "question", *self.CHOICES, "answer"))
        return [self._example(i, row, f"{path}: row {i + 2}", layout) for i, row in enumerate(rows)]

    def example_from_row(self, row, where: str, split: str, index: int) -> Example:
        return self._example(index, row, where, "columns video, question, a0..a4, answer (index 0-4)")

    def _example(self, i: int, row, where: str, layout: str) -> Example:
        try:
            gold = int(row["answer"])
            assert 0 <= gold < len(self.CHOICES)
        except (TypeError, ValueError, AssertionError):
            raise DataError(f"{where}: answer must be a choice index 0-4, got {row['answer']!r}"
                            f"\nExpected layout: {layout}") from None
        choices = tuple(str(row[k]) for k in self.CHOICES)
        qid = row.get("qid")
        qid = str(i) if qid is None or qid == "" else str(qid)
        return Example(
            id=f"{row['video']}_{qid}",
            media=(self.video(row, where),),
            fields={"question": str(row["question"]), "choices": choices},
            answers=(choices[gold],),
            target=choices[gold],
            meta={"video": row["video"], "answer_index": gold, "type": row.get("type")},
        )

    def score(self, prediction: str, example: Example) -> float:
        """1 when the chosen option's index is the answer's: the chosen option is the first with the
        prediction's text (ranking breaks ties to the first). A bare index ``0``-``4`` (the official
        results format) counts as that option when no option has that text."""
        choices = list(example.fields["choices"])
        if prediction in choices:
            index = choices.index(prediction)
        elif prediction.strip().isdigit() and int(prediction) < len(choices):
            index = int(prediction)
        else:
            return 0.0
        return float(index == example.meta["answer_index"])

    def aggregate(self, records: Sequence[SampleRecord]) -> dict[str, Any]:
        out = super().aggregate(records)
        groups: dict[str, list[float]] = defaultdict(list)
        for r in records:
            qtype = {"TP": "TN"}.get(str(r.fields.get("type") or ""), str(r.fields.get("type") or ""))
            if qtype in NEXTQA_TYPES:
                groups[NEXTQA_TYPES[qtype]].append(r.score)
                groups[NEXTQA_FAMILIES[qtype[0]]].append(r.score)
        if groups:
            out["accuracy_by_type"] = {k: mean_with_ci(v)["mean"] for k, v in sorted(groups.items())}
        return out


@register_task("star")
class STAR(VideoMultipleChoice):
    """STAR situated reasoning (Wu et al. 2021): rank the 4 choices by log-likelihood; accuracy (+ per category).

    ``STAR_{train,val}.json`` = ``[{question_id, question, video_id, start, end, answer, choices: [{choice_id,
    choice}, ...], ...}]``; the clip is ``[start, end]`` seconds of Charades video ``videos/{video_id}.mp4``.
    The category (Interaction, Sequence, Prediction, Feasibility) is ``question_id``'s prefix. The primary
    metric ``mean`` is the leaderboard's "Mean": the mean of the four categories' accuracies (not the mean
    over questions, which is ``accuracy``). The test split's answers are not public: a run on it keeps the
    predictions unscored and ``export`` writes the challenge's submission file.
    """

    CATEGORIES: ClassVar[tuple[str, ...]] = ("Interaction", "Sequence", "Prediction", "Feasibility")
    #: 2: primary metric ``mean`` of the four category accuracies (the leaderboard's), was ``accuracy``.
    version = 2
    primary_metric = "mean"
    server_format = "star"
    video_pattern = "{video_id}.mp4"
    SPLIT_FILES: ClassVar[dict[str, str]] = {"train": "STAR_train.json", "val": "STAR_val.json",
                                              "test": "STAR_test.json"}
    LAYOUT: ClassVar[str] = ("<data root>/star/STAR_<split>.json (train, val; test without 'answer') = "
                             "[{'question_id', 'question', 'video_id', 'start', 'end', 'answer', 'choices': "
                             "[{'choice_id', 'choice'}, ...]}, ...]; "
                             "Charades videos <data root>/star/videos/{video_id}.mp4")

    def load(self, split: str) -> list[Example]:
        if split not in self.SPLIT_FILES:
            raise DataError(f"task star: unknown split {split!r}; STAR has {', '.join(self.SPLIT_FILES)}")
        path = self.root / self.SPLIT_FILES[split]
        rows = read_json(path, f"task star ({split})", self.LAYOUT)
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a JSON list of questions\nExpected layout: {self.LAYOUT}")
        out = []
        for i, row in enumerate(rows):
            where = f"item #{i}"
            for key in ("question_id", "question", "video_id", "start", "end", "choices"):
                require(row, key, path, where, self.LAYOUT)
            if split != "test":  # the test answers are not public: unscored, exported
                require(row, "answer", path, where, self.LAYOUT)
            choices = tuple(str(require(c, "choice", path, f"{where}.choices", self.LAYOUT)).strip()
                            for c in row["choices"])
            answer = str(row["answer"]).strip() if "answer" in row else None
            if answer is not None and answer not in choices:
                raise DataError(f"{path}: {where} ({row['question_id']}): answer {answer!r} is not one of its "
                                f"choices {list(choices)}")
            video = self.video(row, f"{where} of {path}")
            clip = self.clip(video, row["start"], row["end"], f"{where} of {path}")
            out.append(Example(
                id=str(row["question_id"]),
                media=(clip,),
                fields={"question": str(row["question"]), "choices": choices},
                answers=(answer,) if answer is not None else (),
                target=answer or "",
                meta={"video_id": row["video_id"], "type": str(row["question_id"]).split("_")[0]},
            ))
        return out

    def aggregate(self, records: Sequence[SampleRecord]) -> dict[str, Any]:
        """``mean``: the mean of the category accuracies (the leaderboard's "Mean"; over the categories
        present, ``n_categories`` of them), beside ``accuracy`` over questions and ``accuracy_by_type``."""
        out = super().aggregate(records)
        by_type = out.get("accuracy_by_type", {})
        present = [by_type[c] for c in self.CATEGORIES if c in by_type]
        out["mean"] = sum(present) / len(present) if present else float("nan")
        out["n_categories"] = len(present)
        return out
