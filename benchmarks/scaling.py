"""Scaling over processes: the same cell on 1 process and on 2 torchrun ranks, one thread each.

    python benchmarks/scaling.py [--model flamingo] [--limit 1000] [--shots 32] [--batch-size 8]

Runs, side by side in one invocation, into fresh folders:

1. a plain ``run_eval.py run`` of one cell (``--threads 1``);
2. ``torchrun --standalone --nproc_per_node 2 run_eval.py run`` of the same cell;
3. two independent copies of (1) at the same time: what this machine's cores give two processes of
   this workload with no coordination at all (on 2 vCPUs that share caches, memory bandwidth or a
   physical core this is below 2x).

It prints each one's throughput (queries per second over the cell's wall time, from metrics.json:
model loading and interpreter start are outside it), the torchrun ratio (target >= 1.8x), the
ceiling from (3) and the ratio as a share of it, the idle time of the faster rank at the end of
the cell, and whether the predictions are byte-identical. Needs 2 free cores to mean anything: on
a loaded machine the ratio says more about the neighbours than about the harness.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
       "TOKENIZERS_PARALLELISM": "false"}


def start(cmd: list[str], output: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd + ["--output", str(output)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(map(str, proc.args))}\n{err[-3000:]}")


def run(cmd: list[str], output: Path) -> float:
    t0 = time.time()
    finish(start(cmd, output))
    return time.time() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="flamingo")
    p.add_argument("--task", default="easyvqa")
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--shots", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args()

    sweep = [str(ROOT / "run_eval.py"), "run", "--model", args.model, "--tasks", args.task, "--shots", str(args.shots),
             "--seeds", str(args.seed), "--limit", str(args.limit), "--batch-size", str(args.batch_size),
             "--threads", "1", "-q"]
    cell = Path(args.model) / args.task / f"{args.shots}shot_seed{args.seed}"
    print(f"cell: {args.model} {args.task} {args.shots}-shot seed {args.seed}, {args.limit} queries, "
          f"batch {args.batch_size}, 1 thread per process; {os.cpu_count()} CPUs; "
          f"load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        folders = {name: Path(tmp) / name for name in ("one", "two", "pair_a", "pair_b")}
        cmd_s = run([sys.executable, *sweep], folders["one"])
        cmd_t = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *sweep],
                    folders["two"])
        for proc in [start([sys.executable, *sweep], folders[name]) for name in ("pair_a", "pair_b")]:
            finish(proc)
        m = {name: json.loads((folder / cell / "metrics.json").read_text()) for name, folder in folders.items()}
        same = (folders["one"] / cell / "predictions.jsonl").read_bytes() == \
            (folders["two"] / cell / "predictions.jsonl").read_bytes()
    t1, t2 = m["one"]["wall_time_s"], m["two"]["wall_time_s"]
    pair = [m[name]["wall_time_s"] for name in ("pair_a", "pair_b")]
    ceiling = 2 * t1 / max(pair)  # two cells done in the time of the slower copy
    ratio = t1 / t2
    ranks = m["two"]["distributed"]["ranks"]
    faster = min(ranks, key=lambda r: r["compute_s"])
    n = m["one"]["n"]
    print(f"1 process : {n / t1:8.1f} queries/s  (cell {t1:.2f}s; whole command {cmd_s:.1f}s)")
    print(f"2 ranks   : {n / t2:8.1f} queries/s  (cell {t2:.2f}s; whole command {cmd_t:.1f}s; "
          f"samples per rank {[r['n'] for r in ranks]})")
    print(f"2 copies  : {2 * n / max(pair):8.1f} queries/s  (two independent processes at once, cells "
          f"{pair[0]:.2f}s and {pair[1]:.2f}s)")
    print(f"ceiling   : {ceiling:.2f}x  (what the cores give two uncoordinated processes of this workload)")
    print(f"ratio     : {ratio:.2f}x  (target >= 1.8x; {100 * ratio / ceiling:.0f}% of the ceiling)")
    print(f"idle      : the faster rank (rank {faster['rank']}) waited {faster['idle_s']:.2f}s at the end of the cell "
          f"({100 * faster['idle_s'] / t2:.1f}% of it)")
    print(f"identical : predictions.jsonl byte-identical: {same}; "
          f"metrics equal: {m['one']['metrics'] == m['two']['metrics']}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
