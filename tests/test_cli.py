"""The whole CLI path in real subprocesses: run, score, compare, list, --include, entry points."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from harness.metrics.vqa import vqa_accuracy
from tests.conftest import ROOT, run_cli, write_my_vqa


def cell(out: Path, label: str, task: str, shots: int, seed: int) -> Path:
    return out / label / task / f"{shots}shot_seed{seed}"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_list_tasks_and_models_with_plugins():
    tasks = run_cli("list", "tasks").stdout
    assert all(name in tasks for name in ("vqav2", "okvqa", "easyvqa")) and "my_vqa" not in tasks
    tasks = run_cli("list", "tasks", "--include", "examples/my_task.py").stdout
    assert "my_vqa" in tasks
    models = run_cli("list", "models", "-v", "--include", "examples/my_model.py").stdout
    for name in ("idefics", "demo-majority", "support-prior", "predictions", "constant"):
        assert name in models
    assert "answer (str) = 'yes'" in models


def test_tiny_idefics_sweep_writes_everything_and_resumes(tiny_idefics_dir, tmp_path):
    out = tmp_path / "res"
    args = ["run", "--model", "idefics", "--model-arg", f"path={tiny_idefics_dir}", "--label", "tiny",
            "--tasks", "easyvqa", "--shots", "0", "2", "--seeds", "0", "1", "--limit", "6",
            "--batch-size", "4", "--output", str(out)]
    proc = run_cli(*args)
    assert "| easyvqa | accuracy |" in proc.stdout and "tiny 2-shot" in proc.stdout

    c = cell(out, "tiny", "easyvqa", 2, 1)
    metrics = json.loads((c / "metrics.json").read_text())
    cfg = metrics["config"]
    assert metrics["n"] == 6 and metrics["n_failed"] == 0 and metrics["wall_time_s"] > 0
    assert cfg["model"]["name"] == "idefics" and cfg["model"]["fingerprint"].startswith("idefics-")
    assert cfg["task"]["options"]["answer_choice"] == "first" and cfg["task"]["options"]["normalization"] == "official"
    assert cfg["task"]["template"] == "flamingo"  # IDEFICS prefers the Flamingo prompt
    assert cfg["shots"] == 2 and cfg["seed"] == 1 and cfg["sampler"]["name"] == "random"
    assert cfg["generation"] == {"max_new_tokens": 5, "num_beams": 3, "length_penalty": 0.0, "min_new_tokens": 0}
    assert cfg["harness_version"]

    records = read_jsonl(c / "predictions.jsonl")
    assert len(records) == 6
    for r in records:
        assert {"query_id", "demo_ids", "prompt", "raw_output", "prediction", "score", "answers"} <= set(r)
        assert len(r["demo_ids"]) == 2 and r["query_id"] not in r["demo_ids"]
        assert r["prompt"].count("<image>") == 3 and r["prompt"].endswith("Answer:")
    zero = read_jsonl(cell(out, "tiny", "easyvqa", 0, 0) / "predictions.jsonl")
    # Zero-shot: two text-only demos, only the query's image.
    assert all(len(r["demo_ids"]) == 2 and r["prompt"].count("<image>") == 1 for r in zero)

    summary = json.loads((out / "tiny" / "summary.json").read_text())
    assert {(s["shots"], len(s["per_seed"])) for s in summary} == {(0, 2), (2, 2)}

    # Interrupt: keep 3 journal lines, drop the metrics; the rerun finishes only the rest.
    before = metrics["metrics"]
    lines = (c / "predictions.jsonl").read_text().splitlines()
    (c / "predictions.jsonl").write_text("\n".join(lines[:3]) + "\n")
    (c / "metrics.json").unlink()
    run_cli(*args)
    after = json.loads((c / "metrics.json").read_text())
    assert after["metrics"] == before
    assert sorted(r["query_id"] for r in read_jsonl(c / "predictions.jsonl")) == sorted(r["query_id"] for r in records)


def write_predictions(root: Path, path: Path) -> dict:
    """Official-format predictions for the vqav2 fixture's val split, and the expected accuracy."""
    ann = json.loads((root / "vqav2" / "v2_mscoco_val2014_annotations.json").read_text())["annotations"]
    preds = ["yes", "Yes", "two", "dark red", "nothing", "3"]
    by_q = {a["question_id"]: a for a in ann}
    out, scores, by_type = [], [], {}
    for qid, p in zip(sorted(by_q), preds):
        out.append({"question_id": qid, "answer": p})
        s = vqa_accuracy(p, [x["answer"] for x in by_q[qid]["answers"]])
        scores.append(s)
        by_type.setdefault(by_q[qid]["answer_type"], []).append(s)
    path.write_text(json.dumps(out))
    return {"accuracy": 100 * np.mean(scores), "by_type": {k: 100 * np.mean(v) for k, v in by_type.items()}}


def test_score_official_predictions_file(vqa_root, tmp_path):
    preds = tmp_path / "preds.json"
    expected = write_predictions(vqa_root, preds)
    proc = run_cli("score", "--task", "vqav2", "--predictions", str(preds), "--data-dir", str(vqa_root),
                   "--split", "val", "--json")
    metrics = json.loads(proc.stdout)
    assert metrics["n"] == 6
    assert metrics["accuracy"] == pytest.approx(expected["accuracy"])
    assert metrics["accuracy_by_answer_type"] == pytest.approx(expected["by_type"])
    # By hand: yes(1) + "Yes" vs 7 no/3 yes -> normalised "yes" (0.9) + two->2 (1) + "dark red" (3 of 10: 0.9)
    # + nothing (0) + "3" vs yes x10 (0) = 3.8 / 6.
    assert metrics["accuracy"] == pytest.approx(100 * 3.8 / 6)

    # Always-normalise mode, chosen per task, changes the "Yes" case only where the answers agree.
    always = json.loads(run_cli("score", "--task", "vqav2", "--predictions", str(preds), "--data-dir",
                                str(vqa_root), "--task-arg", "normalization=always", "--json").stdout)
    assert always["accuracy"] == pytest.approx(metrics["accuracy"])


def test_score_errors_are_clear(vqa_root, tmp_path):
    proc = run_cli("score", "--task", "vqav2", "--predictions", str(tmp_path / "nope.json"),
                   "--data-dir", str(vqa_root), check=False)
    assert proc.returncode == 2 and "predictions file not found" in proc.stderr and "nope.json" in proc.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"question_id": 1012, "text": "yes"}]))
    proc = run_cli("score", "--task", "vqav2", "--predictions", str(bad), "--data-dir", str(vqa_root), check=False)
    assert proc.returncode == 2 and "entry #0 needs the fields 'question_id' and 'answer'" in proc.stderr
    bad.write_text(json.dumps([{"question_id": 424242, "answer": "yes"}]))
    proc = run_cli("score", "--task", "vqav2", "--predictions", str(bad), "--data-dir", str(vqa_root), check=False)
    assert proc.returncode == 2 and "ids not in task vqav2" in proc.stderr and "424242" in proc.stderr


def test_predictions_model_rescores_a_run(vqa_root, tmp_path):
    out = tmp_path / "res"
    run_cli("run", "--model", "support-prior", "--tasks", "vqav2", "--data-dir", str(vqa_root), "--shots", "0",
            "--seeds", "0", "--output", str(out), "-q")
    journal = cell(out, "support-prior", "vqav2", 0, 0) / "predictions.jsonl"
    original = json.loads((cell(out, "support-prior", "vqav2", 0, 0) / "metrics.json").read_text())
    run_cli("run", "--model", "predictions", "--model-arg", f"path={journal}", "--label", "replay", "--tasks",
            "vqav2", "--data-dir", str(vqa_root), "--shots", "0", "--seeds", "0", "--output", str(out), "-q")
    replay = json.loads((cell(out, "replay", "vqav2", 0, 0) / "metrics.json").read_text())
    assert replay["metrics"] == original["metrics"]
    scored = json.loads(run_cli("score", "--task", "vqav2", "--predictions", str(journal), "--data-dir",
                                str(vqa_root), "--json").stdout)
    assert scored["accuracy"] == pytest.approx(original["metrics"]["accuracy"])


def test_unreadable_image_fails_one_sample_not_the_run(vqa_root, tiny_idefics_dir, tmp_path):
    bad = vqa_root / "vqav2" / "val2014" / "COCO_val2014_000000000503.jpg"
    bad.write_bytes(b"not a jpeg")
    out = tmp_path / "res"
    run_cli("run", "--model", "idefics", "--model-arg", f"path={tiny_idefics_dir}", "--tasks", "vqav2",
            "--data-dir", str(vqa_root), "--shots", "2", "--seeds", "0", "--batch-size", "3", "--output", str(out), "-q")
    metrics = json.loads((cell(out, "idefics@" + tiny_idefics_dir.name, "vqav2", 2, 0) / "metrics.json").read_text())
    assert metrics["n"] == 6 and metrics["n_failed"] == 1
    assert metrics["failures"][0]["query_id"] == "1015" and "COCO_val2014_000000000503.jpg" in metrics["failures"][0]["error"]
    # Every image unreadable: an error, not a silent zero.
    for f in (vqa_root / "vqav2" / "val2014").iterdir():
        f.write_bytes(b"broken")
    proc = run_cli("run", "--model", "idefics", "--model-arg", f"path={tiny_idefics_dir}", "--tasks", "vqav2",
                   "--data-dir", str(vqa_root), "--shots", "0", "--seeds", "0", "--output", str(out), "-q",
                   check=False)
    assert proc.returncode == 2 and "every sample failed" in proc.stderr


def test_compare_tables_and_dataframe(tmp_path):
    a, b = tmp_path / "A", tmp_path / "B"
    common = ["--tasks", "easyvqa", "--shots", "0", "4", "--seeds", "0", "1", "--limit", "40", "-q"]
    run_cli("run", "--model", "demo-majority", "--output", str(a), *common)
    run_cli("run", "--model", "demo-majority", "--output", str(b), *common, "--task-arg", "support_size=64")
    md = run_cli("compare", str(a), str(b)).stdout
    header = md.splitlines()[0]
    assert "A/demo-majority 0-shot" in header and "B/demo-majority 4-shot" in header
    assert md.splitlines()[2].startswith("| easyvqa | accuracy |") and "n=40" in md
    csv = run_cli("compare", str(a), str(b), "--format", "csv").stdout
    assert csv.splitlines()[0].startswith("task,metric,checkpoint,shots,mean,std,ci_low,ci_high,n,seeds,")
    assert len(csv.splitlines()) == 1 + 4  # tidy: one row per checkpoint x shots
    latex = run_cli("compare", str(a), str(b), "--format", "latex", "--plot", str(tmp_path / "p.png")).stdout
    assert latex.startswith("% needs \\usepackage{booktabs}") and (tmp_path / "p.png").stat().st_size > 1000

    from harness.reporting.report import compare, load_results
    cells = load_results([a, b])
    assert len(cells[cells.metric == "accuracy"]) == 8  # 2 folders x 2 shots x 2 seeds
    table = compare([a, b])
    assert table.shape == (1, 4)
    row = cells[(cells.source == str(a)) & (cells.shots == 4) & (cells.metric == "accuracy")]
    mean, std = row.value.mean(), row.value.std(ddof=0)
    assert table.loc[("easyvqa", "accuracy"), ("A/demo-majority", 4)] == f"{mean:.2f} ({std:.2f}) n=40"


def test_plugin_task_example_runs(tmp_path):
    write_my_vqa(tmp_path / "data", shade="dark")
    out = tmp_path / "res"
    proc = run_cli("run", "--include", "examples/my_task.py", "--include", "examples/my_model.py",
                   "--model", "demo-majority,constant", "--model-arg", "constant:answer=red", "--tasks", "my_vqa",
                   "--data-dir", str(tmp_path / "data"), "--shots", "4", "--seeds", "0", "--output", str(out), "-q")
    assert "constant 4-shot" in proc.stdout
    m = json.loads((cell(out, "constant", "my_vqa", 4, 0) / "metrics.json").read_text())
    # "red" is right on 2 of 6 test images (3 of their 4 answers). Four answers are not the ten the official
    # formula assumes (its leave-one-out would give 0.75 each): the non_ten_answers rule, exact by default, gives 1.
    assert m["metrics"]["accuracy"] == pytest.approx(100 * 2 / 6)
    assert m["config"]["task"]["options"]["non_ten_answers"] == "exact"


@pytest.mark.slow
def test_entry_point_plugin(tmp_path):
    site = tmp_path / "site"
    dist = site / "harness_demo_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    shutil.copy(ROOT / "examples" / "my_model.py", site / "harness_demo_plugin.py")
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: harness-demo-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[harness.models]\nconstant = harness_demo_plugin\n")
    proc = run_cli("list", "models", env={"PYTHONPATH": f"{ROOT}:{site}"}, process=True)  # entry points: a fresh process
    assert "constant" in proc.stdout


def test_bad_names_and_shots_give_clear_errors():
    proc = run_cli("run", "--model", "gpt-17", "--tasks", "easyvqa", check=False)
    assert proc.returncode == 2 and "unknown model 'gpt-17'" in proc.stderr and "demo-majority" in proc.stderr
    proc = run_cli("run", "--model", "demo-majority", "--tasks", "easyvqa", "--shots", "40000", "--seeds", "0",
                   "--limit", "2", check=False)
    assert proc.returncode == 2 and "40000 shots asked for" in proc.stderr and "support_size" in proc.stderr
    proc = run_cli("run", "--model", "idefics", "--tasks", "easyvqa", check=False)
    assert proc.returncode == 2 and "--model-arg path=DIR" in proc.stderr
    proc = run_cli("run", "--include", "no/such/plugin.py", check=False)
    assert proc.returncode == 2 and "no/such/plugin.py" in proc.stderr


@pytest.mark.slow
def test_default_run(tmp_path):
    out = tmp_path / "res"
    # The default thread count, as a user's run: the cores that other work leaves free.
    proc = run_cli("run", "-q", "--output", str(out), threads=None)
    table = proc.stdout
    for col in ("flamingo 0-shot", "demo-majority 32-shot", "support-prior 4-shot"):
        assert col in table
    assert "n=1000" in table  # the default sweep's documented limit
    assert len(list(out.rglob("metrics.json"))) == 3 * 3 * 3
    # The bundled checkpoint is a real few-shot model: far above both null baselines at every shot count.
    from harness.reporting.report import summarize, load_results

    s = summarize(load_results([out]))
    acc = {(r.checkpoint, r.shots): r.mean for r in s[s.metric == "accuracy"].itertuples()}
    for shots in (0, 4, 32):
        assert acc[("flamingo", shots)] > max(acc[("demo-majority", shots)], acc[("support-prior", shots)]) + 15
