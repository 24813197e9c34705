"""Generated cases for the exactness checks of issue 22, and the harness side of each comparison.

Each ``check_*`` function draws its cases from a seeded generator, scores them with the harness (through
its task classes and metric functions, as a run or ``score`` does) and with the reference written from
the benchmark's own code (tests/exactness_reference.py), and returns a :class:`Tally`. The harness is
called only through names that existed before issue 22 too (``Task.score``, ``aggregate``,
``ranking_fields``, ``ranks_from_scores``, ``RicesSampler``), so ``benchmarks/exactness.py --harness OLD_TREE``
measures an older tree with the same cases. Shared by tests/test_exactness.py and benchmarks/exactness.py.
"""

from __future__ import annotations

import json
import math
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import exactness_reference as ref


@dataclass
class Tally:
    """``mismatches`` of ``cases`` compared; ``examples`` keeps the first few for messages."""

    name: str
    cases: int = 0
    mismatches: int = 0
    examples: list = field(default_factory=list)

    def add(self, same: bool, detail) -> None:
        self.cases += 1
        if not same:
            self.mismatches += 1
            if len(self.examples) < 5:
                self.examples.append(detail)


def _example(answers, qid="q", fields=None, meta=None):
    from harness.types import Example

    return Example(qid, (), dict(fields or {}), answers=tuple(answers), target=answers[0] if answers else "",
                   meta=dict(meta or {}))


def _record(qid, prediction, score, fields):
    from harness.types import SampleRecord

    return SampleRecord(query_id=qid, demo_ids=[], prompt="", raw_output=prediction, prediction=prediction,
                        score=score, fields=dict(fields))


# ---- 1. TextVQA ---------------------------------------------------------------------------------------
TEXT_WORDS = ["ten", "10", "two", "2", "1,000", "1000", "3.5", "coca-cola", "coca cola", "Coca Cola", "the", "a", "an",
              "stop", "STOP", "it's", "its", "dont", "don't", "nike", "Nike.", "u.s.a.", "usa", "yes", "no", "one way",
              "$5", "5$", "(555)", "555", "what?", "x/y", "x / y", "7:30", "730", "e-mail", "email"]
ADVERSARIAL_BITS = [",", "?", "'s", "'S", ".", "..", " , ", "!", "\n", "\t", "  ", "-", " - ", "/", "(", ")", "\"", ";"]


def _textvqa_answer(rng: random.Random, adversarial: bool) -> str:
    words = [rng.choice(TEXT_WORDS) for _ in range(rng.randint(1, 3 if adversarial else 2))]
    if adversarial:
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(words))
            bit = rng.choice(ADVERSARIAL_BITS)
            words[i] = words[i] + bit if rng.random() < 0.5 else bit + words[i]
    return " ".join(words)


SWAPS = [("10", "ten"), ("2", "two"), ("1000", "1,000"), ("its", "it's"), ("cola", "cola?"), ("usa", "u.s.a."),
         ("nike", "Nike"), ("stop", "STOP"), ("dont", "don't"), ("email", "e-mail"), ("a", "the")]


def _perturbed(rng: random.Random, answer: str) -> str:
    """``answer`` written another way a normaliser may or may not undo (number word, comma, case, 's...)."""
    out = answer
    for a, b in rng.sample(SWAPS, 3):
        out = out.replace(a, b) if rng.random() < 0.5 else out.replace(b, a)
    if rng.random() < 0.3:
        out = out + rng.choice(["?", ",", "'s", ".", " ,", "!"])
    return out


def check_textvqa(ordinary: int = 3000, adversarial: int = 4500, seed: int = 0) -> tuple[Tally, Tally]:
    """Ordinary cases (answers that mostly agree, predictions from the same words) and adversarial ones
    (punctuation, commas, 's, number words; a third with ten identical answers and the prediction
    written another way, where the VQA script's "normalise only when answers differ" rule bites)."""
    from tasks.textvqa_vizwiz import TextVQA

    task = TextVQA(None, {})
    rng = random.Random(seed)
    out = []
    for name, n, adv in (("textvqa ordinary", ordinary, False), ("textvqa adversarial", adversarial, True)):
        tally = Tally(name)
        for i in range(n):
            base = [_textvqa_answer(rng, adv) for _ in range(rng.randint(1, 4))]
            answers = [rng.choice(base) for _ in range(10)]
            if adv and i % 3 == 1:
                answers = [base[0]] * 10
                pred = _perturbed(rng, base[0])
            else:
                pred = rng.choice(answers) if i % 3 == 0 else _textvqa_answer(rng, adv)
            got = task.score(pred, _example(answers))
            want = ref.mmf_textvqa_accuracy(pred, answers)
            tally.add(math.isclose(got, want, abs_tol=1e-12), (pred, answers, got, want))
        out.append(tally)
    return out[0], out[1]


# ---- 2. VizWiz ------------------------------------------------------------------------------------------
VIZWIZ_ANSWERS = ["won’t", "don’t", "can't", "it’s", "that’s", "what’s", "unanswerable", "yes", "no", "2", "blue",
                  "i don’t know", "doesn’t work", "isn’t", "didn’t", "we've", "where's", "who've", "ain't", "couldn’t’ve"]
VIZWIZ_PREDICTIONS = ["wont", "dont", "cant", "its", "thats", "whats", "Unanswerable", "yes", "no", "two", "Blue.",
                      "i dont know", "doesnt work", "isnt", "didnt", "weve", "wheres", "whove", "aint", "couldnt've",
                      "won't", "don't", "won’t", "the blue", "I dont know."]


def check_vizwiz(n: int = 3000, seed: int = 1) -> Tally:
    from tasks.textvqa_vizwiz import VizWiz

    task = VizWiz(None, {})
    rng = random.Random(seed)
    tally = Tally("vizwiz")
    for _ in range(n):
        base = rng.sample(VIZWIZ_ANSWERS, rng.randint(1, 3))
        answers = [rng.choice(base) for _ in range(10)]
        pred = rng.choice(VIZWIZ_PREDICTIONS)
        got = task.score(pred, _example(answers))
        want = ref.vizwiz_api_accuracy(pred, answers)
        tally.add(math.isclose(got, want, abs_tol=1e-12), (pred, answers, got, want))
    return tally


# ---- 3. iVQA -------------------------------------------------------------------------------------------
IVQA_ANSWERS = ["two", "2", "Two", "dog", "the dog", "a dog", "dogs", "Dog", "cooking", "cook", "three", "3", "red",
                "red.", "pasta", "spaghetti", "guitar", "piano"]


def check_ivqa(n: int = 3000, seed: int = 2) -> Tally:
    from tasks.video_qa import IVQA

    task = IVQA("/nonexistent-data-root", {})
    rng = random.Random(seed)
    tally = Tally("ivqa")
    for i in range(n):
        base = rng.sample(IVQA_ANSWERS, rng.randint(1, 4))
        cells = [rng.choice(base) for _ in range(5)]
        for j in range(rng.choice([0, 0, 0, 1, 2])):  # some empty slots
            cells[rng.randrange(5)] = ""
        if not any(cells):
            cells[0] = base[0]
        row = {"video_id": "v", "question": "q?", "start": "0", "end": "5",
               **{f"answer{k + 1}": c for k, c in enumerate(cells)}}
        example = task._example(i, row, f"generated row {i}")
        pred = rng.choice(IVQA_ANSWERS)
        got = task.score(pred, example)
        want = ref.just_ask_ivqa(pred, cells)
        tally.add(math.isclose(got, want, abs_tol=1e-12), (pred, cells, got, want))
    return tally


# ---- 4. NExT-QA ----------------------------------------------------------------------------------------
NEXTQA_OPTIONS = ["to play", "to rest", "pick it up", "walk away", "smile", "two", "three", "dance", "cry", "look down"]
NEXTQA_TYPES = ["CW", "CH", "TN", "TP", "TC", "DC", "DL", "DO"]


def _nextqa_rows(rng: random.Random, n: int) -> list[dict]:
    rows = []
    for i in range(n):
        options = rng.sample(NEXTQA_OPTIONS, 5)
        if i % 3 == 0:  # two options with the same text, as rows of the real val/test CSVs
            a, b = rng.sample(range(5), 2)
            options[b] = options[a]
        rows.append({"video": str(4000 + i // 7), "qid": str(i % 7), "type": rng.choice(NEXTQA_TYPES),
                     "question": f"why {i}", "answer": str(rng.randrange(5)),
                     **{f"a{k}": o for k, o in enumerate(options)}})
    return rows


def _ranked_prediction(task, candidates, scores_by_text):
    """What the runner records for a close-ended query: ``rank`` then the task's choice (``choose``,
    where the harness has it), from per-candidate log-likelihoods."""
    from harness.ranking import rank

    per_order = [[scores_by_text[c] for c in candidates]]
    best, _, scores = rank(candidates, candidates, per_order, "none")
    return (task.choose(candidates, scores) if hasattr(task, "choose") else best), scores


def check_nextqa(n: int = 3000, seed: int = 3) -> tuple[Tally, Tally]:
    """Per question (the chosen index is right or not) and per generated run (eval_mc's accuracies)."""
    from tasks.video_qa import NextQAMC

    task = NextQAMC("/nonexistent-data-root", {})
    rng = random.Random(seed)
    rows = _nextqa_rows(rng, n)
    per_q, per_run = Tally("nextqa questions"), Tally("nextqa eval_mc groups")
    records, preds = [], {}
    for i, row in enumerate(rows):
        example = task._example(i, row, f"generated row {i}", "generated")
        cands = task.candidates(example)
        # the same text is the same continuation: the same log-likelihood; other ties too
        by_text = {c: float(rng.choice([-1.0, -2.0, -2.0, -3.0, rng.uniform(-4, 0)])) for c in cands}
        prediction, _ = _ranked_prediction(task, cands, by_text)
        got = task.score(prediction, example)
        want_index = ref.nextqa_prediction([by_text[c] for c in cands])
        want = float(want_index == int(row["answer"]))
        per_q.add(got == want, (row, by_text, prediction, got, want))
        records.append(_record(example.id, prediction, got, task.record_fields(example)))
        preds[example.id] = {"prediction": want_index, "answer": int(row["answer"])}
    for start in range(0, n, 100):
        chunk_rows, chunk_records = rows[start:start + 100], records[start:start + 100]
        want = ref.nextqa_eval_mc(chunk_rows, preds)
        metrics = task.aggregate(chunk_records)
        got = {"Acc": metrics["accuracy"], **metrics.get("accuracy_by_type", {})}
        same = all(k in got and math.isclose(got[k], v, abs_tol=1e-9) for k, v in want.items())
        per_run.add(same, (start, got, want))
    return per_q, per_run


# ---- 5. STAR -------------------------------------------------------------------------------------------
def check_star(runs: int = 1000, seed: int = 4) -> Tally:
    from tasks.video_qa import STAR

    task = STAR("/nonexistent-data-root", {})
    rng = random.Random(seed)
    tally = Tally("star primary metric")
    for r in range(runs):
        weights = [rng.randint(1, 12) for _ in ref.STAR_CATEGORIES]  # unbalanced categories
        results, records = [], []
        for c, w in zip(ref.STAR_CATEGORIES, weights):
            for j in range(w):
                qid, ok = f"{c}_T{rng.randint(1, 4)}_{r}_{j}", rng.random() < rng.random()
                results.append((qid, ok))
                records.append(_record(qid, "x", float(ok), {"type": c}))
        got = task.aggregate(records)[task.primary_metric]
        want = ref.star_leaderboard(results)["Mean"]
        tally.add(math.isclose(got, want, abs_tol=1e-9), (weights, got, want))
    return tally


# ---- 6. and 7b. classification: Kinetics' primary metric, top-k ties ------------------------------------
def _kinetics_task(root: Path, labels: list[str]):
    from tasks.kinetics import Kinetics700

    base = root / "kinetics700"
    base.mkdir(parents=True, exist_ok=True)
    lines = ["label,youtube_id,time_start,time_end,split"] + [f"{l},yt{i:04d},0,10,train" for i, l in enumerate(labels)]
    (base / "train.csv").write_text("\n".join(lines) + "\n")
    return Kinetics700(root, {})


def _tied_logprobs(rng: random.Random, n: int) -> list[float]:
    levels = [round(rng.uniform(-6, 0), 3) for _ in range(rng.randint(1, 6))]
    return [rng.choice(levels) if rng.random() < 0.8 else round(rng.uniform(-6, 0), 3) for _ in range(n)]


def check_kinetics(runs: int = 300, per_run: int = 20, n_classes: int = 40, seed: int = 5) -> tuple[Tally, Tally]:
    """Runs whose primary metric differs from Flamingo's (top-1 + top-5) / 2, and queries whose top-1 or
    top-5 hit differs from torch.topk's (scores with many exact ties)."""
    rng = random.Random(seed)
    labels = sorted(f"action {i:03d}" for i in range(n_classes))
    with tempfile.TemporaryDirectory() as tmp:
        task = _kinetics_task(Path(tmp), labels)
        names = task.class_names()
        primary, ties = Tally("kinetics primary metric"), Tally("kinetics top-1/top-5 with ties")
        for _ in range(runs):
            records, all_lp, truth = [], [], []
            for q in range(per_run):
                lp = _tied_logprobs(rng, len(names))
                label = rng.choice(names) if rng.random() < 0.5 else names[int(np.argmax(lp))]
                example = _example((label,), qid=f"c{q}")
                cands = task.candidates(example)
                scores = dict(zip(names, lp))
                prediction, _ = _ranked_prediction(task, cands, scores)
                fields = {**task.record_fields(example), **task.ranking_fields(example, scores, scores, "tokens")}
                records.append(_record(example.id, prediction, task.score(prediction, example), fields))
                all_lp.append(lp)
                truth.append(label)
                want = ref.flamingo_kinetics([lp], [label], names)
                got_top1 = float(fields["label_rank"] == 1) * 100.0
                got_top5 = float(fields["label_rank"] <= 5) * 100.0
                ties.add(got_top1 == want["top1"] and got_top5 == want["top5"] and
                         (prediction == label) == (want["top1"] == 100.0), (lp, label, fields, want))
            metrics = task.aggregate(records)
            want = ref.flamingo_kinetics(all_lp, truth, names)["top1_top5_mean"]
            got = metrics[task.primary_metric]
            primary.add(math.isclose(got, want, abs_tol=1e-6), (task.primary_metric, got, want))
    return primary, ties


def check_topk_with_duplicate_names(n: int = 2000, seed: int = 6) -> Tally:
    """ImageNet-like: 1,000 class names, two of them given to two classes each (the curated list's
    "missile" and "sunglasses"), scores with exact ties; top-1 and top-5 as OpenFlamingo's torch.topk."""
    from tasks.imagenet import ClassNameTask

    names = [f"class {i}" for i in range(1000)]
    names[657], names[744] = "missile", "missile"
    names[836], names[837] = "sunglasses", "sunglasses"

    class Curated(ClassNameTask):
        def class_names(self):
            return list(names)

    task = Curated(None, {})
    rng = random.Random(seed)
    tally = Tally("imagenet top-1/top-5 with ties")
    distinct = list(dict.fromkeys(names))
    for q in range(n):
        by_name = dict(zip(distinct, _tied_logprobs(rng, len(distinct))))
        label = rng.choice(["missile", "sunglasses", rng.choice(distinct)])
        example = _example((label,), qid=f"i{q}")
        cands = task.candidates(example)
        prediction, _ = _ranked_prediction(task, cands, by_name)
        fields = task.ranking_fields(example, by_name, by_name, "tokens")
        (top5,) = ref.openflamingo_topk([[by_name[c] for c in names]], 5, names)
        same = ((fields["label_rank"] == 1) == (top5[0] == label) and (fields["label_rank"] <= 5) == (label in top5)
                and prediction == top5[0])
        tally.add(same, (label, prediction, top5, fields["label_rank"]))
    return tally


# ---- 7a. VisDial ranks with ties --------------------------------------------------------------------------
def check_visdial_ranks(n: int = 3000, seed: int = 7) -> Tally:
    from harness.metrics.visdial import ranks_from_scores

    rng = random.Random(seed)
    tally = Tally("visdial ranks with ties")
    batch = []
    for _ in range(n):
        batch.append(_tied_logprobs(rng, 100))
    want = ref.scores_to_ranks(torch.tensor(batch, dtype=torch.float32).view(len(batch), 1, 100)).view(len(batch), 100)
    for scores, w in zip(batch, want.tolist()):
        got = ranks_from_scores(scores)
        tally.add(got == w, None)
    return tally


# ---- 7c. RICES with a VQA-like support set ------------------------------------------------------------------
class FixedFeatures:
    """A RICES encoder whose features are given (precomputed), keyed by media identity: the ordering
    is then compared on exactly the features the reference gets."""

    fingerprint = "fixed-features"

    def __init__(self, table: dict[str, np.ndarray]):
        self.table = table

    def describe(self):
        return {"kind": "fixed"}

    def embed(self, media):
        return np.stack([self.table[m.identity] for m in media])


def vqa_like_rices(n_images: int = 300, per_image: int = 5, n_queries: int = 600, dim: int = 32, seed: int = 8):
    """A support split of ``n_images`` images with ``per_image`` questions each (identical features, so
    ties everywhere) and ``n_queries`` queries, a third of them showing a support image."""
    from harness.types import Example, Image

    rng = np.random.default_rng(seed)
    image_feats = rng.standard_normal((n_images, dim)).astype(np.float32)
    image_feats /= np.linalg.norm(image_feats, axis=1, keepdims=True)
    table = {f"/support/{i}.jpg": image_feats[i] for i in range(n_images)}
    support = [Example(f"s{i}_{j}", (Image(f"/support/{i}.jpg"),), {"question": f"q{j}"}, answers=("a",), target="a")
               for i in range(n_images) for j in range(per_image)]
    queries = []
    for q in range(n_queries):
        if q % 3 == 0:
            path = f"/support/{int(rng.integers(n_images))}.jpg"
        else:
            v = rng.standard_normal(dim).astype(np.float32)
            path = f"/query/{q}.jpg"
            table[path] = v / np.linalg.norm(v)
        queries.append(Example(f"q{q}", (Image(path),), {"question": "?"}, answers=("a",), target="a"))
    return support, queries, table


def check_rices(shots: int = 4, batch_size: int = 8, seed: int = 8) -> tuple[Tally, Tally]:
    """Queries whose demo order / demo set differs from ``RICES.find`` on the same features."""
    from harness.evaluation.rices import RicesSampler

    support, queries, table = vqa_like_rices(seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        sampler = RicesSampler("rices-exactness", support, queries, FixedFeatures(table), "train", "val",
                               cache_dir=Path(tmp), progress=False)
        feats = torch.as_tensor(np.asarray(sampler.support_matrix, dtype=np.float32))
        order, sets = Tally(f"rices {shots}-shot demo order"), Tally(f"rices {shots}-shot demo set")
        for start in range(0, len(queries), batch_size):
            batch = queries[start:start + batch_size]
            qf = torch.as_tensor(np.stack([np.asarray(sampler.query_vectors[q.id], dtype=np.float32) for q in batch]))
            for q, want in zip(batch, ref.rices_find(qf, feats, shots)):
                got = [d.id for d in sampler.demos(q, shots)]
                want_ids = [sampler.pool[i].id for i in want]
                order.add(got == want_ids, (q.id, got, want_ids))
                sets.add(set(got) == set(want_ids), (q.id, got, want_ids))
    return order, sets


# ---- 8. VisDial: which rounds ------------------------------------------------------------------------------
def write_visdial(root: Path, n_dialogs: int, rng: random.Random) -> None:
    """A VisDial v1.0 val split in the official layout: 10 rounds per dialogue, 100 options each, one
    densely annotated round per dialogue."""
    base = root / "visdial"
    base.mkdir(parents=True, exist_ok=True)
    answers = [f"answer {i}" for i in range(300)]
    questions = [f"question {i}" for i in range(50)]
    dialogs, dense = [], []
    for d in range(n_dialogs):
        rounds = []
        for _ in range(10):
            options = rng.sample(range(len(answers)), 100)
            gt = rng.randrange(100)
            rounds.append({"question": rng.randrange(len(questions)), "answer": options[gt],
                           "answer_options": options, "gt_index": gt})
        dialogs.append({"image_id": 1000 + d, "caption": "a caption", "dialog": rounds})
        rel = [0.0] * 100
        for i in rng.sample(range(100), rng.randint(1, 8)):
            rel[i] = rng.choice([0.2, 0.4, 0.6, 0.8, 1.0])
        dense.append({"image_id": 1000 + d, "round_id": rng.randint(1, 10), "gt_relevance": rel})
    data = {"version": "1.0", "split": "val", "data": {"questions": questions, "answers": answers, "dialogs": dialogs}}
    (base / "visdial_1.0_val.json").write_text(json.dumps(data))
    (base / "visdial_1.0_val_dense_annotations.json").write_text(json.dumps(dense))
    (base / "visdial_1.0_train.json").write_text(json.dumps(data))


def check_visdial_rounds(runs: int = 20, n_dialogs: int = 30, seed: int = 9) -> Tally:
    """Runs (a whole val split) whose MRR, R@1/5/10, mean rank or NDCG differs from the starter code's
    evaluate.py (sparse metrics over every round, NDCG over the dense ones), with the task's defaults."""
    from tasks.visdial import VisDial

    rng = random.Random(seed)
    tally = Tally("visdial metrics (default rounds)")
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            write_visdial(Path(tmp), n_dialogs, rng)
            task = VisDial(tmp, {})
            by_id = {e.id: e for e in task.eval_examples()}
            data = json.loads((Path(tmp) / "visdial" / "visdial_1.0_val.json").read_text())["data"]
            dense = {(d["image_id"], d["round_id"]): d["gt_relevance"] for d in json.loads(
                (Path(tmp) / "visdial" / "visdial_1.0_val_dense_annotations.json").read_text())}
            all_scores, gts, dense_scores, dense_rel, records = [], [], [], [], []
            for dialog in data["dialogs"]:
                for r, rnd in enumerate(dialog["dialog"]):
                    scores = _tied_logprobs(rng, 100)
                    all_scores.append(scores)
                    gts.append(rnd["gt_index"])
                    key = (dialog["image_id"], r + 1)
                    if key in dense:
                        dense_scores.append(scores)
                        dense_rel.append(dense[key])
                    example = by_id.get(f"{dialog['image_id']}_{r + 1}")
                    if example is None:
                        continue  # the task does not evaluate this round
                    by_option = {}
                    for o, s in zip(example.fields["options"], scores):
                        by_option.setdefault(o, s)
                    fields = {**task.record_fields(example),
                              **task.ranking_fields(example, by_option, by_option, "none")}
                    records.append(_record(example.id, "", 0.0, fields))
            got = task.aggregate(records)
            t = torch.tensor(all_scores, dtype=torch.float32).view(len(all_scores), 1, 100)
            want = ref.visdial_sparse(t, torch.tensor(gts).view(len(gts), 1))
            want_ndcg = ref.visdial_ndcg(torch.tensor(dense_scores, dtype=torch.float32),
                                         torch.tensor(dense_rel, dtype=torch.float32))
            pairs = [(got[k] / 100.0, want[k]) for k in ("r@1", "r@5", "r@10", "mrr")]
            pairs += [(got["mean_rank"], want["mean"]), (got["ndcg"] / 100.0, want_ndcg)]
            tally.add(all(math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6) for a, b in pairs),
                      {"rounds": len(records), "official rounds": len(all_scores), "pairs": pairs})
    return tally


ALL_CHECKS = {
    "1 textvqa": check_textvqa,
    "2 vizwiz": check_vizwiz,
    "3 ivqa": check_ivqa,
    "4 nextqa": check_nextqa,
    "5 star": check_star,
    "6 kinetics": check_kinetics,
    "7 ties: visdial ranks": check_visdial_ranks,
    "7 ties: imagenet top-k": check_topk_with_duplicate_names,
    "7 ties: rices": check_rices,
    "8 visdial rounds": check_visdial_rounds,
}
