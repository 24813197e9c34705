"""Launching over processes: torchrun ranks, --shard K/N and SLURM arrays give one process's results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.launch.distributed import balanced_share, default_threads, discover, resolve_device, slurm_array_shard
from harness.errors import HarnessError
from tests.conftest import ROOT, run_cli

# A small sweep: the bundled flamingo and a baseline, 40 questions, two shot counts, one seed.
# Batches of 2 make a cell long enough (10 batches a rank) to kill a rank in the middle of it.
SWEEP = ["run", "--model", "flamingo,demo-majority", "--tasks", "easyvqa", "--shots", "0", "4", "--seeds", "0",
         "--limit", "40", "--batch-size", "2", "--threads", "1", "-q"]
CELLS = [f"{m}/easyvqa/{s}shot_seed0" for m in ("flamingo", "demo-majority") for s in (0, 4)]


# ---- balanced shares, launch discovery, threads, devices ----------------------------------------------
def test_balanced_shares_partition_the_work_evenly_and_keep_eval_order():
    costs = [((i * 7919) % 97) + 1 for i in range(101)]  # uneven prompt lengths
    items = list(range(len(costs)))
    for n in (1, 2, 3, 8):
        shares = [balanced_share(items, costs, k, n) for k in range(n)]
        assert sorted(i for s in shares for i in s) == items  # every item once
        assert all(s == sorted(s) for s in shares)  # eval order within a share
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
        totals = [sum(costs[i] for i in s) for s in shares]
        # Within one longest item of each other; a strided split (every n-th) is far from it here.
        assert max(totals) - min(totals) <= max(costs)
        assert shares == [balanced_share(items, costs, k, n) for k in range(n)]  # pure
    strided = [sum(costs[k::2]) for k in range(2)]
    dealt = [sum(costs[i] for i in balanced_share(items, costs, k, 2)) for k in range(2)]
    assert abs(dealt[0] - dealt[1]) < abs(strided[0] - strided[1])


def test_discover_reads_torchrun_and_slurm_array_variables():
    torchrun = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                "MASTER_ADDR": "node0", "TORCHELASTIC_RUN_ID": "x"}
    launch = discover(None, torchrun)
    assert (launch.kind, launch.rank, launch.world_size, launch.local_rank, launch.local_world_size) == \
        ("torchrun", 3, 4, 1, 2)
    assert launch.shard is None and not launch.is_main
    with pytest.raises(HarnessError, match="drop --shard"):
        discover((0, 2), torchrun)
    assert discover(None, {**torchrun, "RANK": "0", "WORLD_SIZE": "1"}).kind == "single"
    assert discover((1, 3), {}).shard == (1, 3)
    assert discover(None, {}).kind == "single"
    # A SLURM array splits only when asked (--shard slurm): arrays often sweep configurations instead.
    array = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1",
             "SLURM_ARRAY_TASK_STEP": "2"}
    assert discover(None, array).kind == "single"
    assert discover("slurm", array).shard == (2, 4)
    assert slurm_array_shard({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "1"}) == (0, 1)
    with pytest.raises(HarnessError, match="SLURM_ARRAY_TASK_ID"):
        discover("slurm", {})
    with pytest.raises(HarnessError, match="not one of 4 tasks"):
        slurm_array_shard({**array, "SLURM_ARRAY_TASK_ID": "4"})


def test_default_threads_share_the_free_cores():
    assert default_threads(1, cores=16, load=0.0) == 16
    assert default_threads(8, cores=16, load=0.0) == 2
    assert default_threads(1, cores=2, load=1.0) == 1  # one busy neighbour: do not fight it for its core
    assert default_threads(1, cores=16, load=6.2) == 10
    assert default_threads(4, cores=2, load=9.0) == 1


def test_cuda_and_auto_mean_this_ranks_gpu():
    assert resolve_device("cuda", {"LOCAL_RANK": "3"}) == "cuda:3"
    assert resolve_device("cuda", {}) == "cuda:0"
    assert resolve_device("cuda:1", {"LOCAL_RANK": "3"}) == "cuda:1"
    assert resolve_device("cpu", {"LOCAL_RANK": "3"}) == "cpu"
    import torch

    assert resolve_device("auto", {"LOCAL_RANK": "2"}) == ("cuda:2" if torch.cuda.is_available() else "cpu")
    # Adapters take the resolved device; the recorded option (and so the result identity) stays as given.
    from models.flamingo.adapter import Flamingo

    model = Flamingo({"device": "auto"})
    assert str(model.model.device) == model.device == resolve_device("auto")
    assert model.config()["options"]["device"] == "auto"


def test_bad_launch_flags_are_one_line_errors():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_ARRAY")}
    for flags, words in ((["--shard", "slurm"], "SLURM_ARRAY_TASK_ID"), (["--threads", "0"], "--threads must be")):
        proc = run_cli("run", "--model", "demo-majority", "--tasks", "easyvqa", "--limit", "2", *flags,
                       env=env, check=False)
        assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr


# ---- real torchrun ---------------------------------------------------------------------------------------
def torchrun(nproc: int, output: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
         str(ROOT / "run_eval.py"), *SWEEP, "--output", str(output), *extra],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=600)
    if proc.returncode != 0:  # every rank's first error lines, then the end of the log
        firsts = [line for line in err.splitlines() if "Error" in line or "error:" in line][:20]
        raise AssertionError(f"torchrun failed ({proc.returncode}):\n{out}\n" + "\n".join(firsts) + f"\n...\n{err[-3000:]}")
    return out


def metrics_without_times(path: Path) -> dict:
    m = json.loads(path.read_text())
    for key in ("wall_time_s", "compute_time_s", "parts", "distributed", "model_stats"):  # per process/run
        m.pop(key, None)
    return m


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "res"
    run_cli(*SWEEP, "--output", str(out))
    return out


def assert_identical(one: Path, many: Path, labels: tuple[str, ...] = ("flamingo", "demo-majority")) -> None:
    for cell in (c for c in CELLS if c.split("/")[0] in labels):
        assert (many / cell / "predictions.jsonl").read_bytes() == (one / cell / "predictions.jsonl").read_bytes()
        assert metrics_without_times(many / cell / "metrics.json") == metrics_without_times(one / cell / "metrics.json")
        assert not (many / cell / "shards").exists()  # merged in the same run, and tidied
    for label in labels:
        s1, s2 = (json.loads((d / label / "summary.json").read_text()) for d in (one, many))
        times = ("wall_time_s", "compute_time_s")
        assert [{k: v for k, v in s.items() if k not in times} for s in s1] == \
            [{k: v for k, v in s.items() if k not in times} for s in s2]


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one_process(one_process, tmp_path):
    out = finish(torchrun(2, tmp_path / "res"))
    assert out.count("| easyvqa | accuracy |") == 1  # rank 0 alone prints the table
    assert_identical(one_process, tmp_path / "res")
    dist = json.loads((tmp_path / "res" / CELLS[0] / "metrics.json").read_text())["distributed"]
    assert dist["world_size"] == 2 and sum(r["n"] for r in dist["ranks"]) == 40
    assert min(r["idle_s"] for r in dist["ranks"]) == 0.0


BATCH_LOGGER = '''
import json, os
from harness.registry import register_model
from models.baselines import DemoMajority


@register_model("batch-logger")
class BatchLogger(DemoMajority):
    """demo-majority that also writes each batch it is given to $BATCH_LOG/<pid>.jsonl."""

    def generate(self, requests):
        with open(os.path.join(os.environ["BATCH_LOG"], f"{os.getpid()}.jsonl"), "a") as f:
            f.write(json.dumps([r.query.id for r in requests]) + "\\n")
        return super().generate(requests)
'''


@pytest.mark.slow
def test_torchrun_ranks_claim_the_batches_of_one_process(tmp_path):
    """The ranks claim the very batches one process runs (longest prompts first), each batch once,
    so batch composition, and with it any batch effect of a GPU kernel, never depends on the
    number of processes; a rank that finishes early takes the next batch instead of idling."""
    plugin = tmp_path / "batch_logger.py"
    plugin.write_text(BATCH_LOGGER)
    args = ["run", "--include", str(plugin), "--model", "batch-logger", "--tasks", "easyvqa", "--shots", "4",
            "--seeds", "0", "--limit", "37", "--batch-size", "3", "--threads", "1", "-q"]
    logs = {}
    for n in (1, 3):
        log_dir = tmp_path / f"log{n}"
        log_dir.mkdir()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "BATCH_LOG": str(log_dir)}
        launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n)]
                    if n > 1 else [sys.executable])
        proc = subprocess.run([*launcher, str(ROOT / "run_eval.py"), *args, "--output", str(tmp_path / f"res{n}")],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        logs[n] = [[json.loads(line) for line in f.read_text().splitlines()] for f in sorted(log_dir.iterdir())]
    (single,) = logs[1]
    assert sorted(map(len, single)) == [1] + [3] * 12
    batches = [b for per_rank in logs[3] for b in per_rank]
    assert sorted(batches) == sorted(single)  # the same batches, each computed once
    cell = "batch-logger/easyvqa/4shot_seed0/predictions.jsonl"
    assert (tmp_path / "res3" / cell).read_bytes() == (tmp_path / "res1" / cell).read_bytes()


def _rank_pid(torchrun_pid: int, rank: int) -> int | None:
    """The pid of a rank among torchrun's children (read from their environment)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0") if ppid == torchrun_pid else []
        except (OSError, IndexError, ValueError):
            continue
        if f"RANK={rank}".encode() in env:
            return int(entry.name)
    return None


def _journaled(cell: Path) -> set[str]:
    ids = set()
    for f in [cell / "predictions.jsonl", *cell.glob("shards/*/*.jsonl")]:
        if f.is_file():
            for line in f.read_text().splitlines():
                try:
                    ids.add(json.loads(line)["query_id"])
                except (json.JSONDecodeError, KeyError):
                    pass  # a torn last line of the killed rank
    return ids


@pytest.mark.slow
def test_rank_killed_mid_cell_then_rerun_on_three_ranks_recomputes_only_the_missing(one_process, tmp_path):
    res = tmp_path / "res"
    cell = res / CELLS[0]  # flamingo 0-shot, the first cell
    proc = torchrun(2, res)
    deadline = time.time() + 300
    victim = None
    killed = False
    while time.time() < deadline and proc.poll() is None and not killed:
        victim = victim or _rank_pid(proc.pid, 1)  # found early: scanning /proc is the slow part
        shard = next(iter(cell.glob("shards/*/1of2.jsonl")), None)
        if victim is not None and shard is not None and shard.read_text().count("\n") >= 1:
            os.kill(victim, signal.SIGKILL)  # after its first batch of 10
            killed = True
        time.sleep(0.005)
    assert killed, "rank 1 never journaled a batch"
    proc.communicate(timeout=300)
    assert proc.returncode != 0  # torchrun ends the other rank and reports the failure
    assert not (cell / "metrics.json").exists()
    kept = _journaled(cell)
    assert 0 < len(kept) < 40, len(kept)

    finish(torchrun(3, res))  # any number of ranks resumes
    dist = json.loads((cell / "metrics.json").read_text())["distributed"]
    assert sum(r["n"] for r in dist["ranks"]) == 40 - len(kept)  # only the missing samples were recomputed
    assert len(dist["ranks"]) == 3
    assert_identical(one_process, res)


@pytest.mark.slow
def test_independent_shards_then_merge_command_equal_one_process(one_process, tmp_path):
    """--shard K/N processes, then `run_eval.py merge RESULTS` (no model loaded); an unfinished shard
    is named and nothing is written."""
    args = [("demo-majority" if a == "flamingo,demo-majority" else a) for a in SWEEP]
    res = tmp_path / "res"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, str(ROOT / "run_eval.py"), *args, "--output", str(res),
                               "--shard", f"{k}/3"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for k in (0, 2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    proc = run_cli("merge", str(res), check=False)
    assert proc.returncode == 2 and "have no prediction yet" in proc.stderr and "0of3, 2of3" in proc.stderr
    assert "--shard K/N" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(res.rglob("metrics.json")) and not list(res.rglob("predictions.jsonl"))
    run_cli(*args, "--output", str(res), "--shard", "1/3")
    out = run_cli("merge", str(res)).stdout
    assert "demo-majority 4-shot" in out
    assert_identical(one_process, res, labels=("demo-majority",))
    assert run_cli("merge", str(res), check=False).returncode == 2  # nothing left to merge: said so
