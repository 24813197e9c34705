"""Per-query time at batch 1 / 4 / 8 for the `hf` and `idefics` adapters, and output equality.

    python benchmarks/batching.py [--families qwen2_vl,idefics3,idefics] [--shots 0 8 32]
                                  [--batches 1 4 8 auto] [--queries 16] [--threads 1]

Builds each tiny random-weight model (tests/hf_tiny.py, tests/conftest.py's IDEFICS) in a temporary
folder, loads it once, and runs the same easy-VQA cell (first --queries test questions, seed 0) at
each shot count and batch size through the harness's own Runner, in one process, side by side. It
prints the cell's wall time per query (model loading and one untimed warm-up run of the cell, which
fills the model's image caches, outside it) and the ratio to batch 1 (the aim: never above 1), and whether every batch size gave the same predictions as batch 1. Random weights:
the outputs are noise, but they must be the same noise at every batch size (left padding must not
change what a prompt generates). ``auto`` (--batch-size auto) shows the size it chose; its time
includes its trial batches.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def build(family: str, directory: Path) -> tuple[str, dict]:
    if family == "idefics":
        from conftest import build_tiny_idefics

        return "idefics", {"path": str(build_tiny_idefics(directory))}
    from hf_tiny import build_tiny_hf

    return "hf", {"path": str(build_tiny_hf(family, directory))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default="qwen2_vl,idefics3,idefics")
    ap.add_argument("--shots", type=int, nargs="+", default=[0, 8, 32])
    ap.add_argument("--batches", nargs="+", default=["1", "4", "8", "auto"], help="sizes, or auto")
    ap.add_argument("--attention", default="sdpa_rows,sdpa",
                    help="attention implementations to compare: sdpa_rows (the adapters' default, "
                         "models/hf_attention.py) and plain sdpa (what they used before)")
    ap.add_argument("--queries", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from harness import plugins
    from harness.evaluation.runner import CellSpec, Runner
    from harness.registry import get_model_class, get_task_class

    plugins.load_builtins()
    task = get_task_class("easyvqa")(None, {})
    rows = []
    with tempfile.TemporaryDirectory(prefix="batching_bench_") as tmp:
        for family in args.families.split(","):
            name, options = build(family, Path(tmp) / family)
            model = get_model_class(name)(options)
            for attention in args.attention.split(","):
                model.model.set_attn_implementation(attention)
                for shots in args.shots:
                    base = None
                    # untimed: the first run of a shot count encodes its demo images into the model's caches;
                    # every timed size below then starts from the same warm caches
                    Runner(model, Path(tmp) / "warm" / f"{family}-{attention}-{shots}", label="m",
                           progress=False).run_cell(task, CellSpec(shots=shots, seed=0, limit=args.queries, batch_size=1))
                    for b in [x if x == "auto" else int(x) for x in args.batches]:
                        out = Path(tmp) / "res" / f"{family}-{attention}-{shots}-{b}"
                        t0 = time.perf_counter()
                        res = Runner(model, out, label="m", progress=False).run_cell(
                            task, CellSpec(shots=shots, seed=0, limit=args.queries, batch_size=b))
                        wall = time.perf_counter() - t0
                        preds = [json.loads(line)["raw_output"]
                                 for line in next(out.rglob("predictions.jsonl")).read_text().splitlines() if line]
                        per_q = res.get("wall_time_s", wall) / args.queries
                        if base is None:
                            base = (per_q, preds)
                        if b == "auto":
                            b = f"auto={res['batch_size']['chosen']}"
                        rows.append((family, attention, shots, b, per_q, per_q / base[0], preds == base[1]))
                        print(f"{family:10s} {attention:9s} {shots:3d} shots  batch {b}: {per_q:7.3f} s/query  "
                              f"x{per_q / base[0]:.2f} of batch 1  same outputs: {preds == base[1]}", flush=True)
            del model
    print("\nfamily     attention  shots  batch  s/query  vs batch 1  same outputs as batch 1")
    for family, attention, shots, b, per_q, ratio, same in rows:
        print(f"{family:10s} {attention:9s} {shots:6d} {b!s:>6s} {per_q:8.3f} {ratio:10.2f}  {same}")


if __name__ == "__main__":
    main()
