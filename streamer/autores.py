"""Automatic processing resolution: the largest configured size this machine stylizes in time.

A session on ``"auto"`` feeds :class:`AutoResolution` one measurement per
stylized frame: what the frame cost on the worker thread (the sum of its stage
timings: colour conversion, resize, network, blend, back to a frame; ms) and
the camera's frame interval (ms, averaged from the incoming frames' pts). The
controller keeps an exponential moving average of the cost *per pixel*, so one
measurement at the current size estimates every other size (cost taken as
proportional to pixel count: it overestimates going up, where a fixed per-frame
overhead is spread over more pixels, which errs on the safe side).

The choice is the largest candidate whose estimate fits ``budget`` x the frame
interval; the rest of the interval is left for decoding, encoding and, when the
browser runs on the same machine, the browser. Candidates are the configured
boxes fitted to the camera's frame (:func:`streamer.worker.fit_size`), so the
choice is never above the camera's own size, and boxes that give the same
processing size count once.

Hysteresis, so the size never flaps:

* down promptly: once the estimate for the current size has been over budget
  for ``down_after_s`` (a few frames), straight to the largest size that fits;
* up slowly: one step, only after the estimate for the next size has fitted
  within ``up_margin`` x budget for ``up_after_s`` without a break. A cost that
  made the controller step down must fall by ``1 - up_margin`` before it steps
  back up, so a cost hovering around the threshold moves it at most once.

The class is pure (no clock, no I/O): tests feed it numbers and a time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from streamer.worker import fit_size

DEFAULT_INTERVAL_MS = 1000.0 / 30.0  # the camera's frame interval until one is measured (30 fps)
START_PIXELS = 640 * 480  # start at the largest candidate up to VGA: stepping down is quick, up is slow


class AutoResolution:
    """Chooses the processing size of one session from measured frame costs.

    ``boxes`` are the configured processing boxes (width, height). Call
    :meth:`set_source` with the camera's frame size whenever it is known or
    changes, :meth:`update` once per stylized frame; :attr:`size` is the
    current choice, to pass to the worker as the processing box.
    """

    def __init__(
        self,
        boxes: Sequence[tuple[int, int]],
        budget: float,
        down_after_s: float = 0.5,
        up_after_s: float = 2.5,
        up_margin: float = 0.8,
        smoothing: float = 0.2,
        spike_ratio: float = 4.0,
        warmup_frames: int = 1,
    ) -> None:
        if not boxes:
            raise ValueError("auto resolution needs at least one box")
        if not 0 < budget <= 1:
            raise ValueError(f"budget must be within (0, 1] (a fraction of the frame interval), got {budget}")
        if not 0 < up_margin <= 1:
            raise ValueError(f"up_margin must be within (0, 1], got {up_margin}")
        if not 0 < smoothing <= 1:
            raise ValueError(f"smoothing must be within (0, 1], got {smoothing}")
        # Unique, smallest first: candidates are walked up and down in this order.
        self.boxes = sorted(set(boxes), key=lambda b: (b[0] * b[1], b))
        self.budget = budget
        self.down_after_s = down_after_s
        self.up_after_s = up_after_s
        self.up_margin = up_margin
        self.smoothing = smoothing
        self.spike_ratio = spike_ratio
        self.warmup_frames = warmup_frames
        self.source: tuple[int, int] | None = None
        self.cost_per_px_ms: float | None = None  # EMA of ms per processed pixel
        self.interval_ms = DEFAULT_INTERVAL_MS  # the frame interval of the last update
        self.changes = 0  # how often the size changed (for logs and tests)
        self._seen = 0  # measurements received (the first warmup_frames are ignored)
        self._over_since: float | None = None  # when the current size went over budget
        self._headroom_since: float | None = None  # since when the next size up has fitted with margin
        fitting = [s for s in self.sizes if s[0] * s[1] <= START_PIXELS]
        self._size = fitting[-1] if fitting else self.sizes[0]

    # ------------------------------------------------------------------ state

    @property
    def sizes(self) -> list[tuple[int, int]]:
        """The candidate processing sizes for the current source, smallest first."""
        if self.source is None:
            return list(self.boxes)
        out: list[tuple[int, int]] = []
        for box in self.boxes:
            s = fit_size(*self.source, box)
            if s not in out:
                out.append(s)
        return sorted(out, key=lambda s: s[0] * s[1])

    @property
    def size(self) -> tuple[int, int]:
        """The chosen processing size (width, height)."""
        return self._size

    def estimate_ms(self, size: tuple[int, int]) -> float | None:
        """Estimated cost (ms) of one frame at ``size``; None before the first measurement."""
        if self.cost_per_px_ms is None:
            return None
        return self.cost_per_px_ms * size[0] * size[1]

    # ------------------------------------------------------------------ inputs

    def set_source(self, width: int, height: int) -> None:
        """The camera's frame size: candidates are fitted to it, so none is above it."""
        if self.source == (width, height):
            return
        old = self.sizes
        index = old.index(self._size) if self._size in old else len(old) - 1
        self.source = (width, height)
        new = self.sizes
        # Keep the same rung of the ladder where possible (the camera changed, not the machine).
        self._size = new[min(index, len(new) - 1)]
        self._over_since = self._headroom_since = None

    def reset(self) -> None:
        """Forget the pending decisions (auto mode was switched on again); the cost estimate stays."""
        self._over_since = self._headroom_since = None

    def update(
        self,
        frame_time_ms: float,
        frame_interval_ms: float | None,
        now: float,
        size: tuple[int, int] | None = None,
    ) -> tuple[int, int]:
        """One measured frame -> the processing size for the next ones.

        ``frame_time_ms``: what the frame cost (ms); ``frame_interval_ms``: the camera's
        frame interval (ms; None or not positive: 30 fps assumed); ``now``: seconds on a
        monotonic clock; ``size``: the size the frame was processed at (default: the
        current choice; a frame already in flight when the size changed has the old one).
        """
        self._seen += 1
        if self._seen <= self.warmup_frames:
            return self._size  # a first call (new session, new input shape) may include one-off setup
        if frame_interval_ms is not None and math.isfinite(frame_interval_ms) and frame_interval_ms > 0:
            self.interval_ms = frame_interval_ms
        else:
            self.interval_ms = DEFAULT_INTERVAL_MS
        w, h = size if size is not None else self._size
        if not (math.isfinite(frame_time_ms) and frame_time_ms >= 0 and w > 0 and h > 0):
            return self._size
        sample = frame_time_ms / (w * h)
        if self.cost_per_px_ms is None:
            self.cost_per_px_ms = sample
        else:
            # A lone stall (a GC pause, a busy core) counts at most spike_ratio x the average,
            # so it cannot drag the size down by itself; a lasting slowdown still gets through
            # within a few frames.
            sample = min(sample, self.spike_ratio * self.cost_per_px_ms)
            self.cost_per_px_ms += self.smoothing * (sample - self.cost_per_px_ms)
        self._decide(now)
        return self._size

    # ------------------------------------------------------------------ the decision

    def _decide(self, now: float) -> None:
        budget_ms = self.budget * self.interval_ms
        sizes = self.sizes
        current = self._size
        est = self.estimate_ms(current)
        assert est is not None
        if est > budget_ms:
            self._headroom_since = None
            if self._over_since is None:
                self._over_since = now
            if now - self._over_since >= self.down_after_s:
                smaller = [s for s in sizes if s[0] * s[1] < current[0] * current[1]]
                fits = [s for s in smaller if (self.estimate_ms(s) or 0.0) <= budget_ms]
                target = fits[-1] if fits else (smaller[0] if smaller else current)
                self._switch(target)
            return
        self._over_since = None
        bigger = [s for s in sizes if s[0] * s[1] > current[0] * current[1]]
        nxt = bigger[0] if bigger else None
        if nxt is None or (self.estimate_ms(nxt) or math.inf) > self.up_margin * budget_ms:
            self._headroom_since = None
            return
        if self._headroom_since is None:
            self._headroom_since = now
        if now - self._headroom_since >= self.up_after_s:
            self._switch(nxt)

    def _switch(self, size: tuple[int, int]) -> None:
        if size != self._size:
            self._size = size
            self.changes += 1
        self._over_since = self._headroom_since = None
