"""Kinetics-700 (2020) video classification: the 700 action names ranked by log-likelihood.

Flamingo evaluates Kinetics-700 few-shot with top-1 accuracy; the protocol here is
OpenFlamingo's ImageNet protocol applied to video (:class:`tasks.imagenet.ClassNameTask`):
class-balanced demos ``<video>Output:{class}``, every class name scored after the query
from one shared prompt, top-1 and top-5 accuracy.

Data under ``<root>/kinetics700/`` (the official CSVs of the 2020 release)::

    train.csv, validate.csv     label, youtube_id, time_start, time_end, split
    videos/{split}/{label}/{youtube_id}_{time_start:06d}_{time_end:06d}.mp4
                                the 10-s clips as the ActivityNet downloader writes them
                                (``video_pattern`` / ``video_dir`` options for other layouts)

The class names are the sorted distinct labels of ``train.csv`` (700).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

from harness.errors import DataError
from harness.registry import register_task
from harness.data.tabular import read_csv
from harness.types import Example, SampleRecord

from .imagenet import ClassificationOptions, ClassNameTask
from .video_qa import VideoOptions, VideoTask


@dataclass(frozen=True)
class KineticsOptions(ClassificationOptions, VideoOptions):
    """Kinetics options: the video options (frames, fps, ...) and the classification options."""
    # ClassificationOptions first: its sampler default (class_balanced) wins over TaskOptions' (random).


@register_task("kinetics700")
class Kinetics700(ClassNameTask, VideoTask):
    """Kinetics-700 (2020): rank the 700 action names per clip by log-likelihood; top-1 / top-5 accuracy."""

    Options = KineticsOptions
    #: 2: primary metric top1_top5_mean (Flamingo's), ties broken as torch.topk.
    version = 2
    primary_metric = "top1_top5_mean"
    default_support_split = "train"
    default_eval_split = "val"
    video_pattern = "{split_dir}/{label}/{youtube_id}_{time_start:06d}_{time_end:06d}.mp4"
    SPLIT_FILES: ClassVar[dict[str, str]] = {"train": "train.csv", "val": "validate.csv"}
    LAYOUT: ClassVar[str] = ("<data root>/kinetics700/{train,validate}.csv with columns label, youtube_id, "
                             "time_start, time_end, split; clips <data root>/kinetics700/videos/"
                             "{split}/{label}/{youtube_id}_{time_start:06d}_{time_end:06d}.mp4")

    def _rows(self, split: str) -> list[dict]:
        if split not in self.SPLIT_FILES:
            raise DataError(f"task kinetics700: unknown split {split!r}; labelled splits: "
                            f"{', '.join(self.SPLIT_FILES)} (the test labels are not public)")
        path = self.root / self.SPLIT_FILES[split]
        rows = read_csv(path, f"task kinetics700 ({split})", self.LAYOUT,
                        ("label", "youtube_id", "time_start", "time_end"))
        for i, row in enumerate(rows):
            try:
                row["time_start"], row["time_end"] = int(float(row["time_start"])), int(float(row["time_end"]))
            except ValueError:
                raise DataError(f"{path}: row {i + 2}: time_start/time_end must be seconds, got "
                                f"{row['time_start']!r}, {row['time_end']!r}") from None
            row["split_dir"] = {"val": "validate"}.get(split, split)
        return rows

    def class_names(self) -> list[str]:
        return sorted({row["label"] for row in self._rows(self.support_split)})

    def aggregate(self, records: Sequence[SampleRecord]) -> dict[str, Any]:
        """top1, top5 and their mean, ``top1_top5_mean`` (Flamingo's Kinetics-700 number)."""
        out = super().aggregate(records)
        if "top1" in out and "top5" in out:
            out["top1_top5_mean"] = (out["top1"] + out["top5"]) / 2.0
        else:  # hard labels only (a results file of predictions): no top-5, so no mean
            out["top1_top5_mean"] = float("nan")
        return out

    def load(self, split: str) -> list[Example]:
        path = self.root / self.SPLIT_FILES.get(split, split)
        known = set(self.class_names())
        out = []
        for i, row in enumerate(self._rows(split)):
            if row["label"] not in known:
                raise DataError(f"{path}: row {i + 2}: label {row['label']!r} is not a class of "
                                f"{self.SPLIT_FILES[self.support_split]}")
            clip = f"{row['youtube_id']}_{row['time_start']:06d}_{row['time_end']:06d}"
            out.append(Example(id=clip, media=(self.video(row, f"row {i + 2} of {path}"),), fields={},
                               answers=(row["label"],), target=row["label"],
                               meta={"youtube_id": row["youtube_id"]}))
        return out
