"""Image captioning on the Karpathy splits: COCO and Flickr30k, scored with pycocoevalcap.

Data (Karpathy's ``dataset_<name>.json``)::

    {"images": [{"filepath": "val2014", "filename": "COCO_val2014_000000391895.jpg", "cocoid": 391895,
                 "split": "train|val|test|restval", "sentences": [{"raw": "A man ...", "tokens": [...]}, ...]}]}

- ``<root>/coco/dataset_coco.json``, images ``<root>/coco/<filepath>/<filename>``; image id = ``cocoid``.
- ``<root>/flickr30k/dataset_flickr30k.json``, images ``<root>/flickr30k/images/<filename>``;
  image id = the file name's stem (``1000092795.jpg`` -> ``1000092795``).

Protocol (OpenFlamingo): demos from ``train`` (option ``include_restval`` adds
``restval``), queries from ``test`` (option ``eval_split=val``); a demo shows the
image's first reference caption; every ``sentences[].raw`` is a reference.
Generation: 3 beams, up to 20 new tokens; the caption is cut at ``Output``.

Per-sample scores: CIDEr-D is a corpus metric (its n-gram weights come from all
scored references), so a caption has no score of its own while the run is
going. ``score()`` therefore returns the placeholder 0.0, which the journal
(predictions.jsonl) stores; ``aggregate()`` computes the corpus metrics and
writes each record's per-image CIDEr (0-100, with that corpus's document
frequencies) back into ``record.score`` and ``record.fields['CIDEr']``.
The 95% CI of CIDEr is over those per-image values (corpus CIDEr is their mean).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

from harness.errors import DataError
from harness.data.hf_data import Columns, answer_strings, file_stem
from harness.metrics.caption import DEFAULT_METRICS, check_metrics, score_captions
from harness.metrics.stats import mean_with_ci
from tasks.postprocess import caption
from harness.prompts import PromptTemplate
from harness.registry import register_task
from harness.task import Task, TaskOptions, read_json, require
from harness.types import Example, GenerationConfig, Image, SampleRecord

#: ``{answer}`` is the demo's target (its first reference caption); keeping the caption out of
#: ``fields`` means a query never carries its own reference.
CAPTION_TEMPLATES = {
    # "\n" after each demo's <|endofchunk|>, as OpenFlamingo's current evaluate.py.
    "openflamingo": PromptTemplate(demo="Output:{answer}", query="Output:", separator="\n"),
    "flamingo": PromptTemplate(demo="Output: {answer}", query="Output:"),
}

KARPATHY_SPLITS = ("train", "val", "test", "restval")


@dataclass(frozen=True)
class CaptionMetricOptions:
    """metrics: comma list of cider, bleu, rouge, meteor, spice; cider is always
    added. METEOR starts a JVM with a large paraphrase table: slow, so off by
    default. SPICE runs only if its CoreNLP models are on disk."""

    metrics: tuple[str, ...] = DEFAULT_METRICS


@dataclass(frozen=True)
class CaptionOptions(TaskOptions, CaptionMetricOptions):
    """Captioning options.

    include_restval: demos also come from Karpathy's ``restval`` images (the 30k COCO val
                     images outside val/test), as many COCO training setups do.
    metrics:         comma list of cider, bleu, rouge, meteor, spice; cider is always
                     added. METEOR starts a JVM with a large paraphrase table: slow, so
                     off by default. SPICE runs only if its CoreNLP models are on disk.
    image_dir:       folder holding the images, overriding the default layout
                     (COCO: ``<root>/coco/<filepath>/``; Flickr30k: ``<root>/flickr30k/images/``).
    """

    include_restval: bool = False
    image_dir: str | None = None


class CaptionScoring(Task):
    """Captioning prompts, decoding, post-processing and corpus scoring (image or video).

    A subclass's Options must include :class:`CaptionMetricOptions`; its examples carry
    every reference caption in ``answers`` and the results-file id in ``meta[id_field]``.
    """

    templates = CAPTION_TEMPLATES
    default_template = "openflamingo"
    generation = GenerationConfig(max_new_tokens=20, num_beams=3, length_penalty=0.0)
    primary_metric = "CIDEr"
    #: the id key of each record and of an official-format results file (``prediction_keys[0]``).
    id_field = "image_id"
    prediction_keys = ("image_id", "caption")

    def __init__(self, data_dir=None, options=None):
        super().__init__(data_dir, options)
        names = check_metrics(self.options.metrics)
        # CIDEr is the primary metric that tables and sweeps read: always computed.
        self.metrics = names if "cider" in names else ("cider", *names)

    def postprocess(self, raw: str, example: Example) -> str:
        return caption(raw)

    def score(self, prediction: str, example: Example) -> float:
        """Placeholder 0.0: CIDEr is defined over the corpus; ``aggregate`` fills in per-sample CIDEr."""
        return 0.0

    def record_fields(self, example: Example) -> dict[str, Any]:
        return {self.id_field: example.meta[self.id_field], "references": list(example.answers)}

    def aggregate(self, records: Sequence[SampleRecord]) -> dict[str, Any]:
        """Corpus metrics over all records (0-100). A failed sample counts as an empty caption."""
        refs = {r.query_id: r.fields["references"] for r in records}
        cands = {r.query_id: ("" if r.error else r.prediction) for r in records}
        result = score_captions(refs, cands, self.metrics)
        out: dict[str, Any] = {}
        for name, value in result.corpus.items():
            out[name] = value
            if name == "CIDEr":
                per_image = [result.per_image[r.query_id]["CIDEr"] for r in records]
                for r, v in zip(records, per_image):
                    r.score = v
                    r.fields["CIDEr"] = v
                ci = mean_with_ci(per_image, scale=1.0, bounded=False)  # per-image CIDEr is unbounded
                out["CIDEr_ci95"] = [ci["ci95_low"], ci["ci95_high"]]
        for name, note in result.notes.items():
            out[name] = None
            out[f"{name}_note"] = note
        out["n"] = len(records)
        return out

    def config(self) -> dict[str, Any]:
        return {**super().config(), "metrics": list(self.metrics),
                "cider_df": "references of the scored images (as pycocoevalcap)"}


class KarpathyCaptionTask(CaptionScoring):
    """A captioning task reading a Karpathy-split JSON file."""

    Options = CaptionOptions
    default_support_split = "train"
    default_eval_split = "test"

    #: name of the Karpathy file under ``<root>/<task>/``.
    karpathy_file = ""

    def __init__(self, data_dir=None, options=None):
        super().__init__(data_dir, options)
        self._images: list[dict] | None = None

    # ---- data -----------------------------------------------------------------
    def _layout(self) -> str:
        return (
            f"<data root>/{self.name}/{self.karpathy_file} = {{'images': [{{'filename', 'split' "
            f"(train|val|test|restval), 'sentences': [{{'raw', 'tokens'}}, ...]{self._id_layout()}}}, ...]}}; "
            f"images {self._image_layout()}"
        )

    def _id_layout(self) -> str:
        return ""

    def _image_layout(self) -> str:
        raise NotImplementedError

    def image_id(self, entry: dict, where: str, path: Path) -> Any:
        """The image's id in results files (its ``image_id``)."""
        raise NotImplementedError

    def image_id_of_row(self, value: Any, where: str) -> Any:
        """The ``image_id`` of a dataset row from its ``id`` column (same ids as the Karpathy file)."""
        raise NotImplementedError

    def example_from_row(self, row, where: str, split: str, index: int) -> Example:
        refs = tuple(r for r in answer_strings(row["captions"], where))
        if not refs:
            raise DataError(f"{where}: no reference captions (a test split without annotations cannot be scored)")
        image_id = self.image_id_of_row(row["id"], where)
        return Example(id=str(image_id), media=(row["image"],), fields={}, answers=refs,
                       target=refs[0].strip(), meta={"image_id": image_id, "split": split})

    def image_path(self, entry: dict, where: str, path: Path) -> Path:
        raise NotImplementedError

    def _karpathy_images(self) -> list[dict]:
        """The file's ``images`` list, read once for all splits."""
        if self._images is None:
            path = self.root / self.karpathy_file
            data = read_json(path, f"task {self.name} Karpathy file", self._layout())
            images = require(data, "images", path, "the top-level object", self._layout())
            if not isinstance(images, list):
                raise DataError(f"{path}: 'images' must be a list\nExpected layout: {self._layout()}")
            self._images = images
        return self._images

    @property
    def support_split(self) -> str:
        split = super().support_split
        return f"{split}+restval" if self.options.include_restval and "restval" not in split else split

    def load(self, split: str) -> list[Example]:
        """Examples of one Karpathy split, or of several joined with ``+`` (``train+restval``)."""
        wanted = split.split("+")
        bad = [s for s in wanted if s not in KARPATHY_SPLITS]
        if bad:
            raise DataError(f"task {self.name}: unknown split {bad[0]!r}; the Karpathy splits are "
                            f"{', '.join(KARPATHY_SPLITS)} (join with + e.g. train+restval)")
        path = self.root / self.karpathy_file
        layout = self._layout()
        examples: list[Example] = []
        seen: dict[str, int] = {}
        for i, entry in enumerate(self._karpathy_images()):
            where = f"images[{i}]"
            entry_split = require(entry, "split", path, where, layout)
            if entry_split not in wanted:
                continue
            sentences = require(entry, "sentences", path, where, layout)
            if not isinstance(sentences, list) or not sentences:
                raise DataError(f"{path}: {where}: 'sentences' must be a non-empty list\nExpected layout: {layout}")
            refs = tuple(str(require(s, "raw", path, f"{where}.sentences[{j}]", layout)) for j, s in enumerate(sentences))
            image_id = self.image_id(entry, where, path)
            key = str(image_id)
            if key in seen:
                raise DataError(f"{path}: {where} repeats image id {key} (first at images[{seen[key]}])")
            seen[key] = i
            examples.append(Example(
                id=key,
                media=(Image(str(self.image_path(entry, where, path))),),
                fields={},
                answers=refs,
                target=refs[0].strip(),  # OpenFlamingo's demo caption: the first reference
                meta={"image_id": image_id, "split": entry_split},
            ))
        return examples


@register_task("coco")
class COCOCaptions(KarpathyCaptionTask):
    """COCO captions, Karpathy splits (test: 5,000 images), CIDEr-D via pycocoevalcap."""

    karpathy_file = "dataset_coco.json"
    #: lmms-lab/COCO-Caption2017: ``question_id`` is the image file name (``000000179765.jpg``), ``answer``
    #: the five references. Its ``val`` split is COCO 2017 val (5,000 images), not the Karpathy test split.
    hf_columns = Columns(required={"id": "question_id", "image": "image", "captions": "answer"})

    def image_id_of_row(self, value: Any, where: str) -> Any:
        if isinstance(value, int):
            return value
        stem = file_stem(value).split("_")[-1]  # 000000179765.jpg, COCO_val2014_000000391895.jpg, 391895
        try:
            return int(stem)
        except ValueError:
            raise DataError(f"{where}: id {value!r} is not a COCO image id or file name; map the id column "
                            f"with --task-arg columns=id:COLUMN") from None

    def _id_layout(self) -> str:
        return ", 'filepath' (e.g. val2014), 'cocoid'"

    def _image_layout(self) -> str:
        return "<data root>/coco/<filepath>/<filename>"

    def image_id(self, entry: dict, where: str, path: Path) -> Any:
        cocoid = require(entry, "cocoid", path, where, self._layout())
        try:
            return int(cocoid)
        except (TypeError, ValueError):
            raise DataError(f"{path}: {where}: 'cocoid' must be an integer, got {cocoid!r}") from None

    def image_path(self, entry: dict, where: str, path: Path) -> Path:
        filename = require(entry, "filename", path, where, self._layout())
        if self.options.image_dir:
            return Path(self.options.image_dir) / filename
        return self.root / str(require(entry, "filepath", path, where, self._layout())) / filename


@register_task("flickr30k")
class Flickr30kCaptions(KarpathyCaptionTask):
    """Flickr30k captions, Karpathy splits (test: 1,000 images); image id = file-name stem."""

    karpathy_file = "dataset_flickr30k.json"
    #: lmms-lab/flickr30k: ``filename`` (id = its stem, as in the Karpathy file), ``caption`` (five references).
    #: Its single ``test`` split holds all 31,783 images, not the Karpathy test split of 1,000.
    hf_columns = Columns(required={"id": "filename", "image": "image", "captions": "caption"})

    def image_id_of_row(self, value: Any, where: str) -> Any:
        return file_stem(value)

    def _image_layout(self) -> str:
        return "<data root>/flickr30k/images/<filename>"

    def image_id(self, entry: dict, where: str, path: Path) -> Any:
        return PurePosixPath(str(require(entry, "filename", path, where, self._layout()))).stem

    def image_path(self, entry: dict, where: str, path: Path) -> Path:
        filename = require(entry, "filename", path, where, self._layout())
        return Path(self.options.image_dir or self.root / "images") / filename
