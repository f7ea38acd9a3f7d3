"""What the models are run on: photos, crops of the paintings, consecutive video frames (all uint8 RGB)."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from bench.metrics import edge_map
from common.split import held_out, video_held_out_frames, video_train_frames
from trainer.data import cover_crop, find_images, find_painting, load_rgb, training_files

log = logging.getLogger(__name__)

MIN_EDGE_DENSITY = 0.005  # photos with fewer Canny edge pixels (defocused, flat) are skipped


def open_rgb(path: Path) -> Image.Image:
    return load_rgb(path)  # EXIF-rotated, alpha on white, RGB


def select_photos(
    folder: Path, count: int, size: tuple[int, int], held_out_only: bool = True, training_only: bool = False
) -> list[tuple[str, np.ndarray]]:
    """``count`` photos spread evenly over the sorted folder, as ``size`` (width, height) uint8 RGB.

    ``held_out_only``: only the photos training never sees (``common.split``, by the path
    relative to ``folder``, as the trainer decides it); ``training_only``: only the photos
    training may use (``trainer.data.training_files``: to calibrate on, leaving the held-out
    ones to judge). Photos that would be upscaled and photos with almost no edges (defocused or
    flat: edge F1 means nothing there) are passed over for the next file in the folder.
    """
    if held_out_only and training_only:
        raise ValueError("held_out_only and training_only exclude each other")
    if training_only:
        files = training_files(folder, held_out)  # as the trainer decides it, copies of held-out photos left out
    else:
        files = find_images(folder)
    if held_out_only:
        files = [f for f in files if held_out(f.relative_to(folder).as_posix())]
    which = " held out" if held_out_only else " for training" if training_only else ""
    if not files:
        raise SystemExit(f"no photos (jpg, png, webp){which} under {folder}")
    stride = max(1, len(files) // count)
    chosen: list[tuple[str, np.ndarray]] = []
    used: set[int] = set()
    for slot in range(count):
        for k in range(len(files)):
            i = (slot * stride + k) % len(files)
            if i in used:
                continue
            used.add(i)
            try:
                with Image.open(files[i]) as probe:
                    if probe.width < size[0] or probe.height < size[1]:
                        continue
                img = cover_crop(open_rgb(files[i]), size)
            except (OSError, ValueError) as e:
                log.warning("skipping unreadable %s: %s", files[i], e)
                continue
            if edge_map(img).mean() < MIN_EDGE_DENSITY:
                continue
            chosen.append((str(files[i].relative_to(folder)), img))
            break
    if len(chosen) < count:
        log.warning("only %d usable photos (asked for %d) under %s", len(chosen), count, folder)
    if not chosen:
        raise SystemExit(f"no usable photo of at least {size[0]}x{size[1]} px with visible edges under {folder}")
    return chosen


def painting_path(styles_dir: Path, source: str) -> Path:
    """The painting file named ``source`` anywhere under ``styles_dir`` (the trainer's lookup), or exit."""
    found = find_painting(source, [styles_dir])
    if found is None:
        raise SystemExit(f"painting {source!r} not found under {styles_dir} (use --styles-dir)")
    return found


def read_video(
    path: Path, start: int | None, count: int, scale: float, training: bool = False
) -> tuple[list[np.ndarray], float, int]:
    """``count`` consecutive frames as uint8 RGB, scaled, cropped to multiples of 8; (frames, fps, start).

    ``start=None``: the first frame of the held-out part (``common.split``), which training never
    sees. ``training``: frames from the part training may use (by default its last ``count``,
    next to the held-out part), and an error if ``start`` would reach into the held-out part.
    """
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise SystemExit(f"cannot open video {path}")
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    if training:
        train = video_train_frames(total)
        start = max(0, train.stop - count) if start is None else start
        if start + count > train.stop:
            cap.release()
            raise SystemExit(f"frames {start}..{start + count - 1} reach past the training part of {path} "
                             f"(frames 0..{train.stop - 1}; the rest is held out)")  # fmt: skip
    elif start is None:
        start = video_held_out_frames(total).start
    cap.set(cv2.CAP_PROP_POS_FRAMES, start)
    frames: list[np.ndarray] = []
    while len(frames) < count:
        ok, bgr = cap.read()
        if not ok:
            break
        if scale != 1.0:
            h, w = bgr.shape[:2]
            bgr = cv2.resize(bgr, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        h, w = bgr.shape[:2]
        frames.append(np.ascontiguousarray(cv2.cvtColor(bgr[: h // 8 * 8, : w // 8 * 8], cv2.COLOR_BGR2RGB)))
    cap.release()
    if len(frames) < 2:
        raise SystemExit(f"need at least 2 frames from {path} (start {start}), got {len(frames)}")
    return frames, fps, start


def pan_frames(photo: np.ndarray, count: int, step: int) -> list[np.ndarray]:
    """A known camera motion: ``count`` windows of ``photo`` sliding right by ``step`` px a frame.

    Frame t is ``photo[:, t*step : t*step + W']``, W' = width - (count-1)*step (cut to a multiple of 8),
    so frame t at column x shows what frame t-1 showed at column x + step.
    """
    w = (photo.shape[1] - (count - 1) * step) // 8 * 8
    if w < 16:
        raise SystemExit(f"a {photo.shape[1]} px wide photo is too narrow for {count} frames panning {step} px")
    return [np.ascontiguousarray(photo[:, t * step : t * step + w]) for t in range(count)]


def parse_indices(text: str, n: int, what: str) -> list[int]:
    """'all' or '0,2,5' -> style indices, checked against ``n`` styles."""
    if text.strip().lower() == "all":
        return list(range(n))
    try:
        out = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise SystemExit(f"{what}: expected comma-separated style indices or 'all', got {text!r}") from e
    bad = [i for i in out if not 0 <= i < n]
    if bad:
        raise SystemExit(f"{what}: style indices {bad} out of range 0..{n - 1}")
    return out
