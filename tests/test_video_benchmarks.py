"""The video benchmarks of the Flamingo suite: VATEX, YouCook2, STAR, RareAct.

Fixture files in each official schema with real mp4 clips (PyAV), loaders, clip windows,
RareAct's mWAP against the official algorithm, and CLI runs with a baseline and a tiny model.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli  # noqa: E402
from conftest_video import (KINETICS_LABELS, RAREACT_ACTIONS, square_x, write_kinetics,  # noqa: E402
                            write_rareact, write_star, write_vatex, write_video, write_youcook2)
from harness.errors import DataError, HarnessError
from harness.metrics.rareact import RareActRow, mean_weighted_ap, weighted_average_precision
from harness.data.video import FrameCache, FrameSelection, SampledVideo


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vbench")
    write_vatex(root)
    write_youcook2(root)
    write_star(root)
    write_rareact(root)
    write_kinetics(root)
    return root


# ---- clip windows ---------------------------------------------------------------------------
def test_clip_window_takes_frames_inside_it_only(tmp_path):
    path = write_video(tmp_path / "v.mp4", n_frames=30, fps=10)  # 3 s; frame i's square at x ~ i * 52 / 29
    cache = FrameCache(max_bytes=0)
    whole = cache.frames(str(path), FrameSelection(frames=3, size=None))
    second = cache.frames(str(path), FrameSelection(frames=3, size=None).clip(1.0, 2.0))
    xs_whole = [square_x(f) for f in whole]
    xs_clip = [square_x(f) for f in second]
    # frames 10..20 hold the second second: the square is between x(10) and x(20)
    lo, hi = 10 * 52 / 29 + 6, 20 * 52 / 29 + 6
    assert all(lo - 2 <= x <= hi + 2 for x in xs_clip), xs_clip
    assert xs_clip == sorted(xs_clip) and xs_whole[0] < lo - 2 and xs_whole[-1] > hi + 2
    with pytest.raises(Exception, match="outside the video"):
        cache.frames(str(path), FrameSelection(frames=2).clip(10.0, 12.0))
    with pytest.raises(HarnessError, match="clip end must be after its start"):
        FrameSelection().clip(2.0, 1.0)
    # two clips of one file are two media, for every cache keyed by identity
    a = SampledVideo(str(path), selection=FrameSelection().clip(0, 1))
    b = SampledVideo(str(path), selection=FrameSelection().clip(1, 2))
    assert a.identity != b.identity and SampledVideo(str(path)).identity == str(path)


# ---- loaders --------------------------------------------------------------------------------
def test_loaders_read_the_official_schemas(data_root):
    from tasks.rareact import RareAct
    from tasks.video_captioning import VATEX, YouCook2
    from tasks.video_qa import STAR

    vatex = VATEX(data_root, {"frames": "4"})
    test = vatex.eval_examples()
    assert len(test) == 3 and len(test[0].answers) == 10 and test[0].target == test[0].answers[0]
    assert test[0].media[0].path.endswith(f"vatex/videos/{test[0].id}.mp4")
    assert len(vatex.support_examples()) == 6 and vatex.prediction_keys == ("video_id", "caption")

    yc = YouCook2(data_root)
    val = yc.eval_examples()
    assert [e.id for e in val] == ["yc2Ab-Cd_0", "yc2Ab-Cd_1", "yc2Ab-Cd_2"] and len(yc.support_examples()) == 6
    sel = val[1].media[0].selection
    assert (sel.start, sel.end) == (1.0, 2.0) and val[1].media[0].path.endswith("raw_videos/validation/113/yc2Ab-Cd.mp4")

    star = STAR(data_root).eval_examples()
    assert star[0].id == "Interaction_T1_0" and star[0].meta["type"] == "Interaction"
    assert star[1].target == "The table." and STAR(data_root).candidates(star[0])[0] == "The closet/cabinet."
    assert (star[0].media[0].selection.start, star[0].media[0].selection.end) == (0.5, 2.5)

    ra = RareAct(data_root)
    clips = ra.eval_examples()
    assert len(clips) == 6 and clips[0].id == "RA0_0_1"
    assert ra.candidates(clips[0]) == [f"{v} {n}" for v, n in RAREACT_ACTIONS]
    assert clips[0].answers == ("cut laptop",)  # (v + clip) % 4 == class 0

    from tasks.kinetics import Kinetics700

    k = Kinetics700(data_root)
    val = k.eval_examples()
    assert k.candidates(val[0]) == sorted(KINETICS_LABELS) and val[0].id == "vaK000-x_000000_000010"
    assert val[0].media[0].path.endswith("kinetics700/videos/validate/abseiling/vaK000-x_000000_000010.mp4")
    assert len(k.support_examples()) == 6 and k.support_examples()[1].target == "playing cello"


def test_bad_files_name_the_file_and_field(data_root, tmp_path):
    from tasks.rareact import RareAct
    from tasks.video_captioning import VATEX, YouCook2
    from tasks.video_qa import STAR

    with pytest.raises(DataError, match=r"(?s)vatex_public_test_english_v1.1.json.*Expected layout"):
        VATEX(tmp_path).eval_examples()
    with pytest.raises(DataError, match="unknown split 'dev'"):
        VATEX(data_root, {"eval_split": "dev"}).eval_examples()
    (tmp_path / "star").mkdir()
    rows = json.loads((data_root / "star" / "STAR_val.json").read_text())
    rows[0]["answer"] = "The sofa."
    (tmp_path / "star" / "STAR_val.json").write_text(json.dumps(rows))
    with pytest.raises(DataError, match="answer 'The sofa.' is not one of its choices"):
        STAR(tmp_path).eval_examples()
    rows[0]["answer"], rows[0]["end"] = "The table.", 0.1
    (tmp_path / "star" / "STAR_val.json").write_text(json.dumps(rows))
    with pytest.raises(DataError, match=r"item #0 .*bad clip start/end 0.5, 0.1"):
        STAR(tmp_path).eval_examples()
    (tmp_path / "youcook2").mkdir()
    (tmp_path / "youcook2" / "youcookii_annotations_trainval.json").write_text(json.dumps(
        {"database": {"v": {"subset": "validation", "recipe_type": "1", "annotations": [{"id": 0, "segment": [3]}]}}}))
    with pytest.raises(DataError, match=r"'segment' must be \[start, end\]"):
        YouCook2(tmp_path).eval_examples()
    with pytest.raises(HarnessError, match="at most 0 shots"):
        RareAct(data_root).check_shots(4)


# ---- RareAct's mWAP -------------------------------------------------------------------------
def test_weighted_ap_hand_worked():
    # ranked: +(w1) -(w1) +(w.5) -(w.5); thresholds: P=1 R=2/3; P=.5 R=2/3; P=.6 R=1; P=.5 R=1
    assert weighted_average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1], [1, 1, 0.5, 0.5]) == pytest.approx(2 / 3 + 0.2)
    # a tie between a positive and a negative is one threshold: P = 1/2 at R = 1
    assert weighted_average_precision([1, 0], [0.5, 0.5], [1, 1]) == pytest.approx(0.5)
    assert weighted_average_precision([0, 1], [0.9, 0.1], [1, 1]) == pytest.approx(0.5)


def _reference_ap(labels, scores, weights):
    """scikit-learn's average_precision_score with sample_weight, written as loops."""
    thresholds = sorted(set(scores), reverse=True)
    total_pos = sum(w for y, w in zip(labels, weights) if y)
    ap, prev_recall = 0.0, 0.0
    for t in thresholds:
        tp = sum(w for y, s, w in zip(labels, scores, weights) if y and s >= t)
        fp = sum(w for y, s, w in zip(labels, scores, weights) if not y and s >= t)
        recall = tp / total_pos
        ap += (recall - prev_recall) * (tp / (tp + fp))
        prev_recall = recall
    return ap


def _reference_mwap(annotation, predictions):
    """The official compute_score.py (mWAP branch), transcribed: rows (video_id, class_id, verb, noun, annotation)."""
    video_ids = np.array([r[0] for r in annotation])
    ind, classid = {}, {}
    for vid, cid, v, n, a in annotation:
        classid[(v, n)] = cid
        ind.setdefault((v, n), {"positive": [], "negative": [], "hard negative": []})
    for i, (vid, cid, v, n, a) in enumerate(annotation):
        if a == 0:
            ind[(v, n)]["negative"].append(i)
        elif a == 1:
            ind[(v, n)]["positive"].append(i)
            for action in ind:
                if (action[0] == v and action[1] != n) or (action[0] != v and action[1] == n):
                    ind[action]["hard negative"].append(i)
                elif action[0] != v and action[1] != n:
                    ind[action]["negative"].append(i)
        else:
            ind[(v, n)]["hard negative"].append(i)

    def normalize_nid(vids):
        count = defaultdict(int)
        for el in vids:
            count[el] += 1
        return [1.0 / count[el] for el in vids]

    total, n_actions = 0.0, 0
    for action, g in ind.items():
        if not g["positive"]:
            continue
        c = classid[action]
        idx = g["positive"] + g["negative"] + g["hard negative"]
        weights = (normalize_nid(video_ids[g["positive"]]) + normalize_nid(video_ids[g["negative"]])
                   + normalize_nid(video_ids[g["hard negative"]]))
        labels = [1] * len(g["positive"]) + [0] * (len(idx) - len(g["positive"]))
        total += _reference_ap(labels, [float(predictions[i, c]) for i in idx], weights)
        n_actions += 1
    return total / n_actions


def test_mwap_equals_the_official_algorithm_on_generated_cases():
    rng = np.random.default_rng(0)
    verbs, nouns = ["cut", "blend", "drill", "wash"], ["phone", "laptop", "shoe", "cake"]
    for case in range(60):
        actions = [(v, n) for v in verbs for n in nouns][: rng.integers(2, 12)]
        rows = []
        for _ in range(rng.integers(5, 40)):
            c = int(rng.integers(len(actions)))
            rows.append((f"vid{rng.integers(6)}", c, *actions[c], int(rng.choice(5, p=[.3, .3, .15, .15, .1]))))
        scores = rng.normal(size=(len(rows), len(actions)))
        if case % 3 == 0:
            scores = np.round(scores)  # many ties
        ours, _ = mean_weighted_ap([RareActRow(*r) for r in rows], scores)
        if not any(r[4] == 1 for r in rows):
            assert np.isnan(ours)
            continue
        assert ours == pytest.approx(_reference_mwap(rows, scores), abs=1e-12)


# ---- CLI runs -------------------------------------------------------------------------------
def _metrics(out: Path, task: str, shots: int) -> dict:
    (path,) = [p for p in out.rglob("metrics.json") if f"/{task}/" in str(p) and f"{shots}shot" in str(p)]
    return json.loads(path.read_text())


def test_cli_video_benchmarks_with_a_baseline(data_root, tmp_path):
    out = tmp_path / "out"
    run_cli("run", "--model", "demo-majority", "--tasks", "vatex,youcook2,star,kinetics700", "--shots", "0", "2",
            "--seeds", "0",
            "--frames", "2", "--data-dir", str(data_root), "--output", str(out), "-q")
    for task in ("vatex", "youcook2"):
        m = _metrics(out, task, 2)
        assert m["primary_metric"] == "CIDEr" and m["n"] == 3
        assert m["metrics"]["CIDEr"] >= 0 and m["config"]["task"]["frame_selection"]["frames"] == 2
        journal = next(p for p in out.rglob("predictions.jsonl") if f"/{task}/2shot" in str(p))
        first = json.loads(journal.read_text().splitlines()[0])
        assert first["prediction"] and "video_id" in first and len(first["demo_ids"]) == 2
    kin = _metrics(out, "kinetics700", 2)
    # 2 class-balanced demos of 2 different classes: demo-majority's top-1 is the demo nearest the query
    assert kin["primary_metric"] == "top1_top5_mean" and kin["n"] == 3
    assert kin["config"]["sampler"]["name"] == "class_balanced"
    assert kin["metrics"]["top5"] == 100.0  # 3 classes: always in the top 5
    assert kin["metrics"]["top1_top5_mean"] == (kin["metrics"]["top1"] + 100.0) / 2  # Flamingo's number
    star = _metrics(out, "star", 2)
    assert star["primary_metric"] == "mean" and star["n"] == 4
    by_type = star["metrics"]["accuracy_by_type"]
    assert set(by_type) <= {"Interaction", "Sequence", "Prediction", "Feasibility"}
    assert star["metrics"]["mean"] == sum(by_type.values()) / len(by_type)  # the leaderboard's Mean


def test_cli_rareact_zero_shot_with_a_tiny_model(data_root, tiny_idefics_dir, tmp_path):
    out = tmp_path / "out"
    run_cli("run", "--model", "idefics", "--model-arg", f"path={tiny_idefics_dir}", "--model-arg",
            "video_as_frames=true", "--tasks", "rareact", "--shots", "0", "--seeds", "0", "--frames", "2",
            "--data-dir", str(data_root), "--output", str(out), "-q")
    m = _metrics(out, "rareact", 0)
    assert m["primary_metric"] == "mWAP" and m["n"] == 6 and 0 <= m["metrics"]["mWAP"] <= 100
    assert m["metrics"]["n_actions"] == len(RAREACT_ACTIONS)
    records = [json.loads(line) for line in next(out.rglob("predictions.jsonl")).read_text().splitlines()]
    assert all(len(r["candidate_logprobs"]) == len(RAREACT_ACTIONS) for r in records)
    refused = run_cli("run", "--model", "demo-majority", "--tasks", "rareact", "--shots", "4", "--seeds", "0",
                      "--data-dir", str(data_root), "--output", str(out), check=False)
    assert refused.returncode == 2 and "at most 0 shots" in refused.stderr
