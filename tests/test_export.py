"""Issue 22: runs on test-server splits (no answers: no metric, predictions kept, labelled) and ``export``,
which writes each server's file; every file is checked against the schema the server documents."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest

from conftest import run_cli, write_vqa_fixture
from conftest_benchmarks import write_visdial, write_vizwiz
from conftest_video import write_hateful, write_star

# ---- data: the test-server splits in their official layouts (no answers) ------------------------------------


def add_vqav2_test(root: Path) -> list[int]:
    """test-dev2015 questions (a subset of test2015's, as the real files) and test2015 questions; images in
    test2015/. Returns the test2015 question ids."""
    base = root / "vqav2"
    (base / "test2015").mkdir(parents=True, exist_ok=True)
    train_images = sorted((base / "train2014").glob("*.jpg"))
    questions = []
    for i in range(6):
        image_id = 900 + i
        shutil.copy(train_images[i % len(train_images)], base / "test2015" / f"COCO_test2015_{image_id:012d}.jpg")
        questions.append({"image_id": image_id, "question": f"What is in test picture {i}?", "question_id": 9000 + i})
    (base / "v2_OpenEnded_mscoco_test2015_questions.json").write_text(json.dumps({"questions": questions}))
    (base / "v2_OpenEnded_mscoco_test-dev2015_questions.json").write_text(json.dumps({"questions": questions[:4]}))
    return [q["question_id"] for q in questions]


def add_vizwiz_test(root: Path) -> list[str]:
    base = root / "vizwiz"
    (base / "test").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(3):
        image = f"VizWiz_test_{i:08d}.jpg"
        shutil.copy(base / "val" / f"VizWiz_val_{i:08d}.jpg", base / "test" / image)
        rows.append({"image": image, "question": "What is this?"})
    (base / "Annotations" / "test.json").write_text(json.dumps(rows))
    return [r["image"] for r in rows]


def add_hateful_test(root: Path) -> list[int]:
    base = root / "hateful_memes"
    rows = [json.loads(line) for line in (base / "dev_seen.jsonl").read_text().splitlines()]
    test = [{"id": 70000 + i, "img": r["img"], "text": r["text"]} for i, r in enumerate(rows[:4])]
    (base / "test_seen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test))
    return [r["id"] for r in test]


def add_star_test(root: Path) -> list[dict]:
    base = root / "star"
    rows = json.loads((base / "STAR_val.json").read_text())
    for i, r in enumerate(rows):
        del r["answer"]
        r["question_id"] = f"{r['question_id'].split('_')[0]}_T1_{100 + i}"
    (base / "STAR_test.json").write_text(json.dumps(rows))
    return rows


def cell(out: Path, task: str, shots: int = 2) -> Path:
    (path,) = [p.parent for p in out.rglob("metrics.json") if f"/{task}/{shots}shot" in str(p)]
    return path


def journal(cell_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (cell_dir / "predictions.jsonl").read_text().splitlines() if line.strip()]


# ---- VQAv2 test-dev ------------------------------------------------------------------------------------------
def test_vqav2_test_dev_runs_unscored_and_exports_every_test2015_question(tmp_path):
    root = write_vqa_fixture(tmp_path / "data")
    all_ids = add_vqav2_test(root)
    out = tmp_path / "out"
    proc = run_cli("run", "--model", "demo-majority", "--tasks", "vqav2", "--task-arg", "eval_split=test-dev2015",
                   "--shots", "0", "2", "--seeds", "0", "--data-dir", str(root), "--output", str(out), "-q")
    assert "has no answers (a test-server split): no metric" in proc.stderr  # labelled, not silent
    c = cell(out, "vqav2")
    metrics = json.loads((c / "metrics.json").read_text())
    assert math.isnan(metrics["metrics"]["accuracy"]) and metrics["n"] == 4
    assert "export" in metrics["metrics"]["unscored"]
    records = journal(c)
    assert [r["query_id"] for r in records] == ["9000", "9001", "9002", "9003"]
    assert all(r["score"] is None and r["prediction"] for r in records)  # predictions kept, unscored
    assert "| vqav2 | accuracy | no metric n=4 |" in run_cli("compare", str(out)).stdout

    exported = run_cli("export", str(c), "--data-dir", str(root)).stdout
    (sub,) = c.glob("submission_vqav2_test-dev2015.json")
    assert str(sub) in exported
    rows = json.loads(sub.read_text())
    # the official VQA results format: a list of {"question_id": int, "answer": str}, every test2015 question
    assert isinstance(rows, list) and all(set(r) == {"question_id", "answer"} for r in rows)
    assert all(isinstance(r["question_id"], int) and isinstance(r["answer"], str) for r in rows)
    assert sorted(r["question_id"] for r in rows) == sorted(all_ids) and len(rows) == len(set(all_ids))
    by_id = {r["question_id"]: r["answer"] for r in rows}
    assert all(by_id[int(r["query_id"])] == r["prediction"] for r in records)
    assert by_id[9004] == by_id[9005] == ""  # not in test-dev: filled, as EvalAI requires

    again = run_cli("export", str(c), "--data-dir", str(root), check=False)
    assert again.returncode == 2 and "exists; pass --output elsewhere or --overwrite" in again.stderr
    assert json.loads(sub.read_text()) == rows  # nothing overwritten
    scored = run_cli("score", "--task", "vqav2", "--predictions", str(sub), "--split", "test-dev2015",
                     "--data-dir", str(root), check=False)
    assert scored.returncode == 2 and "has no answers (a test-server split)" in scored.stderr
    assert "Traceback" not in again.stderr + scored.stderr


# ---- VizWiz test, HatefulMemes test_seen, STAR test ------------------------------------------------------------
def test_vizwiz_hateful_memes_and_star_test_splits_export_their_servers_files(tmp_path):
    root = tmp_path / "data"
    write_vizwiz(root)
    write_hateful(root)
    write_star(root)
    images = add_vizwiz_test(root)
    meme_ids = add_hateful_test(root)
    star_rows = add_star_test(root)
    out = tmp_path / "out"
    run_cli("run", "--model", "demo-majority", "--tasks", "vizwiz,hateful_memes,star", "--frames", "2",
            "--task-arg", "vizwiz:eval_split=test", "--task-arg", "hateful_memes:eval_split=test_seen",
            "--task-arg", "star:eval_split=test", "--shots", "2", "--seeds", "0", "--data-dir", str(root),
            "--output", str(out), "-q")
    cells = {t: cell(out, t) for t in ("vizwiz", "hateful_memes", "star")}
    for t, c in cells.items():
        m = json.loads((c / "metrics.json").read_text())
        assert math.isnan(m["metrics"][m["primary_metric"]]) and "no answers" in m["metrics"]["unscored"], t
    run_cli("export", *map(str, cells.values()), "--data-dir", str(root))

    # VizWiz: [{"image": "VizWiz_test_<n:08d>.jpg", "answer": str}] for every test image
    rows = json.loads(next(cells["vizwiz"].glob("submission_*.json")).read_text())
    assert [r["image"] for r in rows] == images and all(set(r) == {"image", "answer"} for r in rows)
    assert [r["answer"] for r in rows] == [r["prediction"] for r in journal(cells["vizwiz"])]

    # HatefulMemes: CSV id,proba,label; proba = P(hateful), label its 0/1 decision
    with open(next(cells["hateful_memes"].glob("submission_*.csv")), newline="") as f:
        reader = csv.reader(f)
        assert next(reader) == ["id", "proba", "label"]
        rows = list(reader)
    assert [int(r[0]) for r in rows] == meme_ids
    preds = {r["query_id"]: r["prediction"] for r in journal(cells["hateful_memes"])}
    for mid, proba, label in rows:
        assert 0.0 <= float(proba) <= 1.0 and label in ("0", "1")
        assert int(label) == int(preds[mid] == "yes")

    # STAR: {category: [{"question_id", "answer": choice index}]} for the four categories
    sub = json.loads(next(cells["star"].glob("submission_*.json")).read_text())
    assert set(sub) == {"Interaction", "Sequence", "Prediction", "Feasibility"}
    choices = {r["question_id"]: [c["choice"] for c in r["choices"]] for r in star_rows}
    preds = {r["query_id"]: r["prediction"] for r in journal(cells["star"])}
    listed = []
    for category, entries in sub.items():
        for e in entries:
            assert set(e) == {"question_id", "answer"} and e["question_id"].startswith(category + "_")
            assert isinstance(e["answer"], int) and choices[e["question_id"]][e["answer"]] == preds[e["question_id"]]
            listed.append(e["question_id"])
    assert sorted(listed) == sorted(choices)


# ---- VisDial ranks --------------------------------------------------------------------------------------------
def test_visdial_export_writes_the_ranks_of_every_round(tmp_path):
    root = write_visdial(tmp_path / "data")
    out = tmp_path / "out"
    run_cli("run", "--model", "demo-majority", "--tasks", "visdial", "--shots", "2", "--seeds", "0",
            "--data-dir", str(root), "--output", str(out), "-q")
    c = cell(out, "visdial")
    run_cli("export", str(c), "--data-dir", str(root), "--output", str(tmp_path / "ranks.json"))
    rows = json.loads((tmp_path / "ranks.json").read_text())
    records = journal(c)
    assert len(rows) == len(records) == 6  # every round (rounds=all)
    for row, rec in zip(rows, records):
        assert set(row) == {"image_id", "round_id", "ranks"} and f"{row['image_id']}_{row['round_id']}" == rec["query_id"]
        assert sorted(row["ranks"]) == list(range(1, 101)) and row["ranks"] == rec["option_ranks"]


# ---- errors ---------------------------------------------------------------------------------------------------
def test_export_errors_are_one_line(tmp_path):
    bad = run_cli("export", str(tmp_path / "nowhere"), check=False)
    assert bad.returncode == 2 and "not a finished cell" in bad.stderr and "Traceback" not in bad.stderr
    out = tmp_path / "out"
    run_cli("run", "--model", "demo-majority", "--tasks", "easyvqa", "--limit", "3", "--shots", "0", "--seeds", "0",
            "--output", str(out), "-q")
    none = run_cli("export", str(cell(out, "easyvqa", 0)), check=False)
    assert none.returncode == 2 and "task easyvqa has no evaluation server format" in none.stderr


def test_export_refuses_a_cell_that_predicts_part_of_its_split_unless_partial(tmp_path):
    root = tmp_path / "data"
    write_hateful(root)
    meme_ids = add_hateful_test(root)
    out = tmp_path / "out"
    run_cli("run", "--model", "demo-majority", "--tasks", "hateful_memes", "--task-arg", "eval_split=test_seen",
            "--limit", "2", "--shots", "0", "--seeds", "0", "--data-dir", str(root), "--output", str(out), "-q")
    c = cell(out, "hateful_memes", 0)
    short = run_cli("export", str(c), "--data-dir", str(root), check=False)
    assert short.returncode == 2 and "predicts 2 of the 4 questions of split test_seen" in short.stderr
    assert "--partial" in short.stderr and "Traceback" not in short.stderr and not list(c.glob("submission_*"))
    run_cli("export", str(c), "--data-dir", str(root), "--partial")
    (sub,) = c.glob("submission_hateful_memes_test_seen.csv")
    assert [int(line.split(",")[0]) for line in sub.read_text().splitlines()[1:]] == meme_ids[:2]
    other = tmp_path / "other"
    write_hateful(other)  # the same file names, without the test split's ids
    (other / "hateful_memes" / "test_seen.jsonl").write_text(
        json.dumps({"id": 1, "img": "img/x.png", "text": "t"}) + "\n")
    wrong = run_cli("export", str(c), "--data-dir", str(other), "--output", str(tmp_path / "x.csv"), check=False)
    assert wrong.returncode == 2 and "are not questions of split test_seen" in wrong.stderr


def test_a_split_with_answers_for_some_queries_only_is_refused():
    from harness.errors import HarnessError
    from harness.types import SampleRecord
    from tasks.vqa import EasyVQA

    task = EasyVQA(None, {})
    scored = SampleRecord("a", [], "", "x", "x", 1.0, {"answers": ["x"]})
    unscored = SampleRecord("b", [], "", "y", "y", None, {})
    assert math.isnan(task.compute_metrics([unscored])["accuracy"])
    assert task.compute_metrics([scored])["accuracy"] == 100.0
    with pytest.raises(HarnessError, match="1 of 2 queries of split test have no reference answers"):
        task.compute_metrics([scored, unscored])
    assert SampleRecord.from_json(unscored.to_json()).score is None
