"""Auto resolution's step, measured on the picture: does halving the processing size keep the strokes'
size relative to the frame?

Copy-paste command (from the repository root)::

    python -m bench.stroke_step --model v2=engines/models/v2/default.onnx --json bench/results/stroke_step.json

Each held-out photo (``common.split``) is stylized at 640x480 and, box-reduced, at 320x240, at the
same user ``stroke``; the runtime turns that into the network stroke for each frame size
(``common.stroke``). :func:`bench.metrics.stroke_frequency` (cycles per frame width, both
pictures reduced to the same analysis size) of the small picture over that of the large one is
the *kept* ratio: 1 when the step changes nothing, below 1 when the marks grow relative to the
frame. The *jumped* ratio asks the small frame for the large frame's network stroke (user stroke
x2), which is what a plan-less runtime would draw: it shows the measure sees the difference.
``tests/test_shipped_model.py`` runs the same function on the shipped photos and wants the kept
ratio's median within 0.9-1.1.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from bench.metrics import stroke_frequency
from bench.quality.inputs import select_photos
from bench.quality.models import add_model_options, load_exact

if TYPE_CHECKING:
    from engines.runtime.frames import FrameBackend

log = logging.getLogger("bench.stroke_step")
LARGE, SMALL = (640, 480), (320, 240)  # auto resolution's step (w, h)
STROKES = (1.0, 1.6)  # user strokes whose network stroke at 320x240 is still within the anchors


@dataclass
class StepRatios:
    """Per photo, for each user stroke: frequency at 320x240 over frequency at 640x480."""

    kept: dict[float, list[float]]  # the runtime's stroke plan (network stroke halves with the frame)
    jumped: list[float]  # the small frame asked for the large frame's network stroke (user stroke 1 x2)

    def medians(self) -> dict[str, float]:
        out = {f"kept@{s:g}": statistics.median(v) for s, v in self.kept.items()}
        return {**out, "jumped@1": statistics.median(self.jumped)}


def step_ratios(backend: FrameBackend, photos: Sequence[np.ndarray], strokes: Sequence[float] = STROKES) -> StepRatios:
    """The ratios for 640x480 uint8 RGB ``photos``; photo ``i`` uses style ``3i`` (mod the styles), one-hot."""
    if not backend.strokes:
        raise ValueError("this model has no stroke input (a v1 model): its marks do not follow the frame size")
    eye = np.eye(len(backend.styles), dtype=np.float32)
    kept: dict[float, list[float]] = {s: [] for s in strokes}
    jumped: list[float] = []
    for i, big in enumerate(photos):
        if big.shape[:2] != (LARGE[1], LARGE[0]):
            raise ValueError(f"photos must be {LARGE[0]}x{LARGE[1]}, got {big.shape[1]}x{big.shape[0]}")
        small = np.asarray(Image.fromarray(big).resize(SMALL, Image.Resampling.BOX))
        w = eye[(3 * i) % len(eye)]
        ref = {s: stroke_frequency(backend.stylize(big, w, s)) for s in {*strokes, 1.0}}
        for s in strokes:
            kept[s].append(stroke_frequency(backend.stylize(small, w, s)) / ref[s])
        jumped.append(stroke_frequency(backend.stylize(small, w, 2.0)) / ref[1.0])
    return StepRatios(kept, jumped)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.stroke_step",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_model_options(p, "a v2 model (.onnx or .safetensors), one row each", num_photos=8)
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    photos = [img for _, img in select_photos(args.photos, args.num_photos, LARGE)]
    rows: dict[str, dict[str, object]] = {}
    t0 = time.time()
    for spec in args.model:
        label, path, be = load_exact(spec, args.backend, args.threads)
        try:
            ratios = step_ratios(be, photos)
        except ValueError as e:
            raise SystemExit(f"{label}: {e}") from None
        finally:
            be.close()
        rows[label] = {"path": str(path), "medians": ratios.medians(), **asdict(ratios)}
    cols = list(next(iter(rows.values()))["medians"])  # type: ignore[arg-type]
    print(f"median frequency ratio, {SMALL[0]}x{SMALL[1]} over {LARGE[0]}x{LARGE[1]}, {len(photos)} held-out photos")
    print("(kept: 0.9-1.1 wanted; jumped: what the step would do without the stroke plan)\n")
    print("| model | " + " | ".join(cols) + " |")
    print("| --- | " + " | ".join("---:" for _ in cols) + " |")
    for label, row in rows.items():
        med: dict[str, float] = row["medians"]  # type: ignore[assignment]
        print(f"| {label} | " + " | ".join(f"{med[c]:.2f}" for c in cols) + " |")
    if args.json:
        from bench.results import write_run

        models = {k: {**v, "kept": {f"{s:g}": r for s, r in v["kept"].items()}} for k, v in rows.items()}  # type: ignore[union-attr]
        write_run("bench.stroke_step", argv, {"photos": len(photos), "models": models}, t0, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
