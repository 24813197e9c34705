"""Throughput of `--model openai` at concurrency 1, 4 and 16 against a local server, and the response
cache's effect on a rerun - side by side, in one run.

Starts ``transformers serve`` (``--continuous-batching`` with ``--cb``) on a tiny random Qwen2-VL
built here, on a free local port (stopped at the end), and runs easyvqa at 2 shots through the
command line with ``--batch-size`` = the query count (so every request of the cell may be in flight);
each concurrency gets an empty response cache; the last run is repeated with its cache warm.

    python benchmarks/served.py [--queries 32] [--cb]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=32)
    ap.add_argument("--cb", action="store_true", help="serve with --continuous-batching")
    args = ap.parse_args()

    from hf_tiny import build_tiny_hf
    from test_served import Server

    from harness.cli import main as cli

    tmp = Path(tempfile.mkdtemp(prefix="served_bench_"))
    model = build_tiny_hf("qwen2_vl", tmp / "model")
    (tmp / "hub").mkdir()
    server = Server(model, tmp / "hub", tmp / "serve.log", extra=["--continuous-batching"] if args.cb else [])
    server.start()
    url = f"http://127.0.0.1:{server.port}/v1"

    def run(tag: str, concurrency: int, cache: Path) -> float:
        os.environ["HARNESS_CACHE"] = str(cache)
        start = time.perf_counter()
        rc = cli(["run", "-q", "--model", "openai", "--model-arg", f"base_url={url}", "--model-arg",
                  f"model={model}", "--model-arg", f"concurrency={concurrency}", "--tasks", "easyvqa",
                  "--task-arg", "num_beams=1", "--shots", "2", "--seeds", "0", "--limit", str(args.queries),
                  "--batch-size", str(args.queries), "--output", str(tmp / tag)])
        assert rc == 0, f"{tag}: exit {rc} (server log: {tmp / 'serve.log'})"
        return time.perf_counter() - start

    try:
        run("warmup", 1, tmp / "cache_warmup")  # the server loads the model on its first request
        times = {c: run(f"c{c}", c, tmp / f"cache{c}") for c in (1, 4, 16)}
        rerun = run("rerun", 16, tmp / "cache16")
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    n = args.queries
    print(f"easyvqa 2-shot, {n} queries, transformers serve{' --continuous-batching' if args.cb else ''}, tiny Qwen2-VL, CPU")
    for c, t in times.items():
        print(f"  concurrency {c:2d}: {t:6.2f} s  {n / t:6.2f} req/s  x{times[1] / t:.2f} vs concurrency 1")
    print(f"  rerun, cache warm (concurrency 16): {rerun:6.2f} s  x{times[16] / rerun:.1f} faster than cold")


if __name__ == "__main__":
    main()
