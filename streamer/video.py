"""Stylize frames and video files with any backend (shared by the preview and file mode).

Frames here are OpenCV BGR ``HxWx3 uint8`` arrays; the backend sees RGB. A
:class:`FrameStylizer` holds the current mix (style weights, strength, processing
size) and turns one camera/file frame into one stylized frame::

    stylizer = FrameStylizer(backend, weights=np.array(parse_mix("0:0.5,moss:0.5", backend.styles)))
    out_bgr = stylizer(frame_bgr)

:func:`stylize_file` runs a whole file (or camera) through it into an H.264 MP4
with a progress bar, without any window.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from common.stroke import DEFAULT_STROKE
from engines.runtime.base import Backend

log = logging.getLogger(__name__)


class VideoError(RuntimeError):
    """A camera, input file or output file cannot be used; the message says why and what to do."""


# ----------------------------------------------------------------------------- presets


def default_presets(styles: list[str]) -> list[tuple[str, np.ndarray]]:
    """The presets the preview cycles through: the same list the server offers the page."""
    from streamer.mixer import build_presets

    return [(p.name, np.asarray(p.weights, dtype=np.float32)) for p in build_presets(styles)]


# ----------------------------------------------------------------------------- one frame


@dataclass
class FrameStylizer:
    """Turns BGR frames into stylized BGR frames with the current mix.

    ``weights`` one per style (any scale, at least one positive, else the original is
    shown), ``strength`` 0..1 blends the stylized picture over the original, ``size``
    (width, height) is the processing and output resolution (``None``: the frame's own),
    ``stroke`` the brush size relative to the picture (``common.stroke``, 0.5 to 2).
    """

    backend: Backend
    weights: np.ndarray
    strength: float = 1.0
    size: tuple[int, int] | None = None
    stroke: float = DEFAULT_STROKE
    last_infer_ms: float = field(default=0.0, init=False)

    def __call__(self, frame_bgr: np.ndarray) -> np.ndarray:
        if self.size is not None and (frame_bgr.shape[1], frame_bgr.shape[0]) != self.size:
            # INTER_AREA for shrinking (no aliasing), linear for enlarging.
            shrink = self.size[0] < frame_bgr.shape[1]
            frame_bgr = cv2.resize(frame_bgr, self.size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        strength = min(1.0, max(0.0, float(self.strength)))
        weights = np.asarray(self.weights, dtype=np.float32)
        if strength <= 0.0 or float(weights.sum()) <= 0.0:
            self.last_infer_ms = 0.0
            return frame_bgr
        rgb = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)
        t0 = time.perf_counter()
        out_rgb = self.backend.stylize(rgb, weights, self.stroke)
        self.last_infer_ms = (time.perf_counter() - t0) * 1000.0
        out = cv2.cvtColor(out_rgb, cv2.COLOR_RGB2BGR)
        if strength < 1.0:
            out = cv2.addWeighted(out, strength, frame_bgr, 1.0 - strength, 0.0)
        return out


# ----------------------------------------------------------------------------- sources


def open_capture(camera: int | None = None, video: str | Path | None = None) -> cv2.VideoCapture:
    """Open a camera index or a video file, with a clear error when it cannot be read."""
    if video is not None:
        path = Path(video)
        if not path.is_file():
            raise VideoError(f"video file not found: {path}")
        cap = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            raise VideoError(f"cannot open video file {path} (not a video, or a codec OpenCV cannot read)")
        return cap
    index = 0 if camera is None else camera
    cap = cv2.VideoCapture(index)
    if not cap.isOpened():
        raise VideoError(
            f"camera {index} could not be opened: no camera at that index, no permission, or another "
            "program is using it. Try --camera 1, or stylize a file with --video FILE."
        )
    return cap


def capture_fps(cap: cv2.VideoCapture, default: float = 30.0) -> float:
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    return fps if 1.0 <= fps <= 240.0 else default


def read_frames(cap: cv2.VideoCapture, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Every frame of a capture, in order (no dropping: file mode keeps all frames)."""
    n = 0
    while max_frames is None or n < max_frames:
        ok, frame = cap.read()
        if not ok or frame is None:
            return
        n += 1
        yield frame


# ----------------------------------------------------------------------------- files


class VideoWriter:
    """H.264 (libx264, yuv420p) MP4 writer via PyAV: plays in browsers and every player.

    Timestamps are in milliseconds: frame ``i`` at ``i / fps`` seconds, or at the time
    given to :meth:`write` (a camera's wall clock, so a recording plays at real speed
    even when stylizing is slower than the camera). Falls back to MPEG-4 Part 2 where
    this FFmpeg build has no libx264.
    """

    TIME_BASE = Fraction(1, 1000)

    def __init__(self, path: str | Path, size: tuple[int, int], fps: float) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._container = av.open(str(self.path), mode="w")
        except (OSError, av.FFmpegError) as e:
            raise VideoError(f"cannot write {self.path}: {e}") from e
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        stream = self._container.add_stream(codec, rate=Fraction(round(fps * 1000), 1000))
        assert isinstance(stream, av.VideoStream)
        self._stream: av.VideoStream = stream
        self._stream.width, self._stream.height = size
        self._stream.pix_fmt = "yuv420p"
        self._stream.codec_context.time_base = self.TIME_BASE
        if codec == "libx264":
            self._stream.options = {"crf": "20", "preset": "veryfast"}
        self.size = size
        self.fps = fps
        self.frames = 0
        self._last_pts = -1

    def write(self, frame_bgr: np.ndarray, t: float | None = None) -> None:
        """Append one BGR frame, shown at ``t`` seconds (default: frame index / fps)."""
        if (frame_bgr.shape[1], frame_bgr.shape[0]) != self.size:
            frame_bgr = cv2.resize(frame_bgr, self.size, interpolation=cv2.INTER_AREA)
        seconds = self.frames / self.fps if t is None else t
        pts = max(round(seconds * 1000), self._last_pts + 1)  # strictly increasing
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_bgr), format="bgr24")
        vf.pts = pts
        vf.time_base = self.TIME_BASE
        for packet in self._stream.encode(vf):
            self._container.mux(packet)
        self._last_pts = pts
        self.frames += 1

    def close(self) -> None:
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()


@dataclass(frozen=True)
class FileResult:
    """What :func:`stylize_file` wrote."""

    path: Path
    frames: int
    width: int
    height: int
    fps: float
    seconds: float


def stylize_file(
    stylizer: FrameStylizer,
    cap: cv2.VideoCapture,
    output: str | Path,
    *,
    max_frames: int | None = None,
    progress: bool = True,
    live: bool = False,
    on_frame: Callable[[np.ndarray], bool] | None = None,
) -> FileResult:
    """Stylize every frame of ``cap`` into ``output`` (MP4), with a tqdm progress bar.

    ``live`` (a camera): frames are stamped with the wall clock, so the file plays at
    real speed. ``on_frame(out_bgr)`` (optional) sees each stylized frame and returns
    False to stop early (the preview window uses it). Ctrl-C stops and still finishes
    the file.
    """
    from tqdm import tqdm

    fps = capture_fps(cap)
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) or None
    if max_frames is not None:
        total = min(total, max_frames) if total else max_frames
    frames = read_frames(cap, max_frames)
    first = next(frames, None)
    if first is None:
        raise VideoError("the input gave no frames (empty file, or the camera delivered nothing)")
    out0 = stylizer(first)
    h, w = out0.shape[:2]
    writer = VideoWriter(output, (w, h), fps)
    t0 = time.perf_counter()
    t_first = t0
    bar = tqdm(total=total, unit="frame", desc=f"stylizing -> {Path(output).name}", disable=not progress)
    try:
        out = out0
        while True:
            writer.write(out, time.perf_counter() - t_first if live else None)
            bar.update(1)
            if on_frame is not None and not on_frame(out):
                break
            frame = next(frames, None)
            if frame is None:
                break
            out = stylizer(frame)
    except KeyboardInterrupt:
        log.warning("interrupted: finishing %s with %d frames", output, writer.frames)
    finally:
        bar.close()
        writer.close()
    seconds = time.perf_counter() - t0
    log.info("wrote %s: %d frames %dx%d at %.2f fps in %.1f s", output, writer.frames, w, h, fps, seconds)
    return FileResult(Path(output), writer.frames, w, h, fps, seconds)
