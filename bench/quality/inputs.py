"""What the models are run on: photos, crops of the paintings, consecutive video frames (all uint8 RGB)."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from bench.metrics import edge_map
from trainer.data import find_images, find_painting, load_rgb

log = logging.getLogger(__name__)

MIN_EDGE_DENSITY = 0.005  # photos with fewer Canny edge pixels (defocused, flat) are skipped


def resize_short(im: Image.Image, short: int) -> Image.Image:
    """Resize so the short side is ``short`` px (Lanczos, up or down)."""
    s = short / min(im.size)
    return im.resize((max(short, round(im.width * s)), max(short, round(im.height * s))), Image.Resampling.LANCZOS)


def open_rgb(path: Path) -> Image.Image:
    return load_rgb(path)  # EXIF-rotated, alpha on white, RGB


def centre_crop(im: Image.Image, size: int) -> np.ndarray:
    left, top = (im.width - size) // 2, (im.height - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8).copy()


def select_photos(folder: Path, count: int, size: int) -> list[tuple[str, np.ndarray]]:
    """``count`` photos spread evenly over the sorted folder, as ``size`` x ``size`` uint8 RGB.

    Photos smaller than ``size`` on the short side (they would be upscaled) and
    photos with almost no edges (defocused or flat: edge F1 means nothing there)
    are passed over for the next file in the folder.
    """
    files = find_images(folder)
    if not files:
        raise SystemExit(f"no photos (jpg, png, webp) under {folder}")
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
                    if min(probe.size) < size:
                        continue
                img = centre_crop(resize_short(open_rgb(files[i]), size), size)
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
        raise SystemExit(f"no usable photo of at least {size} px with visible edges under {folder}")
    return chosen


def painting_path(styles_dir: Path, source: str) -> Path:
    """The painting file named ``source`` anywhere under ``styles_dir`` (the trainer's lookup), or exit."""
    found = find_painting(source, [styles_dir])
    if found is None:
        raise SystemExit(f"painting {source!r} not found under {styles_dir} (use --styles-dir)")
    return found


def painting_crops(path: Path, short: int, crop: int) -> list[np.ndarray]:
    """Three ``crop``-sized squares (start, centre, end of the long axis) of the painting at short side ``short``."""
    im = resize_short(open_rgb(path), short)
    crop = min(crop, short)
    out = []
    for t in (0.0, 0.5, 1.0):
        left, top = round((im.width - crop) * t), round((im.height - crop) * t)
        out.append(np.asarray(im.crop((left, top, left + crop, top + crop)), dtype=np.uint8).copy())
    return out


def read_video(path: Path, start: int, count: int, scale: float) -> tuple[list[np.ndarray], float]:
    """``count`` consecutive frames from ``start`` as uint8 RGB, scaled, cropped to multiples of 4."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise SystemExit(f"cannot open video {path}")
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
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
        frames.append(np.ascontiguousarray(cv2.cvtColor(bgr[: h // 4 * 4, : w // 4 * 4], cv2.COLOR_BGR2RGB)))
    cap.release()
    if len(frames) < 2:
        raise SystemExit(f"need at least 2 frames from {path} (start {start}), got {len(frames)}")
    return frames, fps


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
