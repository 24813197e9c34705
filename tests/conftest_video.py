"""Fixtures for the video and close-ended tests: real mp4 files written with PyAV, data in the
exact schemas of MSVD-QA, MSRVTT-QA, iVQA, NExT-QA and HatefulMemes.

Imported explicitly by tests/test_video*.py (the lead owns tests/conftest.py).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

COLOURS = [(255, 0, 0), (0, 200, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255)]


def write_video(path: Path, n_frames: int = 30, fps: int = 10, size: tuple[int, int] = (64, 48), seed: int = 0) -> Path:
    """A real mp4 (mpeg4) of a coloured square moving left to right over a tinted background.

    Frame i's square sits at x = i * (w - 12) / (n - 1), so a decoded frame tells which frame it is.
    """
    import av

    w, h = size
    colour = COLOURS[seed % len(COLOURS)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(n_frames):
            frame = np.full((h, w, 3), 30 + 20 * (seed % 5), np.uint8)
            x = int(round(i * (w - 12) / max(1, n_frames - 1)))
            frame[h // 2 - 6: h // 2 + 6, x: x + 12] = colour
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def square_x(frame: np.ndarray) -> float:
    """Horizontal centre of the bright square in a decoded frame (to tell frames apart)."""
    cols = np.where(frame.astype(int).max(axis=2).max(axis=0) > 150)[0]
    return float(cols.mean()) if len(cols) else -1.0


# ---- data in the exact schemas ------------------------------------------------------
ANSWERS = ["dog", "cat", "man", "car", "ball"]


def write_msqa(root: Path, task: str, pattern: str, n_train: int = 10, n_test: int = 4, n_videos: int = 5) -> Path:
    """MSVD-QA / MSRVTT-QA: ``{split}_qa.json`` = [{question, answer, video_id, id}], videos by pattern."""
    base = root / task
    for v in range(n_videos):
        write_video(base / "videos" / pattern.format(video_id=v), n_frames=12, seed=v)
    qid = 0
    for split, n in (("train", n_train), ("test", n_test)):
        rows = []
        for i in range(n):
            rows.append({"answer": ANSWERS[i % 3 if split == "test" else i % 2], "id": qid,
                         "question": f"what is in video {i}?", "video_id": i % n_videos})
            qid += 1
        (base / f"{split}_qa.json").write_text(json.dumps(rows))
    return root


def write_ivqa(root: Path, n_train: int = 8, n_test: int = 4) -> Path:
    base = root / "ivqa"
    for v in range(3):
        write_video(base / "videos" / f"vid{v}_0_5.mp4", n_frames=12, seed=v)
    for split, n in (("train", n_train), ("test", n_test)):
        with open(base / f"{split}.csv", "w", newline="") as f:
            wr = csv.writer(f)
            wr.writerow(["video_id", "start", "end", "question", "answer1", "answer2", "answer3", "answer4", "answer5"])
            for i in range(n):
                answers = ["dog", "dog", "puppy", "the dog", ""] if i % 2 == 0 else ["cat", "kitten", "cat", "cat", "cat"]
                wr.writerow([f"vid{i % 3}", 0, 5, f"what animal is shown {i}?", *answers])
    return root


def write_nextqa(root: Path, n_train: int = 8, n_val: int = 4) -> Path:
    base = root / "nextqa_mc"
    for v in range(3):
        write_video(base / "videos" / f"{1000 + v}.mp4", n_frames=12, seed=v)
    for split, n in (("train", n_train), ("val", n_val)):
        with open(base / f"{split}.csv", "w", newline="") as f:
            wr = csv.writer(f)
            wr.writerow(["video", "frame_count", "width", "height", "question", "answer", "qid", "type",
                         "a0", "a1", "a2", "a3", "a4"])
            for i in range(n):
                wr.writerow([1000 + i % 3, 12, 64, 48, f"why did the square move {i}", 2, i, ["CW", "TN"][i % 2],
                             "to rest", "it fell", "to the right", "someone pushed it", "no reason at all"])
    return root


def write_hateful(root: Path, n_train: int = 10, n_dev: int = 6) -> Path:
    from PIL import Image

    base = root / "hateful_memes"
    (base / "img").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev_seen", n_dev)):
        with open(base / f"{split}.jsonl", "w") as f:
            for i in range(n):
                mid = (1 if split == "train" else 5) * 10000 + i
                Image.new("RGB", (40, 40), COLOURS[i % len(COLOURS)]).save(base / "img" / f"{mid}.png")
                label = int(i % 3 == 0)
                f.write(json.dumps({"id": mid, "img": f"img/{mid}.png", "label": label,
                                    "text": f"meme text number {i}"}) + "\n")
    return root
