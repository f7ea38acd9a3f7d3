"""Auto resolution's step, measured on the picture: does halving the processing size keep the strokes'
size relative to the frame?

Copy-paste command (from the repository root)::

    python -m bench.stroke_step --model v2=engines/models/v2/default.onnx --json bench/results/stroke_step.json

Each held-out photo (``common.split``) is stylized at 640x480 and, box-reduced, at 320x240, at the
same user ``stroke``; the runtime turns that into the network stroke for each frame size
(``common.stroke``). :func:`bench.metrics.stroke_frequency` (cycles per frame width, both
pictures reduced to the same analysis size) of the small picture over that of the large one is
the *kept* ratio: 1 when the step changes nothing, below 1 when the marks grow relative to the
frame. The *jumped* ratio gives the small frame the large frame's network stroke, which is what a
plan-less runtime would draw: it shows the measure sees the difference.
``tests/test_shipped_model.py`` runs the same function on the shipped photos and wants the kept
ratio's median within 0.9-1.1, and the *contrast* ratio (:func:`bench.metrics.grey_contrast` of the
small picture over the large one's, at stroke 1) at least 0.9. The frequency alone does not see a
picture go hazy: a bake that taught a network finer marks for the small frame passed it at 0.98
while its 320x240 pictures lost contrast (0.83) and read far less like the paintings.

``--per-style`` adds a table of the kept ratio at stroke 1 per style, every style on every photo
(the main table gives photo ``i`` one style, ``3i``). It differs much more between styles than
between models: on 24 held-out photos the shipped v2's ran from 0.65 (Kazusa Sea Route) to 1.16
(The Librarian), most styles between 0.91 and 1.04 (``bench/results/stroke_step_per_style.json``).

``--fit-floor OUT.safetensors`` measures a checkpoint's *stroke floor* (``common.stroke``: the part
of its marks that keeps its size in pixels whatever stroke it is asked for) on photos training
sees, never the held-out ones the table is judged on, and writes a copy that carries it::

    python -m bench.stroke_step --model v2=runs/v2/default.safetensors --fit-floor runs/v2/fitted.safetensors
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from PIL import Image

from bench.metrics import grey_contrast, stroke_frequency
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
    jumped: list[float]  # the small frame given the large frame's network stroke at user stroke 1
    contrast: list[float]  # grey contrast at 320x240 over 640x480, the plan at user stroke 1

    def medians(self) -> dict[str, float]:
        out = {f"kept@{s:g}": statistics.median(v) for s, v in self.kept.items()}
        return {**out, "jumped@1": statistics.median(self.jumped), "contrast@1": statistics.median(self.contrast)}


class Marks(NamedTuple):
    """What the step compares in one picture (``bench.metrics``)."""

    frequency: float  # stroke frequency, cycles per frame width
    contrast: float  # grey contrast

    @classmethod
    def of(cls, picture: np.ndarray) -> Marks:
        return cls(stroke_frequency(picture), grey_contrast(picture))


Prepared = list[tuple[np.ndarray, np.ndarray, dict[float, Marks]]]


def step_photos(backend: FrameBackend, photos: Sequence[np.ndarray], strokes: Iterable[float]) -> Prepared:
    """Per 640x480 uint8 RGB photo: (its 320x240 box reduction, its one-hot style weights, the
    640x480 picture's marks at each of ``strokes``). Photo ``i`` uses style ``3i`` (mod the styles)."""
    eye = np.eye(len(backend.styles), dtype=np.float32)
    out = []
    for i, big in enumerate(photos):
        w = eye[(3 * i) % len(eye)]
        out.append((reduced(big), w, {s: Marks.of(backend.stylize(big, w, s)) for s in strokes}))
    return out


def reduced(big: np.ndarray) -> np.ndarray:
    """A 640x480 uint8 RGB photo box-reduced to 320x240: what auto resolution's step feeds the network."""
    if big.shape[:2] != (LARGE[1], LARGE[0]):
        raise ValueError(f"photos must be {LARGE[0]}x{LARGE[1]}, got {big.shape[1]}x{big.shape[0]}")
    return np.asarray(Image.fromarray(big).resize(SMALL, Image.Resampling.BOX))


def style_ratios(backend: FrameBackend, photos: Sequence[np.ndarray], stroke: float = 1.0) -> dict[str, float]:
    """Per style (name): the median over ``photos`` of the kept ratio at user ``stroke``, each style
    on every photo."""
    pairs = [(big, reduced(big)) for big in photos]
    out = {}
    for name, w in zip(backend.styles, np.eye(len(backend.styles), dtype=np.float32), strict=True):
        ratios = [
            stroke_frequency(backend.stylize(small, w, stroke)) / stroke_frequency(backend.stylize(big, w, stroke))
            for big, small in pairs
        ]
        out[name] = statistics.median(ratios)
    return out


def small_over_big(backend: FrameBackend, prepared: Prepared, stroke: float) -> list[Marks]:
    """Per :func:`step_photos` entry: the 320x240 picture's marks at ``stroke`` (the runtime's
    plan) over the 640x480 one's, field by field."""
    out = []
    for small, w, ref in prepared:
        got = Marks.of(backend.stylize(small, w, stroke))
        out.append(Marks(*(a / b for a, b in zip(got, ref[stroke], strict=True))))
    return out


def kept_ratios(backend: FrameBackend, prepared: Prepared, stroke: float) -> list[float]:
    """Per :func:`step_photos` entry: the 320x240 picture's stroke frequency at ``stroke`` (the
    runtime's plan) over the 640x480 one's."""
    return [m.frequency for m in small_over_big(backend, prepared, stroke)]


def step_ratios(backend: FrameBackend, photos: Sequence[np.ndarray], strokes: Sequence[float] = STROKES) -> StepRatios:
    """The ratios for 640x480 uint8 RGB ``photos``; photo ``i`` uses style ``3i`` (mod the styles), one-hot."""
    if not backend.stroke_scale.anchors:
        raise ValueError("this model has no stroke input (a v1 model): its marks do not follow the frame size")
    _, big_stroke = backend.stroke_scale.plan(LARGE[1], LARGE[0], 1.0)
    prepared = step_photos(backend, photos, {*strokes, 1.0})
    ratios = {s: small_over_big(backend, prepared, s) for s in {*strokes, 1.0}}
    jumped = [
        stroke_frequency(backend.run_network(small[None], w[None], np.array([big_stroke], np.float32))[0])
        / ref[1.0].frequency
        for small, w, ref in prepared
    ]
    kept = {s: [m.frequency for m in ratios[s]] for s in strokes}
    return StepRatios(kept, jumped, [m.contrast for m in ratios[1.0]])


FLOORS = tuple(round(0.05 * i, 2) for i in range(13))  # the stroke floors --fit-floor tries: 0 to 0.6


def fit_floor(
    backend: FrameBackend, photos: Sequence[np.ndarray], floors: Sequence[float] = FLOORS
) -> tuple[float, dict[float, dict[str, float]]]:
    """(the floor whose kept ratios are nearest 1, every floor's median kept ratios).

    Nearest: the smallest mean |log median| over ``STROKES``. The large frame's pictures do not
    depend on the floor (it runs at the reference size), so only the small ones are redone.
    """
    anchors = backend.stroke_scale.anchors
    if not anchors:
        raise ValueError("this model has no stroke input (a v1 model): it has no stroke floor")
    prepared = step_photos(backend, photos, STROKES)
    table: dict[float, dict[str, float]] = {}
    original = backend.stroke_scale
    try:
        for f in floors:
            backend.stroke_scale = replace(original, floor=f)
            table[f] = {f"kept@{s:g}": statistics.median(kept_ratios(backend, prepared, s)) for s in STROKES}
    finally:
        backend.stroke_scale = original
    best = min(table, key=lambda f: statistics.fmean(abs(np.log(r)) for r in table[f].values()))
    return best, table


def write_fitted(path: Path, out: Path, fitted: dict[str, Any], name: str, record: dict[str, object]) -> Path:
    """A copy of checkpoint ``path`` whose generator config carries ``fitted`` (``stroke_floor``,
    ``stroke_unit``); ``record`` goes into its training record as ``train[name]``."""
    from trainer.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(path)
    return save_checkpoint(
        out,
        replace(
            ckpt,
            generator_config=replace(ckpt.generator_config, **fitted),
            train={**ckpt.train, name: record},
        ),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.stroke_step",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_model_options(
        p, "a v2 model (.onnx or .safetensors), one row each", 8, "held-out photos (with --fit-floor: training photos)"
    )
    p.add_argument("--json", type=Path, help="also write the result here")
    p.add_argument(
        "--per-style",
        action="store_true",
        help="also the kept ratio at stroke 1 per style, every style on every photo (slower: one pass per style)",
    )
    p.add_argument(
        "--fit-floor",
        type=Path,
        metavar="OUT",
        help="measure the (one) .safetensors model's stroke floor on --num-photos photos that training "
        "sees, and write a copy that carries it here",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.fit_floor:
        return fit_main(args, argv)

    photos = [img for _, img in select_photos(args.photos, args.num_photos, LARGE)]
    rows: dict[str, dict[str, object]] = {}
    t0 = time.time()
    for spec in args.model:
        label, path, be = load_exact(spec, args.backend, args.threads)
        try:
            ratios = step_ratios(be, photos)
            per_style = style_ratios(be, photos) if args.per_style else None
        except ValueError as e:
            raise SystemExit(f"{label}: {e}") from None
        finally:
            be.close()
        rows[label] = {"path": str(path), "medians": ratios.medians(), **asdict(ratios)}
        if per_style is not None:
            rows[label]["per_style"] = per_style
    cols = list(next(iter(rows.values()))["medians"])  # type: ignore[arg-type]
    print(f"median frequency ratio, {SMALL[0]}x{SMALL[1]} over {LARGE[0]}x{LARGE[1]}, {len(photos)} held-out photos")
    print("(kept: 0.9-1.1 wanted; jumped: what the step would do without the stroke plan;")
    print(" contrast: grey contrast kept at stroke 1, which falls where finer marks come out hazy)\n")
    print("| model | " + " | ".join(cols) + " |")
    print("| --- | " + " | ".join("---:" for _ in cols) + " |")
    for label, row in rows.items():
        med: dict[str, float] = row["medians"]  # type: ignore[assignment]
        print(f"| {label} | " + " | ".join(f"{med[c]:.2f}" for c in cols) + " |")
    if args.per_style:
        styles = list(dict.fromkeys(n for row in rows.values() for n in row["per_style"]))  # type: ignore[attr-defined]
        print("\nkept ratio at stroke 1 per style, every style on every photo\n")
        print("| style | " + " | ".join(rows) + " |")
        print("| --- | " + " | ".join("---:" for _ in rows) + " |")
        for n in styles:
            cells = [f"{r['per_style'][n]:.2f}" if n in r["per_style"] else "-" for r in rows.values()]  # type: ignore[index,operator]
            print(f"| {n} | " + " | ".join(cells) + " |")
    if args.json:
        from bench.results import write_run

        models = {k: {**v, "kept": {f"{s:g}": r for s, r in v["kept"].items()}} for k, v in rows.items()}  # type: ignore[union-attr]
        write_run("bench.stroke_step", argv, {"photos": len(photos), "models": models}, t0, args.json)
    return 0


def fit_main(args: argparse.Namespace, argv: list[str] | None) -> int:
    """``--fit-floor``: the table of floors, then the fitted copy."""
    if len(args.model) != 1 or not args.model[0].endswith(".safetensors"):
        raise SystemExit("--fit-floor takes exactly one --model LABEL=PATH.safetensors (a v2 checkpoint)")
    named = select_photos(args.photos, args.num_photos, LARGE, held_out_only=False, training_only=True)
    photos = [img for _, img in named]
    t0 = time.time()
    label, path, be = load_exact(args.model[0], args.backend, args.threads)
    try:
        best, table = fit_floor(be, photos)
    except ValueError as e:
        raise SystemExit(f"{label}: {e}") from None
    finally:
        be.close()
    cols = list(table[best])
    print(f"median frequency ratio, {SMALL[0]}x{SMALL[1]} over {LARGE[0]}x{LARGE[1]}, {len(photos)} training photos\n")
    print("| stroke floor | " + " | ".join(cols) + " |")
    print("| ---: | " + " | ".join("---:" for _ in cols) + " |")
    for f, med in table.items():
        mark = " (fitted)" if f == best else ""
        print(f"| {f:g}{mark} | " + " | ".join(f"{med[c]:.3f}" for c in cols) + " |")
    record = {"floor": best, "photos": [name for name, _ in named], "medians": {f"{f:g}": m for f, m in table.items()}}
    out = write_fitted(path, args.fit_floor, {"stroke_floor": best}, "stroke_floor_fit", record)
    print(f"\nwrote {out} with stroke floor {best:g}")
    if args.json:
        from bench.results import write_run

        write_run("bench.stroke_step", argv, {"model": str(path), **record}, t0, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
