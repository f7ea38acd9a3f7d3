"""Check and reduce an uploaded painting, in a child process the server starts for each upload.

    python -m streamer.painting OUT.png --max-side 1024 --budget-mb 768 < upload

Reads the upload on stdin; accepts exactly JPEG, PNG and WebP; refuses sizes from the
header before decoding (under 64 px or over 12000 px a side, over 50 megapixels); decodes
once, JPEG straight at the reduced size (libjpeg's DCT scaling, ``Image.draft``); writes
the painting at most ``--max-side`` px on its short side as PNG to OUT. Prints one JSON
line: ``{"format", "width", "height", "kept": [w, h]}`` or ``{"error": "..."}`` (exit 2).

A child, not a thread: the decode's memory is the child's (a 7000x7000 PNG needs
150 MB; the server's allocator would keep it after it is freed), ``--budget-mb`` caps it
(RLIMIT_AS: a decompression bomb fails here, not in the server), and the server's event
loop never waits on it. The server runs one at a time.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

MIN_SIDE = 64  # px: smaller has no brushwork to learn
MAX_SIDE = 12_000  # px
MAX_PIXELS = 50_000_000  # a 7000x7000 painting scan is fine; a decompression bomb is not
FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}  # what the page and README promise


class PaintingError(ValueError):
    """The upload is not a painting this server takes; the text says why."""


def reduce_painting(data: bytes, out: Path, max_side: int) -> dict[str, object]:
    """Check ``data`` and write it reduced to ``out`` (PNG); the facts, or :class:`PaintingError`."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # PIL's own bomb check agrees with ours
    if not data:
        raise PaintingError("the file is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data), formats=list(FORMATS)) as im:
            fmt, (w, h) = im.format or "", im.size
            if min(w, h) < MIN_SIDE:
                raise PaintingError(f"the picture is {w}x{h} pixels; it needs at least {MIN_SIDE} on each side")
            if max(w, h) > MAX_SIDE or w * h > MAX_PIXELS:
                raise PaintingError(
                    f"the picture is {w}x{h} pixels; at most {MAX_SIDE} a side and {MAX_PIXELS // 10**6} megapixels"
                )
            scale = min(1.0, max_side / min(w, h))
            target = (max(1, round(w * scale)), max(1, round(h * scale)))
            if fmt == "JPEG":
                im.draft("RGB", target)  # decode at 1/2, 1/4 or 1/8 size where that still covers the target
            im.load()  # the whole file decodes once (a truncated or corrupt one fails here)
            rgb = ImageOps.exif_transpose(im).convert("RGB")
            if rgb.width != target[0] or rgb.height != target[1]:
                target = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
                rgb = rgb.resize(target, Image.Resampling.LANCZOS) if scale < 1 else rgb
            rgb.save(out, format="PNG")
            return {"format": fmt, "suffix": FORMATS[fmt], "width": w, "height": h, "kept": [rgb.width, rgb.height]}
    except PaintingError:
        raise
    except MemoryError:
        raise PaintingError("the picture needs more memory to decode than this server allows") from None
    except UnidentifiedImageError:
        kind = _sniff(data)
        if kind:
            raise PaintingError(f"{kind} images are not taken here: upload a JPEG, PNG or WebP painting") from None
        raise PaintingError("the file is not an image this server can read (JPEG, PNG or WebP)") from None
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        raise PaintingError(f"the file is not an image this server can read (JPEG, PNG or WebP): {e}") from None


def _sniff(data: bytes) -> str | None:
    """The name of a picture format we refuse, from its first bytes (for a plain message)."""
    signatures = {b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"GIF8": "GIF"}
    return next((name for sig, name in signatures.items() if data.startswith(sig)), None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streamer.painting", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="where to write the reduced painting (PNG)")
    parser.add_argument("--max-side", type=int, default=1024, help="short side of the kept painting, px")
    parser.add_argument("--budget-mb", type=int, default=768, help="address-space limit of this process, MiB")
    args = parser.parse_args(argv)
    try:
        import resource

        limit = args.budget_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):  # not on this platform: the child still keeps it off the server
        pass
    data = sys.stdin.buffer.read()
    try:
        facts = reduce_painting(data, args.out, args.max_side)
    except PaintingError as e:
        print(json.dumps({"error": str(e)}), flush=True)
        return 2
    print(json.dumps(facts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
