"""The second bad-input corpus (issue 20, item 6), through the real CLI in-process: each case is a
one-line ``error:`` (no traceback, before any model loads) or a warning that says what happened."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from harness.cli import main
from tests.conftest import EASY, cli_error, write_vqa_fixture

datasets = pytest.importorskip("datasets")

@pytest.fixture(scope="module")
def vqa_data(tmp_path_factory) -> Path:
    return write_vqa_fixture(tmp_path_factory.mktemp("second_vqa"), "vqav2")


@pytest.fixture(scope="module")
def journal(vqa_data, tmp_path_factory) -> Path:
    """A real vqav2 run's predictions.jsonl."""
    out = tmp_path_factory.mktemp("second_run") / "res"
    assert main(["run", "--model", "demo-majority", "--tasks", "vqav2", "--data-dir", str(vqa_data), "--shots", "2",
                 "--seeds", "0", "--output", str(out), "-q"]) == 0
    return out / "demo-majority" / "vqav2" / "2shot_seed0" / "predictions.jsonl"


def score(vqa_data, path, task="vqav2"):
    return ["score", "--task", task, "--data-dir", str(vqa_data), "--predictions", str(path)]


# ---- tracebacks before ----------------------------------------------------------------------
def _vqa_dataset(n: int):
    features = datasets.Features({"question_id": datasets.Value("int64"), "question": datasets.Value("string"),
                                  "answers": datasets.Sequence(datasets.Value("string")), "image": datasets.Image()})
    return datasets.Dataset.from_dict({"question_id": list(range(n)), "question": ["q?"] * n,
                                       "answers": [["a"] * 10] * n, "image": [None] * n}, features=features)


@pytest.mark.parametrize("kind", ["saved", "parquet"])
def test_empty_hf_dataset(kind, tmp_path, capsys):
    ds = _vqa_dataset(0)
    if kind == "saved":
        ds.save_to_disk(str(tmp_path / "empty"))
        src = f"hf:{tmp_path / 'empty'}@validation"
    else:
        (tmp_path / "pq").mkdir()
        ds.to_parquet(str(tmp_path / "pq" / "validation-00000-of-00001.parquet"))
        src = f"hf:{tmp_path / 'pq'}@validation"
    err = cli_error(capsys, "run", "--model", "demo-majority", "--tasks", "vqav2", "--task-arg", f"eval_source={src}",
                    "--task-arg", f"support_source={src}", "--shots", "0", "--seeds", "0",
                    "--output", str(tmp_path / "res"), "-q")
    assert "no rows" in err


def test_garbage_parquet(tmp_path, capsys):
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet at all" * 10)
    err = cli_error(capsys, "run", "--model", "demo-majority", "--tasks", "vqav2", "--task-arg",
                    f"eval_source=hf:{tmp_path / 'bad.parquet'}", "--task-arg",
                    f"support_source=hf:{tmp_path / 'bad.parquet'}", "--shots", "0", "--seeds", "0",
                    "--output", str(tmp_path / "res"), "-q")
    assert "bad.parquet" in err and "complete parquet file" in err


@pytest.mark.parametrize("encoding, words", [("utf-16", "UTF-16"), ("latin-1", "not UTF-8")])
def test_predictions_file_in_another_encoding(encoding, words, journal, vqa_data, tmp_path, capsys):
    text = journal.read_text(encoding="utf-8").replace('"prompt": "', '"prompt": "caf\u00e9 ', 1)
    p = tmp_path / "preds.jsonl"
    p.write_text(text, encoding=encoding)
    assert words in cli_error(capsys, *score(vqa_data, p))


@pytest.mark.parametrize("line, words", [
    ("[1, 2, 3]", "line 2 is a JSON list, not an object"),
    ('{"query_id": "1001", "raw_output": "yes", "score": "0.5"}', 'line 2: score must be a number, got "0.5"'),
    ('{"query_id": "1001", "raw_output": ["yes"], "score": 1}', "line 2: raw_output must be a string"),
])
def test_journal_line_that_is_not_a_record(line, words, journal, vqa_data, tmp_path, capsys):
    lines = journal.read_text().splitlines()
    lines[1] = line
    p = tmp_path / "predictions.jsonl"
    p.write_text("\n".join(lines) + "\n")
    assert words in cli_error(capsys, *score(vqa_data, p))


def test_text_model_folder_as_rices_encoder_before_the_model_loads(vqa_data, tmp_path, capsys, caplog):
    from transformers import BertConfig, BertModel, CLIPImageProcessor

    folder = tmp_path / "bert"
    BertModel(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=8)).save_pretrained(folder)
    CLIPImageProcessor().save_pretrained(folder)  # an image-processor config beside a text model
    err = cli_error(capsys, "run", "--model", "flamingo", "--tasks", "vqav2", "--data-dir", str(vqa_data),
                    "--task-arg", "sampler=rices", "--task-arg", f"rices_encoder={folder}", "--shots", "2",
                    "--seeds", "0", "--output", str(tmp_path / "res"), "-q")
    assert "not a vision model" in err and "bert" in err
    assert "loading model" not in caplog.text


def test_unreadable_rices_encoder_config(vqa_data, tmp_path, capsys):
    (tmp_path / "enc").mkdir()
    (tmp_path / "enc" / "config.json").write_text("{not json")
    err = cli_error(capsys, "run", "--model", "demo-majority", "--tasks", "vqav2", "--data-dir", str(vqa_data),
                    "--task-arg", "sampler=rices", "--task-arg", f"rices_encoder={tmp_path / 'enc'}",
                    "--shots", "2", "--seeds", "0", "--output", str(tmp_path / "res"), "-q")
    assert "config.json cannot be read" in err


# ---- silently accepted before ---------------------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (["--model-arg", "system=Be brief.", "--model-arg", "prompt_format=plain"], "prompt_format=plain has no place"),
    (["--model-arg", "cache_mb=-5"], "cache_mb=-5: must be >= 0"),
    (["--model-arg", "feature_cache_mb=-1"], "feature_cache_mb=-1.0: must be >= 0"),
])
def test_hf_options_that_were_dropped_or_out_of_range(args, words, tmp_path, capsys):
    err = cli_error(capsys, "run", "--model", "hf", "--model-arg", f"path={tmp_path}", *args, "--tasks", "easyvqa",
                    "--shots", "0", "--seeds", "0", "--limit", "2", "--output", str(tmp_path / "res"), "-q")
    assert words in err


def test_answers_mapped_to_a_plain_string_column_is_said(vqa_data, tmp_path, caplog):
    ds = _vqa_dataset(4).add_column("note", ["red"] * 4)
    ds.save_to_disk(str(tmp_path / "ds"))
    src = f"hf:{tmp_path / 'ds'}@validation"
    assert main(["score", "--task", "vqav2", "--task-arg", f"eval_source={src}", "--task-arg", "columns=answers:note",
                 "--predictions", str(_official(tmp_path, {i: "red" for i in range(4)}))]) == 0
    assert "holds one string per row" in caplog.text and "'note'" in caplog.text


def _official(tmp_path: Path, answers: dict) -> Path:
    p = tmp_path / "official.json"
    p.write_text(json.dumps([{"question_id": k, "answer": v} for k, v in answers.items()]))
    return p


def test_rices_feature_file_overwritten_with_other_values_is_recomputed(tmp_path, caplog):
    import numpy as np

    from harness.evaluation.rices import media_features
    from harness.types import Image

    class Toy:
        fingerprint = "toy"
        calls = 0

        def embed(self, media):
            Toy.calls += 1
            return np.array([[float(len(m.identity)), 1.0, i] for i, m in enumerate(media)], dtype=np.float32)

    media = [Image(str(tmp_path / f"img{i}.png")) for i in range(3)]
    first = media_features(Toy(), "t", "val", media, tmp_path / "cache", progress=False)
    again = media_features(Toy(), "t", "val", media, tmp_path / "cache", progress=False)
    assert again.from_cache and Toy.calls == 1
    np.save(first.path, np.ones_like(first.matrix))  # same shape, other values
    caplog.clear()
    redone = media_features(Toy(), "t", "val", media, tmp_path / "cache", progress=False)
    assert not redone.from_cache and Toy.calls == 2 and "do not match their checksum" in caplog.text
    assert np.array_equal(redone.matrix, first.matrix)


@pytest.mark.parametrize("value, ok, words", [
    (float("nan"), False, "is nan, not an answer"),
    (2.5, False, "the number 2.5"),
    (2, True, "are JSON numbers"),
])
def test_score_with_numeric_answers(value, ok, words, vqa_data, tmp_path, capsys, caplog):
    p = tmp_path / "preds.json"
    p.write_text(json.dumps([{"question_id": 1012 + i, "answer": value} for i in range(2)]).replace("NaN", "NaN"))
    if ok:
        assert main(score(vqa_data, p)) == 0
        assert words in caplog.text
    else:
        assert words in cli_error(capsys, *score(vqa_data, p))


def test_score_refuses_a_journal_of_another_task(journal, vqa_data, capsys):
    err = cli_error(capsys, *score(vqa_data, journal, task="okvqa"))
    assert "predictions of task vqav2" in err and "--task vqav2" in err


def test_sample_larger_than_the_split_is_said(tmp_path, caplog):
    assert main([*EASY, "--shots", "0", "--seeds", "0", "--sample", "10", "--output", str(tmp_path / "res")]) == 0
    assert "--sample 10 is not smaller than the 4 eval questions" in caplog.text


# ---- misleading before ----------------------------------------------------------------------
def test_split_hint_for_an_eval_source_is_not_train(tmp_path, capsys):
    dd = datasets.DatasetDict({"train": _vqa_dataset(2), "validation": _vqa_dataset(2)})
    dd.save_to_disk(str(tmp_path / "dd"))
    err = cli_error(capsys, "run", "--model", "demo-majority", "--tasks", "vqav2", "--task-arg",
                    f"eval_source=hf:{tmp_path / 'dd'}@val2014", "--task-arg", f"support_source=hf:{tmp_path / 'dd'}@train",
                    "--shots", "0", "--seeds", "0",
                    "--output", str(tmp_path / "res"), "-q")
    assert "@validation" in err and "@train" not in err


def test_symlink_loop_and_folder_are_not_file_not_found(vqa_data, tmp_path, capsys):
    loop = tmp_path / "loop.json"
    os.symlink(loop, loop)
    assert "symlink loop" in cli_error(capsys, *score(vqa_data, loop))
    (tmp_path / "dir.json").mkdir()
    assert "is a folder, not a file" in cli_error(capsys, *score(vqa_data, tmp_path / "dir.json"))
    dangling = tmp_path / "dangling.json"
    os.symlink(tmp_path / "gone.json", dangling)
    assert "does not exist" in cli_error(capsys, *score(vqa_data, dangling))


def test_bad_jsonl_line_is_reported_at_its_line(vqa_data, tmp_path, capsys):
    p = tmp_path / "preds.jsonl"
    p.write_text('{"question_id": 1012, "answer": "yes"}\n\n{"question_id": 1013, "answer": }\n')
    err = cli_error(capsys, *score(vqa_data, p))
    assert "line 3 is not valid JSON" in err and "line 1" not in err


def test_bad_line_of_a_plugin_jsonl_is_reported_at_its_line(tmp_path, capsys):
    from tests.conftest import write_my_vqa

    root = write_my_vqa(tmp_path / "data")
    lines = (root / "test.jsonl").read_text().splitlines()
    lines[2] = lines[2][:-3]
    (root / "test.jsonl").write_text("\n".join(lines) + "\n")
    err = cli_error(capsys, "run", "--include", "examples/my_task.py", "--model", "demo-majority", "--tasks", "my_vqa",
                    "--data-dir", str(tmp_path / "data"), "--shots", "0", "--seeds", "0",
                    "--output", str(tmp_path / "res"), "-q")
    assert "line 3 is not valid JSON" in err and "line 1 " not in err


def test_verbose_flag_anywhere(tmp_path, capsys):
    out = tmp_path / "res"
    assert main([*EASY, "--shots", "0", "--seeds", "0", "--output", str(out), "-v"]) == 0
    assert main(["compare", str(out), "-v"]) == 0
    assert main(["-v", "compare", str(out)]) == 0


def test_error_line_starts_on_a_fresh_line_after_a_progress_bar(tmp_path, capsys):
    import sys

    from tqdm import tqdm

    bar = tqdm(total=10, file=sys.stderr, desc="cell", leave=False)
    bar.update(3)  # a bar still drawn when the error comes
    assert main([*EASY, "--shots", "0", "--seeds", "0", "--output", str(tmp_path / "res"), "--label", ".."]) == 2
    err = capsys.readouterr().err
    assert "\nerror: --label" in err or err.startswith("error: --label")
