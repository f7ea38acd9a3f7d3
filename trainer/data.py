"""Training data: content photos from a folder, style paintings by path.

Images are decoded once, downscaled to a working size and kept in memory:
with a few hundred photos this costs ~200 MB and removes JPEG decoding of
multi-megapixel files from every step, which otherwise dominates on a CPU.
Unreadable or too-small files are skipped with a warning that names them; a
folder with no usable image is an error before training starts.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


class DataError(ValueError):
    """The training data cannot be used (missing folder, no images, unreadable style)."""


def resize_short(im: Image.Image, short: int) -> Image.Image:
    """Resize so the short side is ``short`` px (Lanczos, up or down)."""
    s = short / min(im.size)
    return im.resize((max(short, round(im.width * s)), max(short, round(im.height * s))), Image.Resampling.LANCZOS)


def cover_crop(im: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """``im`` resized to cover ``size`` (width, height), aspect kept, and centre-cropped to it."""
    w, h = size
    s = max(w / im.width, h / im.height)
    im = im.resize((max(w, round(im.width * s)), max(h, round(im.height * s))), Image.Resampling.LANCZOS)
    left, top = (im.width - w) // 2, (im.height - h) // 2
    return np.asarray(im.crop((left, top, left + w, top + h)), dtype=np.uint8).copy()


def painting_crops(path: Path, short: int, crop: int) -> list[np.ndarray]:
    """Three ``crop``-sized squares (start, centre, end of the long axis) of the painting at short side ``short``:
    what a style distance is measured against (``bench.quality``, ``trainer.palette``)."""
    im = resize_short(load_rgb(path), short)
    crop = min(crop, short)
    out = []
    for t in (0.0, 0.5, 1.0):
        left, top = round((im.width - crop) * t), round((im.height - crop) * t)
        out.append(np.asarray(im.crop((left, top, left + crop, top + crop)), dtype=np.uint8).copy())
    return out


def find_images(folder: str | Path) -> list[Path]:
    """All jpg/png/webp files under ``folder``, recursively, sorted."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"content folder not found: {root}")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def find_painting(source: str, search: Sequence[Path], recorded: str | None = None) -> Path | None:
    """A style's painting file: the ``recorded`` path if it still exists, else the first file
    named ``source`` anywhere under the ``search`` folders (sorted), else None."""
    if recorded and Path(recorded).is_file():
        return Path(recorded)
    for folder in search:
        hits = sorted(p for p in Path(folder).rglob(source) if p.is_file())
        if hits:
            return hits[0]
    return None


def load_rgb(path: Path, short_side: int | None = None) -> Image.Image:
    """Decode an image as RGB (EXIF-rotated, alpha on white), optionally downscaled."""
    with Image.open(path) as src:
        im: Image.Image = ImageOps.exif_transpose(src)
        if im.mode in ("RGBA", "LA", "P"):
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, im)
        im = im.convert("RGB")
        if short_side is not None and min(im.size) > short_side:
            scale = short_side / min(im.size)
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
        return im


SAME_PICTURE = 0.98  # thumbnail correlation above which two files show one picture


def picture_print(path: Path, side: int = 16) -> np.ndarray | None:
    """A ``side`` x ``side`` grey thumbnail, zero-mean and unit-length (None if unreadable): two
    files show the same picture, whatever their size, format or compression, when the dot
    product of their prints is near 1. On the training material copies score 0.9998 or more
    and the closest different pictures 0.90."""
    try:
        with Image.open(path) as src:
            src.draft("L", (side * 4, side * 4))  # JPEG decodes at a fraction of its size
            grey = ImageOps.exif_transpose(src).convert("L").resize((side, side), Image.Resampling.BOX)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return None
    v = np.asarray(grey, dtype=np.float64).ravel()
    v -= v.mean()
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 1e-9 else None  # a flat picture is nobody's copy


def training_files(folder: str | Path, skip: Callable[[str], bool] | None) -> list[Path]:
    """The images under ``folder`` that training may use: all of them except those that
    ``skip(relative posix path)`` holds out and any that shows the same picture as a held-out
    one (a resized or re-encoded copy in another folder would put a held-out photo into training)."""
    files = find_images(folder)
    if skip is None:
        return files
    root = Path(folder)
    left = [p for p in files if skip(p.relative_to(root).as_posix())]
    files = [p for p in files if not skip(p.relative_to(root).as_posix())]
    if left:
        log.info("left out %d held-out photos under %s", len(left), folder)
    held = [v for v in map(picture_print, left) if v is not None]
    if not held or not files:
        return files
    prints = np.stack(held)
    keep = []
    for path in files:
        v = picture_print(path)
        if v is not None and float((prints @ v).max()) > SAME_PICTURE:
            log.info("left out %s: the same picture as a held-out photo", path.relative_to(root).as_posix())
        else:
            keep.append(path)
    return keep


def preview_photo(folder: str | Path, size: tuple[int, int]) -> torch.Tensor:
    """The first usable photo under ``folder``, cut to ``size`` (w, h) around its centre: [3,h,w] in [0,1]."""
    for path in find_images(folder):
        try:
            im = ImageOps.fit(load_rgb(path), size, Image.Resampling.LANCZOS)
        except (OSError, UnidentifiedImageError, ValueError):
            continue
        return to_tensor(im)
    raise DataError(f"no usable photo under {folder} for the preview")


def to_tensor(im: Image.Image) -> torch.Tensor:
    """PIL RGB -> [3,H,W] float in [0,1]."""
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0


@dataclass
class ContentImages:
    """Random square crops of the content photos, with flips and scale jitter."""

    images: list[torch.Tensor]  # [3,H,W] each, short side == working size
    paths: list[Path]
    size: int

    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        size: int,
        min_side: int | None = None,
        work_side: int | None = None,
        skip: Callable[[str], bool] | None = None,
    ) -> ContentImages:
        """Load every usable photo under ``folder`` at short side ``work_side`` (default 1.5x the crop size).

        Crops are then cut at random scales between ``size`` and the short side, so
        ``work_side`` sets the largest scale a crop shows the scene at (640 for v2: a
        256 px crop is then between 40 % and all of a video frame's short side).
        ``skip(relative posix path)`` leaves photos out (the held-out split), with any copy of
        them (:func:`training_files`).
        """
        min_side = min_side if min_side is not None else size // 2
        files = training_files(folder, skip)
        if not files:
            raise DataError(f"no images (jpg, png, webp) found under {folder}")
        images, kept = [], []
        work = work_side if work_side is not None else int(size * 1.5)
        for path in files:
            try:
                im = load_rgb(path, short_side=work)
            except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
                log.warning("skipping unreadable image %s: %s", path, e)
                continue
            if min(im.size) < min_side:
                log.warning("skipping %s: %dx%d is smaller than %d px", path, im.width, im.height, min_side)
                continue
            images.append(to_tensor(im))
            kept.append(path)
        if not images:
            raise DataError(f"none of the {len(files)} images under {folder} is usable (see warnings)")
        log.info("loaded %d content images from %s (%d skipped)", len(images), folder, len(files) - len(images))
        return cls(images, kept, size)

    def __len__(self) -> int:
        return len(self.images)

    def crop(self, rng: random.Random, index: int | None = None) -> torch.Tensor:
        """One [3,size,size] crop: random scale in [size, short side], position and flip."""
        img = self.images[rng.randrange(len(self.images)) if index is None else index]
        return random_crop(img, self.size, rng)

    def batch(self, n: int, rng: random.Random) -> torch.Tensor:
        return torch.stack([self.crop(rng) for _ in range(n)])


def random_crop(img: torch.Tensor, size: int, rng: random.Random, flip: bool = True) -> torch.Tensor:
    """Random-scale square crop resized to ``size`` (upscaling small images if needed)."""
    _, h, w = img.shape
    side = rng.randint(min(size, min(h, w)), min(h, w))
    y, x = rng.randint(0, h - side), rng.randint(0, w - side)
    crop = img[:, y : y + side, x : x + side]
    if side != size:
        crop = torch.nn.functional.interpolate(
            crop[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )[0]
    if flip and rng.random() < 0.5:
        crop = crop.flip(2)
    return crop.clamp(0, 1)


@dataclass
class StyleImage:
    """One painting, kept at a working size for Gram targets and discriminator crops."""

    name: str
    path: Path
    image: torch.Tensor  # [3,H,W]

    @classmethod
    def load(cls, path: str | Path, name: str | None, short_side: int | None) -> StyleImage:
        """Read a painting, downscaled to ``short_side`` (None: as it is)."""
        p = Path(path)
        if not p.is_file():
            raise DataError(f"style image not found: {p}")
        try:
            im = load_rgb(p, short_side=short_side)
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise DataError(f"cannot read style image {p}: {e}") from e
        if min(im.size) < 64:
            raise DataError(f"style image {p} is too small ({im.width}x{im.height}); need at least 64 px")
        return cls(name or default_style_name(p), p, to_tensor(im))

    def crops(self, n: int, size: int, rng: random.Random) -> torch.Tensor:
        return torch.stack([random_crop(self.image, size, rng) for _ in range(n)])

    def scaled(self, short: int) -> StyleImage:
        """This painting resized (up or down) to short side ``short``: its strokes scale with it."""
        _, h, w = self.image.shape
        s = short / min(h, w)
        size = (max(1, round(h * s)), max(1, round(w * s)))
        img = torch.nn.functional.interpolate(
            self.image[None], size=size, mode="bilinear", antialias=s < 1, align_corners=False
        )[0].clamp(0, 1)
        return StyleImage(self.name, self.path, img)

    def native_crops(self, n: int, size: int, rng: random.Random) -> torch.Tensor:
        """``n`` crops of ``size`` px cut at the working scale, not resized: brush strokes keep the
        scale they have in the painting at ``style_size``, where resized crops blur them away.
        A painting smaller than ``size`` gives ``n`` copies of its largest centred square."""
        _, h, w = self.image.shape
        if min(h, w) < size:
            side = min(h, w)
            y, x = (h - side) // 2, (w - side) // 2
            return self.image[:, y : y + side, x : x + side][None].expand(n, -1, -1, -1).clone()
        out = []
        for _ in range(n):
            y, x = rng.randint(0, h - size), rng.randint(0, w - size)
            out.append(self.image[:, y : y + size, x : x + size])
        return torch.stack(out)


def default_style_name(path: Path) -> str:
    """'Katsushika_Hokusai_The_Great_Wave.png' -> 'Katsushika Hokusai The Great Wave'."""
    return " ".join(path.stem.replace("_", " ").replace("-", " ").split())


def parse_style_arg(arg: str) -> tuple[str, str | None]:
    """'painting.jpg' or 'painting.jpg=Display Name' -> (path, name or None)."""
    if "=" in arg:
        path, name = arg.split("=", 1)
        return path, (name.strip() or None)
    return arg, None
