"""RareAct (Miech et al. 2020): zero-shot recognition of unusual interactions in video clips.

Flamingo evaluates it zero-shot: every clip is scored against every (verb, noun)
description by log-likelihood, and the score matrix (clips x 149 actions) is ranked per
action with the official mean Weighted Average Precision (harness.metrics.rareact).

Data under ``<root>/rareact/`` (the official release)::

    rareact.csv      id, video_id, start, end, class_id, verb, noun, annotation
                     (annotation 1 positive, 2-4 hard negatives, 0 negative; one row per clip x action)
    videos/{video_id}.mp4     the YouTube videos; a clip is [start, end] seconds of its video

Each distinct clip (video_id, start, end) is one example; its candidates are all
actions' descriptions (``description`` option, default ``{verb} {noun}`` as the paper
names the classes), ranked like any close-ended task (``--ensemble``, length
normalisation). RareAct has no training split: it is zero-shot only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np

from harness.errors import DataError
from harness.metrics.stats import mean_with_ci
from harness.metrics.rareact import RareActRow, mean_weighted_ap
from harness.prompts import PromptTemplate
from harness.ranking import RankingOptions
from harness.registry import register_task
from harness.data.tabular import read_csv
from harness.types import Example, SampleRecord

from .video_qa import VideoOptions, VideoTask

#: a failed clip's score for every action: below any log-likelihood, finite so ties stay ties.
WORST = -1e300

RAREACT_TEMPLATES = {
    "flamingo": PromptTemplate(demo="Output: {answer}", query="Output:"),
    "openflamingo": PromptTemplate(demo="Output:{answer}", query="Output:"),
}


@dataclass(frozen=True)
class RareActOptions(VideoOptions, RankingOptions):
    """RareAct options: the video and ranking options, and

    description: how an action reads as a candidate, formatted with ``verb`` and ``noun``.
    """

    description: str = "{verb} {noun}"
    zero_shot_text_demos: int = 0  # no training split to draw text-only demos from


@register_task("rareact")
class RareAct(VideoTask):
    """RareAct: zero-shot, rank the 149 verb-noun descriptions per clip; mean Weighted AP (mWAP)."""

    kind = "loglikelihood"
    Options = RareActOptions
    templates = RAREACT_TEMPLATES
    default_template = "flamingo"
    default_support_split = "test"
    default_eval_split = "test"
    primary_metric = "mWAP"
    max_shots: ClassVar[int] = 0
    video_pattern = "{video_id}.mp4"
    COLUMNS: ClassVar[tuple[str, ...]] = ("id", "video_id", "start", "end", "class_id", "verb", "noun", "annotation")
    LAYOUT: ClassVar[str] = ("<data root>/rareact/rareact.csv with columns id, video_id, start, end, class_id, verb, "
                             "noun, annotation (0-4); videos <data root>/rareact/videos/{video_id}.mp4")

    def __init__(self, data_dir=None, options=None):
        super().__init__(data_dir, options)
        self._rows: list[RareActRow] | None = None
        self._clip_of_row: list[str] = []
        self._classes: list[str] = []
        self._table: list[dict[str, str]] = []

    def _read(self) -> None:
        """Parse rareact.csv once: its rows (for the metric), each row's clip, the class descriptions."""
        if self._rows is not None:
            return
        path = self.root / "rareact.csv"
        table = read_csv(path, "task rareact", self.LAYOUT, self.COLUMNS)
        rows, clips, names = [], [], {}
        for i, row in enumerate(table):
            try:
                class_id, annotation = int(row["class_id"]), int(row["annotation"])
            except ValueError:
                raise DataError(f"{path}: row {i + 2}: class_id and annotation must be integers") from None
            if annotation not in range(5):
                raise DataError(f"{path}: row {i + 2}: annotation must be 0-4, got {annotation}")
            name = self.options.description.format(verb=row["verb"], noun=row["noun"])
            if names.setdefault(class_id, name) != name:
                raise DataError(f"{path}: row {i + 2}: class_id {class_id} is {names[class_id]!r} elsewhere, "
                                f"{name!r} here")
            rows.append(RareActRow(row["video_id"], class_id, row["verb"], row["noun"], annotation))
            clips.append(f"{row['video_id']}_{row['start']}_{row['end']}")
        if sorted(names) != list(range(len(names))):
            raise DataError(f"{path}: class_id values must be 0..{len(names) - 1} without gaps")
        self._rows, self._clip_of_row, self._table = rows, clips, table
        self._classes = [names[c] for c in range(len(names))]

    def load(self, split: str) -> list[Example]:
        if split != "test":
            raise DataError(f"task rareact: unknown split {split!r}; RareAct has one split, test (zero-shot only)")
        self._read()
        path = self.root / "rareact.csv"
        table = self._table
        out: dict[str, Example] = {}
        positives: dict[str, list[str]] = {}
        for i, row in enumerate(table):
            clip_id = self._clip_of_row[i]
            if self._rows[i].annotation == 1:  # type: ignore[index]
                positives.setdefault(clip_id, []).append(self._classes[self._rows[i].class_id])  # type: ignore[index]
            if clip_id not in out:
                video = self.clip(self.video(row, f"row {i + 2} of {path}"), row["start"], row["end"],
                                  f"row {i + 2} of {path}")
                out[clip_id] = Example(id=clip_id, media=(video,), fields={}, meta={"video_id": row["video_id"]})
        return [Example(e.id, e.media, e.fields, answers=tuple(positives.get(e.id, ())),
                        target=(positives.get(e.id) or [""])[0], meta=e.meta) for e in out.values()]

    def candidates(self, example: Example) -> list[str]:
        self._read()
        return list(self._classes)

    def score(self, prediction: str, example: Example) -> float:
        """Per clip: whether the top-ranked action is one the clip is annotated positive for."""
        return float(prediction in example.answers)

    def record_fields(self, example: Example) -> dict[str, Any]:
        return {"answers": list(example.answers), **dict(example.meta)}

    def aggregate(self, records: Sequence[SampleRecord]) -> dict[str, Any]:
        """mWAP (0-100) over the annotated rows of the clips scored, plus top-1 hit rate.

        A failed clip scores the lowest value for every action (ranked last); a record without
        log-likelihoods (``score`` of a file of labels) scores 1 for its predicted action.
        """
        self._read()
        assert self._rows is not None
        index = {name: c for c, name in enumerate(self._classes)}
        clip_scores: dict[str, np.ndarray] = {}
        for r in records:
            vec = np.full(len(self._classes), WORST)
            lp = r.fields.get("candidate_scores") or r.fields.get("candidate_logprobs")
            if r.error:
                pass
            elif lp:
                for name, v in lp.items():
                    vec[index[name]] = v
            elif r.prediction in index:
                vec[:] = 0.0
                vec[index[r.prediction]] = 1.0
            clip_scores[r.query_id] = vec
        keep = [i for i, clip in enumerate(self._clip_of_row) if clip in clip_scores]
        rows = [self._rows[i] for i in keep]
        matrix = np.stack([clip_scores[self._clip_of_row[i]] for i in keep]) if keep else np.zeros((0, 0))
        mwap, per_action = mean_weighted_ap(rows, matrix)
        return {
            "mWAP": mwap * 100.0,
            "top1_positive": mean_with_ci([r.score for r in records])["mean"],
            "n_actions": len(per_action),
            "n": len(records),
        }
