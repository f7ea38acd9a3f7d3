"""Stroke size: the one definition the trainer, the runtimes, the server and the page share.

A user's ``stroke`` (0.5 fine .. 2 bold, 1 by default) is the brush size *relative
to the picture*: at stroke 1 the strokes cover as much of the frame as the
painting's own strokes cover of the painting. A network paints strokes of a
fixed size in its own pixels, so the size it is asked for depends on the frame
it runs on::

    network stroke = stroke x (short side of the processed frame) / REFERENCE_SHORT

At 640x480 the two are equal; when auto resolution halves the processing size,
the network is asked for half-size strokes, and the look does not change.
Standard library only.
"""

from __future__ import annotations

import math

REFERENCE_SHORT = 480  # px: the frame short side at which network stroke == user stroke
STROKE_MIN, STROKE_MAX = 0.5, 2.0  # the user control's range
DEFAULT_STROKE = 1.0


def check_stroke(value: object) -> float:
    """A user's stroke as a float within [STROKE_MIN, STROKE_MAX]; ``ValueError`` says why not."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"stroke must be a number from {STROKE_MIN:g} to {STROKE_MAX:g}, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or not STROKE_MIN <= v <= STROKE_MAX:
        raise ValueError(f"stroke must be from {STROKE_MIN:g} (fine) to {STROKE_MAX:g} (bold), got {value!r}")
    return v


def network_stroke(stroke: float, height: int, width: int) -> float:
    """The brush size to ask a network for, on a ``width`` x ``height`` frame, for a user's ``stroke``."""
    return stroke * min(height, width) / REFERENCE_SHORT
