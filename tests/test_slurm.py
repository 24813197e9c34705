"""The documented SLURM scripts on a real scheduler: a one-node cluster (Debian's slurm-wlm and munge,
started as root in a temporary folder with its own ports and munge socket) runs scripts/slurm/submit.sh:
an array job of shards, then the dependent merge job. The merged results must equal one process's."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, run_cli

pytestmark = pytest.mark.slow

DAEMONS = {"slurmctld": "/usr/sbin/slurmctld", "slurmd": "/usr/sbin/slurmd", "munged": "/usr/sbin/munged",
           "sbatch": "/usr/bin/sbatch"}
PACKAGES = ["slurm-wlm", "slurmd", "munge"]
ARGS = "--model flamingo,demo-majority --tasks easyvqa --shots 0 4 --seeds 0 1 --limit 40 --batch-size 4"
SHARDS = 2


def _binaries() -> str | None:
    """None when the scheduler can run here, else why not."""
    if os.geteuid() != 0:
        return "a one-node SLURM cluster needs root (slurmd runs jobs as their user)"
    missing = [n for n, p in DAEMONS.items() if not Path(p).exists()]
    if missing:
        return f"{', '.join(missing)} not installed: ./scripts/setup.sh --tests installs {' '.join(PACKAGES)} (as root)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    why = _binaries()
    if why:
        pytest.skip(why)
    d = tmp_path_factory.mktemp("slurm")
    for sub in ("munge", "spool", "state", "log"):
        (d / sub).mkdir()
    key = d / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    sock = d / "munge" / "socket"
    subprocess.run([DAEMONS["munged"], "--force", f"--key-file={key}", f"--socket={sock}",
                    f"--pid-file={d / 'munge' / 'pid'}", f"--log-file={d / 'log' / 'munged.log'}",
                    f"--seed-file={d / 'munge' / 'seed'}"], check=True)
    host = socket.gethostname().split(".")[0]
    cpus = os.cpu_count() or 1
    conf = d / "slurm.conf"
    conf.write_text(f"""ClusterName=harnesstest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
StateSaveLocation={d / 'state'}
SlurmdSpoolDir={d / 'spool'}
SlurmctldPidFile={d / 'slurmctld.pid'}
SlurmdPidFile={d / 'slurmd.pid'}
SlurmctldLogFile={d / 'log' / 'slurmctld.log'}
SlurmdLogFile={d / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    try:
        subprocess.run([DAEMONS["slurmctld"], "-f", str(conf)], check=True, env=env)
        subprocess.run([DAEMONS["slurmd"], "-f", str(conf), "-N", host], check=True, env=env)
        for _ in range(60):
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=env).stdout.strip()
            if state.startswith("idle"):
                break
            time.sleep(1)
        else:
            pytest.fail(f"the node never came up (sinfo: {state!r}); logs in {d / 'log'}")
        yield env
    finally:
        subprocess.run(["scancel", "--user", "root"], capture_output=True, env=env)
        for name in ("slurmd", "slurmctld"):
            pid = d / f"{name}.pid"
            if pid.exists():
                subprocess.run(["kill", pid.read_text().strip()], capture_output=True)
        subprocess.run([DAEMONS["munged"], "-s", f"--socket={sock}"], capture_output=True)


def _wait(job: str, env: dict, timeout: float = 900.0) -> str:
    """The job's final state (COMPLETED, FAILED, ...), polling scontrol."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        out = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True, env=env).stdout
        states = {f.split("=", 1)[1] for line in out.splitlines() for f in line.split() if f.startswith("JobState=")}
        if states and states <= {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}:
            return "COMPLETED" if states == {"COMPLETED"} else ",".join(sorted(states))
        time.sleep(2)
    raise AssertionError(f"job {job} not finished after {timeout:.0f}s")


def test_documented_array_and_merge_jobs_equal_one_process(cluster, tmp_path):
    out, single = tmp_path / "slurm-results", tmp_path / "one-process"
    env = {**cluster, "HARNESS_ARGS": ARGS, "HARNESS_OUTPUT": str(out), "HARNESS_DATA": "",
           "HARNESS_VENV": str(Path(sys.executable).parent.parent), "SHARD_SBATCH": "--cpus-per-task=1",
           "HARNESS_LOGS": str(tmp_path / "logs")}
    t0 = time.time()
    proc = subprocess.run([str(ROOT / "scripts" / "slurm" / "submit.sh"), str(SHARDS)], capture_output=True,
                          text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    print(proc.stdout, end="")
    words = proc.stdout.split()
    shard_job, merge_job = words[words.index("shards:") + 2], words[words.index("merge:") + 2].rstrip(",")
    assert _wait(merge_job, env) == "COMPLETED", _logs(tmp_path / "logs")
    wall = time.time() - t0
    assert _wait(shard_job, env) == "COMPLETED"
    logs = _logs(tmp_path / "logs")
    print(logs)
    print(f"array of {SHARDS} shards + merge: {wall:.1f}s from submission to the merged table")
    # both shards ran, each its own share, and the merge job printed the table
    assert "array task 0 of 2" in logs and "array task 1 of 2" in logs
    assert "| easyvqa | accuracy |" in logs and "merged the shards" in logs

    run_cli("run", *ARGS.split(), "--output", str(single), "-q")
    cells = sorted(p.parent.relative_to(single) for p in single.rglob("metrics.json"))
    assert len(cells) == 2 * 2 * 2  # models x shots x seeds
    assert cells == sorted(p.parent.relative_to(out) for p in out.rglob("metrics.json"))
    for cell in cells:
        a, b = single / cell, out / cell
        assert (a / "predictions.jsonl").read_bytes() == (b / "predictions.jsonl").read_bytes(), cell
        ma, mb = json.loads((a / "metrics.json").read_text()), json.loads((b / "metrics.json").read_text())
        assert ma["metrics"] == mb["metrics"] and ma["config_key"] == mb["config_key"], cell
        assert ma["n"] == mb["n"] == 40
    print(f"{len(cells)} cells: predictions.jsonl byte-identical and metrics equal to one process's")


def _logs(folder: Path) -> str:
    return "\n".join(f"== {p.name}\n{p.read_text()}" for p in sorted(folder.glob("*.out")))
