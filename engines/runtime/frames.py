"""What every backend does around the network call: validate, pad, batch, crop, and the stroke.

The network wants H and W that are multiples of its stride (4 for v1, 8 for
v2) and within its shape range. Frames that are not a multiple are
reflect-padded on the host with ``cv2.copyMakeBorder`` (C code; the pad is at
most stride-1 pixels on the bottom/right) and the result is cropped back, so a
642x481 frame comes back 642x481. Backends with fixed shape ranges (TensorRT
profiles) additionally resize into the range and back (``cv2.resize``, area
down / linear up).

The stroke (``common.stroke``: brush size relative to the picture, 1 by default)
is turned into what the network runs (``common.stroke.StrokeScale.plan``): a v2 model
gets the brush size in its own pixels as an input, so the look is the same at every
processing size; beyond its largest anchor the frame is scaled down first
(bolder and cheaper). A v1 model has one brush size: its stroke resamples the
frame (stroke 2 runs it at half size and scales the result back up), and
stroke 1 is exactly the v1 picture.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from common.stroke import DEFAULT_STROKE, StrokeScale, check_stroke
from engines.runtime.base import InputError, ShapeRange, check_frame, check_weights

log = logging.getLogger(__name__)


def pad_to_multiple(frame: np.ndarray, multiple: int) -> np.ndarray:
    """Reflect-pad an HxWx3 frame at the bottom/right up to multiples of ``multiple``."""
    h, w = frame.shape[:2]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not ph and not pw:
        return frame
    # BORDER_REFLECT_101 mirrors without repeating the edge pixel (like torch "reflect").
    return cv2.copyMakeBorder(frame, 0, ph, 0, pw, cv2.BORDER_REFLECT_101)


def check_weights_batch(weights: object, n: int, num_styles: int) -> np.ndarray:
    """Validate [S] (same mix for all) or [n,S] weights; returns float32 [n,S]."""
    w = np.asarray(weights, dtype=np.float32)
    if w.ndim == 1:
        return np.broadcast_to(check_weights(w, num_styles), (n, num_styles)).copy()
    if w.ndim != 2 or w.shape[0] != n:
        raise InputError(f"weights must be [{num_styles}] or [{n},{num_styles}] for {n} frames, got {w.shape}")
    return np.stack([check_weights(row, num_styles) for row in w])


def target_size(h: int, w: int, shapes: ShapeRange) -> tuple[int, int]:
    """The (H, W) a network with range ``shapes`` runs an h x w frame at.

    Padded up to the multiple when that fits the range; otherwise scaled (keeping
    the aspect) into the range, then rounded to the multiple.
    """
    m = shapes.multiple
    ph, pw = h + (-h) % m, w + (-w) % m
    if shapes.contains(ph, pw):
        return ph, pw
    (min_h, min_w), (max_h, max_w) = shapes.min_hw, shapes.max_hw
    scale = min(max_h / h, max_w / w, max(min_h / h, min_w / w, 1.0))
    th = min(max(int(round(h * scale / m)) * m, min_h + (-min_h) % m), max_h - max_h % m)
    tw = min(max(int(round(w * scale / m)) * m, min_w + (-min_w) % m), max_w - max_w % m)
    return th, tw


class FrameBackend(ABC):
    """Base of every backend: the frame/weight contract of :class:`Backend`.

    Subclasses set ``name``, ``styles``, ``shapes``, ``precision``, ``stroke_scale``
    and implement :meth:`_run` on a uint8 [N,H,W,3] batch whose H, W are already
    inside ``shapes``. ``reason`` says why :func:`engines.runtime.load_backend`
    picked it, ``precision_reason`` why it runs at ``precision``
    (:mod:`engines.runtime.precision`).
    """

    name: str
    styles: list[str]
    shapes: ShapeRange
    precision: str = "fp32"
    reason: str = "requested explicitly"
    precision_reason: str = "fp32: the only precision this backend runs"
    stroke_scale: StrokeScale = StrokeScale()  # the model's stroke anchors, floor and unit (no anchors: v1)

    @abstractmethod
    def _run(self, images: np.ndarray, weights: np.ndarray, strokes: np.ndarray | None) -> np.ndarray:
        """uint8 [N,H,W,3] (H, W inside ``shapes``), float32 [N,S], float32 [N] or None -> uint8 [N,H,W,3]."""

    def stylize(self, frame: np.ndarray, weights: np.ndarray, stroke: float = DEFAULT_STROKE) -> np.ndarray:
        """One HxWx3 uint8 RGB frame (any size >= 8x8) -> stylized HxWx3 uint8 RGB."""
        return self.stylize_batch([frame], check_weights(weights, len(self.styles))[None], stroke)[0]

    def stylize_batch(
        self, frames: Sequence[np.ndarray], weights: np.ndarray, stroke: float = DEFAULT_STROKE
    ) -> list[np.ndarray]:
        """Same-size HxWx3 uint8 frames and [N,S] (or one shared [S]) weights, in one network call.

        ``stroke`` is the brush size relative to the picture (``common.stroke``). Returns one
        HxWx3 uint8 frame per input, in order, at the input's size.
        """
        if len(frames) == 0:
            return []
        checked = [check_frame(f) for f in frames]
        h, w = checked[0].shape[:2]
        if any(f.shape != checked[0].shape for f in checked):
            raise InputError(f"frames of one batch must have the same size, got {[f.shape for f in checked]}")
        wts = check_weights_batch(weights, len(checked), len(self.styles))
        try:
            stroke = check_stroke(stroke)
        except ValueError as e:
            raise InputError(str(e)) from None
        scale, net_stroke = self.stroke_scale.plan(h, w, stroke)
        if scale == 1.0:
            th, tw = self._target_size(h, w)
        else:
            th, tw = self._target_size(max(8, round(h * scale)), max(8, round(w * scale)))
        if (th, tw) != (h, w):
            prepared = [self._fit(f, th, tw) for f in checked]
        else:
            prepared = checked
        batch = prepared[0][None] if len(prepared) == 1 else np.stack(prepared)
        strokes = None if net_stroke is None else np.full(len(checked), net_stroke, np.float32)
        out = self._run(batch, wts, strokes)
        if (th, tw) == (h, w):
            return list(out)
        return [self._unfit(o, h, w) for o in out]

    def run_network(self, images: np.ndarray, weights: np.ndarray, strokes: np.ndarray | None = None) -> np.ndarray:
        """The bare network call, for a server that hosts this model for remote clients (Triton).

        The client has already done what :meth:`stylize_batch` does around the call: ``images``
        is uint8 [N,H,W,3] with H, W multiples of the stride, ``weights`` [N,S], ``strokes`` [N]
        in the network's own units (``StrokeScale.plan``), given exactly when the model has a
        stroke input.
        """
        n, h, w = images.shape[:3]
        m = self.shapes.multiple
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3 or h % m or w % m:
            raise InputError(
                f"images must be uint8 [N,H,W,3] with H, W multiples of {m}, got {images.dtype}{images.shape}"
            )
        wts = check_weights_batch(weights, n, len(self.styles))
        takes_stroke = bool(self.stroke_scale.anchors)
        if (strokes is None) == takes_stroke:
            raise InputError("this model takes a stroke input" if takes_stroke else "this model has no stroke input")
        stk = None if strokes is None else np.ascontiguousarray(strokes, np.float32).reshape(n)
        return self._run(np.ascontiguousarray(images), wts, stk)

    def _target_size(self, h: int, w: int) -> tuple[int, int]:
        """The (H, W) the network runs at for an h x w frame (backends with gaps in their range override)."""
        return target_size(h, w, self.shapes)

    def _fit(self, frame: np.ndarray, th: int, tw: int) -> np.ndarray:
        h, w = frame.shape[:2]
        m = self.shapes.multiple
        if th == h + (-h) % m and tw == w + (-w) % m:
            return pad_to_multiple(frame, m)
        interp = cv2.INTER_AREA if th * tw < h * w else cv2.INTER_LINEAR
        return cv2.resize(frame, (tw, th), interpolation=interp)

    def _unfit(self, out: np.ndarray, h: int, w: int) -> np.ndarray:
        oh, ow = out.shape[:2]
        m = self.shapes.multiple
        if oh == h + (-h) % m and ow == w + (-w) % m:
            return np.ascontiguousarray(out[:h, :w])
        interp = cv2.INTER_AREA if h * w < oh * ow else cv2.INTER_LINEAR
        return cv2.resize(out, (w, h), interpolation=interp)

    def status(self) -> dict[str, Any]:
        """Live facts for /health: nothing to add for a backend in this process."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing to free
        """Release what the backend holds (sessions, device memory). Idempotent."""

    def __enter__(self) -> FrameBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} styles={len(self.styles)}>"
