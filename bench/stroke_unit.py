"""What stroke 1 should ask a v2 network for, measured against the paintings: its *stroke unit*.

Copy-paste command (from the repository root)::

    python -m bench.stroke_unit --model v2=runs/v2/default.safetensors --fit runs/v2/unit.safetensors

``common.stroke`` defines a user's stroke 1 as marks that cover as much of the frame as the
painting's own marks cover of the painting. A trained network's stroke input only approximates
that: its stroke 1 may paint marks larger or smaller than the painting's. This bench stylizes
photos that training sees (never the held-out ones the quality bench judges) at 640x480, the
reference frame, with every style, at user stroke 1 under each candidate unit, and measures the
style distance to each painting (VGG Gram, as ``bench.quality``: three crops of the painting at
``--painting-size``). The fit is the coarsest unit whose mean distance is within ``--tolerance``
(1 %) of the lowest: the curve is flat near its minimum, and of two units that paint as close to
the paintings the coarser keeps more of the photo and flickers less on video. ``--fit OUT`` writes a
copy of the checkpoint that carries it (and keeps its stroke floor: the unit changes nothing at
the reference frame that the floor describes). Content distance is printed beside it: finer
marks keep less of the photo's structure, and they flicker more on video, which only
``bench.quality`` on held-out footage shows.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from bench.quality.inputs import painting_path, select_photos
from bench.quality.models import add_model_options, load_exact
from bench.stroke_step import LARGE, write_fitted
from common.stroke import DEFAULT_STROKE, STROKE_UNIT_RANGE
from trainer.data import painting_crops

if TYPE_CHECKING:
    import torch

    from engines.runtime.frames import FrameBackend
    from trainer.metrics import VggMetrics

UNITS = (0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 1.0, 1.15)  # the units tried by default
TOLERANCE = 0.01  # a unit this close (relative) to the lowest style distance counts as as close


def best_unit(table: dict[float, dict[str, float]], tolerance: float = TOLERANCE) -> float:
    """The coarsest unit whose mean style distance is within ``tolerance`` (relative) of the lowest."""
    lowest = min(row["style"] for row in table.values())
    return max(u for u, row in table.items() if row["style"] <= lowest * (1.0 + tolerance))


def unit_distances(
    backend: FrameBackend,
    photos: Sequence[np.ndarray],
    paintings: Sequence[dict[str, torch.Tensor]],
    vgg: VggMetrics,
    units: Sequence[float] = UNITS,
) -> dict[float, dict[str, float]]:
    """Per unit: the mean style distance of ``photos`` (640x480 uint8 RGB) stylized with each style
    (``paintings[i]``: style ``i``'s mean Gram matrices) at user stroke 1, and the mean content
    distance to the photo."""
    from trainer.metrics import content_distance, style_distance

    if not backend.stroke_scale.anchors:
        raise ValueError("this model has no stroke input (a v1 model): it has no stroke unit")
    if len(paintings) != len(backend.styles):
        raise ValueError(f"{len(paintings)} paintings for {len(backend.styles)} styles")
    for u in units:
        if not STROKE_UNIT_RANGE[0] <= u <= STROKE_UNIT_RANGE[1]:
            raise ValueError(f"unit {u:g} is outside {STROKE_UNIT_RANGE[0]:g}..{STROKE_UNIT_RANGE[1]:g}")
    eye = np.eye(len(backend.styles), dtype=np.float32)
    contents = [vgg.stats(img).content for img in photos]
    style: dict[float, list[float]] = {u: [] for u in units}
    content: dict[float, list[float]] = {u: [] for u in units}
    original = backend.stroke_scale
    try:
        with tqdm(total=len(units) * len(photos) * len(paintings), desc="units", unit="img") as bar:
            for u in units:
                backend.stroke_scale = dataclasses.replace(original, unit=u)
                for img, ref in zip(photos, contents, strict=True):
                    for i, grams in enumerate(paintings):
                        st = vgg.stats(backend.stylize(img, eye[i], DEFAULT_STROKE))
                        style[u].append(style_distance(st.grams, grams))
                        content[u].append(content_distance(st.content, ref))
                        bar.update()
    finally:
        backend.stroke_scale = original
    return {u: {"style": statistics.fmean(style[u]), "content": statistics.fmean(content[u])} for u in units}


def main(argv: list[str] | None = None) -> int:
    from bench.data import PAINTINGS

    p = argparse.ArgumentParser(
        prog="python -m bench.stroke_unit",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_model_options(p, "the v2 checkpoint (.safetensors) to measure (once)", 4, "training photos")
    p.add_argument("--styles-dir", type=Path, default=PAINTINGS, help="folder holding the paintings")
    p.add_argument("--painting-size", type=int, default=480, help="short side the paintings are scaled to")
    p.add_argument("--units", default=",".join(f"{u:g}" for u in UNITS), help="comma-separated stroke units to try")
    p.add_argument(
        "--tolerance",
        type=float,
        default=TOLERANCE,
        help="the fit is the coarsest unit within this relative distance of the lowest style distance",
    )
    p.add_argument("--fit", type=Path, metavar="OUT", help="write a copy of the model carrying the best unit here")
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if len(args.model) != 1 or not args.model[0].endswith(".safetensors"):
        raise SystemExit("bench.stroke_unit takes exactly one --model LABEL=PATH.safetensors (a v2 checkpoint)")
    try:
        units = sorted({float(u) for u in args.units.split(",") if u.strip()})
    except ValueError:
        raise SystemExit(f"--units takes comma-separated numbers, got {args.units!r}") from None
    if not units:
        raise SystemExit("--units is empty")

    from trainer.checkpoint import load_checkpoint
    from trainer.metrics import VggMetrics

    named = select_photos(args.photos, args.num_photos, LARGE, held_out_only=False, training_only=True)
    photos = [img for _, img in named]
    t0 = time.time()
    label, path, be = load_exact(args.model[0], args.backend, args.threads)
    vgg = VggMetrics()
    sources = [s.source for s in load_checkpoint(path).styles]
    crops = [painting_crops(painting_path(args.styles_dir, s), args.painting_size, LARGE[1]) for s in sources]
    paintings = [vgg.mean_grams(c) for c in crops]
    try:
        table = unit_distances(be, photos, paintings, vgg, units)
    except ValueError as e:
        raise SystemExit(f"{label}: {e}") from None
    finally:
        be.close()
    best = best_unit(table, args.tolerance)
    print(f"\n{label}: stroke 1 at {LARGE[0]}x{LARGE[1]}, {len(photos)} training photos x {len(sources)} styles\n")
    print("| stroke unit | style distance | content distance |")
    print("| ---: | ---: | ---: |")
    for u, row in table.items():
        mark = " (fitted)" if u == best else ""
        print(f"| {u:g}{mark} | {row['style']:.4f} | {row['content']:.3f} |")
    record = {
        "unit": best,
        "tolerance": args.tolerance,
        "photos": [name for name, _ in named],
        "paintings": sources,
        "painting_size": args.painting_size,
        "means": {f"{u:g}": row for u, row in table.items()},
    }
    if args.fit:
        out = write_fitted(path, args.fit, {"stroke_unit": best}, "stroke_unit_fit", record)
        print(f"\nwrote {out} with stroke unit {best:g}")
    if args.json:
        from bench.results import write_run

        write_run("bench.stroke_unit", argv, {"model": str(path), **record}, t0, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
