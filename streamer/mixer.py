"""Style weights, strength and processing resolution of one session, and their smooth transitions.

A client asks for a *target* mix; what the network sees moves there over
``transition_ms``: every frame, :meth:`Mixer.step` interpolates between the
mix in effect when the change was asked for and the target (smoothstep easing
on a monotonic clock), so the picture never jumps, whatever the frame rate.
Weights are interpolated after normalising to sum 1 (the network normalises
anyway), so ``[2, 0]`` -> ``[0, 1]`` moves at the same pace as ``[1, 0]`` ->
``[0, 1]``. Strength (blend with the original, 0..1) moves the same way. The
resolution changes at once: there is nothing between two frame sizes. A
resolution of ``"auto"`` leaves the size to the session (:mod:`streamer.autores`).
The stroke (brush size relative to the picture, ``common.stroke``) changes at
once too: a slider sends its steps as it moves, and a model without a stroke
input resamples the frame for it, so every in-between value would be another
frame size to compile.

Control messages are validated completely before anything is applied: a bad
message changes nothing and raises :class:`ControlError` with the reason.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from common.mix import style_index
from common.sizes import parse_size
from common.stroke import DEFAULT_STROKE, check_stroke
from streamer.config import AUTO_RESOLUTION

FLOAT32_MAX = float(np.finfo(np.float32).max)  # a client's numbers must survive becoming float32


class ControlError(ValueError):
    """A control message the session cannot apply; the message is sent back to the client."""


@dataclass(frozen=True)
class Preset:
    """A named mix: one weight per style."""

    name: str
    weights: tuple[float, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "weights": list(self.weights)}


def build_presets(styles: Sequence[str], max_pairs: int = 3) -> list[Preset]:
    """One preset per style, 50/50 mixes of the first few neighbouring pairs, and all styles equally."""
    n = len(styles)
    presets = [Preset(name, tuple(1.0 if j == i else 0.0 for j in range(n))) for i, name in enumerate(styles)]
    for i in range(min(max_pairs, n - 1)):
        presets.append(
            Preset(f"{styles[i]} + {styles[i + 1]}", tuple(0.5 if j in (i, i + 1) else 0.0 for j in range(n)))
        )
    if n > 2:
        presets.append(Preset("All styles", tuple(1.0 / n for _ in range(n))))
    return presets


def _smoothstep(t: float) -> float:
    # Zero slope at both ends: the change eases in and out instead of starting with a jerk.
    return t * t * (3.0 - 2.0 * t)


def _normalise(w: np.ndarray) -> np.ndarray:
    return (w / float(w.sum())).astype(np.float32)


@dataclass(frozen=True)
class MixState:
    """What the client asked for (the ack's ``state``)."""

    weights: tuple[float, ...]
    strength: float
    resolution: str
    preset: str | None
    stroke: float = DEFAULT_STROKE

    def to_json(self) -> dict[str, Any]:
        return {
            "weights": list(self.weights),
            "strength": self.strength,
            "stroke": self.stroke,
            "resolution": self.resolution,
            "preset": self.preset,
        }


class FrameMix(NamedTuple):
    """What one frame is made with: normalised float32 weights [S], strength 0..1, stroke."""

    weights: np.ndarray
    strength: float
    stroke: float


class Mixer:
    """Target and current mix of one session.

    ``clock`` returns seconds (monotonic); tests pass their own to step time exactly.
    """

    def __init__(
        self,
        styles: Sequence[str],
        presets: Sequence[Preset],
        resolutions: Sequence[str],
        resolution: str,
        transition_ms: int = 300,
        max_transition_ms: int = 5000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not styles:
            raise ValueError("a model needs at least one style")
        self.styles = list(styles)
        self.presets = {p.name: p for p in presets}
        self.resolutions = list(resolutions)
        self.max_transition_ms = max_transition_ms
        self.transition_ms = transition_ms
        self._clock = clock
        first = presets[0].weights if presets else tuple(1.0 if i == 0 else 0.0 for i in range(len(styles)))
        self._target = np.asarray(first, np.float32)
        self._strength_target = 1.0
        self._stroke = DEFAULT_STROKE
        self._resolution = resolution
        self._preset: str | None = presets[0].name if presets else None
        # Interpolation endpoints: normalised weights and strength at the start of the change.
        self._from = _normalise(self._target)
        self._to = self._from.copy()
        self._s_from = self._s_to = 1.0
        self._t0 = clock()
        self._duration = 0.0

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> MixState:
        return MixState(
            weights=tuple(float(v) for v in self._target),
            strength=self._strength_target,
            resolution=self._resolution,
            preset=self._preset,
            stroke=self._stroke,
        )

    @property
    def auto(self) -> bool:
        """Whether the client asked for ``"auto"``: the session chooses the processing size."""
        return self._resolution == AUTO_RESOLUTION

    @property
    def resolution(self) -> tuple[int, int] | None:
        """The processing box (width, height) the client chose; None on ``"auto"``."""
        return None if self.auto else parse_size(self._resolution)

    def step(self, now: float | None = None) -> FrameMix:
        """The mix for the frame being made now."""
        now = self._clock() if now is None else now
        t = 1.0 if self._duration <= 0 else min(max((now - self._t0) / self._duration, 0.0), 1.0)
        if t >= 1.0:
            return FrameMix(self._to, self._s_to, self._stroke)
        e = _smoothstep(t)
        w = self._from + (self._to - self._from) * e
        return FrameMix(w.astype(np.float32), self._s_from + (self._s_to - self._s_from) * e, self._stroke)

    def restyle(self, styles: Sequence[str], presets: Sequence[Preset], keep: Sequence[int]) -> None:
        """The model changed (a style added or deleted) between frames: carry the mix over.

        ``keep[i]``: the old index of new style ``i``, or -1 for a new style, which joins at
        weight 0; a transition in progress goes on. If the mix used only a deleted style,
        it moves to the first preset.
        """
        idx = np.asarray(keep, np.int64)
        target = _carry_over(self._target, idx)
        self.styles = list(styles)
        self.presets = {p.name: p for p in presets}
        if not target.sum() > 0:
            target = np.asarray(presets[0].weights if presets else remap_weights(target, idx), np.float32)
            self._from = self._to = _normalise(target)
            self._duration = 0.0
            self._preset = presets[0].name if presets else None
        else:
            self._from, self._to = remap_weights(self._from, idx), _normalise(target)
        self._target = target
        if self._preset not in self.presets:
            self._preset = None

    # ------------------------------------------------------------------ messages

    def apply(self, msg: Any) -> MixState:
        """Apply one decoded control message (``set`` or ``preset``); returns the new state.

        Raises :class:`ControlError` (nothing changed) if any part of it is invalid.
        """
        if not isinstance(msg, dict):
            raise ControlError("a control message must be a JSON object")
        kind = msg.get("type")
        if kind == "set":
            return self._apply_set(msg)
        if kind == "preset":
            return self._apply_preset(msg)
        raise ControlError(f"unknown message type {kind!r}; expected set, preset or ping")

    def _apply_set(self, msg: Mapping[str, Any]) -> MixState:
        unknown = set(msg) - {"type", "weights", "strength", "stroke", "resolution", "transition_ms"}
        if unknown:
            raise ControlError(f"unknown field(s) {', '.join(sorted(unknown))} in set")
        weights = self._parse_weights(msg["weights"]) if "weights" in msg else None
        strength = _number(msg["strength"], "strength", 0.0, 1.0) if "strength" in msg else None
        stroke = None
        if "stroke" in msg:
            try:
                stroke = check_stroke(msg["stroke"])
            except ValueError as e:
                raise ControlError(str(e)) from None
        resolution = msg.get("resolution")
        if resolution is not None and resolution != AUTO_RESOLUTION and resolution not in self.resolutions:
            choices = ", ".join([AUTO_RESOLUTION, *self.resolutions])
            raise ControlError(f"unknown resolution {resolution!r}; choose one of {choices}")
        transition = None
        if "transition_ms" in msg:
            transition = int(_number(msg["transition_ms"], "transition_ms", 0, self.max_transition_ms))
        # Everything is valid: apply.
        if transition is not None:
            self.transition_ms = transition
        if weights is not None or strength is not None:
            self._retarget(weights, strength)
        if weights is not None:
            self._preset = None
        if resolution is not None:
            self._resolution = resolution
        if stroke is not None:
            self._stroke = stroke
        return self.state

    def _apply_preset(self, msg: Mapping[str, Any]) -> MixState:
        name = msg.get("name")
        if not isinstance(name, str) or name not in self.presets:
            raise ControlError(f"unknown preset {name!r}; choose one of {', '.join(self.presets)}")
        self._retarget(np.asarray(self.presets[name].weights, np.float32), None)
        self._preset = name
        return self.state

    def _retarget(self, weights: np.ndarray | None, strength: float | None) -> None:
        # Start the new transition from wherever the mix is now (mid-transition included).
        now = self._clock()
        cur_w, cur_s, _ = self.step(now)
        self._from, self._s_from = cur_w.copy(), cur_s
        if weights is not None:
            self._target = weights
            self._to = _normalise(weights)
        if strength is not None:
            self._strength_target = strength
            self._s_to = strength
        self._t0 = now
        self._duration = self.transition_ms / 1000.0

    def _parse_weights(self, value: Any) -> np.ndarray:
        """A list (one per style) or an object {name or index: weight}; unnamed styles get 0."""
        n = len(self.styles)
        w = np.zeros(n, np.float32)
        if isinstance(value, list):
            if len(value) != n:
                raise ControlError(f"weights must list {n} values (one per style), got {len(value)}")
            for i, v in enumerate(value):
                w[i] = _number(v, f"weight {i}", 0.0, None)
        elif isinstance(value, dict):
            if not value:
                raise ControlError("weights must name at least one style")
            for key, v in value.items():
                idx = self._style_index(key)
                w[idx] = _number(v, f"weight for {key!r}", 0.0, None)
        else:
            raise ControlError("weights must be a list of numbers or an object {style: weight}")
        total = float(w.astype(np.float64).sum())
        if total <= 0.0:
            raise ControlError("weights must not all be zero: give at least one style a positive weight")
        if not (total <= FLOAT32_MAX and np.isfinite(_normalise(w)).all()):
            raise ControlError("weights must add up to a finite float32: use smaller numbers (only their ratio counts)")
        return w

    def _style_index(self, key: str) -> int:
        try:
            return style_index(key, self.styles)
        except ValueError as e:
            raise ControlError(str(e)) from None


def finite_float32(value: Any) -> bool:
    """Whether a decoded JSON value is a number (not a bool) that float32 holds finitely."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value) and abs(value) <= FLOAT32_MAX
    except OverflowError:  # an int too large for a float
        return False


def _number(value: Any, what: str, lo: float, hi: float | None) -> float:
    """A finite JSON number within [lo, hi] and float32's range (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ControlError(f"{what} must be a number, got {value!r}")
    if not finite_float32(value):
        raise ControlError(f"{what} must be a finite number within float32's range, got {str(value)[:40]}")
    if value < lo or (hi is not None and value > hi):
        rng = f"{lo:g}..{hi:g}" if hi is not None else f"non-negative (>= {lo:g})"
        raise ControlError(f"{what} must be {rng}, got {value!r}")
    return float(value)


def remap_weights(weights: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Weights over the old styles -> over the new ones (``keep[i]``: old index of new style i, or -1:
    weight 0). Where nothing is left (the only style used was deleted), the first style gets it all."""
    out = _carry_over(weights, keep)
    if not out.sum() > 0:
        out[0] = 1.0
    return out


def _carry_over(weights: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Weights over the old styles -> over the new ones, new styles at 0 (may sum to 0)."""
    return np.where(keep >= 0, weights[np.maximum(keep, 0)], 0.0).astype(np.float32)
