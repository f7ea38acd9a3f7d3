"""Inference off the event loop: one thread shared by every session.

Each session's track submits one frame at a time (it awaits the result before
taking the next newest frame), so the queue never holds more than one job per
session and latency stays bounded by one inference per session ahead of you.

The thread takes a job, then whatever other jobs are already waiting (up to
``max_batch``), and runs frames of the same size in one ``stylize_batch`` call
(each frame with its own session's weights). If a batched call fails, its
frames are retried one by one so that the error lands only on the session whose
frame caused it.

Per frame, in the thread (no per-pixel Python):
``av.VideoFrame`` -> rgb24 ndarray (one conversion) -> ``cv2.resize`` to the
processing size if it differs -> network -> ``cv2.addWeighted`` with the
resized original when strength < 1 -> ``av.VideoFrame`` with the source's
``pts``/``time_base``. Output is at the processing size.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import av
import cv2
import numpy as np
from prometheus_client import Histogram

from common.sizes import fit_size
from common.stroke import DEFAULT_STROKE
from engines.runtime.base import Backend
from streamer.mixer import remap_weights

log = logging.getLogger(__name__)

# Upper bounds (ms) of the inference-time histogram on /metrics.
INFER_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


@dataclass
class Stages:
    """Where one frame's time went on the worker thread, in milliseconds."""

    to_rgb: float = 0.0  # av.VideoFrame -> rgb24 ndarray
    resize: float = 0.0  # to the processing size
    infer: float | None = None  # the network call it was part of (a batch counts whole); None: no call
    blend: float = 0.0  # strength < 1: stylized over the original
    to_frame: float = 0.0  # ndarray -> av.VideoFrame

    def total_ms(self) -> float:
        """The frame's whole cost on the worker (what auto resolution budgets)."""
        return self.to_rgb + self.resize + (self.infer or 0.0) + self.blend + self.to_frame

    def as_dict(self) -> dict[str, float]:
        """The stages that happened, by name (no ``infer`` when the network was skipped)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class Result:
    """One stylized frame and what it cost."""

    frame: av.VideoFrame
    batch: int  # frames in the network call it was part of (0: no call, strength 0)
    stages: Stages


@dataclass
class _Job:
    frame: av.VideoFrame
    box: tuple[int, int]
    weights: np.ndarray
    strength: float
    stroke: float
    future: concurrent.futures.Future[Result]
    rgb: np.ndarray | None = None
    batch: int = 0
    stages: Stages = field(default_factory=Stages)


class InferenceWorker:
    """The one inference thread; :meth:`submit` from the event loop, await the result."""

    def __init__(self, backend: Backend, max_batch: int = 4) -> None:
        self.backend = backend
        self.max_batch = max_batch
        # Not registered anywhere: the app's /metrics collector reports it (one registry per app).
        self.infer_ms = Histogram(
            "stylecast_inference_ms",
            "Milliseconds per network call (a batched call counts once).",
            buckets=INFER_BUCKETS_MS,
            registry=None,
        )
        self.frames = 0  # frames stylized
        # Held for each batch; swap() takes it, so a new model starts between frames.
        self._lock = threading.Lock()
        # After a swap: (the old style count, for each new style its old index or -1), so that
        # frames queued with the old weight vectors still run (new styles at weight 0).
        self._remap: tuple[int, np.ndarray] | None = None
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="stylecast-inference", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the frame in progress, fail the ones still queued, join the thread."""
        if self._stopped:
            return
        self._stopped = True
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("inference thread still busy after %.0f s; leaving it (daemon)", timeout)
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.future.cancel()

    def submit(
        self,
        frame: av.VideoFrame,
        box: tuple[int, int],
        weights: np.ndarray,
        strength: float,
        stroke: float = DEFAULT_STROKE,
    ) -> concurrent.futures.Future[Result]:
        """Queue one frame; ``box`` is the processing (w, h) limit, ``weights`` normalised [S],
        ``stroke`` the brush size relative to the picture (``common.stroke``).

        Await it with ``asyncio.wrap_future``. Raises ``RuntimeError`` after :meth:`stop`.
        """
        if self._stopped:
            raise RuntimeError("the inference worker has stopped")
        fut: concurrent.futures.Future[Result] = concurrent.futures.Future()
        self._queue.put(_Job(frame, box, weights, float(strength), float(stroke), fut))
        return fut

    def swap(self, backend: Backend, keep: Sequence[int]) -> Backend:
        """Run ``backend`` from the next batch on and return the old one, idle from now.

        ``keep[i]``: the old index of the new model's style ``i``, or -1 for a new style.
        Blocks while a batch is running (call it off the event loop).
        """
        if len(keep) != len(backend.styles):
            raise ValueError(f"keep lists {len(keep)} styles, the new model has {len(backend.styles)}")
        with self._lock:
            old, self.backend = self.backend, backend
            self._remap = (len(old.styles), np.asarray(keep, np.int64))
        return old

    def _fit(self, weights: np.ndarray) -> np.ndarray:
        """A weight vector made for the model before the last swap, as the current model needs it."""
        n = len(self.backend.styles)
        if weights.shape[-1] == n or self._remap is None or weights.shape[-1] != self._remap[0]:
            return weights  # current, or wrong anyway (the backend says why)
        return remap_weights(weights, self._remap[1])

    # ------------------------------------------------------------------ the thread

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            jobs, stop = [job], False
            while len(jobs) < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                jobs.append(more)
            # A future cancelled meanwhile (its session closed) is skipped.
            jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]
            try:
                with self._lock:
                    self._run(jobs)
            except Exception as e:  # a bug here must not kill the thread every session shares
                log.exception("inference worker failed")
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)
            if stop:
                return

    def _run(self, jobs: list[_Job]) -> None:
        ready: list[_Job] = []
        for j in jobs:
            try:
                self._prepare(j)
                ready.append(j)
            except Exception as e:
                j.future.set_exception(e)
        # Same-size frames with the same stroke go through the network together.
        groups: dict[tuple[tuple[int, ...], float], list[_Job]] = {}
        for j in ready:
            assert j.rgb is not None
            j.weights = self._fit(j.weights)
            if j.strength <= 0.0:  # all original: no network call
                j.future.set_result(self._finish(j, j.rgb))
                continue
            groups.setdefault((j.rgb.shape, j.stroke), []).append(j)
        for group in groups.values():
            outs = self._infer(group)
            for j, out in zip(group, outs, strict=True):
                if isinstance(out, BaseException):
                    j.future.set_exception(out)
                    continue
                try:
                    j.future.set_result(self._finish(j, out))
                except Exception as e:
                    j.future.set_exception(e)

    def _prepare(self, j: _Job) -> None:
        t0 = time.perf_counter()
        rgb: np.ndarray = j.frame.to_ndarray(format="rgb24")  # HxWx3 uint8, the one colour conversion
        t1 = time.perf_counter()
        h, w = rgb.shape[:2]
        pw, ph = fit_size(w, h, j.box)
        if (pw, ph) != (w, h):
            rgb = cv2.resize(rgb, (pw, ph), interpolation=cv2.INTER_AREA)
        t2 = time.perf_counter()
        j.rgb = rgb
        j.stages.to_rgb = (t1 - t0) * 1000
        j.stages.resize = (t2 - t1) * 1000

    def _infer(self, group: list[_Job]) -> list[np.ndarray | BaseException]:
        frames = [j.rgb for j in group if j.rgb is not None]  # all prepared: _run passes only those
        if len(group) > 1:
            t0 = time.perf_counter()
            try:
                weights = np.stack([j.weights for j in group])
                outs = self.backend.stylize_batch(frames, weights, group[0].stroke)
                self._record(group, (time.perf_counter() - t0) * 1000)
                return list(outs)
            except Exception:
                # Retry one by one, so only the frame that fails reports the error.
                log.debug("batched call failed; retrying %d frames one by one", len(group), exc_info=True)
        results: list[np.ndarray | BaseException] = []
        for j in group:
            t0 = time.perf_counter()
            try:
                assert j.rgb is not None
                results.append(self.backend.stylize(j.rgb, j.weights, j.stroke))
                self._record([j], (time.perf_counter() - t0) * 1000)
            except Exception as e:
                results.append(e)
        return results

    def _record(self, group: list[_Job], ms: float) -> None:
        self.frames += len(group)
        self.infer_ms.observe(ms)
        for j in group:
            j.stages.infer = ms
            j.batch = len(group)

    def _finish(self, j: _Job, out: np.ndarray) -> Result:
        t0 = time.perf_counter()
        if 0.0 < j.strength < 1.0:
            assert j.rgb is not None
            out = cv2.addWeighted(out, j.strength, j.rgb, 1.0 - j.strength, 0.0)
        t1 = time.perf_counter()
        frame = av.VideoFrame.from_ndarray(out, format="rgb24")
        # The sender turns pts into the RTP timestamp: keep the camera's clock.
        frame.pts = j.frame.pts
        frame.time_base = j.frame.time_base
        t2 = time.perf_counter()
        j.stages.blend = (t1 - t0) * 1000
        j.stages.to_frame = (t2 - t1) * 1000
        return Result(frame, j.batch, j.stages)
