"""The results store (issue 20): one owner for result identity, the journal as the one reader of
predictions.jsonl, code versions in the identity, results never adopted, narrowed or misplaced.

User-facing cases go through the real CLI in-process (``harness.cli.main``)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.cli import main
from harness.errors import DataError
from harness.store import identity
from harness.store.journal import JournalError, read_records
from tests.conftest import ROOT, write_my_vqa, write_vqa_fixture

EASY = ["run", "--model", "demo-majority", "--tasks", "easyvqa", "--limit", "6", "-q"]


def cell(out: Path, label: str, task: str, shots: int, seed: int) -> Path:
    return out / label / task / f"{shots}shot_seed{seed}"


def run_ok(*args: str) -> None:
    assert main(list(args)) == 0


def run_err(capsys, *args: str) -> str:
    """Exit status 2, one ``error:`` line at the start of a line, no traceback; returns stderr."""
    capsys.readouterr()
    assert main(list(args)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len([x for x in err.splitlines() if x.startswith("error: ")]) == 1, err
    return err


# ---- 1. one owner ---------------------------------------------------------------------------
def test_one_module_owns_identity_and_old_imports_still_work():
    owners = {"config_hash", "config_diff", "setting_key", "_setting_key", "pairing_fields", "pairing_mismatch",
              "data_fingerprint", "checkpoint_fingerprint", "file_digest", "cache_dir"}
    for f in [*(ROOT / "harness").rglob("*.py"), *(ROOT / "models").rglob("*.py"), *(ROOT / "tasks").rglob("*.py")]:
        if f.parent.name == "store":
            continue
        defined = set(re.findall(r"^def (\w+)\(", f.read_text(encoding="utf-8"), re.M)) & owners
        assert not defined, f"{f} defines {defined}: identity rules belong to harness.store.identity"
    import harness.evaluation.runner as runner
    import harness.model as model
    import harness.reporting.paired as paired
    import harness.reporting.store as old_store
    from harness.store.journal import Journal

    assert model.config_hash is identity.config_hash and model.checkpoint_fingerprint is identity.checkpoint_fingerprint
    assert model.file_digest is identity.file_digest and model.cache_dir is identity.cache_dir
    assert runner.data_fingerprint is identity.data_fingerprint
    assert paired.pairing_fields is identity.pairing_fields and paired.pairing_mismatch is identity.pairing_mismatch
    assert old_store.Journal is Journal and old_store.config_diff is identity.config_diff


def _config(**changes):
    cfg = {"model": {"name": "m", "version": 1, "options": {}}, "label": "m",
           "task": {"name": "t", "version": 1, "options": {"num_beams": None, "support_size": 8}, "template": "a"},
           "shots": 4, "seed": 0, "limit": None, "sample": None, "sampler": {"name": "random", "seed": 0},
           "generation": {"num_beams": 3}, "data": {"queries": "q0", "support": "s"}, "harness_version": "0.1.0"}
    for path, value in changes.items():
        d = cfg
        *parents, last = path.split(".")
        for p in parents:
            d = d[p]
        d[last] = value
    return cfg


def test_num_beams_never_blocks_pairing_but_data_does():
    a = _config()
    assert identity.pairing_mismatch(a, _config(**{"task.options.num_beams": 5, "generation.num_beams": 5})) is None
    assert identity.pairing_mismatch(a, _config(**{"task.options.max_new_tokens": 9})) is None
    assert identity.pairing_mismatch(a, _config(**{"model.version": 2, "label": "x"})) is None
    why = identity.pairing_mismatch(a, _config(**{"task.options.support_size": 16}))
    assert why and "task.options.support_size 8 vs 16" in why


def test_setting_key_averages_sample_seeds_only():
    # --sample: each seed draws other queries, so their fingerprint differs; they are one setting
    s0 = _config(sample=3, **{"data.queries": "q0"})
    s1 = _config(sample=3, seed=1, **{"data.queries": "q1", "sampler.seed": 1})
    assert identity.setting_key(s0) == identity.setting_key(s1)
    # without --sample, other queries are other data: never averaged together
    assert identity.setting_key(_config()) != identity.setting_key(_config(seed=1, **{"data.queries": "q1"}))
    assert identity.setting_key(s0) != identity.setting_key(_config(sample=4))


def test_config_diff_names_the_version():
    diff = identity.config_diff(_config(), _config(**{"task.version": 2}))
    assert diff == "task.version: 1 -> 2"


# ---- the journal --------------------------------------------------------------------------
def _records(n: int) -> list[str]:
    return [json.dumps({"query_id": f"q{i}", "demo_ids": [], "prompt": "", "raw_output": "a", "prediction": "a",
                        "score": 1.0}) for i in range(n)]


def test_journal_reader_is_strict_about_the_middle_and_lenient_about_a_torn_tail(tmp_path, caplog):
    p = tmp_path / "predictions.jsonl"
    lines = _records(5)
    p.write_text("\n".join(lines[:2] + ['{"query_id": "q2", "sco'] + lines[3:]) + "\n")
    with pytest.raises(JournalError, match=r"line 3 is not valid JSON .*2 record line\(s\) after it"):
        read_records(p)
    p.write_text("\n".join(lines[:4]) + "\n" + lines[4][:20])  # a kill mid-write: no final newline
    assert [r.query_id for r in read_records(p)] == ["q0", "q1", "q2", "q3"]
    assert "line 5 is cut off" in caplog.text
    with pytest.raises(JournalError, match="line 5"):
        read_records(p, torn_tail_ok=False)


@pytest.mark.parametrize("line, words", [
    ("[1, 2, 3]", "a JSON list is not a prediction record"),
    ('"text"', "a JSON str is not a prediction record"),
    ('{"query_id": "q9", "score": "high", "raw_output": "a"}', 'score must be a number, got "high"'),
    ('{"query_id": "q9", "score": true, "raw_output": "a"}', "score must be a number, got true"),
    ('{"query_id": ["q9"], "score": 1, "raw_output": "a"}', "query_id must be a string"),
    ('{"query_id": "q9", "score": 1, "raw_output": 5}', "raw_output must be a string, got 5"),
    ('{"query_id": "q9", "score": 1, "raw_output": "a", "demo_ids": "d1"}', "demo_ids must be a list"),
    ('{"query_id": "q9", "score": 1, "raw_output": "a", "error": 3}', "error must be a string or null"),
    ('{"query_id": "q9", "raw_output": "a"}', "has no 'score'"),
    ('{"query_id": "q9", "score": "NaN", "raw_output": "a"}', 'score must be a number, got "NaN" (null: unscored)'),
])
def test_journal_reader_refuses_lines_that_are_not_records(tmp_path, line, words):
    p = tmp_path / "predictions.jsonl"
    lines = _records(3)
    p.write_text("\n".join([lines[0], lines[1], line, lines[2]]) + "\n")
    with pytest.raises(JournalError) as exc:
        read_records(p)
    assert "line 3" in str(exc.value) and words in str(exc.value)


def test_journal_reader_names_the_encoding(tmp_path):
    p = tmp_path / "predictions.jsonl"
    p.write_text("\n".join(_records(2)) + "\n", encoding="utf-16")
    with pytest.raises(DataError, match="UTF-16"):
        read_records(p)
    p.write_bytes(("\n".join(_records(2)) + "\n").encode() + b'{"query_id": "\xff\xfe"}\n')
    with pytest.raises(DataError, match="line 3 is not UTF-8"):
        read_records(p)


def test_corrupt_middle_line_refuses_resume_and_keeps_every_record(tmp_path, capsys):
    out = tmp_path / "res"
    args = [*EASY, "--shots", "0", "--seeds", "0", "--output", str(out)]
    run_ok(*args)
    c = cell(out, "demo-majority", "easyvqa", 0, 0)
    lines = (c / "predictions.jsonl").read_text().splitlines()
    lines[2] = lines[2][:25]  # a damaged line in the middle
    (c / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    (c / "metrics.json").unlink()  # an interrupted run: the rerun resumes from the journal
    before = (c / "predictions.jsonl").read_bytes()
    err = run_err(capsys, *args)
    assert "line 3 is not valid JSON" in err and "3 record line(s) after it" in err and "--overwrite" in err
    assert (c / "predictions.jsonl").read_bytes() == before  # nothing rewritten away
    # a valid JSON line that is no record blocks the resume the same way, with its reason
    lines[2] = "[1, 2, 3]"
    (c / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    assert "line 3: a JSON list is not a prediction record" in run_err(capsys, *args)
    run_ok(*args, "--overwrite")  # the way out the message names: the cell is recomputed
    assert json.loads((c / "metrics.json").read_text())["n"] == 6


# ---- 2. code version in the identity ---------------------------------------------------------
def test_metrics_record_code_versions_and_compare_names_differences(tmp_path, capsys, caplog):
    out = tmp_path / "res"
    run_ok(*EASY, "--shots", "0", "--seeds", "0", "--output", str(out))
    m = json.loads((cell(out, "demo-majority", "easyvqa", 0, 0) / "metrics.json").read_text())
    env = m["environment"]
    assert env["harness_revision"] and set(env["versions"]) == {"torch", "transformers", "datasets", "pycocoevalcap"}
    assert env["versions"]["torch"] and env["versions"]["transformers"]
    assert m["config"]["model"]["version"] == 1 and m["config"]["task"]["version"] == 1
    # another checkpoint computed with another transformers: compare says so
    run_ok(*EASY, "--shots", "0", "--seeds", "0", "--output", str(out), "--label", "other")
    f = cell(out, "other", "easyvqa", 0, 0) / "metrics.json"
    other = json.loads(f.read_text())
    other["environment"]["versions"]["transformers"] = "0.0.1"
    f.write_text(json.dumps(other))  # the seal covers the numbers, not the environment
    caplog.clear()
    run_ok("compare", str(out))
    assert "different code versions" in caplog.text and "transformers:" in caplog.text and "0.0.1" in caplog.text


@pytest.mark.parametrize("what", ["task", "model"])
def test_version_bump_of_a_plugin_is_never_already_complete(what, tmp_path, capsys, caplog, monkeypatch):
    write_my_vqa(tmp_path / "data")
    out = tmp_path / "res"
    args = ["run", "--include", "examples/my_task.py", "--include", "examples/my_model.py", "--model", "constant",
            "--model-arg", "answer=red", "--tasks", "my_vqa", "--data-dir", str(tmp_path / "data"), "--shots", "2",
            "--seeds", "0", "--output", str(out), "-q"]
    run_ok(*args)
    from harness.registry import get_model_class, get_task_class

    cls = get_task_class("my_vqa") if what == "task" else get_model_class("constant")
    monkeypatch.setattr(cls, "version", 2)
    caplog.clear()
    err = run_err(capsys, *args)
    assert f"{what}.version: 1 -> 2" in err and "already complete" not in caplog.text
    # a new cell under another label, or the old one replaced: computed with the new version
    caplog.clear()
    run_ok(*args, "--overwrite")
    m = json.loads((cell(out, "constant", "my_vqa", 2, 0) / "metrics.json").read_text())
    assert m["config"][what]["version"] == 2 and "already complete" not in caplog.text


# ---- 3. drift defects -------------------------------------------------------------------------
def test_merge_honours_sample(tmp_path, capsys):
    out = tmp_path / "res"
    args = [*EASY, "--shots", "0", "--seeds", "0", "1", "--sample", "3", "--output", str(out)]
    for k in (0, 1):
        run_ok(*args, "--shard", f"{k}/2")
    run_ok("merge", str(out))
    ref = tmp_path / "ref"
    run_ok(*[a if a != str(out) else str(ref) for a in args])
    for seed in (0, 1):
        merged = json.loads((cell(out, "demo-majority", "easyvqa", 0, seed) / "metrics.json").read_text())
        one = json.loads((cell(ref, "demo-majority", "easyvqa", 0, seed) / "metrics.json").read_text())
        assert merged["n"] == 3 and merged["metrics"] == one["metrics"] and merged["config_key"] == one["config_key"]


def test_compare_and_summary_average_the_seeds_of_a_sample_run(tmp_path, capsys):
    out = tmp_path / "res"
    run_ok(*EASY, "--shots", "0", "--seeds", "0", "1", "2", "--sample", "3", "--output", str(out))
    summary = json.loads((out / "demo-majority" / "summary.json").read_text())
    assert len(summary) == 1 and summary[0]["seeds"] == [0, 1, 2]
    capsys.readouterr()
    run_ok("compare", str(out), "--format", "csv")
    table = capsys.readouterr().out
    assert "[cfg" not in table
    rows = pd.read_csv(io.StringIO(table))
    rows = rows[rows["primary"]]
    assert len(rows) == 1  # the three seeds are one setting, not three
    assert rows["mean"].iloc[0] == pytest.approx(summary[0]["mean"]) and rows["std"].iloc[0] == pytest.approx(summary[0]["std"])
    assert rows["n"].iloc[0] == 3


def test_hf_feature_cache_mb_is_not_identity_and_device_is_resolved(tmp_path, monkeypatch):
    """A real tiny HF model: device=auto loads (it was passed to .to() as given, which failed as 'could not
    be loaded'), on this rank's resolved device; feature_cache_mb is recorded outside the identity."""
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from hf_tiny import build_tiny_hf
    from harness.registry import get_model_class
    from harness.plugins import load_builtins

    load_builtins()
    path = build_tiny_hf("smolvlm", tmp_path / "smolvlm")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    hf = get_model_class("hf")
    a = hf({"path": str(path), "device": "auto", "feature_cache_mb": "64"})
    assert str(a.model.device) == a.device == "cpu"
    b = hf({"path": str(path), "device": "auto", "feature_cache_mb": "0"})
    assert a.config() == b.config() and a.runtime_config()["feature_cache_mb"] == 64.0
    assert "feature_cache_mb" not in a.config()["options"] and "cache_mb" not in a.config()["options"]


# ---- 4. results never adopted, narrowed or misplaced ---------------------------------------------
@pytest.mark.parametrize("damage", ["{}", "not json", '{"config_key": null}', ""])
def test_damaged_journal_json_is_never_adopted_by_another_configuration(damage, tmp_path, capsys):
    out = tmp_path / "res"
    run_ok(*EASY, "--shots", "0", "--seeds", "0", "--output", str(out))
    c = cell(out, "demo-majority", "easyvqa", 0, 0)
    (c / "metrics.json").unlink()
    (c / "journal.json").write_text(damage)
    before = (c / "predictions.jsonl").read_bytes()
    err = run_err(capsys, *EASY, "--shots", "0", "--seeds", "0", "--output", str(out), "--limit", "5")
    assert "damaged journal.json" in err and "--overwrite" in err
    assert (c / "predictions.jsonl").read_bytes() == before
    run_ok(*EASY, "--shots", "0", "--seeds", "0", "--output", str(out), "--limit", "5", "--overwrite")
    assert json.loads((c / "metrics.json").read_text())["n"] == 5


def test_summary_covers_every_cell_of_the_label_and_equals_compare(tmp_path, capsys):
    out = tmp_path / "res"
    run_ok(*EASY, "--shots", "0", "2", "--seeds", "0", "1", "--output", str(out))
    run_ok(*EASY, "--shots", "4", "--seeds", "1", "--output", str(out))
    summary = json.loads((out / "demo-majority" / "summary.json").read_text())
    assert {(s["shots"], tuple(s["seeds"])) for s in summary} == {(0, (0, 1)), (2, (0, 1)), (4, (1,))}
    capsys.readouterr()
    run_ok("compare", str(out), "--format", "csv")
    rows = pd.read_csv(io.StringIO(capsys.readouterr().out))
    rows = rows[rows["primary"]].set_index("shots")
    assert sorted(rows.index) == sorted(s["shots"] for s in summary)
    for s in summary:
        assert rows.loc[s["shots"], "mean"] == pytest.approx(s["mean"]) and rows.loc[s["shots"], "n"] == s["n"]
        if len(s["seeds"]) > 1:
            assert rows.loc[s["shots"], "std"] == pytest.approx(s["std"])


@pytest.mark.parametrize("label", ["..", ".", "a/b", "../up", ".hidden", ""])
def test_label_is_one_safe_path_component(label, tmp_path, capsys):
    out = tmp_path / "out" / "res"
    err = run_err(capsys, *EASY, "--shots", "0", "--seeds", "0", "--output", str(out), "--label", label)
    assert "--label" in err and "one path component" in err
    assert not (tmp_path / "out").exists()  # nothing written anywhere


def test_hand_edited_metrics_are_rescored_on_rerun_and_skipped_by_compare(tmp_path, capsys, caplog):
    out = tmp_path / "res"
    args = [*EASY, "--shots", "0", "--seeds", "0", "--output", str(out)]
    run_ok(*args)
    f = cell(out, "demo-majority", "easyvqa", 0, 0) / "metrics.json"
    good = json.loads(f.read_text())
    edited = json.loads(f.read_text())
    edited["metrics"]["accuracy"] = 99.0
    f.write_text(json.dumps(edited))
    caplog.clear()
    capsys.readouterr()
    assert main(["compare", str(out)]) == 2  # its only cell is not trusted: nothing to show
    assert "do not match its seal" in caplog.text and "99.00" not in capsys.readouterr().out
    caplog.clear()
    run_ok(*args)
    assert "scoring the cell again" in caplog.text and "already complete" not in caplog.text
    assert json.loads(f.read_text())["metrics"] == good["metrics"]
    # edited predictions (the numbers no longer come from them) are caught the same way
    p = f.parent / "predictions.jsonl"
    recs = [json.loads(x) for x in p.read_text().splitlines()]
    recs[0]["score"] = 1.0 - recs[0]["score"]
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    caplog.clear()
    run_ok(*args)
    assert "not those it was computed from" in caplog.text
    assert json.loads(f.read_text())["metrics"]["accuracy"] != good["metrics"]["accuracy"]


def test_media_key_follows_a_file_replaced_in_place(tmp_path):
    import os
    from harness.types import DatasetImage, Image

    p = tmp_path / "a.png"
    p.write_bytes(b"one")
    k1 = identity.media_key(Image(str(p)))
    p.write_bytes(b"other bytes")
    os.utime(p, ns=(1_000_000_000, 1_000_000_000))
    k2 = identity.media_key(Image(str(p)))
    assert k1 != k2 and k1.startswith(str(p))
    assert identity.media_key(DatasetImage("hfds://abc/1/image")) == "hfds://abc/1/image"


def test_flamingo_feature_cache_dir_never_serves_stale_features(tmp_path):
    """The bundled flamingo with a persistent feature cache: an image replaced in place is encoded again."""
    import os
    import torch
    from PIL import Image as PILImage

    from harness.registry import get_model_class
    from harness.plugins import load_builtins
    from harness.types import Image

    load_builtins()
    p = tmp_path / "img.png"
    PILImage.new("RGB", (32, 32), (200, 10, 10)).save(p)
    cache = tmp_path / "fc"

    def encode():
        model = get_model_class("flamingo")({"feature_cache_dir": str(cache)})
        return model.encode_media([Image(str(p))])[0].clone(), model.stats()

    first, _ = encode()
    again, stats = encode()  # a new process would read it from disk
    assert torch.equal(first, again)
    PILImage.new("RGB", (32, 32), (10, 10, 200)).save(p)
    os.utime(p, ns=(2_000_000_000, 2_000_000_000))
    replaced, _ = encode()
    assert not torch.equal(first, replaced)


# ---- 5. VQA with other than ten answers; all of a disjoint support set ----------------------------
@pytest.mark.parametrize("pred, answers, exact, min3", [
    ("cup", ["cup"], 1.0, 1 / 3),
    ("cup", ["cup"] * 3, 1.0, 1.0),
    ("mug", ["cup", "mug"], 1.0, 1 / 3),
    ("bowl", ["cup", "mug"], 0.0, 0.0),
    ("red", ["red"] * 2 + ["blue"] * 9, 1.0, 2 / 3),  # eleven answers: not the formula either
    ("Two", ["2", "two", "3"], 1.0, 2 / 3),  # normalised, as with ten answers that disagree
])
def test_vqa_accuracy_other_than_ten_answers(pred, answers, exact, min3):
    from harness.metrics.vqa import vqa_accuracy

    assert vqa_accuracy(pred, answers) == pytest.approx(exact)
    assert vqa_accuracy(pred, answers, non_ten="min3") == pytest.approx(min3)


def test_vqa_accuracy_ten_answers_is_the_official_formula_whatever_the_rule():
    from harness.metrics.vqa import vqa_accuracy

    answers = ["red"] * 2 + ["blue"] * 8
    assert vqa_accuracy("red", answers) == vqa_accuracy("red", answers, non_ten="min3") == pytest.approx(0.6)


def test_non_ten_answers_option_through_the_cli(tmp_path):
    write_my_vqa(tmp_path / "data", shade="dark")  # four answers per question
    out = tmp_path / "res"
    base = ["run", "--include", "examples/my_task.py", "--include", "examples/my_model.py", "--model", "constant",
            "--model-arg", "answer=red", "--tasks", "my_vqa", "--data-dir", str(tmp_path / "data"), "--shots", "0",
            "--seeds", "0", "-q"]
    run_ok(*base, "--output", str(out))
    run_ok(*base, "--output", str(out), "--label", "min3", "--task-arg", "non_ten_answers=min3")
    exact = json.loads((cell(out, "constant", "my_vqa", 0, 0) / "metrics.json").read_text())
    min3 = json.loads((cell(out, "min3", "my_vqa", 0, 0) / "metrics.json").read_text())
    assert exact["metrics"]["accuracy"] == pytest.approx(100 * 2 / 6)  # "red" on 2 red images of 6
    assert min3["metrics"]["accuracy"] == pytest.approx(100 * 2 / 6)  # 3 of 4 answers "red": min(1, 3/3)
    assert min3["config"]["task"]["options"]["non_ten_answers"] == "min3"
    assert exact["config"]["task"]["options"]["non_ten_answers"] == "exact"


def test_twelve_shots_on_a_disjoint_twelve_example_support_set(tmp_path):
    root = write_vqa_fixture(tmp_path / "data", "vqav2", n_train=12, n_val=3)
    out = tmp_path / "res"
    run_ok("run", "--model", "demo-majority", "--tasks", "vqav2", "--data-dir", str(root), "--shots", "12",
           "--seeds", "0", "--output", str(out), "-q")
    recs = [json.loads(x) for x in (cell(out, "demo-majority", "vqav2", 12, 0) / "predictions.jsonl").read_text().splitlines()]
    assert all(len(r["demo_ids"]) == 12 for r in recs)


def test_a_query_in_the_support_set_still_needs_one_more(capsys):
    from harness.sampling import RandomSampler
    from harness.errors import HarnessError
    from harness.types import Example

    pool = [Example(f"e{i}", (), {}, ("a",), "a") for i in range(12)]
    s = RandomSampler("t", pool, 0)
    s.check_shots(12, [Example("q", (), {}, ("a",), "a")])
    with pytest.raises(HarnessError, match="at most 11"):
        s.check_shots(12, [pool[3]])
    assert len(s.demos(Example("q", (), {}, ("a",), "a"), 12)) == 12


def test_journal_reader_keeps_an_unscored_record_of_a_test_server_split(tmp_path):
    p = tmp_path / "predictions.jsonl"
    p.write_text(_records(1)[0] + "\n" + '{"query_id": "q9", "score": null, "raw_output": "a", "prediction": "a"}\n')
    first, unscored = read_records(p)
    assert first.score is not None and unscored.score is None and unscored.prediction == "a"
