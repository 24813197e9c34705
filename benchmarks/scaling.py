"""Scaling over processes: the same cell on 1 process and on 2 torchrun ranks, one thread each.

    python benchmarks/scaling.py [--model flamingo] [--limit 1000] [--shots 32] [--batch-size 8]

Runs, side by side in one invocation, a plain ``run_eval.py run`` and ``torchrun --standalone
--nproc_per_node 2 run_eval.py run`` of one cell (``--threads 1`` in both), each into a fresh
folder, and prints for each the cell's throughput (queries per second over the cell's wall time,
from its metrics.json: model loading and interpreter start are outside it), the ratio (target
>= 1.8x on 2 idle cores), the idle time of the faster rank at the end of the cell (balanced shares
keep it short), and whether the predictions are byte-identical. Needs 2 free cores to mean anything:
on a loaded machine the ratio says more about the neighbours than about the harness.
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


def run(cmd: list[str], output: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.time()
    proc = subprocess.run(cmd + ["--output", str(output)], cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
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
          f"batch {args.batch_size}, 1 thread per process; load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        one, two = Path(tmp) / "one", Path(tmp) / "two"
        cmd_s = run([sys.executable, *sweep], one)
        cmd_t = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *sweep], two)
        m1 = json.loads((one / cell / "metrics.json").read_text())
        m2 = json.loads((two / cell / "metrics.json").read_text())
        same = (one / cell / "predictions.jsonl").read_bytes() == (two / cell / "predictions.jsonl").read_bytes()
    t1, t2 = m1["wall_time_s"], m2["wall_time_s"]
    ranks = m2["distributed"]["ranks"]
    faster = min(ranks, key=lambda r: r["compute_s"])
    print(f"1 process : {m1['n'] / t1:8.1f} queries/s  (cell {t1:.2f}s; whole command {cmd_s:.1f}s)")
    print(f"2 ranks   : {m2['n'] / t2:8.1f} queries/s  (cell {t2:.2f}s; whole command {cmd_t:.1f}s; "
          f"shares {[r['n'] for r in ranks]})")
    print(f"ratio     : {t1 / t2:.2f}x  (target >= 1.8x)")
    print(f"idle      : the faster rank (rank {faster['rank']}) waited {faster['idle_s']:.2f}s at the end of the cell "
          f"({100 * faster['idle_s'] / t2:.1f}% of it)")
    print(f"identical : predictions.jsonl byte-identical: {same}; metrics equal: {m1['metrics'] == m2['metrics']}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
