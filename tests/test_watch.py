"""watch: a training run's checkpoint folders, each evaluated once, new ones as they appear; the series."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import threading
import time

import pandas as pd
import pytest

from harness.cli import main
from harness.evaluation.watch import checkpoint_step

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GRID = ["--model", "flamingo", "--tasks", "easyvqa", "--shots", "0", "2", "--seeds", "0", "1", "--limit", "4", "-q"]


def _checkpoint(directory, noise: float):
    """The bundled flamingo checkpoint with seeded noise of relative size ``noise`` on every weight
    (another identity, and other answers as the noise grows)."""
    import torch

    from models.flamingo.adapter import BUNDLED_CHECKPOINT
    from models.flamingo.model import FlamingoModel

    m = FlamingoModel.load(BUNDLED_CHECKPOINT)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * noise * p.float().std(correction=0))
    m.save(directory)
    return directory


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    ckpts = tmp_path / "run"
    ckpts.mkdir()
    staged = tmp_path / "staged"
    staged.mkdir()
    for step, nudge in ((100, 0.0), (200, 0.3), (300, 0.6)):
        _checkpoint(staged / f"checkpoint-{step}", nudge)
    old = time.time() - 120  # written a while ago: settled
    for p in staged.rglob("*"):
        os.utime(p, (old, old))
    return ckpts, staged


def _evaluated(stdout: str) -> list[int]:
    return [int(line.split()[1]) for line in stdout.splitlines() if line.startswith("step ")]


def test_watch_evaluates_each_checkpoint_once_including_one_added_while_it_runs(run_dir, tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO)
    ckpts, staged = run_dir
    out = tmp_path / "out"
    shutil.copytree(staged / "checkpoint-100", ckpts / "checkpoint-100")
    shutil.copytree(staged / "checkpoint-200", ckpts / "checkpoint-200")
    (ckpts / "runs").mkdir()  # the Trainer's logging folder: not a checkpoint

    def add_third():  # as the Trainer saves: written under a tmp- name, then renamed
        deadline = time.time() + 120
        while not (out / "step-200" / "flamingo@run" / "watch.json").exists() and time.time() < deadline:
            time.sleep(0.05)
        shutil.copytree(staged / "checkpoint-300", ckpts / "tmp-checkpoint-300")
        os.rename(ckpts / "tmp-checkpoint-300", ckpts / "checkpoint-300")

    adder = threading.Thread(target=add_third)
    adder.start()
    rc = main(["watch", str(ckpts), *GRID, "--output", str(out), "--interval", "0.1", "--settle", "0",
               "--idle-exit", "3"])
    adder.join()
    assert rc == 0
    printed = capsys.readouterr().out
    assert _evaluated(printed) == [100, 200, 300]  # each once, in step order, the third while it ran
    assert "3 checkpoint(s) evaluated" in printed
    assert "runs: its name does not end in a step number" in caplog.text
    for step in (100, 200, 300):
        cells = sorted((out / f"step-{step}" / "flamingo@run").rglob("metrics.json"))
        assert len(cells) == 4  # 2 shots x 2 seeds
        for f in cells:
            assert json.loads(f.read_text())["config"]["model"]["options"]["path"] == str(ckpts / f"checkpoint-{step}")
        parts = [json.loads(line) for line in (cells[0].parent / "parts.jsonl").read_text().splitlines()]
        assert len({p["part"] for p in parts}) == 1 and parts[-1]["samples"] == 4  # computed once, by one process
    prints = {json.loads(next((out / f"step-{s}").rglob("metrics.json")).read_text())["config"]["model"]["fingerprint"]
              for s in (100, 200, 300)}
    assert len(prints) == 3

    # restarted: every checkpoint is skipped without loading a model
    caplog.clear()
    mtimes = {f: f.stat().st_mtime_ns for f in out.rglob("metrics.json")}
    assert main(["watch", str(ckpts), *GRID, "--output", str(out), "--once", "--settle", "0"]) == 0
    assert _evaluated(capsys.readouterr().out) == []
    assert "loading model" not in caplog.text and caplog.text.count("already evaluated") == 3
    # a marker lost (killed between its cells and its marker): evaluated again, its finished cells skipped
    (out / "step-300" / "flamingo@run" / "watch.json").unlink()
    assert main(["watch", str(ckpts), *GRID, "--output", str(out), "--once", "--settle", "0"]) == 0
    assert _evaluated(capsys.readouterr().out) == [300]
    assert {f: f.stat().st_mtime_ns for f in out.rglob("metrics.json")} == mtimes

    # the series: rows = checkpoints by step, columns = task x shots; values are the cells' means
    capsys.readouterr()
    assert main(["compare", str(out), "--series", "--format", "csv", "--plot", str(tmp_path / "series.png")]) == 0
    df = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(df.columns[:2]) == ["run", "step"]
    assert sorted(set(df["step"])) == [100, 200, 300] and set(df["run"]) == {"flamingo@run"}
    for r in df.itertuples():
        values = [json.loads((out / f"step-{r.step}" / "flamingo@run" / "easyvqa" / f"{r.shots}shot_seed{s}" /
                              "metrics.json").read_text())["metrics"]["accuracy"] for s in (0, 1)]
        assert r.mean == pytest.approx(sum(values) / 2) and r.seeds == 2 and r.n == 4
    assert (tmp_path / "series.png").stat().st_size > 10_000
    assert main(["compare", str(out), "--series"]) == 0
    table = capsys.readouterr().out
    lines = [line for line in table.splitlines() if line.startswith("| flamingo@run")]
    assert [line.split("|")[2].strip() for line in lines] == ["100", "200", "300"]
    assert "easyvqa 0-shot | easyvqa 2-shot" in table
    # the viewer's series view: the same table and the metric-vs-step plot
    assert main(["view", str(out), "--output", str(tmp_path / "report.html")]) == 0
    page = (tmp_path / "report.html").read_text()
    assert "Series: checkpoints by training step" in page and "alt='metric vs training step'" in page
    for line in lines:
        assert line.split("|")[3].strip() in page  # the 0-shot cell text of each step


def test_watch_leaves_a_checkpoint_being_written(run_dir, tmp_path, capsys):
    ckpts, staged = run_dir
    shutil.copytree(staged / "checkpoint-100", ckpts / "checkpoint-100")
    (ckpts / "checkpoint-100" / "config.json").touch()  # just written
    out = tmp_path / "out"
    assert main(["watch", str(ckpts), *GRID, "--output", str(out), "--once", "--settle", "60"]) == 0
    assert _evaluated(capsys.readouterr().out) == [] and not out.exists()


def test_a_broken_checkpoint_is_reported_and_the_others_go_on(run_dir, tmp_path, capsys, caplog):
    ckpts, staged = run_dir
    shutil.copytree(staged / "checkpoint-100", ckpts / "checkpoint-100")
    shutil.copytree(staged / "checkpoint-200", ckpts / "checkpoint-200")
    (ckpts / "checkpoint-200" / "model.safetensors").write_bytes(b"truncated")
    old = time.time() - 120
    os.utime(ckpts / "checkpoint-200" / "model.safetensors", (old, old))
    out = tmp_path / "out"
    assert main(["watch", str(ckpts), *GRID, "--output", str(out), "--once", "--settle", "0"]) == 1
    printed = capsys.readouterr().out
    assert _evaluated(printed) == [100] and "1 failed" in printed
    assert "step 200" in caplog.text and "checkpoint-200" in caplog.text and "could not be loaded" in caplog.text
    assert not (out / "step-200" / "flamingo@run" / "watch.json").exists()
    # repaired: evaluated on the next look; the finished one is not redone
    shutil.rmtree(ckpts / "checkpoint-200")
    shutil.copytree(staged / "checkpoint-200", ckpts / "checkpoint-200")
    assert main(["watch", str(ckpts), *GRID, "--output", str(out), "--once", "--settle", "0"]) == 0
    assert _evaluated(capsys.readouterr().out) == [200]


@pytest.mark.parametrize("name, step", [("checkpoint-500", 500), ("step_20", 20), ("global_step7", 7),
                                        ("iter_0000300", 300), ("tmp-checkpoint-5", None), ("runs", None),
                                        (".hidden3", None)])
def test_checkpoint_step_from_the_folder_name(name, step):
    assert checkpoint_step(name) == step


@pytest.mark.parametrize("args, message", [
    (["watch", "NOPE", "--model", "flamingo", "--tasks", "easyvqa"], "not a folder"),
    (["watch", "DIR", "--model", "demo-majority", "--tasks", "easyvqa"], "no checkpoint option"),
    (["watch", "DIR", "--model", "flamingo", "--model-arg", "path=x", "--tasks", "easyvqa"], "path="),
    (["watch", "DIR", "--model", "flamingo", "--tasks", "nosuch"], "nosuch"),
    (["watch", "DIR", "--model", "flamingo", "--tasks", "easyvqa", "--log-to", "comet"], "comet"),
    (["watch", "DIR", "--model", "flamingo", "--tasks", "easyvqa", "--shots", "-1"], "shots"),
])
def test_watch_bad_input_is_one_line_before_anything_runs(tmp_path, capsys, args, message):
    (tmp_path / "DIR" / "checkpoint-1").mkdir(parents=True)
    args = [str(tmp_path / a) if a in ("NOPE", "DIR") else a for a in args]
    assert main([*args, "--output", str(tmp_path / "out"), "--once"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_series_refuses_results_outside_step_folders(tmp_path, capsys):
    assert main(["run", "--model", "demo-majority", "--tasks", "easyvqa", "--shots", "0", "--seeds", "0", "--limit",
                 "3", "--output", str(tmp_path / "flat"), "-q"]) == 0
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "flat"), "--series"]) == 2
    assert "not under a step-N folder" in capsys.readouterr().err

