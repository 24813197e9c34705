"""Suites: expansion with published / explicit shots, missing tasks, summary rows (hand-worked means)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

import conftest_benchmarks  # noqa: F401  (puts the repo on sys.path)
from harness.errors import HarnessError
from harness.registry import task_names
from harness.suites import add_suite_rows, define_suite, expand, get_suite

OPENFLAMINGO = ("coco", "flickr30k", "vqav2", "okvqa", "textvqa", "vizwiz", "hateful_memes", "imagenet")


def test_builtin_suites_name_the_published_benchmarks():
    assert get_suite("openflamingo").tasks == OPENFLAMINGO
    f16 = get_suite("flamingo16")
    assert len(f16.tasks) == 16 and len(set(f16.tasks)) == 16
    assert {"textvqa", "vizwiz", "visdial", "vatex", "youcook2", "star", "rareact", "nextqa_mc"} <= set(f16.tasks)
    assert f16.shots == (0, 4, 32) and f16.shots_for("rareact") == (0,)
    assert set(get_suite("video").tasks) <= set(f16.tasks) and len(get_suite("video").tasks) == 8


def test_expand_uses_published_shots_unless_explicit():
    e = expand(["openflamingo", "easyvqa"], None, (0, 4, 32), task_names())
    assert e.tasks == OPENFLAMINGO + ("easyvqa",)
    assert e.shots["imagenet"] == (0, 4, 8, 16, 32) and e.shots["easyvqa"] == (0, 4, 32)
    explicit = expand(["openflamingo"], [0, 2], (0, 4, 32), task_names())
    assert set(explicit.shots.values()) == {(0, 2)}
    assert expand(["vqav2", "vqav2"], None, (0,), task_names()).tasks == ("vqav2",)


def test_a_suite_with_unregistered_tasks_says_which():
    video = ("vatex", "youcook2", "star", "rareact")  # issue 14's second part registers these
    registered = [t for t in task_names() if t not in video]
    with pytest.raises(HarnessError, match=r"suite flamingo16 needs tasks that are not registered: "
                                           r"vatex, youcook2, star, rareact \(add them with --include"):
        expand(["flamingo16"], None, (0,), registered)
    # Once registered (the video tasks come in their own module), the suite resolves by name.
    full = expand(["flamingo16"], None, (0,), registered + list(video))
    assert len(full.tasks) == 16 and full.shots["rareact"] == (0,) and full.shots["okvqa"] == (0, 4, 32)


def _summary(rows):
    return pd.DataFrame([{"task": t, "metric": m, "checkpoint": ck, "shots": s, "mean": v, "std": 0.0, "seeds": 3,
                          "n": n, "primary": True} for t, m, ck, s, v, n in rows])


def test_suite_rows_average_primary_metrics_only_when_complete(monkeypatch):
    import harness.suites

    monkeypatch.setattr(harness.suites, "_SUITES", dict(harness.suites._SUITES))  # test suites stay here
    define_suite("pair", ["vqav2", "hateful_memes"], shots=[0, 4])
    define_suite("zs", ["vqav2", "rare_zero"], shots=[0, 4], task_shots={"rare_zero": [0]})
    out = add_suite_rows(_summary([
        ("vqav2", "accuracy", "A", 0, 40.0, 10), ("hateful_memes", "roc_auc", "A", 0, 60.0, 5),
        ("vqav2", "accuracy", "A", 4, 50.0, 10),  # hateful_memes missing at 4 shots: no row there
        ("vqav2", "accuracy", "B", 0, 30.0, 10),  # B has no hateful_memes at all
        ("rare_zero", "map", "A", 0, 20.0, 7),
    ]))
    pair = out[out["task"] == "suite pair"]
    assert list(zip(pair["checkpoint"], pair["shots"], pair["mean"], pair["n"])) == [("A", 0, 50.0, 15)]
    assert pair["metric"].iloc[0] == "mean of 2: vqav2, hateful_memes"
    # A zero-shot-only task counts with its 0-shot score at every shots: (50 + 20) / 2 at 4 shots.
    zs = out[out["task"] == "suite zs"].sort_values("shots")
    assert list(zs["mean"]) == [30.0, 35.0] and math.isnan(zs["std"].iloc[0])


def test_cli_lists_suites_and_refuses_an_incomplete_one(tmp_path):
    from tests.conftest import run_cli

    listing = run_cli("list", "tasks").stdout
    for name in ("textvqa", "vizwiz", "visdial", "imagenet", "kinetics700", "vatex", "youcook2", "star", "rareact",
                 "flamingo16", "openflamingo", "video"):
        assert f"\n{name} " in "\n" + listing
    # Every task of the built-in suites is registered: flamingo16 expands and fails on the (absent) data.
    proc = run_cli("run", "--model", "demo-majority", "--tasks", "flamingo16", "--data-dir", str(tmp_path),
                   "--output", str(tmp_path / "r"), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "file not found" in proc.stderr
    plugin = tmp_path / "my_suite.py"
    plugin.write_text('from harness.suites import define_suite\n'
                      'define_suite("mine", tasks=["vqav2", "no_such_task"], shots=[0])\n')
    proc = run_cli("run", "--model", "demo-majority", "--tasks", "mine", "--include", str(plugin), "--data-dir",
                   str(tmp_path), "--output", str(tmp_path / "r"), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: suite mine needs tasks that are not registered")
    assert "no_such_task" in proc.stderr
