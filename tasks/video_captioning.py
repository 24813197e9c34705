"""Video captioning: VATEX and YouCook2, scored with pycocoevalcap (CIDEr-D primary) like COCO.

A video is one media item of F frames (``--frames``/``--fps``, as the video QA tasks); a demo
shows its first reference caption, every reference of a query is scored. Prompts, decoding
(3 beams, 20 new tokens), post-processing and corpus scoring are the image captioning tasks'
(:class:`tasks.captioning.CaptionScoring`).

VATEX (Wang et al. 2019), English captions, under ``<root>/vatex/``::

    vatex_training_v1.0.json / vatex_validation_v1.0.json / vatex_public_test_english_v1.1.json
        [{"videoID": "Ptf_2VRj-V0_000122_000132", "enCap": [10 English captions], "chCap": [...]}, ...]
    videos/{videoID}.mp4          the 10-second clips, named by videoID (YouTube id_start_end)

YouCook2 (Zhou et al. 2018), one example per annotated segment, under ``<root>/youcook2/``::

    youcookii_annotations_trainval.json
        {"database": {"<youtube id>": {"subset": "training|validation", "recipe_type": "113",
                                        "duration": 241.6, "annotations": [{"id": 0, "segment": [90, 102],
                                                                            "sentence": "spread margarine ..."}]}}}
    raw_videos/{subset}/{recipe_type}/{video_id}.mp4     the official downloader's layout; the segment's
                                                         [start, end] seconds are taken from it
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from harness.errors import DataError
from harness.registry import register_task
from harness.task import read_json, require
from harness.types import Example

from .captioning import CaptionMetricOptions, CaptionScoring
from .video_qa import VideoOptions, VideoTask


@dataclass(frozen=True)
class VideoCaptionOptions(VideoOptions, CaptionMetricOptions):
    """Video captioning options: the video options (frames, fps, ...) and ``metrics`` (see coco)."""


class VideoCaptionTask(CaptionScoring, VideoTask):
    """A captioning task whose media is one video per example."""

    Options = VideoCaptionOptions
    id_field = "video_id"
    prediction_keys = ("video_id", "caption")
    default_template = "flamingo"

    def caption_example(self, example_id: str, video: Any, captions: list, where: str, meta: dict) -> Example:
        refs = tuple(str(c).strip() for c in captions if str(c).strip())
        if not refs:
            raise DataError(f"task {self.name}: {where} has no caption")
        return Example(id=example_id, media=(video,), fields={}, answers=refs, target=refs[0],
                       meta={"video_id": example_id, **meta})


@register_task("vatex")
class VATEX(VideoCaptionTask):
    """VATEX English video captioning (10 references per clip); CIDEr-D via pycocoevalcap."""

    default_support_split = "train"
    default_eval_split = "test"
    video_pattern = "{videoID}.mp4"
    SPLIT_FILES: ClassVar[dict[str, str]] = {
        "train": "vatex_training_v1.0.json",
        "val": "vatex_validation_v1.0.json",
        "test": "vatex_public_test_english_v1.1.json",
    }
    LAYOUT: ClassVar[str] = ("<data root>/vatex/{vatex_training_v1.0,vatex_validation_v1.0,"
                             "vatex_public_test_english_v1.1}.json = [{'videoID', 'enCap': [captions]}, ...]; "
                             "clips <data root>/vatex/videos/{videoID}.mp4")

    def load(self, split: str) -> list[Example]:
        if split not in self.SPLIT_FILES:
            raise DataError(f"task vatex: unknown split {split!r}; VATEX has {', '.join(self.SPLIT_FILES)}")
        path = self.root / self.SPLIT_FILES[split]
        rows = read_json(path, f"task vatex ({split})", self.LAYOUT)
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a JSON list of videos\nExpected layout: {self.LAYOUT}")
        out, seen = [], set()
        for i, row in enumerate(rows):
            where = f"item #{i} of {path}"
            vid = str(require(row, "videoID", path, f"item #{i}", self.LAYOUT))
            captions = require(row, "enCap", path, f"item #{i}", self.LAYOUT)
            if not isinstance(captions, list):
                raise DataError(f"{path}: item #{i}: 'enCap' must be a list of captions")
            if vid in seen:
                raise DataError(f"{path}: item #{i} repeats videoID {vid}")
            seen.add(vid)
            out.append(self.caption_example(vid, self.video(row, where), captions, where, {}))
        return out


@register_task("youcook2")
class YouCook2(VideoCaptionTask):
    """YouCook2 segment captioning (one reference per segment); CIDEr-D via pycocoevalcap."""

    default_support_split = "train"
    default_eval_split = "val"
    video_pattern = "{subset}/{recipe_type}/{video_id}.mp4"
    video_folder = "raw_videos"
    ANNOTATIONS: ClassVar[str] = "youcookii_annotations_trainval.json"
    SUBSETS: ClassVar[dict[str, str]] = {"train": "training", "val": "validation"}
    LAYOUT: ClassVar[str] = ("<data root>/youcook2/youcookii_annotations_trainval.json = {'database': {VIDEO_ID: "
                             "{'subset': 'training|validation', 'recipe_type', 'annotations': [{'id', 'segment': "
                             "[start, end], 'sentence'}]}}}; videos <data root>/youcook2/raw_videos/"
                             "{subset}/{recipe_type}/{video_id}.mp4 (option video_pattern)")

    def load(self, split: str) -> list[Example]:
        if split not in self.SUBSETS:
            raise DataError(f"task youcook2: unknown split {split!r}; its annotated splits are "
                            f"{', '.join(self.SUBSETS)} (the test annotations are not public)")
        path = self.root / self.ANNOTATIONS
        data = read_json(path, f"task youcook2 ({split})", self.LAYOUT)
        database = require(data, "database", path, "the top-level object", self.LAYOUT)
        out = []
        for vid, entry in database.items():
            subset = require(entry, "subset", path, f"video {vid}", self.LAYOUT)
            if subset != self.SUBSETS[split]:
                continue
            row = {**entry, "video_id": vid}
            video = self.video(row, f"video {vid} of {path}")
            for j, ann in enumerate(require(entry, "annotations", path, f"video {vid}", self.LAYOUT)):
                where = f"video {vid} annotations[{j}] of {path}"
                segment = require(ann, "segment", path, f"video {vid} annotations[{j}]", self.LAYOUT)
                if not (isinstance(segment, list) and len(segment) == 2):
                    raise DataError(f"{where}: 'segment' must be [start, end] in seconds, got {segment!r}")
                seg_id = require(ann, "id", path, f"video {vid} annotations[{j}]", self.LAYOUT)
                sentence = require(ann, "sentence", path, f"video {vid} annotations[{j}]", self.LAYOUT)
                clip = self.clip(video, segment[0], segment[1], where)
                out.append(self.caption_example(f"{vid}_{seg_id}", clip, [sentence], where,
                                                {"youtube_id": vid, "segment": list(segment)}))
        return out
