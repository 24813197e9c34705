"""Vision encodes per query of the `hf` adapter with and without its vision-feature cache.

Builds the tiny test models of the families whose features are cached per image (tests/hf_tiny.py)
and runs the real CLI on easy-VQA (demos drawn from a support set of --support examples) twice:
``feature_cache_mb=0`` (the model encodes every image of every prompt, as transformers does) and
the default cache. Prints, per family: images per prompt, images encoded per query without the
cache (all of them) and with it (``vision_encodes`` of metrics.json / queries), seconds per query,
and whether the predictions are identical. The towers are tiny, so the times show overhead only.

    python benchmarks/hf_feature_cache.py [--queries 32] [--shots 4] [--support 16] [--batch 4]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def run(model_dir: Path, out: Path, args, *extra: str) -> tuple[dict, list[dict]]:
    import contextlib
    import io

    from harness.cli import main

    with contextlib.redirect_stdout(io.StringIO()):  # the run's own table
        rc = main(["run", "-q", "--model", "hf", "--model-arg", f"path={model_dir}", *extra, "--tasks", "easyvqa",
                   "--task-arg", f"support_size={args.support}", "--shots", str(args.shots), "--seeds", "0",
                   "--limit", str(args.queries), "--batch-size", str(args.batch), "--output", str(out)])
    assert rc == 0, f"run failed: {rc}"
    cell = next(out.glob(f"*/easyvqa/{args.shots}shot_seed0"))
    preds = [json.loads(x) for x in (cell / "predictions.jsonl").read_text().splitlines()]
    return json.loads((cell / "metrics.json").read_text()), preds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default="idefics3,qwen2_vl,gemma3")
    ap.add_argument("--queries", type=int, default=32)
    ap.add_argument("--shots", type=int, default=4)
    ap.add_argument("--support", type=int, default=16, help="support set the demos come from")
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()
    from hf_tiny import build_tiny_hf

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for family in args.families.split(","):
            model_dir = build_tiny_hf(family, root / family)
            plain, p_preds = run(model_dir, root / f"{family}-plain", args, "--model-arg", "feature_cache_mb=0")
            cached, c_preds = run(model_dir, root / f"{family}-cached", args)
            n = plain["n"]
            images = args.shots + 1  # every demo and the query carry one image
            encodes = cached["model_stats"]["vision_encodes"]
            same = [p["raw_output"] for p in p_preds] == [p["raw_output"] for p in c_preds]
            print(f"{family}: {args.shots}-shot, {n} queries, support {args.support}, batch {args.batch}: "
                  f"images encoded per query {images} without the cache, {encodes / n:.2f} with it "
                  f"(hits {cached['model_stats']['feature_cache_hits']}); "
                  f"{plain['wall_time_s'] / n * 1000:.0f} vs {cached['wall_time_s'] / n * 1000:.0f} ms/query; "
                  f"identical predictions: {same}")


if __name__ == "__main__":
    main()
