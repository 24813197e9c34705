"""Visual Dialog v1.0 (Das et al. 2017): rank a round's 100 candidate answers by log-likelihood.

An example is one dialogue round: the image, its caption, the rounds before it (questions and
ground-truth answers, as the official task gives them) and the round's question. Its 100
``answer_options`` are ranked by the model's log-likelihood after the prompt (the reference
``flamingo`` computes the prompt once per round, not 100 times: models/flamingo/scoring.py).
Metrics as the official evaluation: NDCG on the rounds with dense annotations (primary, as
Flamingo reports), MRR, R@1/5/10 and mean rank of the ground-truth answer over every round
(harness/metrics/visdial.py); equal scores are ranked as its ``scores_to_ranks`` (torch's sort).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from harness.errors import DataError, HarnessError
from harness.metrics.stats import mean_with_ci
from harness.metrics.visdial import ndcg, ranks_from_scores, sparse_metrics
from harness.prompts import PromptTemplate
from harness.ranking import RankingOptions
from harness.registry import register_task
from harness.task import Task, TaskOptions, read_json, require
from harness.types import Example, Image, SampleRecord

VISDIAL_LAYOUT = (
    "<data root>/visdial/visdial_1.0_<split>.json = {'version': '1.0', 'split': ..., 'data': {'questions': [str], "
    "'answers': [str], 'dialogs': [{'image_id', 'caption', 'dialog': [{'question': index, 'answer': index, "
    "'answer_options': [100 indices], 'gt_index': int} x10]}]}}; dense annotations "
    "visdial_1.0_<split>_dense_annotations.json = [{'image_id', 'round_id' (1-based), 'gt_relevance': [100 floats]}]; "
    "images: val VisualDialog_val2018/VisualDialog_val2018_<image_id:012d>.jpg, test "
    "VisualDialog_test2018/VisualDialog_test2018_<image_id:012d>.jpg, train train2014/COCO_train2014_<image_id:012d>.jpg "
    "or val2014/COCO_val2014_<image_id:012d>.jpg"
)

VISDIAL_TEMPLATES = {
    # The dialogue so far, then the round's question in the VQA prompt of each style.
    "openflamingo": PromptTemplate(demo="Caption:{caption} {history}Question:{question} Short answer:{answer}",
                                   query="Caption:{caption} {history}Question:{question} Short answer:"),
    "flamingo": PromptTemplate(demo="Caption: {caption} {history}Question: {question} Answer: {answer}",
                               query="Caption: {caption} {history}Question: {question} Answer:"),
}


@dataclass(frozen=True)
class VisDialOptions(TaskOptions, RankingOptions):
    """VisDial options. ``rounds``: ``all`` (default, as the official val evaluation) evaluates every
    round with a ground truth: MRR/R@k on all 20,640 val rounds, NDCG on the 2,064 with dense
    relevance annotations; ``dense`` only the densely annotated rounds (10x cheaper; MRR/R@k then
    come from those rounds alone and are not the official ones). ``image_dir``: override the
    folder of the split's images (file names as in the layout)."""

    rounds: Literal["dense", "all"] = "all"
    image_dir: str | None = None


def _history(questions: Sequence[str], answers: Sequence[str], rounds: Sequence[Mapping], upto: int) -> str:
    """The rounds before ``upto`` (0-based) as text: ``Question: q? Answer: a. `` each."""
    parts = []
    for r in rounds[:upto]:
        q, a = questions[r["question"]], answers[r["answer"]] if "answer" in r else ""
        parts.append(f"Question: {q}? Answer: {a}. ".replace("?? ", "? "))
    return "".join(parts)


@register_task("visdial")
class VisDial(Task):
    """Visual Dialog v1.0: rank each round's 100 candidate answers; NDCG (dense), MRR, R@1/5/10."""

    kind = "loglikelihood"
    Options = VisDialOptions
    templates = VISDIAL_TEMPLATES
    default_template = "openflamingo"
    default_support_split, default_eval_split = "train", "val"
    primary_metric = "ndcg"
    server_format = "visdial"
    #: 2: every round evaluated by default (MRR/R@k as the official val evaluation), ties as torch.sort.
    version = 2

    def _image(self, split: str, image_id: int) -> str:
        if self.options.image_dir:
            base = Path(self.options.image_dir)
        else:
            base = self.root
        if split in ("val", "test"):
            name = f"VisualDialog_{split}2018_{image_id:012d}.jpg"
            return str(base / name if self.options.image_dir else base / f"VisualDialog_{split}2018" / name)
        for coco_split in ("train2014", "val2014"):  # v1.0 train dialogues are on COCO train+val 2014
            name = f"COCO_{coco_split}_{image_id:012d}.jpg"
            path = base / name if self.options.image_dir else base / coco_split / name
            if path.is_file():
                return str(path)
        return str(base / "train2014" / f"COCO_train2014_{image_id:012d}.jpg")  # missing: fails that sample

    def _dense(self, split: str) -> dict[tuple[int, int], list[float]]:
        path = self.root / f"visdial_1.0_{split}_dense_annotations.json"
        if not path.is_file():
            return {}
        rows = read_json(path, f"task visdial dense annotations ({split})", VISDIAL_LAYOUT)
        out = {}
        for i, row in enumerate(rows):
            key = (int(require(row, "image_id", path, f"item #{i}", VISDIAL_LAYOUT)),
                   int(require(row, "round_id", path, f"item #{i}", VISDIAL_LAYOUT)))
            rel = row.get("gt_relevance", row.get("relevance"))
            if rel is None:
                raise DataError(f"{path}: item #{i} has no field 'gt_relevance'\nExpected layout: {VISDIAL_LAYOUT}")
            out[key] = [float(x) for x in rel]
        return out

    def load(self, split: str) -> list[Example]:
        path = self.root / f"visdial_1.0_{split}.json"
        top = read_json(path, f"task visdial ({split})", VISDIAL_LAYOUT)
        data = require(top, "data", path, "the top-level object", VISDIAL_LAYOUT)
        questions = require(data, "questions", path, "'data'", VISDIAL_LAYOUT)
        answers = require(data, "answers", path, "'data'", VISDIAL_LAYOUT)
        dialogs = require(data, "dialogs", path, "'data'", VISDIAL_LAYOUT)
        dense = self._dense(split)
        is_eval = split == self.eval_split
        if is_eval and self.options.rounds == "dense" and not dense:
            raise DataError(f"task visdial: rounds=dense needs {self.root}/visdial_1.0_{split}_dense_annotations.json "
                            f"(or pass --task-arg visdial:rounds=all)\nExpected layout: {VISDIAL_LAYOUT}")
        out = []
        for d_i, dialog in enumerate(dialogs):
            image_id = int(require(dialog, "image_id", path, f"dialogs[{d_i}]", VISDIAL_LAYOUT))
            rounds = require(dialog, "dialog", path, f"dialogs[{d_i}] (image_id {image_id})", VISDIAL_LAYOUT)
            caption = str(dialog.get("caption", ""))
            media = (Image(self._image(split, image_id)),)
            for r_i, rnd in enumerate(rounds):
                where = f"dialogs[{d_i}] (image_id {image_id}) round {r_i + 1}"
                if "answer_options" not in rnd or ("gt_index" not in rnd and not (is_eval and split == "test")):
                    continue  # a round without options (test: all but the last) or, outside test, without a truth
                options = [str(answers[k]) for k in rnd["answer_options"]]
                if "gt_index" not in rnd:  # test: ranked and exported, unscored
                    out.append(Example(
                        id=f"{image_id}_{r_i + 1}", media=media,
                        fields={"caption": caption, "history": _history(questions, answers, rounds, r_i),
                                "question": str(questions[require(rnd, 'question', path, where, VISDIAL_LAYOUT)]),
                                "options": options},
                        meta={"image_id": image_id, "round_id": r_i + 1}))
                    continue
                gt = int(rnd["gt_index"])
                if not 0 <= gt < len(options):
                    raise DataError(f"{path}: {where}: gt_index {gt} is outside its {len(options)} answer_options")
                relevance = dense.get((image_id, r_i + 1))
                if is_eval and self.options.rounds == "dense" and relevance is None:
                    continue
                meta: dict[str, Any] = {"image_id": image_id, "round_id": r_i + 1, "gt_index": gt}
                if relevance is not None:
                    if len(relevance) != len(options):
                        raise DataError(f"dense annotations of image {image_id} round {r_i + 1}: {len(relevance)} "
                                        f"relevances for {len(options)} answer_options")
                    meta["relevance"] = relevance
                out.append(Example(
                    id=f"{image_id}_{r_i + 1}", media=media,
                    fields={"caption": caption, "history": _history(questions, answers, rounds, r_i),
                            "question": str(questions[require(rnd, 'question', path, where, VISDIAL_LAYOUT)]),
                            # Only queries are ranked: demos (1.2M train rounds) do not keep 100 options each.
                            **({"options": options} if is_eval else {})},
                    answers=(options[gt],), target=options[gt], meta=meta,
                ))
        if is_eval and not out:
            raise DataError(f"{path}: no round with answer_options and gt_index to evaluate")
        return out

    def candidates(self, example: Example) -> list[str]:
        return list(example.fields["options"])

    def score(self, prediction: str, example: Example) -> float:
        return float(prediction == example.target)

    def record_fields(self, example: Example) -> dict[str, Any]:
        return {"answer": example.target or None, **dict(example.meta)}

    def ranking_fields(self, example: Example, logprobs: Mapping[str, float], scores: Mapping[str, float],
                       normalization: str) -> dict[str, Any]:
        """Each option's rank (1 = best), in answer_options order, and the ground truth's."""
        ranks = ranks_from_scores([scores[o] for o in example.fields["options"]])
        if "gt_index" not in example.meta:  # a test round: no ground truth
            return {"option_ranks": ranks}
        return {"option_ranks": ranks, "gt_rank": ranks[example.meta["gt_index"]]}

    def aggregate(self, records: Sequence[SampleRecord]) -> dict[str, Any]:
        """NDCG (dense rounds), MRR, R@1/5/10 (0-100) and mean rank. A failed round ranks its
        ground truth last and gets NDCG 0."""
        unranked = [r.query_id for r in records if not r.error and "option_ranks" not in r.fields]
        if unranked:
            raise HarnessError(
                f"task visdial is scored from the ranks of each round's 100 options, which round {unranked[0]} "
                f"does not have: answers alone cannot give NDCG or MRR (a run writes the ranks to "
                f"predictions.jsonl and the metrics to metrics.json)")
        gt_ranks, ndcgs = [], []
        for r in records:
            n_options = len(r.fields.get("relevance") or r.fields.get("option_ranks") or [None] * 100)
            gt_ranks.append(n_options if r.error or "gt_rank" not in r.fields else int(r.fields["gt_rank"]))
            if r.fields.get("relevance") is not None:
                ndcgs.append(0.0 if r.error or "option_ranks" not in r.fields
                             else ndcg(r.fields["option_ranks"], r.fields["relevance"]))
        ndcgs = [x for x in ndcgs if x == x]  # a round with no relevant answer has no NDCG
        out: dict[str, Any] = {}
        if ndcgs:
            stats = mean_with_ci(ndcgs)
            out.update(ndcg=stats["mean"], ndcg_ci95=[stats["ci95_low"], stats["ci95_high"]], n_ndcg=len(ndcgs))
        else:
            out["ndcg"] = float("nan")
        out.update(sparse_metrics(gt_ranks))
        out["n"] = len(records)
        return out
