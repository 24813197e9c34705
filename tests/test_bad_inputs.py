"""Bad input through the real CLI (``harness.cli.main`` in-process: the same code path as
``run_eval.py`` without a subprocess's start-up): each case exits 2 with one ``error:`` line
naming the thing, before any model is constructed or any cell runs; never a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import EASY, cli_error, write_vqa_fixture
from harness.cli import main
from models.flamingo.adapter import BUNDLED_CHECKPOINT

@pytest.fixture(scope="module")
def vqa_data(tmp_path_factory) -> Path:
    return write_vqa_fixture(tmp_path_factory.mktemp("bad_vqa"), "vqav2")


@pytest.fixture
def broken_vqa(vqa_data, tmp_path) -> Path:
    """A private copy of the VQA fixture to break."""
    root = tmp_path / "data"
    shutil.copytree(vqa_data, root)
    return root


@pytest.mark.parametrize("extra, words", [
    (["--seeds", "0", "0"], ["--seeds", "given twice"]),
    (["--shots", "4", "4"], ["--shots", "given twice"]),
    (["--shots", "0", "4", "-1"], ["--shots -1", ">= 0"]),
    (["--limit", "0"], ["--limit 0", "positive"]),
    (["--batch-size", "0"], ["--batch-size 0", ">= 1"]),
    (["--batch-size", "-3"], ["--batch-size -3", ">= 1"]),
    (["--task-arg", "support_size=0"], ["support_size=0", ">= 1"]),
    (["--task-arg", "support_size=-5"], ["support_size=-5", ">= 1"]),
    (["--task-arg", "num_beams=0"], ["num_beams=0", ">= 1"]),
    (["--task-arg", "max_new_tokens=0"], ["max_new_tokens=0", ">= 1"]),
    (["--task-arg", "length_penalty=nan"], ["length_penalty=nan", "finite"]),
    (["--task-arg", "zero_shot_text_demos=-1"], ["zero_shot_text_demos=-1", ">= 0"]),
    (["--shots", "4", "--task-arg", "support_size=3"], ["4 shots", "support set has only 3"]),
])
def test_bad_run_flags_and_options(extra, words, tmp_path, capsys):
    out = tmp_path / "res"
    line = cli_error(capsys, *EASY, "--output", str(out), *extra)
    for w in words:
        assert w in line
    assert not out.exists()  # nothing ran: validation comes first


@pytest.mark.parametrize("flag", ["--model", "--tasks"])
def test_empty_name_list_is_an_error_not_the_default_sweep(flag, tmp_path, capsys):
    out = tmp_path / "res"
    line = cli_error(capsys, "run", flag, ",", "--output", str(out))
    assert f"{flag} ','" in line and "no name given" in line
    assert not out.exists()


@pytest.mark.parametrize("device, words", [("cuda:7", ["device='cuda:7'"]), ("tpu", ["device='tpu'"]),
                                           ("banana", ["device='banana'", "not a device name"])])
def test_unavailable_or_unknown_device(device, words, tmp_path, capsys):
    import torch

    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    line = cli_error(capsys, "run", "--model", "flamingo", "--model-arg", f"device={device}", "--tasks", "easyvqa",
                     "--output", str(tmp_path / "res"))
    assert "model flamingo option device" in line
    for w in words:
        assert w in line


def test_every_shot_count_of_every_task_is_checked_before_any_cell_runs(vqa_data, tmp_path, capsys):
    out = tmp_path / "res"
    # easyvqa could run 20 shots; vqav2's 12 training questions cannot: nothing may run.
    line = cli_error(capsys, "run", "--model", "demo-majority", "--tasks", "easyvqa,vqav2", "--shots", "0", "20",
                     "--limit", "4", "--data-dir", str(vqa_data), "--output", str(out))
    assert "task vqav2: 20 shots" in line
    assert not out.exists()


def test_data_errors_come_before_the_model_loads(broken_vqa, tmp_path, capsys):
    (broken_vqa / "vqav2" / "v2_mscoco_val2014_annotations.json").unlink()
    corrupt = tmp_path / "corrupt_ck"
    shutil.copytree(BUNDLED_CHECKPOINT, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\0" * 100)
    # The checkpoint is broken too: the data error must be reported, as no model is built first.
    line = cli_error(capsys, "run", "--model", "flamingo", "--model-arg", f"path={corrupt}", "--tasks", "vqav2",
                     "--data-dir", str(broken_vqa), "--output", str(tmp_path / "res"))
    assert "v2_mscoco_val2014_annotations.json" in line and "file not found" in line


def _edit_questions(root: Path, edit) -> None:
    path = root / "vqav2" / "v2_OpenEnded_mscoco_val2014_questions.json"
    data = json.loads(path.read_text())
    edit(data["questions"])
    path.write_text(json.dumps(data))


def test_duplicate_question_id(broken_vqa, tmp_path, capsys):
    _edit_questions(broken_vqa, lambda qs: qs.append(dict(qs[0])))
    line = cli_error(capsys, "run", "--model", "demo-majority", "--tasks", "vqav2", "--data-dir", str(broken_vqa),
                     "--output", str(tmp_path / "res"))
    assert "appears twice" in line and str(1012) in line  # the first val question id of the fixture


def test_non_integer_image_id(broken_vqa, tmp_path, capsys):
    _edit_questions(broken_vqa, lambda qs: qs[1].update(image_id="abc"))
    line = cli_error(capsys, "run", "--model", "demo-majority", "--tasks", "vqav2", "--data-dir", str(broken_vqa),
                     "--output", str(tmp_path / "res"))
    assert "image_id must be an integer" in line and "'abc'" in line


@pytest.mark.parametrize("answer", [None, ["yes"], {"a": 1}, True])
def test_score_rejects_non_string_answers(answer, vqa_data, tmp_path, capsys):
    preds = tmp_path / "preds.json"
    preds.write_text(json.dumps([{"question_id": 1012, "answer": answer}]))
    line = cli_error(capsys, "score", "--task", "vqav2", "--predictions", str(preds), "--data-dir", str(vqa_data))
    assert "must be a string" in line and "1012" in line


@pytest.mark.parametrize("damage", ["truncated", "garbage", "no_tokenizer"])
def test_broken_checkpoint_is_a_message(damage, tmp_path, capsys):
    ck = tmp_path / "ck"
    shutil.copytree(BUNDLED_CHECKPOINT, ck)
    weights = ck / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "garbage":
        weights.write_bytes(b"this is not a safetensors file at all")
    else:
        for f in ck.glob("tokenizer*"):
            f.unlink()
    line = cli_error(capsys, "run", "--model", "flamingo", "--model-arg", f"path={ck}", *EASY[3:],
                     "--output", str(tmp_path / "res"))
    assert str(ck) in line
    assert ("no tokenizer files" in line) if damage == "no_tokenizer" else ("could not be loaded" in line)
    assert "sentencepiece" not in line.lower()


def test_output_folder_that_cannot_be_written(tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    line = cli_error(capsys, *EASY, "--output", str(tmp_path / "a_file" / "res"))
    assert str(tmp_path / "a_file") in line and "finished are kept" in line


def test_compare_skips_foreign_and_corrupt_metrics_and_checks_the_plot_folder(tmp_path, capsys, caplog):
    out = tmp_path / "res"
    assert main([*EASY, "--shots", "0", "--seeds", "0", "--output", str(out)]) == 0
    (out / "foreign").mkdir()
    (out / "foreign" / "metrics.json").write_text(json.dumps({"accuracy": 0.5}))
    (out / "torn").mkdir()
    (out / "torn" / "metrics.json").write_text('{"metrics": {"accura')
    capsys.readouterr()
    assert main(["compare", str(out)]) == 0
    assert "demo-majority 0-shot" in capsys.readouterr().out
    for name in ("foreign", "torn"):
        assert f"skipping {out / name / 'metrics.json'}" in caplog.text
    line = cli_error(capsys, "compare", str(out), "--plot", str(tmp_path / "missing" / "plot.png"))
    assert "does not exist" in line and str(tmp_path / "missing") in line
    line = cli_error(capsys, "compare", str(out / "foreign"))
    assert "no finished cells" in line


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs (needs mount rights, e.g. root in a container; skipped elsewhere)."""
    import subprocess

    mnt = tmp_path / "small_disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_full_disk_names_the_file_and_keeps_finished_samples(small_disk, tmp_path, capsys):
    args = ["run", "--model", "demo-majority", "--tasks", "easyvqa", "--shots", "2", "--seeds", "0", "--limit", "300",
            "--batch-size", "10", "-q"]
    line = cli_error(capsys, *args, "--output", str(small_disk / "res"))
    assert "No space left on device" in line and str(small_disk / "res") in line and "finished are kept" in line
    journal = small_disk / "res" / "demo-majority" / "easyvqa" / "2shot_seed0" / "predictions.jsonl"
    kept = journal.read_text().splitlines()
    assert kept and all(json.loads(x) for x in kept[:-1])  # finished samples are on disk
    # With space again (the folder moved to a big disk), the same command resumes to the clean result.
    moved = tmp_path / "moved"
    shutil.copytree(small_disk / "res", moved)
    assert main([*args, "--output", str(moved)]) == 0
    assert main([*args, "--output", str(tmp_path / "clean")]) == 0
    c = Path("demo-majority") / "easyvqa" / "2shot_seed0"
    assert (moved / c / "predictions.jsonl").read_bytes() == (tmp_path / "clean" / c / "predictions.jsonl").read_bytes()
    m1, m2 = (json.loads((d / c / "metrics.json").read_text()) for d in (moved, tmp_path / "clean"))
    assert m1["metrics"] == m2["metrics"] and m1["config_key"] == m2["config_key"]
    assert len(m1["parts"]) == 2  # the interrupted part and the resume


def test_options_are_range_checked_where_they_are_defined():
    """Every task's options check their ranges when built, from the command line or from Python (the
    run path trusts them), and the error names the task and the option; so do the hf model's."""
    from dataclasses import replace

    from harness.errors import HarnessError
    from harness.options import build_options
    from harness.plugins import load_builtins
    from harness.registry import get_model_class, get_task_class, task_names
    from tasks.vqa import VQAOptions

    load_builtins()
    for name in task_names():
        options = get_task_class(name).Options
        for key, value in (("support_size", "0"), ("zero_shot_text_demos", "-1"), ("rices_batch_size", "0"),
                           ("nested_shots", "-1")):
            with pytest.raises(HarnessError, match=f"^task {name}: option {key}={value}: must be"):
                build_options(options, {key: value}, f"task {name}")
        if "ensemble" in {f for f in options.__dataclass_fields__}:
            with pytest.raises(HarnessError, match=f"^task {name}: option ensemble=0: must be an integer >= 1"):
                build_options(options, {"ensemble": "0"}, f"task {name}")
    with pytest.raises(HarnessError, match="option num_beams=0"):
        VQAOptions(num_beams=0)
    with pytest.raises(HarnessError, match="option length_penalty=inf"):
        replace(VQAOptions(), length_penalty=float("inf"))
    hf = get_model_class("hf").Options
    for key, value, words in (("image_size", "0", "must be positive"), ("max_images", "0", "must be >= 1"),
                              ("feature_cache_mb", "-1", "must be >= 0")):
        with pytest.raises(HarnessError, match=f"^model hf: {key}={value}(.0)?: {words}"):
            build_options(hf, {"path": "/x", key: value}, "model hf")
