"""Demonstration sampling: a pure function of (seed, task, query id, shots)."""

import json

import pytest

from harness.errors import HarnessError
from harness.sampling import RandomSampler
from harness.types import Example
from tests.conftest import run_cli


def examples(n, prefix="s"):
    return [Example(id=f"{prefix}{i}", media=(), fields={"question": f"q{i}"}, target=f"a{i}") for i in range(n)]


def ids(demos):
    return [d.id for d in demos]


def test_demos_are_a_pure_function_of_the_keys():
    support = examples(500)
    queries = examples(40, "q")
    a = RandomSampler("t", support, seed=1, support_size=100)
    b = RandomSampler("t", list(support), seed=1, support_size=100)
    forward = {q.id: ids(a.demos(q, 8)) for q in queries}
    backward = {q.id: ids(b.demos(q, 8)) for q in reversed(queries)}
    assert forward == backward
    # Other seed, task or shot count: other demos.
    assert forward != {q.id: ids(RandomSampler("t", support, 2, 100).demos(q, 8)) for q in queries}
    assert forward != {q.id: ids(RandomSampler("u", support, 1, 100).demos(q, 8)) for q in queries}
    assert all(len(set(v)) == 8 for v in forward.values())  # no repeats
    assert len({tuple(v) for v in forward.values()}) == len(queries)  # queries differ


def test_support_set_size_and_stability():
    support = examples(3000)
    s = RandomSampler("t", support, seed=0)
    assert len(s.pool) == 2048 and len({e.id for e in s.pool}) == 2048
    assert ids(s.pool) == ids(RandomSampler("t", support, seed=0).pool)
    assert len(RandomSampler("t", support[:10], seed=0).pool) == 10  # smaller support: all of it


def test_query_is_never_its_own_demo():
    pool = examples(9)
    s = RandomSampler("t", pool, seed=3, support_size=0)
    for q in pool:
        for shots in (1, 4, 8):
            demos = ids(s.demos(q, shots))
            assert q.id not in demos and len(demos) == shots and len(set(demos)) == shots


def test_impossible_shot_count_is_a_clear_error():
    s = RandomSampler("t", examples(5), seed=0)
    with pytest.raises(HarnessError, match="32 shots asked for, but the support set has only 5"):
        s.demos(examples(1, "q")[0], 32)
    with pytest.raises(HarnessError, match="support split is empty"):
        RandomSampler("t", [], seed=0)


def test_demos_independent_of_batch_size_end_to_end(tmp_path):
    journals = []
    for bs in ("1", "7"):
        out = tmp_path / f"bs{bs}"
        run_cli("run", "--model", "demo-majority", "--tasks", "easyvqa", "--shots", "4", "--seeds", "5",
                "--limit", "30", "--batch-size", bs, "--output", str(out), "-q")
        lines = (out / "demo-majority" / "easyvqa" / "4shot_seed5" / "predictions.jsonl").read_text().splitlines()
        journals.append({r["query_id"]: (r["demo_ids"], r["prediction"]) for r in map(json.loads, lines)})
    assert journals[0] == journals[1] and len(journals[0]) == 30


@pytest.mark.slow
def test_sharded_processes_equal_one_process(tmp_path):
    """Three real processes at once, each a shard, then a merge: identical to one process."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    args = ["run", "--model", "demo-majority", "--tasks", "easyvqa", "--shots", "0", "4", "--seeds", "3",
            "--limit", "25", "-q", "--threads", "1"]
    run_cli(*args, "--output", str(tmp_path / "one"))
    sharded = tmp_path / "sharded"
    procs = [subprocess.Popen([sys.executable, str(ROOT / "run_eval.py"), *args, "--output", str(sharded),
                               "--shard", f"{k}/3"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for k in range(3)]
    assert all(p.wait() == 0 for p in procs)
    assert not list(sharded.rglob("metrics.json"))  # shards only journal
    run_cli(*args, "--output", str(sharded))
    for shots in (0, 4):
        c = f"demo-majority/easyvqa/{shots}shot_seed3"
        one = {r["query_id"]: r for r in map(json.loads, (tmp_path / "one" / c / "predictions.jsonl").read_text().splitlines())}
        many = {r["query_id"]: r for r in map(json.loads, (sharded / c / "predictions.jsonl").read_text().splitlines())}
        assert one == many and len(one) == 25
        m1 = json.loads((tmp_path / "one" / c / "metrics.json").read_text())
        m2 = json.loads((sharded / c / "metrics.json").read_text())
        assert m1["metrics"] == m2["metrics"] and m1["config_key"] == m2["config_key"]
        assert not list((sharded / c).glob("shards/*/*.jsonl"))  # merged and removed
