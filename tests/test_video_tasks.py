"""Video QA and close-ended tasks: loaders, metrics, ranking with ensembling, IDEFICS log-likelihood, CLI runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.conftest import build_tiny_idefics, run_cli  # noqa: E402
from conftest_video import (write_hateful, write_ivqa, write_msqa,  # noqa: E402
                            write_nextqa, write_video)
from harness.errors import DataError, HarnessError
from harness.metrics.classification import prob_of, roc_auc
from harness.metrics.video_qa import exact_match, ivqa_accuracy
from harness.prompts import PromptTemplate
from harness.ranking import continuation_for, demo_orders, rank
from harness.types import Chunk, Example, LoglikelihoodRequest, Prompt, SampleRecord
from harness.data.video import FrameSelection, SampledVideo

TASKS = ("msvd_qa", "msrvtt_qa", "ivqa", "nextqa_mc", "hateful_memes")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_msqa(root, "msvd_qa", "vid{video_id}.avi")
    write_msqa(root, "msrvtt_qa", "video{video_id}.mp4")
    write_ivqa(root)
    write_nextqa(root)
    write_hateful(root)
    return root


@pytest.fixture(scope="module")
def idefics_dir(tmp_path_factory) -> Path:
    return build_tiny_idefics(tmp_path_factory.mktemp("idefics"))


# ---- loaders ------------------------------------------------------------------------------
def test_loaders_read_the_exact_schemas(data_root):
    from tasks.classification import HatefulMemes
    from tasks.video_qa import IVQA, MSRVTTQA, MSVDQA, NextQAMC

    msvd = MSVDQA(data_root, {"frames": "4"}).eval_examples()
    assert len(msvd) == 4 and msvd[0].id == "10" and msvd[0].answers == ("dog",)
    (video,) = msvd[0].media
    assert isinstance(video, SampledVideo) and video.path.endswith("msvd_qa/videos/vid0.avi")
    assert video.selection == FrameSelection(frames=4)
    assert Path(MSRVTTQA(data_root).eval_examples()[1].media[0].path).name == "video1.mp4"

    ivqa = IVQA(data_root).eval_examples()
    assert ivqa[0].answers == ("dog", "dog", "puppy", "the dog")  # the empty fifth slot dropped
    assert ivqa[0].target == "dog" and ivqa[1].target == "cat"
    assert IVQA(data_root, {"video_pattern": "{video_id}_{start}_{end}.mp4"}).eval_examples()[0].media[0].path \
        .endswith("vid0_0_5.mp4")

    nq = NextQAMC(data_root).eval_examples()
    assert nq[0].id == "1000_0" and nq[0].target == "to the right" and nq[0].meta["type"] == "CW"
    assert NextQAMC(data_root).candidates(nq[0])[4] == "no reason at all"

    hm = HatefulMemes(data_root).eval_examples()
    assert hm[0].id == "50000" and hm[0].target == "yes" and hm[1].target == "no"
    assert hm[0].media[0].path.endswith("hateful_memes/img/50000.png") and hm[0].fields["text"] == "meme text number 0"


def test_bad_files_name_the_file_and_field(data_root, tmp_path):
    from tasks.classification import HatefulMemes
    from tasks.video_qa import IVQA, MSVDQA, NextQAMC

    with pytest.raises(DataError, match=r"(?s)test_qa.json.*Expected layout"):
        MSVDQA(tmp_path).eval_examples()
    (tmp_path / "msvd_qa").mkdir()
    (tmp_path / "msvd_qa" / "test_qa.json").write_text(json.dumps([{"question": "q", "answer": "a", "id": 1}]))
    with pytest.raises(DataError, match="item #0 has no field 'video_id'"):
        MSVDQA(tmp_path).eval_examples()
    (tmp_path / "ivqa").mkdir()
    (tmp_path / "ivqa" / "test.csv").write_text("video_id,question,answer1\nv,q,a\n")
    with pytest.raises(DataError, match=r"test.csv has no column\(s\) answer2, answer3, answer4, answer5"):
        IVQA(tmp_path).eval_examples()
    (tmp_path / "nextqa_mc").mkdir()
    (tmp_path / "nextqa_mc" / "val.csv").write_text("video,question,a0,a1,a2,a3,a4,answer\n1,q,a,b,c,d,e,7\n")
    with pytest.raises(DataError, match="row 2: answer must be a choice index 0-4"):
        NextQAMC(tmp_path).eval_examples()
    (tmp_path / "hateful_memes").mkdir()
    (tmp_path / "hateful_memes" / "dev_seen.jsonl").write_text('{"id": 1, "img": "img/1.png", "text": "t"}\n')
    with pytest.raises(DataError, match="line 1 has no field.*label"):
        HatefulMemes(tmp_path).eval_examples()
    with pytest.raises(HarnessError, match="--max-frames caps"):
        MSVDQA(data_root, {"max_frames": "4"})


# ---- metrics ------------------------------------------------------------------------------
def test_ivqa_accuracy_hand_worked():
    answers = ["dog", "dog", "puppy", "the dog", ""]
    # default: exact match on the raw answers, as just-ask's evaluation
    assert ivqa_accuracy("dog", answers) == 1.0  # 2 annotators ("the dog" is another string)
    assert ivqa_accuracy("the dog", answers) == 0.5
    assert ivqa_accuracy("puppy", answers) == 0.5  # 1 annotator
    assert ivqa_accuracy("Puppy.", answers) == 0.0
    assert ivqa_accuracy("cat", answers) == 0.0
    assert ivqa_accuracy("", answers) == 0.0  # the empty slot never matches
    assert ivqa_accuracy("two", ["2", "2", "3", "3", "3"]) == 0.0
    # match=vqa: the VQA normalisation on both sides (task option match=vqa)
    assert ivqa_accuracy("dog", answers, "vqa") == 1.0 and ivqa_accuracy("Puppy.", answers, "vqa") == 0.5
    assert ivqa_accuracy("two", ["2", "2", "3", "3", "3"], "vqa") == 1.0
    assert exact_match("A dog", "dog") == 1.0 and exact_match("dogs", "dog") == 0.0


def test_roc_auc_hand_worked_with_ties():
    # positives 0.9, 0.4; negatives 0.4, 0.1: pairs (0.9>0.4), (0.9>0.1), (0.4=0.4 -> 1/2), (0.4>0.1) = 3.5 / 4
    assert roc_auc([1, 1, 0, 0], [0.9, 0.4, 0.4, 0.1]) == pytest.approx(0.875)
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert roc_auc([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert math.isnan(roc_auc([1, 1], [0.2, 0.3]))
    assert prob_of({"yes": math.log(3.0), "no": 0.0}, "yes") == pytest.approx(0.75)


def test_hateful_aggregate_counts_failures_wrong(data_root):
    from tasks.classification import HatefulMemes

    task = HatefulMemes(data_root)
    rec = lambda label, lp, score, err=None: SampleRecord(  # noqa: E731
        "q", [], "", "", "", score, {"label": label, **({"candidate_logprobs": lp} if lp else {})}, err)
    records = [rec(1, {"yes": -1.0, "no": -2.0}, 1.0), rec(0, {"yes": -3.0, "no": -1.0}, 1.0),
               rec(0, {"yes": -1.0, "no": -1.5}, 0.0)]
    assert task.aggregate(records)["roc_auc"] == pytest.approx(100.0)
    out = task.aggregate(records + [rec(1, None, 0.0, "image not found")])  # failed positive -> P(yes)=0
    hard = [SampleRecord("q", [], "", "1", "1", 1.0, {"label": 1}), SampleRecord("q", [], "", "no", "no", 1.0, {"label": 0})]
    assert task.aggregate(hard)["roc_auc"] == 100.0 and task.score("1", task.eval_examples()[0]) == 1.0
    assert out["roc_auc"] == pytest.approx(100 * 3 / 6) and out["accuracy"] == pytest.approx(50.0) and out["n"] == 4


# ---- ranking ------------------------------------------------------------------------------
def _ex(i: int) -> Example:
    return Example(id=f"d{i}", media=(), fields={"question": f"q{i}"}, target="yes")


def test_demo_orders_deterministic_distinct_and_sampler_order_first():
    demos = [_ex(i) for i in range(6)]
    orders = demo_orders(demos, 6, seed=0, task="t", query_id="q1")
    assert orders[0] == demos and len({tuple(d.id for d in o) for o in orders}) == 6
    assert all(sorted(d.id for d in o) == [d.id for d in demos] for o in orders)
    assert orders == demo_orders(demos, 6, seed=0, task="t", query_id="q1")
    assert orders != demo_orders(demos, 6, seed=1, task="t", query_id="q1")
    assert len(demo_orders(demos[:2], 6, 0, "t", "q")) == 2  # only 2! orders exist
    assert demo_orders([], 6, 0, "t", "q") == [[]]


def test_rank_averages_orders_and_normalises_length():
    pred, means, scores = rank(["a", "bbbb"], ["a", "bbbb"], [[-2.0, -5.0], [-4.0, -3.0]])
    assert means == {"a": -3.0, "bbbb": -4.0} and pred == "a"
    pred, _, scores = rank(["a", "bbbb"], [" a", " bbbb"], [[-2.0, -5.0], [-4.0, -3.0]], "bytes")
    assert scores == {"a": -1.5, "bbbb": -0.8} and pred == "bbbb"
    t = PromptTemplate(demo="Q: {question} Answer: {answer}", query="Q: {question} Answer:")
    assert continuation_for(t, _ex(0), "yes") == " yes"
    assert continuation_for(PromptTemplate(demo="Answer:{answer}", query="Answer:"), _ex(0), "no") == "no"


# ---- IDEFICS log-likelihood -----------------------------------------------------------------
def test_idefics_loglikelihood_is_batch_invariant_and_matches_a_full_forward(idefics_dir, tmp_path):
    import torch

    from models.idefics import Idefics

    model = Idefics({"path": str(idefics_dir), "video_as_frames": "true"})
    sel = FrameSelection(frames=3, size=30)
    v = [SampledVideo(str(write_video(tmp_path / f"{i}.mp4", n_frames=10, seed=i)), selection=sel) for i in range(3)]
    q = _ex(0)
    long_prompt = Prompt((Chunk((v[1],), "Question: what is in the video? Answer: dog"),
                          Chunk((v[2],), "Question: and here? Answer: cat man"),
                          Chunk((v[0],), "Question: what is in the video? Answer:")))
    short_prompt = Prompt((Chunk((v[2],), "Question: what? Answer:"),))
    target = LoglikelihoodRequest(long_prompt, " dog", q)
    alone = model.loglikelihood([target])[0]
    mixed = [LoglikelihoodRequest(short_prompt, " ball ball ball ball ball", q),
             LoglikelihoodRequest(long_prompt, " cat man car", q), target,
             LoglikelihoodRequest(short_prompt, " no", q), LoglikelihoodRequest(long_prompt, " yes", q)]
    in_batch = model.loglikelihood(mixed)
    assert in_batch[2] == pytest.approx(alone, abs=1e-5)
    assert model.loglikelihood(mixed[:1])[0] == pytest.approx(in_batch[0], abs=1e-5)
    assert model.loglikelihood(mixed[1:2])[0] == pytest.approx(in_batch[1], abs=1e-5)

    # The shared-context KV reuse gives what one full forward pass over prompt+continuation gives.
    def full_forward(prompt: Prompt, cont: str) -> float:
        items = model._items(prompt)
        n_ctx = model.processor(text=[items], return_tensors="pt")["input_ids"].shape[1]
        inputs = model.processor(text=[items[:-1] + [items[-1] + cont]], return_tensors="pt")
        with torch.no_grad():
            logp = model.model(**inputs).logits[0].float().log_softmax(-1)
        ids = inputs["input_ids"][0]
        return sum(float(logp[j - 1, ids[j]]) for j in range(n_ctx, len(ids)))

    assert alone == pytest.approx(full_forward(long_prompt, " dog"), abs=1e-4)
    assert in_batch[0] == pytest.approx(full_forward(short_prompt, " ball ball ball ball ball"), abs=1e-4)
    # Images matter: another query video changes the score.
    other = Prompt(long_prompt.chunks[:-1] + (Chunk((v[1],), long_prompt.query.text),))
    assert model.loglikelihood([LoglikelihoodRequest(other, " dog", q)])[0] != pytest.approx(alone, abs=1e-4)


# ---- end to end through the CLI -------------------------------------------------------------
def test_every_task_runs_few_shot_with_the_demo_majority_baseline(data_root, tmp_path):
    out = tmp_path / "out"
    proc = run_cli("run", "--model", "demo-majority", "--tasks", ",".join(TASKS), "--shots", "0", "2",
                   "--seeds", "0", "1", "--frames", "4", "--ensemble", "3", "--data-dir", str(data_root),
                   "--output", str(out), "-q")
    for task in TASKS:
        assert f"| {task} |" in proc.stdout
        m = json.loads((out / "demo-majority" / task / "2shot_seed1" / "metrics.json").read_text())
        assert m["n_failed"] == 0
        opts = m["config"]["task"]["options"]
        if task != "hateful_memes":
            assert opts["frames"] == 4 and m["config"]["task"]["frame_selection"]["frames"] == 4
        if task in ("nextqa_mc", "hateful_memes"):
            assert opts["ensemble"] == 3
            rec = json.loads((out / "demo-majority" / task / "2shot_seed1" / "predictions.jsonl").read_text()
                             .splitlines()[0])
            assert rec["n_orders"] == 2 and set(rec["candidate_logprobs"]) >= {rec["prediction"]}
            zero = json.loads((out / "demo-majority" / task / "0shot_seed0" / "predictions.jsonl").read_text()
                              .splitlines()[0])
            # close-ended zero-shot: two text-only demos, as OpenFlamingo (HatefulMemes: no separator)
            assert len(zero["demo_ids"]) == 2 and zero["prompt"].count("<image>") == 1
            if task == "hateful_memes":
                assert "<|endofchunk|>is an image with" in zero["prompt"] and "\n" not in zero["prompt"]
        else:
            assert "ensemble" not in opts
    hm = json.loads((out / "demo-majority/hateful_memes/2shot_seed0/metrics.json").read_text())
    assert set(hm["metrics"]) >= {"roc_auc", "accuracy", "n"} and hm["primary_metric"] == "roc_auc"
    # demo-majority copies demo answers: NExT-QA's fixture always answers a2, so 2 shots are always right
    nq = json.loads((out / "demo-majority/nextqa_mc/2shot_seed0/metrics.json").read_text())
    assert nq["metrics"]["accuracy"] == 100.0

    bad = run_cli("run", "--model", "demo-majority", "--tasks", "msvd_qa", "--ensemble", "2",
                  "--data-dir", str(data_root), "--output", str(tmp_path / "o2"), check=False)
    assert bad.returncode == 2 and "--ensemble applies to" in bad.stderr


def test_tiny_idefics_runs_video_qa_and_a_close_ended_task(idefics_dir, data_root, tmp_path):
    out = tmp_path / "out"
    run_cli("run", "--model", "idefics", "--model-arg", f"path={idefics_dir}", "--model-arg", "video_as_frames=true",
            "--label", "tiny", "--tasks", "msrvtt_qa,hateful_memes,nextqa_mc", "--shots", "2", "--seeds", "0",
            "--limit", "3", "--fps", "5", "--max-frames", "3", "--ensemble", "2", "--data-dir", str(data_root),
            "--output", str(out), "-q")
    gen = json.loads((out / "tiny/msrvtt_qa/2shot_seed0/metrics.json").read_text())
    assert gen["n"] == 3 and gen["n_failed"] == 0
    assert gen["config"]["task"]["frame_selection"] == {"mode": "fps", "frames": 8, "fps": 5.0, "max_frames": 3,
                                                        "size": 224}
    for task in ("hateful_memes", "nextqa_mc"):
        m = json.loads((out / "tiny" / task / "2shot_seed0" / "metrics.json").read_text())
        assert m["n"] == 3 and m["n_failed"] == 0
        recs = [json.loads(x) for x in (out / "tiny" / task / "2shot_seed0" / "predictions.jsonl").read_text().splitlines()]
        for r in recs:
            lps = r["candidate_logprobs"]
            assert all(v < 0 for v in lps.values()) and r["prediction"] == max(lps, key=lps.get)
