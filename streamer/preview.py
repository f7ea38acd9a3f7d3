"""Local preview in an OpenCV window, and offline stylizing of video files.

    python -m streamer.preview                                 # camera 0, the shipped model
    python -m streamer.preview --camera 1 --size 320x240       # another camera, smaller frames
    python -m streamer.preview --video clip.mp4 --loop         # play a file in the window
    python -m streamer.preview --mix "0:0.5,2:0.5"             # start from a blend of styles 0 and 2
    python -m streamer.preview --mix "moss:1" --strength 0.7   # by name, 70 % over the original
    python -m streamer.preview --stroke 2                      # bold strokes (0.5 fine .. 2 bold)
    python -m streamer.preview --video clip.mp4 --output out.mp4            # file -> file (no display needed)
    python -m streamer.preview --video clip.mp4 --output bold.mp4 --stroke 1.5
    python -m streamer.preview --camera 0 --output rec.mp4 --max-frames 300  # record 300 stylized frames
    python -m streamer.preview --model my.onnx --backend onnxruntime-cpu     # another model / runtime

In the window: one trackbar per style weight (0-100) and one for the strength;
``n``/``p`` next/previous preset (the page's presets: each style alone, a few
50/50 pairs, all styles), ``[``/``]`` finer/bolder strokes (quarter-octave
steps from 0.5 to 2), ``s`` saves a PNG snapshot, ``q`` or Esc quits. The
frame rate, inference time, active backend and stroke are drawn on the picture.

The camera is read in a background thread that keeps only the newest frame, so
the picture stays current when stylizing is slower than the camera; a video
file is read frame by frame (none dropped), paced to its frame rate. With
``--output`` every frame is stylized into an H.264 MP4 with a progress bar; no
window is opened when there is no display (or with ``--headless``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from common.mix import parse_mix
from common.paths import DEFAULT_MODEL
from common.sizes import parse_size
from common.stroke import DEFAULT_STROKE, STROKE_MAX, STROKE_MIN, check_stroke
from engines.runtime.base import Backend, EngineError, InputError
from engines.runtime.precision import PRECISIONS
from engines.runtime.registry import backend_choices
from streamer.video import FrameStylizer, VideoError, capture_fps, default_presets, open_capture, stylize_file

log = logging.getLogger("streamer.preview")

WINDOW = "stylecast preview"
KEY_QUIT = {ord("q"), ord("Q"), 27}  # 27 = Esc
KEY_FINER, KEY_BOLDER = ord("["), ord("]")
STROKE_STEP = 2.0**0.25  # a quarter octave per key press


class PreviewError(RuntimeError):
    """A user-facing problem (no display, no camera, no model); the message says what to do."""


def has_display() -> bool:
    """True where a window can open; cv2.imshow without a display aborts the whole process."""
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def use_system_fonts() -> None:
    """Point OpenCV's bundled Qt at the system fonts.

    The opencv-python wheel sets QT_QPA_FONTDIR to a folder it does not ship, so the
    trackbars would have no labels.
    """
    current = os.environ.get("QT_QPA_FONTDIR")
    if current and Path(current).is_dir():
        return
    for d in ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/truetype", "/usr/share/fonts"):
        if Path(d).is_dir():
            os.environ["QT_QPA_FONTDIR"] = d
            return


# ----------------------------------------------------------------------------- camera reader


class LatestFrameReader:
    """Reads a capture in a thread and keeps only the newest frame (older ones are dropped)."""

    def __init__(self, cap: cv2.VideoCapture) -> None:
        self._cap = cap
        self._cond = threading.Condition()
        self._frame: np.ndarray | None = None
        self._seq = 0
        self._taken = 0
        self._failed = False
        self._stop = False
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="camera-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        misses = 0
        while not self._stop:
            ok, frame = self._cap.read()
            with self._cond:
                if not ok or frame is None:
                    misses += 1
                    if misses >= 50:  # about 1-2 s of nothing: the camera is gone
                        self._failed = True
                        self._cond.notify_all()
                        return
                    continue
                misses = 0
                if self._seq > self._taken:
                    self.dropped += 1
                self._frame, self._seq = frame, self._seq + 1
                self._cond.notify_all()

    def get(self, timeout: float = 5.0) -> np.ndarray | None:
        """The newest frame not seen yet; None if the camera stopped or gave nothing in time."""
        with self._cond:
            ok = self._cond.wait_for(lambda: self._seq > self._taken or self._failed, timeout)
            if not ok or self._seq <= self._taken:
                return None
            self._taken = self._seq
            return self._frame

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=2.0)


# ----------------------------------------------------------------------------- window


@dataclass
class Overlay:
    """Smoothed frame rate for the text drawn on the picture."""

    fps: float = 0.0
    _last: float = 0.0

    def tick(self) -> None:
        now = time.perf_counter()
        if self._last:
            inst = 1.0 / max(now - self._last, 1e-6)
            self.fps = inst if self.fps == 0.0 else 0.9 * self.fps + 0.1 * inst
        self._last = now


def draw_text(img: np.ndarray, lines: list[str]) -> np.ndarray:
    """Readable text (white on a dark band) in the top-left corner; returns a copy."""
    out = img.copy()
    scale = max(0.4, min(0.7, img.shape[1] / 900))
    th = int(22 * scale / 0.6)
    width = max(cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] for t in lines) + 12
    band = out[: th * len(lines) + 8, :width]
    band[:] = (band * 0.35).astype(np.uint8)
    for i, t in enumerate(lines):
        y = 6 + th * (i + 1) - th // 4
        cv2.putText(out, t, (6, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


class PreviewWindow:
    """The OpenCV window: trackbars for each style and the strength, keys for presets."""

    def __init__(self, stylizer: FrameStylizer, snapshot_dir: Path) -> None:
        if not has_display():
            raise PreviewError(
                "no display: DISPLAY and WAYLAND_DISPLAY are not set, so no window can open. "
                "Stylize to a file instead with --output OUT.mp4, or run under a virtual display "
                "(xvfb-run python -m streamer.preview ...)."
            )
        self.stylizer = stylizer
        self.styles = list(stylizer.backend.styles)
        self.presets = default_presets(self.styles)
        self.preset_index = -1
        self.preset_name = ""
        self.snapshot_dir = snapshot_dir
        self.overlay = Overlay()
        self.note = ""
        self._updating = False  # set while the program moves trackbars (not the user)
        self._last_frame: np.ndarray | None = None
        for i, (_, w) in enumerate(self.presets):  # so "n" moves on from the starting mix
            if np.allclose(w / max(float(w.sum()), 1e-6), stylizer.weights / max(float(stylizer.weights.sum()), 1e-6)):
                self.preset_index = i
        use_system_fonts()
        cv2.namedWindow(WINDOW, cv2.WINDOW_AUTOSIZE | cv2.WINDOW_GUI_NORMAL)
        scale = max(1.0, float(np.max(stylizer.weights)))
        for i, name in enumerate(self.styles):
            value = int(round(float(stylizer.weights[i]) / scale * 100))
            cv2.createTrackbar(self._bar(i, name), WINDOW, value, 100, self._on_style(i))
        cv2.createTrackbar("strength", WINDOW, int(round(stylizer.strength * 100)), 100, self._on_strength)
        # Trackbars hold 0..100; the weights follow them (scaled, any sum: the net normalises).
        self.stylizer.weights = np.asarray(stylizer.weights, dtype=np.float32) / scale

    @staticmethod
    def _bar(i: int, name: str) -> str:
        return f"{i}: {name}"

    def _on_style(self, i: int) -> Callable[[int], None]:
        def cb(value: int) -> None:
            w = np.array(self.stylizer.weights, dtype=np.float32)
            w[i] = value / 100.0
            self.stylizer.weights = w
            if not self._updating:
                self.preset_name = ""

        return cb

    def _on_strength(self, value: int) -> None:
        self.stylizer.strength = value / 100.0

    def set_preset(self, step: int) -> None:
        self.preset_index = (self.preset_index + step) % len(self.presets)
        name, weights = self.presets[self.preset_index]
        self._updating = True
        try:
            self.stylizer.weights = weights.copy()
            for i, style in enumerate(self.styles):
                cv2.setTrackbarPos(self._bar(i, style), WINDOW, int(round(float(weights[i]) * 100)))
        finally:
            self._updating = False
        self.stylizer.weights = weights.copy()
        self.preset_name = name
        log.info("preset: %s", name)

    def set_stroke(self, stroke: float) -> None:
        """A new brush size, kept within the control's range (the ends stop there)."""
        # Rounded, so that four steps up and four down come back to exactly where they began.
        self.stylizer.stroke = round(min(STROKE_MAX, max(STROKE_MIN, stroke)), 4)
        self.note = f"stroke {self.stylizer.stroke:g}"
        log.info("stroke: %g", self.stylizer.stroke)

    def snapshot(self) -> Path | None:
        if self._last_frame is None:
            return None
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{int(time.time() * 1000) % 1000:03d}"
        path = self.snapshot_dir / f"stylecast-{stamp}.png"
        cv2.imwrite(str(path), self._last_frame)
        log.info("snapshot saved: %s", path)
        self.note = f"saved {path.name}"
        return path

    def show(self, frame_bgr: np.ndarray, wait_ms: int = 1) -> bool:
        """Show one stylized frame and handle keys; False when the user quits."""
        first = self._last_frame is None
        self._last_frame = frame_bgr
        self.overlay.tick()
        backend = self.stylizer.backend
        lines = [
            f"{self.overlay.fps:5.1f} fps  infer {self.stylizer.last_infer_ms:5.1f} ms",
            f"{backend.name} {backend.precision}  {frame_bgr.shape[1]}x{frame_bgr.shape[0]}  "
            f"stroke {self.stylizer.stroke:.2f}",
        ]
        if self.preset_name:
            lines.append(f"preset: {self.preset_name}")
        if float(np.sum(self.stylizer.weights)) <= 0:
            lines.append("all style weights are 0: original shown")
        if self.note:
            lines.append(self.note)
        cv2.imshow(WINDOW, draw_text(frame_bgr, lines))
        key = cv2.waitKey(max(1, wait_ms)) & 0xFF
        if first:
            log.info("first frame shown")
        if key in KEY_QUIT:
            return False
        if key == ord("n"):
            self.set_preset(+1)
        elif key == ord("p"):
            self.set_preset(-1)
        elif key == ord("s"):
            self.snapshot()
        elif key in (KEY_FINER, KEY_BOLDER):
            self.set_stroke(self.stylizer.stroke * (STROKE_STEP if key == KEY_BOLDER else 1.0 / STROKE_STEP))
        # The window's close button: no more visible window.
        try:
            if cv2.getWindowProperty(WINDOW, cv2.WND_PROP_VISIBLE) < 1:
                return False
        except cv2.error:
            return False
        return True

    def close(self) -> None:
        cv2.destroyWindow(WINDOW)
        cv2.waitKey(1)


# ----------------------------------------------------------------------------- loops


def run_window(
    stylizer: FrameStylizer,
    cap: cv2.VideoCapture,
    *,
    is_camera: bool,
    loop: bool,
    snapshot_dir: Path,
    max_frames: int | None = None,
) -> int:
    """Show the stylized stream until the user quits (or the file ends without --loop)."""
    window = PreviewWindow(stylizer, snapshot_dir)
    log.info("window open")
    shown = 0
    try:
        if is_camera:
            reader = LatestFrameReader(cap)
            try:
                while max_frames is None or shown < max_frames:
                    frame = reader.get(timeout=5.0)
                    if frame is None:
                        raise PreviewError(
                            "the camera delivered no frame for 5 s (unplugged, or in use by another program)"
                        )
                    if not window.show(stylizer(frame)):
                        break
                    shown += 1
            finally:
                reader.close()
        else:
            period = 1.0 / capture_fps(cap)
            while max_frames is None or shown < max_frames:
                t0 = time.perf_counter()
                ok, frame = cap.read()
                if not ok:
                    if loop and shown > 0 and cap.set(cv2.CAP_PROP_POS_FRAMES, 0):
                        continue
                    break
                out = stylizer(frame)
                wait_ms = int((period - (time.perf_counter() - t0)) * 1000)
                if not window.show(out, wait_ms):
                    break
                shown += 1
    finally:
        window.close()
    log.info("shown %d frames", shown)
    return shown


def load_model(model: str | None, backend: str, precision: str = "auto") -> Backend:
    """Load the given model (default: the shipped one) on the chosen backend and precision."""
    path = Path(model) if model else DEFAULT_MODEL
    if not path.is_file():
        if model:
            raise PreviewError(f"model file not found: {path}")
        raise PreviewError(
            f"the shipped model {path} is missing. Pass --model PATH.onnx (an exported stylecast model)."
        )
    from engines.runtime import load_backend

    try:
        loaded = load_backend(path, backend=backend, precision=precision)
    except EngineError as e:
        raise PreviewError(f"cannot load {path} on backend {backend!r}: {e}") from e
    log.info("backend %s, precision %s", loaded.name, loaded.precision_reason)
    return loaded


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m streamer.preview",
        description="Stylize a camera or a video file in an OpenCV window, or into a video file.",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--camera", type=int, default=None, metavar="N", help="camera index (default: 0)")
    src.add_argument("--video", type=Path, default=None, metavar="FILE", help="read this video file")
    p.add_argument(
        "--output",
        type=Path,
        default=None,
        metavar="OUT.mp4",
        help="write the stylized frames to this MP4 (H.264); works without a display",
    )
    p.add_argument(
        "--headless",
        action="store_true",
        help="never open a window, even with a display (needs --output)",
    )
    p.add_argument(
        "--mix",
        default=None,
        metavar="MIX",
        help='initial style weights: "0:0.5,3:0.5" (indices), "moss:1,ember:0.3" (names) or one '
        "style name; default: the first style alone",
    )
    p.add_argument("--strength", type=float, default=1.0, help="stylized over original, 0..1 (default: 1)")
    p.add_argument(
        "--stroke",
        type=float,
        default=DEFAULT_STROKE,
        help=f"brush size relative to the picture, {STROKE_MIN:g} (fine) to {STROKE_MAX:g} (bold); "
        f"the same look at every --size (default: {DEFAULT_STROKE:g}; keys [ and ] change it)",
    )
    p.add_argument(
        "--size",
        default=None,
        metavar="WxH",
        help="processing and output resolution in pixels, e.g. 640x480 (default: the source's)",
    )
    p.add_argument(
        "--model",
        default=None,
        metavar="PATH",
        help=f"exported stylecast ONNX model (default: {DEFAULT_MODEL.relative_to(DEFAULT_MODEL.parents[2])})",
    )
    p.add_argument(
        "--backend",
        default="auto",
        choices=backend_choices(),
        metavar="NAME",
        help=f"inference backend (default: auto): {', '.join(backend_choices())} "
        "(auto picks the first that runs here, in a preferred order, and says why)",
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", *PRECISIONS),
        help="arithmetic (default: auto, the fastest that passes its parity gate here, e.g. bf16 on CPUs with "
        "AMX or AVX512-BF16): auto, fp32, bf16, fp16, int8",
    )
    p.add_argument("--loop", action="store_true", help="replay a --video file from the start when it ends")
    p.add_argument(
        "--max-frames",
        type=int,
        default=None,
        metavar="N",
        help="stop after N frames (default: until the end of the file, or q / Ctrl-C)",
    )
    p.add_argument(
        "--snapshot-dir",
        type=Path,
        default=Path("."),
        metavar="DIR",
        help="folder for the PNG snapshots saved with the s key (default: the current folder)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return _run(args)
    except (PreviewError, VideoError, ValueError, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if not 0.0 <= args.strength <= 1.0:
        raise PreviewError(f"--strength must be between 0 and 1, got {args.strength}")
    try:
        stroke = check_stroke(args.stroke)
    except ValueError as e:
        raise PreviewError(f"--{e}") from None
    if args.max_frames is not None and args.max_frames <= 0:
        raise PreviewError("--max-frames must be positive")
    if args.headless and args.output is None:
        raise PreviewError("--headless needs --output OUT.mp4 (there is nothing to show otherwise)")
    window = not args.headless and (args.output is None or has_display())
    if window and not has_display():
        # Checked before anything is loaded: cv2.imshow without a display aborts the process.
        raise PreviewError(
            "no display: DISPLAY and WAYLAND_DISPLAY are not set, so no window can open. "
            "Stylize to a file instead with --output OUT.mp4, or run under a virtual display "
            "(xvfb-run python -m streamer.preview ...)."
        )
    size = parse_size(args.size) if args.size else None
    backend = load_model(args.model, args.backend, args.precision)
    try:
        first_style = np.eye(len(backend.styles), dtype=np.float32)[0]
        weights = np.asarray(parse_mix(args.mix, backend.styles), np.float32) if args.mix else first_style
        stylizer = FrameStylizer(backend, weights, args.strength, size, stroke)
        is_camera = args.video is None
        cap = open_capture(args.camera, args.video)
        try:
            if args.output is not None:
                preview = PreviewWindow(stylizer, args.snapshot_dir) if window else None
                result = stylize_file(
                    stylizer,
                    cap,
                    args.output,
                    max_frames=args.max_frames,
                    progress=not args.quiet,
                    live=is_camera,
                    on_frame=preview.show if preview else None,
                )
                if preview:
                    preview.close()
                print(
                    f"wrote {result.path}: {result.frames} frames, {result.width}x{result.height}, "
                    f"{result.fps:.2f} fps, in {result.seconds:.1f} s"
                )
                return 0
            run_window(
                stylizer,
                cap,
                is_camera=is_camera,
                loop=args.loop,
                snapshot_dir=args.snapshot_dir,
                max_frames=args.max_frames,
            )
            return 0
        finally:
            cap.release()
    finally:
        backend.close()


if __name__ == "__main__":
    sys.exit(main())
