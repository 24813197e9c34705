"""Video as media: deterministic frame selection, PyAV decoding, and a frame cache.

A video is one media item of F frames. Which frames is a task/run setting
(:class:`FrameSelection`), carried by the media item itself
(:class:`SampledVideo`) so every adapter decodes the same frames, and recorded
in the results through the task options.

Decoding is the slow part of a video sweep: a demo video recurs in thousands of
prompts. :class:`FrameCache` keeps the selected frames, already resized, in
memory (LRU) and optionally as ``.npz`` files on disk, keyed by the file's
identity (path, size, mtime) and the selection, so each video is decoded once.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image as PILImage

from harness.cache import ByteLRU, atomic_write, file_stamp
from harness.errors import HarnessError, MediaError
from harness.data.media import load_image
from harness.types import Image, Media, Video

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrameSelection:
    """Which frames of a video are used, and at what size.

    uniform (``fps is None``): ``frames`` frames at the centres of equal segments
    of the clip (a clip shorter than ``frames`` repeats frames, so F is constant).
    fps (``fps=R``): one frame every 1/R seconds from the start, nearest decoded
    frame; if that gives more than ``max_frames`` (or ``frames`` when
    ``max_frames`` is None), ``max_frames`` of them are kept, spread uniformly
    over the clip (the cap never truncates the end of the clip).
    size: frames are resized to ``size`` x ``size`` once, at decode time
    (None keeps the decoded resolution).
    start / end: a clip window in seconds from the start of the file (YouCook2
    segments, STAR and RareAct clips); frames are chosen within it as above.
    Set per video by the task (``FrameSelection.clip``), not by a run flag.
    """

    frames: int = 8
    fps: float | None = None
    max_frames: int | None = None
    size: int | None = 224
    start: float | None = None
    end: float | None = None

    def __post_init__(self) -> None:
        if self.frames <= 0:
            raise HarnessError(f"--frames must be a positive number of frames, got {self.frames}")
        if self.fps is not None and not (self.fps > 0 and math.isfinite(self.fps)):
            raise HarnessError(f"--fps must be a positive frame rate, got {self.fps}")
        if self.max_frames is not None and self.max_frames <= 0:
            raise HarnessError(f"--max-frames must be positive, got {self.max_frames}")
        if self.max_frames is not None and self.fps is None:
            raise HarnessError("--max-frames caps frame-rate sampling: give it with --fps R (or use --frames N)")
        if self.size is not None and self.size <= 0:
            raise HarnessError(f"frame_size must be positive, got {self.size}")
        if self.start is not None and not (math.isfinite(self.start) and self.start >= 0):
            raise HarnessError(f"clip start must be a time >= 0 in seconds, got {self.start}")
        if self.end is not None and not (math.isfinite(self.end) and self.end > (self.start or 0.0)):
            raise HarnessError(f"clip end must be after its start ({self.start or 0.0} s), got {self.end}")

    @property
    def windowed(self) -> bool:
        return self.start is not None or self.end is not None

    def clip(self, start: float | None, end: float | None) -> "FrameSelection":
        """This selection restricted to ``[start, end]`` seconds of the file."""
        return replace(self, start=None if start is None else float(start), end=None if end is None else float(end))

    @property
    def cap(self) -> int:
        return self.max_frames if self.max_frames is not None else self.frames

    def describe(self) -> dict:
        out = {"mode": "uniform" if self.fps is None else "fps", **asdict(self)}
        if not self.windowed:  # per-clip windows are the data's, not the run's setting
            del out["start"], out["end"]
        return out


@dataclass(frozen=True)
class SampledVideo(Video):
    """A video together with the frame selection its task asked for."""

    selection: FrameSelection = field(default_factory=FrameSelection)

    @property
    def identity(self) -> str:
        """The path plus the frames taken from it: two clips of one file are different media."""
        sel = self.selection
        window = f"@{sel.start or 0.0:g}-{'' if sel.end is None else format(sel.end, 'g')}" if sel.windowed else ""
        return f"{self.path}{window}"


def selection_of(video: Video) -> FrameSelection:
    return getattr(video, "selection", None) or FrameSelection()


def select_indices(n_frames: int, timestamps: Sequence[float] | None, sel: FrameSelection) -> list[int]:
    """Indices (presentation order) of the frames to keep; a pure function of its inputs.

    ``timestamps`` (seconds, one per frame) are needed for fps selection only.
    """
    if n_frames <= 0:
        return []
    if sel.windowed:
        return _select_in_window(n_frames, timestamps, sel)
    if sel.fps is None:
        return [min(n_frames - 1, int((i + 0.5) * n_frames / sel.frames)) for i in range(sel.frames)]
    if timestamps is None or len(timestamps) != n_frames:
        raise ValueError("fps selection needs one timestamp per frame")
    ts = np.asarray(timestamps, dtype=float)
    start, end = float(ts[0]), float(ts[-1])
    targets = start + np.arange(0, math.floor((end - start) * sel.fps + 1e-9) + 1) / sel.fps
    picks = [int(np.abs(ts - t).argmin()) for t in targets]
    if len(picks) > sel.cap:
        picks = [picks[min(len(picks) - 1, int((i + 0.5) * len(picks) / sel.cap))] for i in range(sel.cap)]
    return picks


def _select_in_window(n_frames: int, timestamps: Sequence[float] | None, sel: FrameSelection) -> list[int]:
    """The selection applied to the frames whose time (from the first frame) lies in [start, end]."""
    if timestamps is None or len(timestamps) != n_frames:
        raise ValueError("a clip window needs one timestamp per frame")
    ts = np.asarray(timestamps, dtype=float)
    rel = ts - ts[0]
    lo, hi = sel.start or 0.0, math.inf if sel.end is None else sel.end
    inside = np.flatnonzero((rel >= lo - 1e-6) & (rel <= hi + 1e-6))
    if len(inside) == 0:
        raise ValueError(f"clip {lo:g}-{hi:g} s lies outside the video ({rel[-1]:.2f} s long)")
    local = select_indices(len(inside), [float(t) for t in ts[inside]], replace(sel, start=None, end=None))
    return [int(inside[i]) for i in local]


def decode_frames(path: str, sel: FrameSelection) -> np.ndarray:
    """Decode the selected frames of ``path``: a uint8 array (F, H, W, 3).

    Two passes: the demuxer counts the frames and reads their timestamps
    without decoding, then one decoding pass keeps only the selected frames.
    A missing or unreadable file raises :class:`MediaError` (fails that sample).
    """
    import av

    if not os.path.isfile(path):
        raise MediaError(f"video not found: {path}")
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise MediaError(f"video has no video stream: {path}")
            stream = container.streams.video[0]
            base, rate = stream.time_base, stream.average_rate
            # pts, else dts (some AVI muxers), else None; the flush packet (size 0) is no frame.
            stamps = [p.pts if p.pts is not None else p.dts for p in container.demux(stream) if p.size > 0]
        if not stamps:
            raise MediaError(f"video has no frames: {path}")
        if base is not None and all(t is not None for t in stamps):
            times = [float(t * base) for t in sorted(stamps)]
        else:  # no timestamps: assume a constant rate
            times = [i / float(rate or 25) for i in range(len(stamps))]
        wanted = select_indices(len(stamps), times, sel)
        keep = set(wanted)
        got: dict[int, np.ndarray] = {}
        with av.open(path) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i in keep:
                    img = frame.to_image()
                    if sel.size is not None:
                        img = img.resize((sel.size, sel.size), PILImage.BICUBIC)
                    got[i] = np.asarray(img.convert("RGB"))
                if i >= max(keep):
                    break
    except MediaError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise MediaError(f"video could not be decoded: {path} ({exc})") from None
    # Some files report more packets than decodable frames: fall back to the last decoded one.
    if not got:
        raise MediaError(f"video could not be decoded (no frame decoded): {path}")
    last = max(got)
    return np.stack([got[i] if i in got else got[last] for i in wanted])


class FrameCache:
    """Selected, resized frames per (file identity, selection): memory LRU, optional disk.

    max_bytes bounds the memory part (8 frames at 224x224 are 1.2 MB, so the
    default 2 GiB holds ~1700 videos: a whole 2048-example support set almost;
    add ``disk_dir`` beyond that). ``decodes`` counts real decodes, ``hits``
    lookups served from the cache (memory or disk). Failures are cached too
    (a corrupt demo fails fast).
    """

    def __init__(self, max_bytes: int = 2 << 30, disk_dir: str | Path | None = None):
        self.max_bytes = max_bytes
        self.disk_dir = Path(disk_dir) if disk_dir else None
        self._mem = ByteLRU(max_bytes, _nbytes)
        self.decodes = 0
        self.hits = 0

    @staticmethod
    def _key(path: str, sel: FrameSelection) -> tuple:
        return (os.path.abspath(path), *(file_stamp(path) or (-1, -1)), sel)

    def _disk_path(self, key: tuple) -> Path:
        digest = hashlib.sha256(repr(key).encode()).hexdigest()[:24]
        return self.disk_dir / f"{digest}.npz"  # type: ignore[operator]

    def frames(self, path: str, sel: FrameSelection) -> np.ndarray:
        key = self._key(path, sel)
        value: np.ndarray | MediaError | None = self._mem.lookup(key)
        if value is not None:
            self.hits += 1
        else:
            disk = self._disk_path(key) if self.disk_dir and key[1] >= 0 else None
            if disk is not None and disk.is_file():
                value = np.load(disk)["frames"]
                self.hits += 1
            else:
                try:
                    value = decode_frames(path, sel)
                except MediaError as exc:  # failures are kept too: a corrupt demo fails fast
                    value = exc
                self.decodes += 1
                if disk is not None and isinstance(value, np.ndarray):
                    with atomic_write(disk, "wb") as f:
                        np.savez(f, frames=value)
            self._mem.put(key, value)
        if isinstance(value, MediaError):
            raise MediaError(str(value))
        return value

    def clear(self) -> None:
        self._mem.clear()
        self.decodes = self.hits = 0


def _nbytes(value: np.ndarray | MediaError) -> int:
    return value.nbytes if isinstance(value, np.ndarray) else 512


_DEFAULT = FrameCache(max_bytes=int(float(os.environ.get("HARNESS_FRAME_CACHE_MB", "2048")) * (1 << 20)),
                      disk_dir=os.environ.get("HARNESS_FRAME_CACHE_DIR") or None)


def frame_cache() -> FrameCache:
    """The process-wide frame cache (memory: $HARNESS_FRAME_CACHE_MB, 0 disables it; disk: $HARNESS_FRAME_CACHE_DIR)."""
    return _DEFAULT


def set_frame_cache(cache: FrameCache) -> FrameCache:
    """Replace the process-wide frame cache (e.g. ``FrameCache(max_bytes=0)`` to measure without one); returns the old."""
    global _DEFAULT
    old, _DEFAULT = _DEFAULT, cache
    return old


def load_video_frames(video: Video, cache: FrameCache | None = None) -> list[PILImage.Image]:
    """The selected frames of a video as RGB PIL images, in order."""
    arr = (cache or _DEFAULT).frames(video.path, selection_of(video))
    return [PILImage.fromarray(f) for f in arr]


def media_as_images(media: Sequence[Media], video_as_frames: bool, model: str = "this model") -> list[PILImage.Image]:
    """Images for an image-only model: each image, and each video as its frames in order (if opted in)."""
    out: list[PILImage.Image] = []
    for m in media:
        if isinstance(m, Image):
            out.append(load_image(m.path))
        elif isinstance(m, Video):
            if not video_as_frames:
                raise HarnessError(
                    f"{model} takes images only and cannot take video {m.path}; pass "
                    f"--model-arg video_as_frames=true to feed each video as its frames, in order"
                )
            out.extend(load_video_frames(m))
        else:
            raise MediaError(f"unknown media {m!r}")
    return out
