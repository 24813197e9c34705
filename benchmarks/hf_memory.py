"""Memory of a task split read from a Hugging Face dataset: loading N rows decodes no image.

Builds a save_to_disk dataset of N rows in the lmms-lab/VQAv2 schema (ten answer dicts per row, a
distinct JPEG per row), loads it as the vqav2 eval split, builds the prompts' media for --limit
queries, and prints: rows, images decoded, peak RSS growth while loading, and what holding every
decoded image would take. Run: python benchmarks/hf_memory.py [--rows 200000] [--limit 10]
"""

from __future__ import annotations

import argparse
import io
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(path: Path, rows: int, size: int) -> None:
    import datasets
    from PIL import Image

    def jpeg(i: int) -> bytes:
        buf = io.BytesIO()
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=60)
        return buf.getvalue()

    features = datasets.Features({
        "question_id": datasets.Value("int64"), "question": datasets.Value("string"),
        "answers": [{"answer": datasets.Value("string"), "answer_confidence": datasets.Value("string"),
                     "answer_id": datasets.Value("int64")}],
        "answer_type": datasets.Value("string"), "image": datasets.Image()})

    def gen():
        for i in range(rows):
            yield {"question_id": i, "question": f"what is shown in picture {i}?",
                   "answers": [{"answer": ["yes", "no", "two"][i % 3], "answer_confidence": "yes", "answer_id": j}
                               for j in range(10)],
                   "answer_type": "other", "image": {"bytes": jpeg(i), "path": None}}

    datasets.Dataset.from_generator(gen, features=features).save_to_disk(str(path))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--limit", type=int, default=10)
    ap.add_argument("--size", type=int, default=224, help="image side in pixels")
    ap.add_argument("--dir", help="keep the built dataset here (reused when it exists)")
    args = ap.parse_args()
    import datasets  # noqa: F401  (imported before the baseline so its own memory is not counted)

    from harness.data import hf_data
    from harness.data.media import load_image
    from harness.registry import get_task_class
    from harness.plugins import load_builtins

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.dir) if args.dir else Path(tmp) / "ds"
        if not data.exists():
            t0 = time.time()
            build(data, args.rows, args.size)
            print(f"built {args.rows} rows in {time.time() - t0:.1f}s")
        load_builtins()
        base = peak_rss_mb()
        t0 = time.time()
        task = get_task_class("vqav2")(None, {"eval_source": f"hf:{data}@validation"})
        examples = task.eval_examples()
        loaded = peak_rss_mb()
        for ex in examples[: args.limit]:
            for m in ex.media:
                load_image(m)
        used = peak_rss_mb()
        one = args.size * args.size * 3 / 2**20
        print(f"rows loaded: {len(examples)} in {time.time() - t0:.1f}s; images decoded: {hf_data.decoded_images()}")
        print(f"peak RSS growth: loading the split {loaded - base:.0f} MiB, after decoding the used images "
              f"{used - base:.0f} MiB; every image decoded would need {one * len(examples):.0f} MiB")


if __name__ == "__main__":
    main()
