"""Issue 14 tasks on fixture files in the official schemas: loaders, prompts, and CLI runs with the
null baselines (hand-worked metrics) and a tiny random reference Flamingo (shared-prefix ranking)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest_benchmarks import IMAGENET_CLASSES, tiny_flamingo_model, write_benchmark_data
from harness.errors import DataError, HarnessError
from harness.prompts import PromptBuilder
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_benchmark_data(tmp_path_factory.mktemp("bench_data"))


@pytest.fixture(scope="module")
def flamingo_dir(tmp_path_factory) -> Path:
    return tiny_flamingo_model().save(tmp_path_factory.mktemp("tiny_flamingo"))


def metrics(out: Path, label: str, task: str, shots: int, seed: int = 0) -> dict:
    return json.loads((out / label / task / f"{shots}shot_seed{seed}" / "metrics.json").read_text())["metrics"]


def records(out: Path, label: str, task: str, shots: int, seed: int = 0) -> list[dict]:
    path = out / label / task / f"{shots}shot_seed{seed}" / "predictions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---- loaders and prompts ----------------------------------------------------------------------
def test_loaders_read_the_official_schemas(data_root):
    from tasks.imagenet import ImageNet
    from tasks.textvqa_vizwiz import TextVQA, VizWiz
    from tasks.visdial import VisDial

    tv = TextVQA(data_root)
    val = tv.eval_examples()
    assert [e.id for e in val] == ["34606", "34607"] and val[1].answers[:3] == ("nokia", "nokia", "samsung")
    assert val[0].media[0].path.endswith("textvqa/train_images/v000000000000000.jpg")
    assert tv.generation_config().max_new_tokens == 10  # OpenFlamingo's TextVQA setting

    # OCR off by default (Flamingo); on, the Rosetta tokens go before the question.
    ocr = TextVQA(data_root, {"ocr": "true"})
    name, template = ocr.template("openflamingo")
    prompt = PromptBuilder(template).build(ocr.support_examples()[:1], ocr.eval_examples()[0])
    assert name == "openflamingo+ocr"
    assert prompt.query.text == "OCR:STOP no0 Question:what does the sign say? Short answer:"
    assert prompt.demos[0].text == "OCR:STOP no0 Question:what does the sign say? Short answer:stop"
    assert "OCR" not in PromptBuilder(tv.template("openflamingo")[1]).build([], val[0]).query.text

    vz = VizWiz(data_root).eval_examples()
    assert vz[0].id == "VizWiz_val_00000000.jpg" and vz[0].meta == {"answer_type": "unanswerable", "answerable": 0}
    assert vz[1].media[0].path.endswith("vizwiz/val/VizWiz_val_00000001.jpg")

    vd = VisDial(data_root, {"rounds": "dense"})
    rounds = vd.eval_examples()  # rounds=dense: the two densely annotated rounds
    assert [e.id for e in rounds] == ["500_1", "501_3"]
    assert rounds[1].fields["history"] == "Question: is it sunny? Answer: yes. Question: is there a dog? Answer: yes. "
    assert len(vd.candidates(rounds[0])) == 100 and rounds[0].target == "no" and rounds[0].meta["gt_index"] == 1
    assert rounds[0].media[0].path.endswith("VisualDialog_val2018/VisualDialog_val2018_000000000500.jpg")
    assert len(VisDial(data_root).eval_examples()) == 6  # default rounds=all: every round with a ground truth
    support = vd.support_examples()
    assert support[3].media[0].path.endswith("val2014/COCO_val2014_000000000101.jpg")  # train dialogues: COCO
    assert "options" not in support[0].fields  # demos do not carry the 100 options

    inet = ImageNet(data_root, {"class_names": "synset"})
    ex = inet.eval_examples()
    assert [e.target for e in ex] == ["tench", "tench", "goldfish", "great white shark"]
    assert inet.candidates(ex[0]) == list(IMAGENET_CLASSES.values())
    assert ex[0].id == "ILSVRC2012_val_00000007" and ex[0].meta["wnid"] == "n01440764"


def test_bad_data_names_the_file_and_the_fix(data_root, tmp_path):
    from tasks.imagenet import ImageNet
    from tasks.textvqa_vizwiz import VizWiz
    from tasks.visdial import VisDial

    with pytest.raises(HarnessError, match="class_names=openai lists the 1,000 ImageNet-1k classes, but the data has 3"):
        ImageNet(data_root).eval_examples()
    with pytest.raises(DataError, match=r"(?s)Annotations/val.json.*Expected layout"):
        VizWiz(tmp_path).eval_examples()
    (tmp_path / "visdial").mkdir()
    (tmp_path / "visdial" / "visdial_1.0_val.json").write_text(json.dumps({"data": {"questions": [], "answers": []}}))
    with pytest.raises(DataError, match="'data' has no field 'dialogs'"):
        VisDial(tmp_path, {"rounds": "all"}).eval_examples()
    proc = run_cli("run", "--model", "demo-majority", "--tasks", "imagenet", "--data-dir", str(data_root),
                   "--output", str(tmp_path / "r"), "--shots", "0", "--seeds", "0", "-q", check=False)
    assert proc.returncode == 2 and "\nerror: task imagenet: class_names=openai" in "\n" + proc.stderr
    assert "Traceback" not in proc.stderr


def test_openai_class_names_map_the_1000_wnids(tmp_path):
    from tasks.imagenet import ImageNet

    base = tmp_path / "imagenet"
    base.mkdir()
    wnids = [f"n{i:08d}" for i in range(1000)]
    (base / "LOC_synset_mapping.txt").write_text("".join(f"{w} name {i}\n" for i, w in enumerate(wnids)))
    names = ImageNet(tmp_path).class_map()
    assert names[wnids[0]] == "tench" and names[wnids[999]] == "toilet paper" and names[wnids[657]] == "missile"
    # The curated list gives "missile" and "sunglasses" to two classes each: one candidate each.
    assert len(ImageNet(tmp_path).candidates(None)) == 998


# ---- CLI runs -----------------------------------------------------------------------------------
def test_open_ended_tasks_with_support_prior_and_a_suite(data_root, tmp_path):
    """support-prior answers 'stop' / 'nokia' on TextVQA (100 and 60: 80) and 'unanswerable' on VizWiz
    (50; answerability AP 50, F1 66.67); a plug-in suite of the two averages them (65)."""
    plugin = tmp_path / "my_suite.py"
    plugin.write_text("from harness.suites import define_suite\n"
                      "define_suite('mini', tasks=['textvqa', 'vizwiz'], shots=[0, 2], description='two VQA tasks')\n")
    out = tmp_path / "results"
    proc = run_cli("run", "--include", str(plugin), "--model", "support-prior", "--tasks", "mini",
                   "--data-dir", str(data_root), "--output", str(out), "--seeds", "0", "-q")
    for shots in (0, 2):  # the suite's shots, no --shots given
        assert metrics(out, "support-prior", "textvqa", shots)["accuracy"] == pytest.approx(80.0)
        vz = metrics(out, "support-prior", "vizwiz", shots)
        assert vz["accuracy"] == pytest.approx(50.0)
        assert vz["accuracy_by_answer_type"] == {"other": 0.0, "unanswerable": 100.0}
        assert vz["unanswerability"]["average_precision"] == pytest.approx(50.0)
        assert vz["unanswerability"]["f1"] == pytest.approx(200 / 3)
    assert not (out / "support-prior" / "textvqa" / "4shot_seed0").exists()
    suite_rows = [line for line in proc.stdout.splitlines() if line.startswith("| suite mini")]
    assert len(suite_rows) == 1 and "mean of 2: textvqa, vizwiz" in suite_rows[0]
    assert suite_rows[0].count("65.00 n=6") == 2

    table = run_cli("compare", str(out), "--include", str(plugin)).stdout
    assert "| suite mini | mean of 2: textvqa, vizwiz | 65.00 n=6 | 65.00 n=6 |" in table
    # Only part of the suite present: no suite row.
    alone = run_cli("compare", str(out / "support-prior" / "textvqa"), "--include", str(plugin)).stdout
    assert "suite" not in alone


def test_close_ended_tasks_with_support_prior(data_root, tmp_path):
    """ImageNet: tench is the support set's most common class: top-1 50 (2 of 4), top-5 100.
    VisDial: 'yes' scores 1, the 99 others tie at 0 and are ranked as the official scores_to_ranks
    ranks them (torch's descending sort, not candidate order): the gt 'no' (option 1) in both dense
    rounds lands where torch puts it; NDCG of round 1 (relevance yes 1.0, no 0.5) follows from that
    rank, round 2's (only 'no' relevant, k = 1) is 0."""
    import math

    import torch

    order = torch.tensor([1.0] + [0.0] * 99).sort(descending=True)[1].tolist()
    rank_no = order.index(1) + 1
    ndcg1 = (1.0 + (0.5 / math.log2(rank_no + 1) if rank_no <= 2 else 0.0)) / (1.0 + 0.5 / math.log2(3))
    out = tmp_path / "results"
    run_cli("run", "--model", "support-prior", "--tasks", "imagenet,visdial", "--task-arg",
            "imagenet:class_names=synset", "--task-arg", "visdial:rounds=dense", "--data-dir", str(data_root), "--output", str(out), "--shots", "0", "2",
            "--seeds", "0", "-q")
    for shots in (0, 2):
        m = metrics(out, "support-prior", "imagenet", shots)
        assert (m["top1"], m["top5"]) == (50.0, 100.0)
        v = metrics(out, "support-prior", "visdial", shots)
        assert v["ndcg"] == pytest.approx(100 * ndcg1 / 2) and v["mrr"] == pytest.approx(100.0 / rank_no)
        assert (v["r@1"], v["r@5"], v["r@10"], v["mean_rank"]) == (
            0.0, 100.0 * (rank_no <= 5), 100.0 * (rank_no <= 10), float(rank_no))
    rec = records(out, "support-prior", "imagenet", 2)[0]
    assert rec["top_classes"][0] == "tench" and rec["label_rank"] == 1 and "candidate_logprobs" not in rec
    cfg = json.loads((out / "support-prior" / "imagenet" / "2shot_seed0" / "metrics.json").read_text())["config"]
    assert cfg["sampler"]["name"] == "class_balanced"
    demos = {tuple(r["demo_ids"]) for r in records(out, "support-prior", "imagenet", 2)}
    names_by_id = {p.stem: p.parent.name for p in (data_root / "imagenet" / "train").rglob("*.JPEG")}
    assert all(len({names_by_id[d] for d in ids}) == 2 for ids in demos)  # 2 shots: 2 different classes
    vrec = records(out, "support-prior", "visdial", 2)[0]
    assert vrec["gt_rank"] == rank_no and vrec["option_ranks"][0] == 1
    assert [vrec["option_ranks"].index(r) for r in range(1, 101)] == order  # torch's order of the ties


def test_tiny_flamingo_ranks_with_a_shared_prefix(data_root, flamingo_dir, tmp_path):
    """The reference Flamingo ranks ImageNet class names and VisDial answers through the CLI; the
    stored scores equal the naive per-candidate log-likelihoods."""
    import torch

    from harness.types import Chunk, Image, LoglikelihoodRequest, Prompt, RankRequest
    from models.flamingo.adapter import Flamingo

    out = tmp_path / "results"
    run_cli("run", "--model", "flamingo", "--model-arg", f"path={flamingo_dir}", "--label", "tiny", "--tasks",
            "imagenet,visdial", "--task-arg", "imagenet:class_names=synset", "--data-dir", str(data_root),
            "--output", str(out), "--shots", "2", "--seeds", "0", "-q")
    m = metrics(out, "tiny", "imagenet", 2)
    assert 0.0 <= m["top1"] <= m["top5"] == 100.0  # 3 classes: always in the top 5
    v = metrics(out, "tiny", "visdial", 2)
    assert 0.0 <= v["ndcg"] <= 100.0 and v["r@1"] <= v["r@5"] <= v["r@10"] and 1 <= v["mean_rank"] <= 100
    rec = records(out, "tiny", "imagenet", 2)[0]
    assert sorted(rec["top_classes"]) == sorted(IMAGENET_CLASSES.values())

    # The shared-prefix path the runner used equals one full forward pass per candidate.
    torch.set_num_threads(1)
    model = Flamingo({"path": str(flamingo_dir)})
    photos = sorted((data_root / "imagenet" / "val").rglob("*.JPEG"))
    prompt = Prompt((Chunk((Image(str(photos[0])),), "Output:tench"), Chunk((), "Output:goldfish"),
                     Chunk((Image(str(photos[1])),), "Output:")))
    conts = ["tench", "goldfish", "great white shark", "a car parked on a street"]
    shared = model.rank_candidates([RankRequest(prompt, tuple(conts), None)])[0]
    naive = model.loglikelihood([LoglikelihoodRequest(prompt, c, None) for c in conts])
    assert shared == pytest.approx(naive, abs=1e-5)
    assert len(set(shared)) == 4  # distinct candidates, distinct scores: the comparison is not vacuous


def test_score_reads_the_official_vizwiz_results_format(data_root, tmp_path):
    from harness.evaluation.scoring import score_predictions
    from tasks.textvqa_vizwiz import VizWiz

    results = tmp_path / "results.json"  # the VizWiz challenge's format: [{"image", "answer"}]
    results.write_text(json.dumps([{"image": "VizWiz_val_00000000.jpg", "answer": "Unanswerable"},
                                   {"image": "VizWiz_val_00000001.jpg", "answer": "red."}]))
    m = score_predictions(VizWiz(data_root), results)
    assert m["accuracy"] == 100.0 and m["n"] == 2 and m["n_missing"] == 2
    assert m["unanswerability"] == {"average_precision": 100.0, "f1": 100.0}
