"""How much the `hf` adapter's pixel cache saves on a few-shot sweep: image processing per prompt.

Real-size image processors (no model: its compute is the same with or without the cache):
Idefics3 (1456 px longest edge, 364 px tiles, splitting on) and Qwen2-VL (14 px patches, up to
1280 merged tokens per image), on scikit-image's sample photos. Each query's prompt holds SHOTS demo
images drawn from a small support pool plus its own image, as a random sampler makes them; the
processor output for a batch of BATCH prompts is built with the processor's own image processor
and with :class:`models.hf_cache.CachedImageProcessor`, side by side, in one run.

    python benchmarks/hf_pixel_cache.py [--queries 16] [--shots 4] [--pool 8] [--batch 4]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.hf_cache import KEY, MERGES, ByteLRU, CachedImageProcessor, nbytes  # noqa: E402


def photos(n: int) -> list:
    from PIL import Image
    from skimage import data

    names = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
             "cat", "colorwheel", "logo", "camera", "coins"]
    out = []
    for i in range(n):
        name = names[i % len(names)]
        arr = getattr(data, name)()
        im = Image.fromarray(arr[..., :3] if arr.ndim == 3 else arr).convert("RGB")
        im = im.resize((640 + 16 * i, 480 + 8 * i))  # COCO-like sizes, each image its own
        im.info[KEY] = f"{name}-{i}"
        out.append(im)
    return out


def processors():
    from transformers import Idefics3ImageProcessorPil, Qwen2VLImageProcessorPil

    yield "idefics3", Idefics3ImageProcessorPil(size={"longest_edge": 1456}, max_image_size={"longest_edge": 364},
                                                do_image_splitting=True)
    yield "qwen2_vl", Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 1280)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=16)
    ap.add_argument("--shots", type=int, default=4)
    ap.add_argument("--pool", type=int, default=8, help="support images the demos come from")
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    rng = random.Random(0)
    pool = photos(args.pool + args.queries)
    support, queries = pool[: args.pool], pool[args.pool:]
    prompts = [rng.sample(support, args.shots) + [q] for q in queries]
    batches = [prompts[i: i + args.batch] for i in range(0, len(prompts), args.batch)]
    for family, ip in processors():
        cached = CachedImageProcessor(ip, MERGES[family], ByteLRU(2 << 30, nbytes))
        times = {}
        for label, fn in (("processor", ip), ("cached", cached)):
            start = time.perf_counter()
            outs = [fn(b, return_tensors="pt") for b in batches]
            times[label] = time.perf_counter() - start
            if label == "processor":
                reference = outs
        same = all(torch.equal(a["pixel_values"], b["pixel_values"]) for a, b in zip(reference, outs))
        n = args.queries
        print(f"{family}: {args.shots}-shot prompts, {n} queries, pool {args.pool}: processor "
              f"{times['processor'] / n * 1000:.1f} ms/query, cached {times['cached'] / n * 1000:.1f} ms/query "
              f"({times['processor'] / times['cached']:.1f}x); identical pixels: {same}")


if __name__ == "__main__":
    main()
