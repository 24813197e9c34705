"""How much the frame cache saves on a 32-shot video sweep, and the decode time per video.

Writes synthetic clips (h264, a moving square; MSRVTT-like 320x240 at 30 fps by
default) and MSRVTT-QA files in the exact schema, then:

1. decodes every clip once, cold: the decode time per video (8 uniform frames);
2. runs a 32-shot sweep (one cell per seed, in one process) through the real
   Runner (sampler, prompt builder, media loading) with a probe model that
   loads every prompt's frames exactly as an image-only adapter with
   video_as_frames does, and answers nothing: with the frame cache (memory,
   filling a disk cache), with no cache (every load decodes), and with the
   disk cache only (a fresh process, or a support set beyond the memory budget).

Model compute is left out on purpose: it is the same with or without the cache.

    python benchmarks/video_cache.py [--support 48] [--queries 8] [--shots 32] [--seconds 10] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.model import Model  # noqa: E402
from harness.evaluation.runner import CellSpec, Runner  # noqa: E402
from harness.types import GenerateRequest  # noqa: E402
from harness.data.video import FrameCache, FrameSelection, decode_frames, media_as_images, set_frame_cache  # noqa: E402


def write_clip(path: Path, seconds: float, fps: int, w: int, h: int, seed: int) -> None:
    import av

    rng = np.random.default_rng(seed)
    colour = rng.integers(0, 256, 3, dtype=np.uint8)
    n = int(seconds * fps)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(n):
            frame = np.full((h, w, 3), 40, np.uint8)
            frame += rng.integers(0, 12, (h, w, 1), dtype=np.uint8)  # a little noise, so frames are not free
            x = int(i * (w - 40) / max(1, n - 1))
            frame[h // 2 - 20: h // 2 + 20, x: x + 40] = colour
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


class FramesOnly(Model):
    """Loads every prompt's video frames (as an image-only adapter would) and answers the empty string."""

    media_kinds = frozenset({"image", "video"})

    def __init__(self):
        super().__init__()
        self.frames_loaded = 0

    def generate(self, requests: Sequence[GenerateRequest]) -> list[str]:
        for r in requests:
            for chunk in r.prompt.chunks:
                self.frames_loaded += len(media_as_images(chunk.media, video_as_frames=True))
        return [""] * len(requests)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--support", type=int, default=48, help="support videos (demos are drawn from these)")
    ap.add_argument("--queries", type=int, default=8)
    ap.add_argument("--shots", type=int, default=32)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=3, help="cells (seeds 0..N-1) run in one process")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--size", default="320x240")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))

    from tasks.video_qa import MSRVTTQA

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        videos = root / "msrvtt_qa" / "videos"
        videos.mkdir(parents=True)
        n_videos = args.support + args.queries
        t0 = time.perf_counter()
        for v in range(n_videos):
            write_clip(videos / f"video{v}.mp4", args.seconds, args.fps, w, h, v)
        print(f"wrote {n_videos} clips ({args.seconds:g} s, {args.fps} fps, {w}x{h}, h264) in {time.perf_counter() - t0:.1f}s")
        train = [{"question": f"what is shown {i}?", "answer": "square", "video_id": i, "id": i} for i in range(args.support)]
        test = [{"question": f"what moves {i}?", "answer": "square", "video_id": args.support + i, "id": 10000 + i}
                for i in range(args.queries)]
        (root / "msrvtt_qa" / "train_qa.json").write_text(json.dumps(train))
        (root / "msrvtt_qa" / "test_qa.json").write_text(json.dumps(test))

        sel = FrameSelection(frames=args.frames)
        times = []
        for v in range(n_videos):
            t = time.perf_counter()
            decode_frames(str(videos / f"video{v}.mp4"), sel)
            times.append(time.perf_counter() - t)
        print(f"decode time per video ({args.frames} uniform frames, resized to 224x224): "
              f"mean {statistics.mean(times) * 1000:.1f} ms, median {statistics.median(times) * 1000:.1f} ms "
              f"over {n_videos} videos")

        seeds = list(range(args.seeds))
        loads = len(seeds) * args.queries * (args.shots + 1)
        disk = Path(tmp) / "frame_cache"
        results = {}
        # The disk cache is filled by the first row and read (memory cache off) by the last.
        rows = (("memory+disk", FrameCache(disk_dir=disk)), ("no cache", FrameCache(max_bytes=0)),
                ("disk only", FrameCache(max_bytes=0, disk_dir=disk)))
        for name, cache in rows:
            set_frame_cache(cache)
            task = MSRVTTQA(root, {"frames": str(args.frames)})
            model = FramesOnly()
            runner = Runner(model, Path(tmp) / name.replace(" ", "_"), progress=False)
            t = time.perf_counter()
            for seed in seeds:  # one process, as `run --seeds 0 1 2` does: the cache spans the cells
                runner.run_cell(task, CellSpec(args.shots, seed))
            results[name] = (time.perf_counter() - t, cache.decodes, model.frames_loaded)
        print(f"\n{args.shots}-shot sweep over seeds {seeds}: {args.queries} queries, support {args.support} videos, "
              f"{loads} video loads")
        print(f"{'':12s} {'wall s':>8s} {'decodes':>8s} {'frames fed':>10s} {'ms/load':>8s}")
        for name, (secs, decodes, frames) in results.items():
            print(f"{name:12s} {secs:8.2f} {decodes:8d} {frames:10d} {secs / loads * 1000:8.2f}")
        base = results["no cache"][0]
        print(f"ratio no cache / memory+disk cache: {base / results['memory+disk'][0]:.1f}x; "
              f"no cache / disk only: {base / results['disk only'][0]:.1f}x")


if __name__ == "__main__":
    main()
