"""The one contract every inference backend meets.

A backend is loaded once (weights read, memory allocated) and then called per
frame from a worker thread, never from the event loop::

    backend.stylize(frame, weights) -> frame
    backend.stylize_batch([frame, ...], weights_NxS) -> [frame, ...]   # one network call

``frame`` is an HxWx3 uint8 RGB array (C-contiguous), ``weights`` one
non-negative float per style (any scale; they are normalised to sum 1 inside
the network), ``stroke`` the brush size relative to the picture (1 by
default). The result is an HxWx3 uint8 RGB array of the same size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from common.stroke import StrokeScale


class EngineError(RuntimeError):
    """A model or engine cannot be loaded or run (missing, corrupt, unsupported)."""


class ModelFileError(EngineError):
    """The model file itself is missing, corrupt or not a stylecast model: no backend can run it."""


class InputError(ValueError):
    """A frame or weight vector the engine cannot accept; the message says why."""


@dataclass(frozen=True)
class ShapeRange:
    """Frame sizes a backend runs natively (height, width, inclusive).

    Frames outside the range, or not a multiple of ``multiple``, are still
    accepted: the backend pads (reflect) or resizes and crops/resizes back.
    """

    min_hw: tuple[int, int] = (16, 16)
    max_hw: tuple[int, int] = (4096, 4096)
    multiple: int = 4

    def contains(self, h: int, w: int) -> bool:
        return (
            self.min_hw[0] <= h <= self.max_hw[0]
            and self.min_hw[1] <= w <= self.max_hw[1]
            and h % self.multiple == 0
            and w % self.multiple == 0
        )


@runtime_checkable
class Backend(Protocol):
    """What the streamer, the preview and the benches see of an engine: everything they use."""

    name: str  # the kind load_backend accepts: "openvino-cpu", "onnxruntime-cpu", "tensorrt", "torch-cuda", ...
    styles: list[str]  # style names, index i <-> weights[i]
    shapes: ShapeRange  # the frame sizes it runs without resizing
    precision: str  # the arithmetic it runs: "fp32", "fp16", "bf16" or "int8"
    reason: str  # why it runs: picked by load_backend("auto") and why, or requested explicitly
    precision_reason: str  # why at that precision: measured fastest that passed its parity gate, or asked for
    stroke_scale: StrokeScale  # its stroke anchors (none: one brush size, resampled), stroke floor and unit

    def stylize(self, frame: np.ndarray, weights: np.ndarray, stroke: float = 1.0) -> np.ndarray:
        """One HxWx3 uint8 RGB frame (any size >= 8x8) and [S] weights -> stylized HxWx3 uint8.

        ``stroke``: brush size relative to the picture, 0.5 (fine) to 2 (bold); ``common.stroke``.
        """
        ...

    def stylize_batch(self, frames: Sequence[np.ndarray], weights: np.ndarray, stroke: float = 1.0) -> list[np.ndarray]:
        """Same-size frames and [N,S] (or one shared [S]) weights in one network call, results in order."""
        ...

    def status(self) -> dict[str, Any]:
        """Live facts for /health ({} for a backend in this process; a remote one's readiness)."""
        ...

    def close(self) -> None:
        """Release what the backend holds (sessions, device memory). Idempotent."""
        ...


def check_frame(frame: object) -> np.ndarray:
    """Validate an HxWx3 uint8 frame; returns it C-contiguous (no copy if it already is)."""
    if not isinstance(frame, np.ndarray):
        raise InputError(f"frame must be a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise InputError(f"frame must be uint8 RGB, got dtype {frame.dtype}")
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise InputError(f"frame must be HxWx3 (RGB), got shape {frame.shape}")
    if frame.shape[0] < 8 or frame.shape[1] < 8:
        raise InputError(f"frame is too small: {frame.shape[1]}x{frame.shape[0]} (at least 8x8)")
    return np.ascontiguousarray(frame)


def check_weights(weights: object, num_styles: int) -> np.ndarray:
    """Validate a style-weight vector; returns float32 [num_styles]."""
    w = np.asarray(weights, dtype=np.float32).reshape(-1)
    if w.shape[0] != num_styles:
        raise InputError(f"style weights need {num_styles} values (one per style), got {w.shape[0]}")
    if not np.isfinite(w).all():
        raise InputError("style weights must be finite numbers")
    if (w < 0).any():
        raise InputError(f"style weights must be non-negative, got {w.tolist()}")
    if float(w.sum()) <= 0.0:
        raise InputError("style weights must not all be zero: give at least one style a positive weight")
    return w
