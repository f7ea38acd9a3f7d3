"""Stroke size: the one definition the trainer, the runtimes, the server and the page share.

A user's ``stroke`` (0.5 fine .. 2 bold, 1 by default) is the brush size *relative
to the picture*: at stroke 1 the strokes cover as much of the frame as the
painting's own strokes cover of the painting. A network paints strokes of a
fixed size in its own pixels, so the size it is asked for depends on the frame
it runs on::

    network stroke = stroke x (short side of the processed frame) / REFERENCE_SHORT

At 640x480 the two are equal; when auto resolution halves the processing size,
the network is asked for half-size strokes, and the look does not change.

A trained network's marks are not quite proportional to the stroke it is asked for:
part of every mark (an outline, the trunk's 8-px cell) keeps its size in pixels. A
model measured to do so carries that part as its *stroke floor* ``f``
(:class:`StrokeScale`; ``python -m bench.stroke_step --fit-floor``): with marks of
``a x stroke + a x f`` pixels, the frame scale ``r`` it runs at asks for

    network stroke = r x (stroke + f) - f

which is the line above when ``f`` is 0, and finer below the reference frame (bolder
above it) when it is not.

What stroke 1 means is measured too. The network stroke whose marks come closest to the
paintings' own at the reference frame is the model's *stroke unit* ``u`` (``python -m
bench.stroke_unit --fit``), and a user's stroke is counted in it::

    network stroke = r x (u x stroke + f) - f

``u = 1`` and ``f = 0`` give the first line. Standard library only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

REFERENCE_SHORT = 480  # px: the frame short side at which network stroke == user stroke
STROKE_MIN, STROKE_MAX = 0.5, 2.0  # the user control's range
DEFAULT_STROKE = 1.0
FINER_THAN_ANCHORS = 0.5  # anchor steps below the finest anchor a network extrapolates its rows
STROKE_UNIT_RANGE = (0.5, 2.0)  # the stroke units a model may carry (a measured unit falls well inside)


def check_stroke(value: object) -> float:
    """A user's stroke as a float within [STROKE_MIN, STROKE_MAX]; ``ValueError`` says why not."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"stroke must be a number from {STROKE_MIN:g} to {STROKE_MAX:g}, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or not STROKE_MIN <= v <= STROKE_MAX:
        raise ValueError(f"stroke must be from {STROKE_MIN:g} (fine) to {STROKE_MAX:g} (bold), got {value!r}")
    return v


def network_stroke(stroke: float, height: int, width: int, floor: float = 0.0, unit: float = 1.0) -> float:
    """The brush size to ask a network for, on a ``width`` x ``height`` frame, for a user's ``stroke``
    (``floor`` and ``unit``: the network's stroke floor and unit, module docstring)."""
    r = min(height, width) / REFERENCE_SHORT
    return r * unit * stroke - (1.0 - r) * floor  # r (u stroke + f) - f: exactly ``u x stroke`` at r = 1


def stroke_limits(anchors: tuple[float, ...]) -> tuple[float, float]:
    """(finest, boldest) stroke a network with these anchors paints: ``FINER_THAN_ANCHORS`` anchor
    steps below the finest anchor (its rows extrapolated along the first anchor step), and the
    boldest anchor. A network clamps a stroke input to this range."""
    if len(anchors) < 2:
        return anchors[0], anchors[0]
    step = math.log2(anchors[1] / anchors[0])
    return anchors[0] * 2.0 ** (-FINER_THAN_ANCHORS * step), anchors[-1]


@dataclass(frozen=True)
class StrokeScale:
    """How a model's marks follow its stroke input, and so what a runtime asks it for.

    ``anchors``: the strokes the model has rows for (empty: no stroke input, a v1 model).
    ``floor``: its stroke floor (module docstring), 0 for a model never measured.
    ``unit``: its stroke unit (module docstring), 1 for a model never measured.
    """

    anchors: tuple[float, ...] = ()
    floor: float = 0.0
    unit: float = 1.0

    @classmethod
    def of(cls, generator: Mapping[str, Any]) -> StrokeScale:
        """From a generator config as stored in a checkpoint or an exported model's metadata, or
        from :meth:`facts`."""
        return cls(
            tuple(float(a) for a in generator.get("strokes", ())),
            float(generator.get("stroke_floor", 0.0)),
            float(generator.get("stroke_unit", 1.0)),
        )

    def facts(self) -> dict[str, Any]:
        """The scale under the generator config's names (what :meth:`of` reads back): for a remote
        client, which plans exactly as a local one."""
        return {"strokes": list(self.anchors), "stroke_floor": self.floor, "stroke_unit": self.unit}

    def plan(self, height: int, width: int, stroke: float) -> tuple[float, float | None]:
        """(how much to scale a ``width`` x ``height`` frame before the network, the stroke input to give
        it or None).

        Without anchors (v1) the frame is resampled by 1 / stroke. A stroke finer than the network
        paints at this frame size is clamped to its finest: the frame has too few pixels for finer
        marks, and scaling it up would cost four times the work for detail it does not have. Beyond
        the boldest, the frame is scaled down first until the boldest is what it asks for (bolder
        and cheaper).
        """
        if not self.anchors:
            return 1.0 / stroke, None
        s = network_stroke(stroke, height, width, self.floor, self.unit)
        lo, hi = stroke_limits(self.anchors)
        if s > hi:
            # network stroke is linear in the frame scale r: r (u stroke + f) - f. Solve for hi.
            return (hi + self.floor) / (s + self.floor), hi
        return 1.0, max(s, lo)
