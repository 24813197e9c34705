"""Video as media: real mp4 files written with PyAV, decoded by the harness."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import build_tiny_idefics, run_cli  # noqa: E402
from conftest_video import square_x, write_nextqa, write_video  # noqa: E402
from harness.errors import HarnessError, MediaError
from harness.data.video import FrameCache, FrameSelection, decode_frames, select_indices


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """30 frames at 10 fps (3 s), the square moving left to right."""
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", n_frames=30, fps=10)


def expected_x(i: int, n: int = 30, w: int = 64) -> float:
    return round(i * (w - 12) / (n - 1)) + 5.5


def test_uniform_selection_frame_count_and_order(clip):
    frames = decode_frames(str(clip), FrameSelection(frames=8, size=None))
    assert frames.shape == (8, 48, 64, 3) and frames.dtype == np.uint8
    xs = [square_x(f) for f in frames]
    # segment centres of 30 frames in 8 parts: 1, 5, 9, 13, 16, 20, 24, 28
    for x, i in zip(xs, [1, 5, 9, 13, 16, 20, 24, 28]):
        assert abs(x - expected_x(i)) <= 1.5, (xs, i)


def test_frames_are_resized_once_at_decode(clip):
    frames = decode_frames(str(clip), FrameSelection(frames=3, size=32))
    assert frames.shape == (3, 32, 32, 3)


def test_short_clip_repeats_frames_to_keep_f(tmp_path):
    path = write_video(tmp_path / "short.mp4", n_frames=4, fps=10)
    frames = decode_frames(str(path), FrameSelection(frames=8, size=None))
    assert len(frames) == 8
    assert select_indices(4, None, FrameSelection(frames=8)) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_fps_selection_and_cap(clip):
    frames = decode_frames(str(clip), FrameSelection(fps=2.0, max_frames=10, size=None))
    # one frame every 0.5 s of a 0..2.9 s clip: frames 0, 5, 10, 15, 20, 25
    assert len(frames) == 6
    for f, i in zip(frames, [0, 5, 10, 15, 20, 25]):
        assert abs(square_x(f) - expected_x(i)) <= 1.5
    capped = decode_frames(str(clip), FrameSelection(fps=2.0, max_frames=4, size=None))
    # the cap keeps 4 of the 6, spread over the whole clip (not the first 4)
    assert [round(square_x(f)) for f in capped] == [round(expected_x(i)) for i in (0, 10, 15, 25)]


def test_select_indices_is_pure_and_hand_worked():
    ts = [i / 10 for i in range(30)]
    assert select_indices(30, ts, FrameSelection(fps=1.0, max_frames=8)) == [0, 10, 20]
    assert select_indices(30, None, FrameSelection(frames=3)) == [5, 15, 25]
    assert select_indices(0, None, FrameSelection()) == []


@pytest.mark.parametrize("kwargs, msg", [
    (dict(frames=0), "--frames"), (dict(fps=-1.0), "--fps"), (dict(max_frames=4), "--max-frames"),
])
def test_bad_selection_is_a_clear_error(kwargs, msg):
    with pytest.raises(HarnessError, match=msg):
        FrameSelection(**kwargs)


def test_missing_and_corrupt_video_fail_as_media_errors(tmp_path):
    with pytest.raises(MediaError, match="not found"):
        decode_frames(str(tmp_path / "nope.mp4"), FrameSelection())
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 20)
    with pytest.raises(MediaError, match="bad.mp4"):
        decode_frames(str(bad), FrameSelection())


def test_cache_decodes_once_and_disk_cache_survives(clip, tmp_path):
    sel = FrameSelection(frames=4, size=16)
    cache = FrameCache(disk_dir=tmp_path / "frames")
    first = cache.frames(str(clip), sel)
    for _ in range(20):
        assert np.array_equal(cache.frames(str(clip), sel), first)
    assert (cache.decodes, cache.hits) == (1, 20)
    cache.frames(str(clip), FrameSelection(frames=5, size=16))  # another selection is another entry
    assert cache.decodes == 2
    fresh = FrameCache(disk_dir=tmp_path / "frames")  # a new process: served from disk
    assert np.array_equal(fresh.frames(str(clip), sel), first) and fresh.decodes == 0
    five = FrameSelection(frames=5, size=16)
    room = first.nbytes + FrameCache().frames(str(clip), five).nbytes - 1
    small = FrameCache(max_bytes=room)  # room for either entry, not both: least recently used goes first
    small.frames(str(clip), sel)
    small.frames(str(clip), five)
    small.frames(str(clip), sel)
    assert small.decodes == 3
    tiny = FrameCache(max_bytes=first.nbytes)  # an entry that can never fit evicts nothing
    tiny.frames(str(clip), sel)
    tiny.frames(str(clip), five)
    tiny.frames(str(clip), sel)
    assert tiny.decodes == 2


def test_cache_remembers_failures(tmp_path):
    cache = FrameCache()
    for _ in range(3):
        with pytest.raises(MediaError):
            cache.frames(str(tmp_path / "gone.mp4"), FrameSelection())
    assert cache.decodes == 1


# ---- through a real model -----------------------------------------------------------------
@pytest.fixture(scope="module")
def idefics_dir(tmp_path_factory) -> Path:
    return build_tiny_idefics(tmp_path_factory.mktemp("idefics"))


def test_demo_videos_decoded_once_across_a_cell(idefics_dir, tmp_path):
    """A 3-video NExT-QA cell, 2-shot with 2 orders: every video decoded once, then served from the cache."""
    from harness.evaluation.runner import CellSpec, Runner
    from harness.data.video import frame_cache
    from models.idefics import Idefics
    from tasks.video_qa import NextQAMC

    write_nextqa(tmp_path / "data", n_train=8, n_val=4)
    task = NextQAMC(tmp_path / "data", {"frames": "3", "frame_size": "30", "ensemble": "2"})
    model = Idefics({"path": str(idefics_dir), "video_as_frames": "true"})
    cache = frame_cache()
    cache.clear()
    result = Runner(model, tmp_path / "out", progress=False).run_cell(task, CellSpec(shots=2, seed=0))
    assert result["n"] == 4 and result["n_failed"] == 0
    # 4 queries x 2 orders x (2 demos + query) = 24 video loads (each prompt processed once), 3 distinct videos
    assert cache.decodes == 3
    assert cache.hits == 24 - 3
    cfg = result["config"]["task"]
    assert cfg["frame_selection"] == {"mode": "uniform", "frames": 3, "fps": None, "max_frames": None, "size": 30}
    assert cfg["options"]["ensemble"] == 2


def test_corrupt_video_fails_its_samples_and_all_failing_is_an_error(idefics_dir, tmp_path):
    root = write_nextqa(tmp_path / "data", n_train=6, n_val=6)
    videos = root / "nextqa_mc" / "videos"
    (videos / "1001.mp4").write_bytes(b"this is not a video")
    args = ["run", "--model", "idefics", "--model-arg", f"path={idefics_dir}", "--model-arg", "video_as_frames=true",
            "--tasks", "nextqa_mc", "--shots", "0", "--seeds", "0", "--frames", "2", "--data-dir", str(root), "-q"]
    run_cli(*args, "--output", str(tmp_path / "out"))
    (path,) = (tmp_path / "out").glob("*/nextqa_mc/0shot_seed0/metrics.json")
    metrics = json.loads(path.read_text())
    # val rows 1 and 4 use video 1001
    assert metrics["n"] == 6 and metrics["n_failed"] == 2
    assert {f["query_id"] for f in metrics["failures"]} == {"1001_1", "1001_4"}
    assert all("1001.mp4" in f["error"] for f in metrics["failures"])
    for v in ("1000", "1002"):
        (videos / f"{v}.mp4").unlink()
    from harness.evaluation.runner import CellSpec, Runner
    from models.idefics import Idefics
    from tasks.video_qa import NextQAMC

    model = Idefics({"path": str(idefics_dir), "video_as_frames": "true"})
    task = NextQAMC(root, {"frames": "2"})
    with pytest.raises(HarnessError, match="every sample failed; first error: video"):
        Runner(model, tmp_path / "out2", progress=False).run_cell(task, CellSpec(shots=0, seed=0))
    # An image-only model that has not opted in gets a clear error before any sample runs.
    plain = Idefics({"path": str(idefics_dir)})
    with pytest.raises(HarnessError, match="takes image but task nextqa_mc has video.*video_as_frames=true"):
        Runner(plain, tmp_path / "out3", progress=False).run_cell(task, CellSpec(shots=0, seed=0))
