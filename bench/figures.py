"""README pictures: a contact sheet (photos x styles, plus a mix) and a video frame strip.

Copy-paste commands (from the repository root)::

    # both figures for the shipped model -> docs/contact_sheet.png, docs/video_strip.png
    python -m bench.figures --model engines/models/default.safetensors

    # another checkpoint, other photos, three other styles in the strip
    python -m bench.figures --model runs/default/default.safetensors \\
        --photo ../shared/data/content/scikit-learn/flower.jpg --photo ../shared/data/content/opencv-doc/baboon.jpg \\
        --strip-styles 2,4,6 --sheet-out /tmp/sheet.png --strip-out /tmp/strip.png

The contact sheet has one row per photo: the photo, then every style of the
model, then an equal mix of the ``--mix`` styles. Photos are centre-cropped
and stylized at ``--size`` px (as in ``bench.quality``), then shown at
``--tile`` px. The strip shows ``--strip-frames`` frames of the video, one
second apart by default: the input row, then one row per ``--strip-styles``
style. PNGs larger than ``--max-bytes`` are stored with a 256-colour palette.
The photos' and the video's credits are in ``docs/CREDITS.md``.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from bench.data import PHOTOS, VIDEO
from bench.quality.inputs import open_rgb, parse_indices
from bench.quality.models import Model, load_model
from common.paths import DEFAULT_CHECKPOINT
from trainer.data import cover_crop

log = logging.getLogger(__name__)

# Credited in docs/CREDITS.md; all CC0 or CC-BY (no share-alike) so the figures can ship with the repo.
DEFAULT_PHOTOS = (
    PHOTOS / "puzzle-jigsaw" / "cat-animal-cat-portrait-mackerel.jpg",
    PHOTOS / "gcompris-qt-data__explore_world_animals" / "koala.webp",
    PHOTOS / "gcompris-qt-data__explore_monuments" / "machuPicchu.webp",
    PHOTOS / "scikit-learn" / "china.jpg",
)
DOCS = Path(__file__).resolve().parents[1] / "docs"
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
PAD = 4  # px between tiles


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size)


def wrap(draw: ImageDraw.ImageDraw, text: str, fnt: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> str:
    """Greedy word wrap so that every line fits in ``width`` px."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=fnt) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return "\n".join(lines)


def save_png(image: Image.Image, path: Path, max_bytes: int) -> int:
    """Write ``image`` as an optimised PNG; fall back to a 256-colour palette above ``max_bytes``."""
    buf = io.BytesIO()
    image.save(buf, "PNG", optimize=True)
    if buf.tell() > max_bytes:
        buf = io.BytesIO()
        image.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG).save(
            buf, "PNG", optimize=True
        )
        if buf.tell() > max_bytes:
            log.warning("%s is %.1f MB even with a palette; use a smaller --tile", path, buf.tell() / 1e6)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)
    return buf.tell()


def grid(
    tiles: list[list[np.ndarray]],
    col_labels: list[str],
    row_labels: list[str] | None,
    tile_w: int,
    tile_h: int,
    label_w: int = 0,
) -> Image.Image:
    """Lay out uint8 RGB tiles (already tile_w x tile_h) with a header row and optional row labels."""
    fnt = font(13)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wrapped = [wrap(probe, t, fnt, tile_w - 4) for t in col_labels]
    header = max(probe.multiline_textbbox((0, 0), t, font=fnt)[3] for t in wrapped) + 8
    rows, cols = len(tiles), len(tiles[0])
    width = label_w + cols * (tile_w + PAD) + PAD
    height = header + rows * (tile_h + PAD) + PAD
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for c, text in enumerate(wrapped):
        x = label_w + PAD + c * (tile_w + PAD) + tile_w // 2
        draw.multiline_text((x, header - 4), text, font=fnt, fill=INK, anchor="md", align="center")
    for r, row in enumerate(tiles):
        y = header + r * (tile_h + PAD)
        if row_labels:
            label = wrap(draw, row_labels[r], fnt, label_w - 8)
            draw.multiline_text((label_w - 4, y + tile_h // 2), label, font=fnt, fill=INK, anchor="rm", align="right")
        for c, tile in enumerate(row):
            sheet.paste(Image.fromarray(tile), (label_w + PAD + c * (tile_w + PAD), y))
    return sheet


def thumb(image: np.ndarray, w: int, h: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.LANCZOS))


def contact_sheet(model: Model, photos: list[Path], size: int, tile: int, mix: list[int]) -> Image.Image:
    """Rows: photos; columns: the photo, each style, the mix of ``mix`` (all at ``size`` px, shown at ``tile``)."""
    weights = [model.one_hot(i) for i in range(len(model.styles))]
    labels = ["photo", *model.styles]
    if mix:
        weights.append(model.mix(mix))
        labels.append("mix: " + " + ".join(model.styles[i] for i in mix))
    rows = []
    with tqdm(total=len(photos) * len(weights), desc="contact sheet", unit="img") as bar:
        for path in photos:
            img = cover_crop(open_rgb(path), (size, size))
            row = [thumb(img, tile, tile)]
            for w in weights:
                row.append(thumb(model.stylize(img, w), tile, tile))
                bar.update(1)
            rows.append(row)
    return grid(rows, labels, None, tile, tile)


def video_strip(
    model: Model, video: Path, frame_ids: list[int], styles: list[int], width: int, scale: float
) -> Image.Image:
    """Rows: the input, then each style; columns: the frames ``frame_ids`` (stylized at ``scale``)."""
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise SystemExit(f"cannot open video {video}")
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    frames = []
    for i in frame_ids:
        cap.set(cv2.CAP_PROP_POS_FRAMES, i)
        ok, bgr = cap.read()
        if not ok:
            raise SystemExit(f"{video} has no frame {i}")
        h, w = bgr.shape[:2]
        if scale != 1.0:
            bgr = cv2.resize(bgr, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
            h, w = bgr.shape[:2]
        frames.append(np.ascontiguousarray(cv2.cvtColor(bgr[: h // 4 * 4, : w // 4 * 4], cv2.COLOR_BGR2RGB)))
    cap.release()
    fh, fw = frames[0].shape[:2]
    tile_w, tile_h = width, round(width * fh / fw)
    rows = [[thumb(f, tile_w, tile_h) for f in frames]]
    with tqdm(total=len(styles) * len(frames), desc="video strip", unit="frame") as bar:
        for s in styles:
            row = []
            for f in frames:
                row.append(thumb(model.stylize(f, model.one_hot(s)), tile_w, tile_h))
                bar.update(1)
            rows.append(row)
    col_labels = [f"frame {i}" + (f" ({i / fps:.1f} s)" if fps else "") for i in frame_ids]
    return grid(rows, col_labels, ["input", *(model.styles[s] for s in styles)], tile_w, tile_h, label_w=120)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.figures",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--model", type=Path, default=DEFAULT_CHECKPOINT, help="a .safetensors checkpoint or an exported .onnx"
    )
    p.add_argument("--backend", default="auto", help="engines.runtime backend for an .onnx model")
    p.add_argument(
        "--photo", type=Path, action="append", help="a photo for the contact sheet, repeatable (default: 4 chosen ones)"
    )
    p.add_argument("--size", type=int, default=384, help="photos are centre-cropped and stylized at SIZE x SIZE px")
    p.add_argument("--tile", type=int, default=160, help="shown size of each contact-sheet tile, px")
    p.add_argument("--mix", default="0,1", help="styles mixed in equal parts for the last column ('' for none)")
    p.add_argument("--video", type=Path, default=VIDEO, help="video for the frame strip")
    p.add_argument("--strip-frames", default="100,110,120,130,140", help="frame indices shown in the strip")
    p.add_argument("--strip-styles", default="0,1,2", help="style indices, one strip row each")
    p.add_argument("--strip-scale", type=float, default=0.5, help="video frames are stylized at this scale")
    p.add_argument("--strip-width", type=int, default=224, help="shown width of each strip frame, px")
    p.add_argument("--sheet-out", type=Path, default=DOCS / "contact_sheet.png", help="contact sheet PNG")
    p.add_argument("--strip-out", type=Path, default=DOCS / "video_strip.png", help="video strip PNG")
    p.add_argument("--max-bytes", type=int, default=1_400_000, help="above this a PNG is stored with a palette")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads for inference")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.size % 4:
        raise SystemExit(f"--size must be a multiple of 4, got {args.size}")
    model = load_model("model", args.model, args.backend, args.threads)
    mix = parse_indices(args.mix, len(model.styles), "--mix") if args.mix else []
    photos = args.photo or [p for p in DEFAULT_PHOTOS if p.is_file()]
    if not photos:
        raise SystemExit("no photos: pass --photo PATH")
    sheet = contact_sheet(model, photos, args.size, args.tile, mix)
    n = save_png(sheet, args.sheet_out, args.max_bytes)
    print(f"wrote {args.sheet_out} ({sheet.width}x{sheet.height}, {n / 1e6:.2f} MB)")
    frame_ids = [int(v) for v in args.strip_frames.split(",") if v.strip()]
    styles = parse_indices(args.strip_styles, len(model.styles), "--strip-styles")
    strip = video_strip(model, args.video, frame_ids, styles, args.strip_width, args.strip_scale)
    n = save_png(strip, args.strip_out, args.max_bytes)
    print(f"wrote {args.strip_out} ({strip.width}x{strip.height}, {n / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
