"""Trust in every number: result identity, non-destructive output, cell locks, full-file
fingerprints, `score` on each task's own journal, visible failures, time over all parts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from models.flamingo.adapter import BUNDLED_CHECKPOINT
from tests.conftest import ROOT, run_cli, write_vqa_fixture
from conftest_captioning import write_karpathy_fixture  # noqa: E402
from conftest_video import write_hateful, write_ivqa, write_msqa, write_nextqa  # noqa: E402
from harness.cli import main

#: Every built-in task; `score` must read each one's own journal as its run scored it.
BUILTIN_TASKS = ("vqav2", "okvqa", "easyvqa", "coco", "flickr30k", "msvd_qa", "msrvtt_qa", "ivqa",
                 "nextqa_mc", "hateful_memes")


def cell(out: Path, label: str, task: str, shots: int, seed: int) -> Path:
    return out / label / task / f"{shots}shot_seed{seed}"


def files_of(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def all_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("all_data")
    write_vqa_fixture(root, "vqav2")
    write_vqa_fixture(root, "okvqa", prefix_q="OpenEnded_mscoco", prefix_a="mscoco")
    write_karpathy_fixture(root, "coco")
    write_karpathy_fixture(root, "flickr30k")
    write_msqa(root, "msvd_qa", "vid{video_id}.avi")
    write_msqa(root, "msrvtt_qa", "video{video_id}.mp4")
    write_ivqa(root)
    write_nextqa(root)
    write_hateful(root)
    return root


@pytest.mark.parametrize("task", BUILTIN_TASKS)
def test_score_reads_each_tasks_own_journal(task, all_data, tmp_path, capsys):
    out = tmp_path / "res"
    assert main(["run", "--model", "demo-majority", "--tasks", task, "--shots", "2", "--seeds", "0", "--limit", "6",
                 "--data-dir", str(all_data), "--output", str(out), "-q"]) == 0
    c = cell(out, "demo-majority", task, 2, 0)
    run_metrics = json.loads((c / "metrics.json").read_text())["metrics"]
    capsys.readouterr()
    assert main(["score", "--task", task, "--predictions", str(c / "predictions.jsonl"),
                 "--data-dir", str(all_data), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    for key, value in run_metrics.items():
        if key == "n_missing":
            continue
        assert scored[key] == pytest.approx(value), (task, key)
    if task == "hateful_memes":  # the gold label read as the prediction scored 100 / 100
        assert run_metrics["accuracy"] < 100


def test_changed_limit_keeps_the_old_cell_byte_identical(tmp_path, capsys):
    out = tmp_path / "res"
    base = ["run", "--model", "demo-majority", "--tasks", "easyvqa", "--shots", "0", "2", "--seeds", "0",
            "--output", str(out), "-q"]
    assert main(base + ["--limit", "8"]) == 0
    before = files_of(out)
    capsys.readouterr()
    assert main(base + ["--limit", "12"]) == 2
    err = capsys.readouterr().err
    assert "holds results of another configuration" in err and "limit: 8 -> 12" in err and "--overwrite" in err
    assert files_of(out) == before
    # The same configuration resumes (skips) and changes nothing either.
    assert main(base + ["--limit", "8"]) == 0
    assert files_of(out) == before
    # A partial cell (no metrics yet) of another configuration is a result too.
    c = cell(out, "demo-majority", "easyvqa", 2, 0)
    (c / "metrics.json").unlink()
    partial = files_of(out)
    assert main(base + ["--limit", "12"]) == 2
    assert files_of(out) == partial
    # --overwrite replaces them, explicitly.
    assert main(base + ["--limit", "12", "--overwrite"]) == 0
    assert json.loads((c / "metrics.json").read_text())["n"] == 12


def test_compare_never_averages_different_configurations(tmp_path, capsys, caplog):
    out = tmp_path / "res"
    common = ["run", "--model", "demo-majority", "--tasks", "easyvqa", "--shots", "2", "--output", str(out), "-q"]
    assert main(common + ["--seeds", "0", "--limit", "6"]) == 0
    assert main(common + ["--seeds", "1", "--limit", "10"]) == 0
    capsys.readouterr()
    assert main(["compare", str(out)]) == 0
    table = capsys.readouterr().out
    assert table.count("[cfg ") == 2 and "n=6" in table and "n=10" in table
    assert "different configurations" in caplog.text and "limit: 6 -> 10" in caplog.text


def test_fingerprint_changes_with_one_weight_in_the_middle(tmp_path, monkeypatch):
    from safetensors.numpy import load_file, save_file
    import numpy as np

    import harness.store.identity
    from harness.model import checkpoint_fingerprint

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "fresh.bin").write_bytes(b"x")
    checkpoint_fingerprint(tmp_path / "fresh.bin")
    assert not (tmp_path / "cache" / "fingerprints.json").exists()  # just written: too fresh to trust its stamp
    monkeypatch.setattr(harness.store.identity, "_RACY_S", 0.0)  # here: cache every digest
    ck = tmp_path / "ck"
    ck.mkdir()
    rng = np.random.default_rng(0)
    tensors = {f"layer{i}.weight": rng.standard_normal((256, 256)).astype(np.float32) for i in range(24)}
    save_file(tensors, ck / "model.safetensors")
    (ck / "config.json").write_text("{}")
    assert (ck / "model.safetensors").stat().st_size > 4 << 20
    first = checkpoint_fingerprint(ck)
    old = (ck / "model.safetensors").stat().st_mtime
    assert checkpoint_fingerprint(ck) == first
    cached = json.loads((tmp_path / "cache" / "fingerprints.json").read_text())
    assert str((ck / "model.safetensors").resolve()) in cached
    # Change one weight of a middle tensor in place, then restore the old mtime: size, mtime and
    # inode are unchanged; the digest must change all the same (ctime changes with any write).
    t = load_file(ck / "model.safetensors")
    t["layer12.weight"][100, 100] += 1.0
    data = (ck / "model.safetensors").read_bytes()
    save_file(t, tmp_path / "new.safetensors")
    new = (tmp_path / "new.safetensors").read_bytes()
    assert len(new) == len(data)
    diff = [i for i in range(0, len(data), 4096) if data[i:i + 4096] != new[i:i + 4096]]
    assert diff and 1 << 20 < diff[0] < len(data) - (1 << 20)  # the change is in the middle
    with open(ck / "model.safetensors", "r+b") as f:
        f.seek(diff[0])
        f.write(new[diff[0]:diff[0] + 4096])
    os.utime(ck / "model.safetensors", (old, old))
    assert checkpoint_fingerprint(ck) != first
    # Uncached (fresh cache folder) it is the same hash of every byte.
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache2"))
    assert checkpoint_fingerprint(ck) == checkpoint_fingerprint(ck) != first


def test_failed_samples_show_in_the_table_and_a_warning(tmp_path):
    root = write_vqa_fixture(tmp_path / "data", "vqav2")
    # One unreadable demo image (train) and one unreadable query image (val).
    (root / "vqav2" / "train2014" / "COCO_train2014_000000000100.jpg").write_bytes(b"not a jpeg")
    (root / "vqav2" / "val2014" / "COCO_val2014_000000000501.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "res"
    proc = run_cli("run", "--model", "flamingo", "--tasks", "vqav2", "--data-dir", str(root), "--shots", "4",
                   "--seeds", "0", "--output", str(out), "-q")
    metrics = json.loads((cell(out, "flamingo", "vqav2", 4, 0) / "metrics.json").read_text())
    n_failed = metrics["n_failed"]
    assert n_failed >= 2  # the query whose image is unreadable, and every query that drew the bad demo
    assert f"({n_failed} failed)" in proc.stdout
    roles = {f["role"] for f in metrics["failures"]}
    assert roles == {"query", "demo"}
    warning = [line for line in proc.stderr.splitlines() if "samples failed" in line]
    assert len(warning) == 1 and "COCO_train2014_000000000100.jpg is unreadable and failed all" in warning[0]
    assert "metrics.json" in warning[0] and "first:" in warning[0]


def _lock_holder_script(lock: Path) -> str:
    return (f"import fcntl, os, sys, time\nfd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(600)\n")


@pytest.mark.slow
def test_cell_lock_second_run_skips_then_picks_up_and_stale_lock_never_blocks(tmp_path):
    out = tmp_path / "res"
    args = ["run", "--model", "demo-majority", "--tasks", "easyvqa", "--shots", "0", "2", "--seeds", "0",
            "--limit", "6", "--output", str(out)]
    held = cell(out, "demo-majority", "easyvqa", 2, 0)
    held.mkdir(parents=True)
    # A live process holds one cell's lock: the run computes the other cell, then waits for it.
    holder = subprocess.Popen([sys.executable, "-c", _lock_holder_script(held / ".lock")], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "locked"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen([sys.executable, str(ROOT / "run_eval.py"), *args], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    other = cell(out, "demo-majority", "easyvqa", 0, 0) / "metrics.json"
    deadline = time.time() + 900  # generous: a loaded machine is slow, not broken
    while not other.exists() and run.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert other.exists() and run.poll() is None  # the free cell is done; the run waits for the held one
    assert not (held / "metrics.json").exists()
    # The holder is killed: its lock dies with it, never blocking; the run then computes the cell.
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    stdout, stderr = run.communicate()
    assert run.returncode == 0, stderr
    assert "waiting for" in stderr and (held / "metrics.json").exists()
    assert "| easyvqa | accuracy |" in stdout


@pytest.mark.slow
def test_two_concurrent_runs_compute_each_cell_once(tmp_path):
    out = tmp_path / "res"
    args = ["run", "--model", "flamingo", "--tasks", "easyvqa", "--shots", "0", "2", "--seeds", "0", "1",
            "--limit", "12", "--batch-size", "4", "--output", str(out), "-q"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(ROOT / "run_eval.py"), *args], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate() for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    computed = [{line.split(" in ")[-1] for line in err.splitlines() if ": computing " in line} for _, err in results]
    assert len(computed[0] | computed[1]) == 4
    assert not computed[0] & computed[1]  # no cell computed by both
    assert results[0][0].splitlines()[:3] == results[1][0].splitlines()[:3]  # the same table


def test_time_of_a_resumed_cell_sums_its_parts(tmp_path):
    out = tmp_path / "res"
    args = ["run", "--model", "demo-majority", "--tasks", "easyvqa", "--shots", "2", "--seeds", "0", "--limit", "10",
            "--batch-size", "2", "--output", str(out), "-q"]
    for k in range(2):
        assert main(args + ["--shard", f"{k}/2"]) == 0
    assert main(args) == 0  # merges the shards
    m = json.loads((cell(out, "demo-majority", "easyvqa", 2, 0) / "metrics.json").read_text())
    assert len(m["parts"]) == 3 and [p["samples"] for p in m["parts"]] == [5, 5, 0]
    assert m["compute_time_s"] == pytest.approx(sum(p["wall_time_s"] for p in m["parts"]), abs=1e-3)
    assert m["compute_time_s"] >= m["wall_time_s"]


@pytest.mark.slow
def test_run_eval_without_subcommand_prints_help_and_launcher_uses_repo_venv(tmp_path):
    proc = run_cli(check=False, process=True)  # the launcher script itself
    assert proc.returncode == 0 and "run_eval.py [-h]" in proc.stdout
    assert all(sub in proc.stdout for sub in ("run", "score", "compare", "view", "merge", "list"))
    # ./run_eval.py with a PATH whose first `python` is not the repo's (here: none at all).
    env = {"PATH": str(tmp_path), "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    (tmp_path / "python").write_text("#!/bin/sh\necho wrong python >&2; exit 3\n")
    (tmp_path / "python").chmod(0o755)
    (tmp_path / "python3").write_text("#!/bin/sh\necho wrong python >&2; exit 3\n")
    (tmp_path / "python3").chmod(0o755)
    proc = subprocess.run([str(ROOT / "run_eval.py"), "list", "models"], env=env, cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "demo-majority" in proc.stdout


def test_changed_weights_are_never_reported_as_already_complete(tmp_path, capsys):
    """End to end: a "checkpoint" (the predictions model's file) changed in place
    is another identity: the rerun refuses, naming the fingerprint, instead of printing old numbers."""
    out = tmp_path / "res"
    base = ["run", "--model", "demo-majority", "--tasks", "easyvqa", "--shots", "2", "--seeds", "0", "--limit", "6",
            "--output", str(out), "-q"]
    assert main(base) == 0
    journal = cell(out, "demo-majority", "easyvqa", 2, 0) / "predictions.jsonl"
    preds = tmp_path / "preds.jsonl"
    preds.write_bytes(journal.read_bytes())
    replay = ["run", "--model", "predictions", "--model-arg", f"path={preds}", "--label", "replay", "--tasks",
              "easyvqa", "--shots", "2", "--seeds", "0", "--limit", "6", "--output", str(out), "-q"]
    assert main(replay) == 0
    lines = preds.read_text().splitlines()
    rec = json.loads(lines[3])
    rec["raw_output"] = "zzz" if rec["raw_output"] != "zzz" else "yyy"
    lines[3] = json.dumps(rec)
    preds.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main(replay) == 2
    err = capsys.readouterr().err
    assert "holds results of another configuration" in err and "model.fingerprint: predictions-" in err


def test_cache_size_options_resume_a_cell_instead_of_refusing_it(tmp_path, capsys):
    """feature_cache_mb / feature_cache_dir only size and place a cache: a rerun that changes them
    resumes the interrupted cell (same identity) and records them; an option that can change the
    outputs (xattn) is still another configuration."""
    out = tmp_path / "res"
    base = ["run", "--model", "flamingo", "--tasks", "easyvqa", "--shots", "2", "--seeds", "0", "--limit", "8",
            "--batch-size", "4", "--output", str(out), "-q"]
    assert main(base + ["--model-arg", "feature_cache_mb=64"]) == 0
    c = cell(out, "flamingo", "easyvqa", 2, 0)
    first = json.loads((c / "metrics.json").read_text())
    assert first["model_runtime_options"]["feature_cache_mb"] == 64
    assert "feature_cache_mb" not in first["config"]["model"]["options"]
    # interrupted after its first batch: no metrics, half the journal
    (c / "metrics.json").unlink()
    lines = (c / "predictions.jsonl").read_text().splitlines()
    (c / "predictions.jsonl").write_text("\n".join(lines[:4]) + "\n")
    capsys.readouterr()
    assert main(base + ["--model-arg", "feature_cache_mb=16", "--model-arg", f"feature_cache_dir={tmp_path / 'f'}"]) == 0
    second = json.loads((c / "metrics.json").read_text())
    assert second["config_key"] == first["config_key"] and second["n"] == 8
    assert second["parts"][-1]["samples"] == 4  # only the missing half was computed
    assert second["model_runtime_options"] == {"feature_cache_mb": 16, "feature_cache": None,
                                               "feature_cache_dir": str(tmp_path / "f")}
    assert [json.loads(x)["raw_output"] for x in (c / "predictions.jsonl").read_text().splitlines()] == \
        [r["raw_output"] for r in map(json.loads, lines)]
    assert main(base + ["--model-arg", "xattn=masked"]) == 2
    assert "holds results of another configuration" in capsys.readouterr().err


def test_finished_rerun_and_conflict_check_load_no_model(tmp_path):
    """A rerun whose cells are all complete, and a run refused for another configuration, need only the
    models' identities: known from an earlier load of the same adapter, options, files and code, the
    weights are not loaded. A changed checkpoint file is loaded again (its identity is not known)."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(BUNDLED_CHECKPOINT, ckpt)
    env = {"HARNESS_CACHE": str(tmp_path / "cache")}
    args = ["run", "--model", "flamingo", "--model-arg", f"path={ckpt}", "--tasks", "easyvqa", "--shots", "0", "2",
            "--seeds", "0", "--limit", "6", "--output", str(tmp_path / "res"), "-q"]
    first = run_cli(*args, env=env)
    assert "loading model flamingo" in first.stderr
    again = run_cli(*args, env=env)
    assert "loading model flamingo" not in again.stderr and again.stderr.count("already complete") == 2
    assert again.stdout.split("cells in")[0] == first.stdout.split("cells in")[0]  # the same table
    # a changed template is another configuration: refused, still without loading the weights
    other = run_cli(*args, "--task-arg", "easyvqa:support_size=100", env=env, check=False)
    assert other.returncode == 2 and "loading model flamingo" not in other.stderr
    # one more seed: that cell needs the model, which loads then (and checks the identity it planned with)
    seeds = args.index("--seeds") + 1
    more = run_cli(*args[:seeds], "0", "1", *args[seeds + 1:], env=env)
    assert "loading model flamingo" in more.stderr and more.stderr.count("already complete") == 2
    # a checkpoint file changed in place: its identity is not known, so it loads before planning (and its
    # finished cells are then another configuration)
    with open(ckpt / "TRAINING.md", "a") as f:
        f.write("\nedited\n")
    changed = run_cli(*args, env=env, check=False)
    assert "loading model flamingo" in changed.stderr and changed.returncode == 2
