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


# ---- the video benchmarks of the Flamingo suite (official schemas) ---------------------------
CAPTIONS = ["a red square moves to the right", "a square slides across the frame", "a coloured block moves",
            "a small square travels from left to right"]


def write_vatex(root: Path, n_train: int = 6, n_test: int = 3) -> Path:
    """VATEX: ``vatex_{training_v1.0,public_test_english_v1.1}.json`` = [{videoID, enCap, chCap}]."""
    base = root / "vatex"
    for split, fname, n in (("train", "vatex_training_v1.0.json", n_train),
                            ("test", "vatex_public_test_english_v1.1.json", n_test)):
        rows = []
        for i in range(n):
            vid = f"{split[:2]}Yt{i:02d}_{i * 10:06d}_{i * 10 + 10:06d}"
            write_video(base / "videos" / f"{vid}.mp4", n_frames=10, seed=i)
            rows.append({"videoID": vid, "enCap": [CAPTIONS[(i + j) % len(CAPTIONS)] for j in range(10)],
                         "chCap": ["一个方块向右移动"] * 10})
        (base / fname).write_text(json.dumps(rows, ensure_ascii=False))
    return root


def write_youcook2(root: Path) -> Path:
    """YouCook2: ``youcookii_annotations_trainval.json`` {database: {id: {subset, recipe_type, annotations}}};
    3-second videos under ``raw_videos/{subset}/{recipe_type}/``, one segment per second."""
    base = root / "youcook2"
    database = {}
    for v, subset in enumerate(["training", "training", "validation"]):
        vid = f"yc{v}Ab-Cd"
        write_video(base / "raw_videos" / subset / "113" / f"{vid}.mp4", n_frames=30, fps=10, seed=v)
        database[vid] = {"duration": 3.0, "subset": subset, "recipe_type": "113",
                         "video_url": f"https://www.youtube.com/watch?v={vid}",
                         "annotations": [{"id": s, "segment": [s, s + 1], "sentence": CAPTIONS[(v + s) % 4]}
                                         for s in range(3)]}
    (base / "youcookii_annotations_trainval.json").write_text(json.dumps({"database": database}))
    return root


def write_star(root: Path, n_train: int = 8, n_val: int = 4) -> Path:
    """STAR: ``STAR_{train,val}.json`` = [{question_id, question, video_id, start, end, answer, choices}]."""
    base = root / "star"
    for v in range(3):
        write_video(base / "videos" / f"CH{v:03d}.mp4", n_frames=30, fps=10, seed=v)
    categories = ["Interaction", "Sequence", "Prediction", "Feasibility"]
    for split, n in (("train", n_train), ("val", n_val)):
        rows = []
        for i in range(n):
            choices = ["The closet/cabinet.", "The table.", "The door.", "The box."]
            rows.append({"question_id": f"{categories[i % 4]}_T{i % 3 + 1}_{i}", "question": f"Which object {i}?",
                         "video_id": f"CH{i % 3:03d}", "start": 0.5, "end": 2.5, "answer": choices[i % 2],
                         "question_program": [], "situations": {},
                         "choices": [{"choice_id": j, "choice": c, "choice_program": []} for j, c in enumerate(choices)]})
        (base / f"STAR_{split}.json").write_text(json.dumps(rows))
    return root


RAREACT_ACTIONS = [("cut", "laptop"), ("cut", "phone"), ("blend", "phone"), ("drill", "laptop")]


def write_rareact(root: Path) -> Path:
    """RareAct: ``rareact.csv`` (id, video_id, start, end, class_id, verb, noun, annotation); 3-s videos, 1-s clips."""
    base = root / "rareact"
    rows = []
    for v in range(3):
        write_video(base / "videos" / f"RA{v}.mp4", n_frames=30, fps=10, seed=v)
        for clip in range(2):
            for c, (verb, noun) in enumerate(RAREACT_ACTIONS):
                annotation = 1 if (v + clip) % 4 == c else [0, 2, 3, 4][(v + clip + c) % 4]
                rows.append([len(rows), f"RA{v}", clip, clip + 1, c, verb, noun, annotation])
    with open(base / "rareact.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["id", "video_id", "start", "end", "class_id", "verb", "noun", "annotation"])
        wr.writerows(rows)
    return root


KINETICS_LABELS = ["abseiling", "playing cello", "riding a bike"]


def write_kinetics(root: Path, per_class_train: int = 2, n_val: int = 3) -> Path:
    """Kinetics-700-2020: ``{train,validate}.csv`` (label, youtube_id, time_start, time_end, split),
    clips ``videos/{split}/{label}/{youtube_id}_{start:06d}_{end:06d}.mp4``."""
    base = root / "kinetics700"
    for split, fname, n in (("train", "train.csv", per_class_train * len(KINETICS_LABELS)),
                            ("validate", "validate.csv", n_val)):
        with open(base.joinpath(fname) if base.is_dir() else _mkdir(base) / fname, "w", newline="") as f:
            wr = csv.writer(f)
            wr.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
            for i in range(n):
                label = KINETICS_LABELS[i % len(KINETICS_LABELS)] if split == "train" else KINETICS_LABELS[0]
                yid = f"{split[:2]}K{i:03d}-x"
                write_video(base / "videos" / split / label / f"{yid}_{i * 10:06d}_{i * 10 + 10:06d}.mp4",
                            n_frames=8, seed=i)
                wr.writerow([label, yid, i * 10, i * 10 + 10, split])
    return root


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
