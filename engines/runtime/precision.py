"""The fastest precision that keeps the picture, chosen on the machine at hand.

``load_backend(..., precision="auto")`` (the default) builds each candidate
precision a backend offers here, checks it against float32 on a fixed probe
(two 320x240 frames, a single style and a mix) with a PSNR floor, times the ones
that pass on the probe, and keeps the fastest (where two are within 5 %, the one that rounds less). The
choice and why travel with
the backend (``backend.precision``, ``backend.precision_reason``), so ``/health``,
the page, the preview and the benches all say it.

Candidates per backend (fastest expected first):

* OpenVINO: ``int8`` (when a quantized ``<stem>.int8.onnx`` is beside the model),
  ``bf16`` (only where the CPU has AMX-BF16 or AVX512-BF16; elsewhere bf16 is
  emulated and slower), ``fp32``;
* ONNX Runtime: ``int8`` (the same quantized file), ``fp32``;
* TensorRT: the plans built for this model (``int8``, ``fp16``, ``fp32``);
* torch CUDA: ``fp16``, ``fp32``.

A candidate that fails to build (OpenVINO's bf16 kernels are missing for some
graphs) or misses its floor is skipped, and the reason names it and by how much.
An explicit precision is used as asked, without the gate.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from engines.runtime.base import EngineError
from engines.runtime.frames import FrameBackend

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
AUTO = "auto"
# PSNR floors (dB) against the float32 output on the probe. bf16/fp16 round the
# activations to 8/11 mantissa bits: the shipped model measured 52.7 dB in bf16 on an
# AMX Xeon (at most 5 levels off anywhere). INT8 also rounds the weights; below 30 dB
# the difference shows as banding and colour shifts.
PSNR_FLOOR = {"bf16": 40.0, "fp16": 40.0, "int8": 30.0}
# What ``python -m engines quantize`` may trade for INT8 speed (here, beside the floors, so that its
# command line shows them without importing the quantizers): the relative loss in style and content
# distance it accepts, and how many of the convolutions most sensitive to rounding it may keep in
# float where rounding all of them misses the floor.
INT8_MAX_QUALITY_LOSS = 0.05
INT8_MAX_FLOAT_CONVS = 4
PROBE_HW = (240, 320)
TIMING_RUNS = 7
# Fidelity order: a faster candidate lower in it must win by this much (a noise-sized gain
# is not worth rounding the picture more), e.g. int8 over bf16, bf16 over fp32.
FIDELITY = ("fp32", "bf16", "fp16", "int8")
MIN_GAIN = 0.05


def probe_inputs(num_styles: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Two fixed photo-like 320x240 frames (gradients, flat areas, edges, fine noise) and their mixes."""
    h, w = PROBE_HW
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rng = np.random.default_rng(1234)
    frames = []
    for k in range(2):
        img = np.stack(
            [
                40 + 180 * x / w,
                60 + 150 * y / h,
                120 + 90 * np.sin((x * (1 + k) + y) / 11.0),
            ],
            axis=-1,
        )
        img[(x - w * 0.6) ** 2 + (y - h * 0.5) ** 2 < (h * 0.25) ** 2] = (235, 230, 220)
        img[: h // 3, : w // 4] = (30, 40, 200 - 120 * k)
        img += rng.normal(0, 6, img.shape)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    weights = np.zeros((2, num_styles), np.float32)
    weights[0, 0] = 1.0
    weights[1] = 1.0  # every style at once
    return frames, weights


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images in dB (inf when identical)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * float(np.log10(255.0**2 / mse))


def run_probe(backend: FrameBackend) -> list[np.ndarray]:
    frames, weights = probe_inputs(len(backend.styles))
    return [backend.stylize(f, w) for f, w in zip(frames, weights, strict=True)]


def probe_psnr(backend: FrameBackend, want: Sequence[np.ndarray]) -> float:
    """The gate's measure: the lowest PSNR (dB) of ``backend``'s probe outputs against ``want``,
    the float32 reference's (:func:`run_probe`); :func:`passes_gate` judges it."""
    return min(psnr(g, w) for g, w in zip(run_probe(backend), want, strict=True))


def passes_gate(precision: str, db: float) -> bool:
    """Whether ``precision`` keeps the picture: its probe PSNR at or above :data:`PSNR_FLOOR`."""
    return db >= PSNR_FLOOR.get(precision, 0.0)


def time_probe(backends: Sequence[FrameBackend]) -> list[float]:
    """Median ms of one probe frame on each backend, timed in turns (ABAB...), so drift hits all alike.

    The probe has run on each once already, so nothing compiles here.
    """
    frames, weights = probe_inputs(len(backends[0].styles))
    samples: list[list[float]] = [[] for _ in backends]
    for _ in range(TIMING_RUNS):
        for b, out in zip(backends, samples, strict=True):
            t0 = time.perf_counter()
            b.stylize(frames[0], weights[0])
            out.append((time.perf_counter() - t0) * 1000.0)
    return [statistics.median(v) for v in samples]


@dataclass(frozen=True)
class Candidate:
    """One precision a backend may run at, and how to build it."""

    precision: str
    make: Callable[[], FrameBackend]
    why: str = ""  # what makes it a candidate here (e.g. "the CPU has amx_bf16")


def choose(
    candidates: Sequence[Candidate],
    reference: Callable[[], FrameBackend] | None = None,
    *,
    explicit: bool = False,
    unavailable: Sequence[str] = (),
) -> FrameBackend:
    """Build, gate and time ``candidates``; return the fastest that passes, with its reason set.

    ``reference``: how to build the float32 output to compare with (default: the
    ``fp32`` candidate itself). ``explicit``: the one candidate was asked for by name,
    so it is used without the gate. ``unavailable``: precisions that were not
    candidates here and why, for the reason. A lone candidate needs no gate either.
    Raises the last :class:`EngineError` if none can be built.
    """
    if explicit or len(candidates) == 1:
        only = candidates[0].make()
        why = f" ({candidates[0].why})" if candidates[0].why else ""
        if explicit:
            only.precision_reason = f"{only.precision} requested explicitly{why}"
        else:
            only.precision_reason = f"{only.precision}: the only precision to try here{why}" + (
                f"; not tried: {'; '.join(unavailable)}" if unavailable else ""
            )
        return only
    built: list[FrameBackend] = []  # everything made here; all but the chosen one are closed
    notes: list[str] = []
    error: EngineError | None = None
    chosen: FrameBackend | None = None
    try:
        fp32 = next((c for c in candidates if c.precision == "fp32"), None)
        make_ref = reference or (fp32.make if fp32 else None)
        if make_ref is None:
            raise ValueError("choose() needs an fp32 candidate or a reference")
        ref_backend = make_ref()
        built.append(ref_backend)
        want = run_probe(ref_backend)
        passed: list[tuple[str, FrameBackend, str]] = []  # (precision, backend, detail)
        for c in candidates:
            if c.precision == "fp32" and reference is None:
                backend, detail = ref_backend, "the reference"
            else:
                try:
                    backend = c.make()
                except EngineError as e:
                    error = e
                    notes.append(f"{c.precision}: cannot be built here ({e})")
                    continue
                built.append(backend)
                db = probe_psnr(backend, want)
                floor = PSNR_FLOOR.get(c.precision, 0.0)
                if not passes_gate(c.precision, db):
                    notes.append(
                        f"{c.precision}: PSNR {db:.1f} dB vs fp32 on the probe, "
                        f"{floor - db:.1f} dB below its floor {floor:g}"
                    )
                    continue
                detail = f"PSNR {db:.1f} dB vs fp32 (floor {floor:g})" if c.precision != "fp32" else "float32"
            passed.append((c.precision, backend, f"{c.why + '; ' if c.why else ''}{detail}"))
        if not passed:
            raise error or EngineError("no precision passed: " + "; ".join(notes))
        timed = sorted(zip(time_probe([b for _, b, _ in passed]), passed, strict=True), key=lambda t: t[0])
        best_ms = timed[0][0]
        # Among those within MIN_GAIN of the fastest, the one that rounds least.
        close = [t for t in timed if t[0] <= best_ms * (1 + MIN_GAIN)]
        ms, (prec, chosen, detail) = min(close, key=lambda t: FIDELITY.index(t[1][0]))
        others = [f"{p} {m:.1f} ms" for m, (p, _, _) in timed if p != prec]
        hw = f"{PROBE_HW[1]}x{PROBE_HW[0]}"
        chosen.precision_reason = (
            f"{prec}: the fastest that keeps the picture here, within {MIN_GAIN:.0%} ({ms:.1f} ms at {hw}"
            + (f" vs {', '.join(others)}" if others else "")
            + f"; {detail})"
            + (f"; skipped {'; '.join(notes)}" if notes else "")
            + (f"; not tried: {'; '.join(unavailable)}" if unavailable else "")
        )
        log.info("%s precision: %s", chosen.name, chosen.precision_reason)
        return chosen
    finally:
        for b in built:
            if b is not chosen:
                b.close()
