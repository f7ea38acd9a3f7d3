"""Inference off the event loop: one thread shared by every session.

Each session's track submits one frame at a time (it awaits the result before
taking the next newest frame), so the queue never holds more than one job per
session and latency stays bounded by one inference per session ahead of you.

The thread takes a job, then whatever other jobs are already waiting (up to
``max_batch``), and runs frames of the same size in one network call when the
backend has ``stylize_batch`` (each frame with its own session's weights). If
a batched call fails, its frames are retried one by one so that the error
lands only on the session whose frame caused it.

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
from dataclasses import dataclass, field

import av
import cv2
import numpy as np

from engines.runtime.base import Backend

log = logging.getLogger(__name__)

# Upper bounds (ms) of the inference-time histogram on /metrics.
INFER_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


def fit_size(width: int, height: int, box: tuple[int, int], multiple: int = 4) -> tuple[int, int]:
    """The processing size of a ``width`` x ``height`` frame for a ``box`` (w, h) limit.

    Scaled down (aspect kept) to fit inside the box, to multiples of ``multiple``
    (the network's stride, so the backend needs no padding); never scaled up: a
    frame that already fits keeps its size.
    """
    bw, bh = box
    if width <= bw and height <= bh:
        return width, height
    scale = min(bw / width, bh / height)
    w = max(multiple, int(width * scale) // multiple * multiple)
    h = max(multiple, int(height * scale) // multiple * multiple)
    return w, h


@dataclass
class Result:
    """One stylized frame and what it cost."""

    frame: av.VideoFrame
    infer_ms: float  # the network call this frame was part of (a batch counts whole)
    batch: int  # frames in that call
    stages_ms: dict[str, float] = field(default_factory=dict)  # to_rgb, resize, infer, blend, to_frame


@dataclass
class _Job:
    frame: av.VideoFrame
    box: tuple[int, int]
    weights: np.ndarray
    strength: float
    future: concurrent.futures.Future[Result]
    rgb: np.ndarray | None = None
    stages: dict[str, float] = field(default_factory=dict)


class Histogram:
    """A thread-safe cumulative histogram (Prometheus style) of milliseconds."""

    def __init__(self, buckets: Sequence[float] = INFER_BUCKETS_MS) -> None:
        self.buckets = tuple(buckets)
        self._counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        i = next((i for i, b in enumerate(self.buckets) if value <= b), len(self.buckets))
        with self._lock:
            self._counts[i] += 1
            self._sum += value

    def snapshot(self) -> tuple[list[tuple[str, int]], float, int]:
        """([(le, cumulative count)], sum, count), ``le`` as Prometheus writes it."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        out, acc = [], 0
        for b, c in zip([*map(str, self.buckets), "+Inf"], counts, strict=True):
            acc += c
            out.append((b, acc))
        return out, total, acc


class InferenceWorker:
    """The one inference thread; :meth:`submit` from the event loop, await the result."""

    def __init__(self, backend: Backend, max_batch: int = 4) -> None:
        self.backend = backend
        self.max_batch = max_batch
        self.infer_ms = Histogram()
        self.batches = 0  # network calls made
        self.frames = 0  # frames stylized
        self._can_batch = max_batch > 1 and callable(getattr(backend, "stylize_batch", None))
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
        self, frame: av.VideoFrame, box: tuple[int, int], weights: np.ndarray, strength: float
    ) -> concurrent.futures.Future[Result]:
        """Queue one frame; ``box`` is the processing (w, h) limit, ``weights`` normalised [S].

        Await it with ``asyncio.wrap_future``. Raises ``RuntimeError`` after :meth:`stop`.
        """
        if self._stopped:
            raise RuntimeError("the inference worker has stopped")
        fut: concurrent.futures.Future[Result] = concurrent.futures.Future()
        self._queue.put(_Job(frame, box, weights, float(strength), fut))
        return fut

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
        # Same-size frames go through the network together.
        groups: dict[tuple[int, ...], list[_Job]] = {}
        for j in ready:
            assert j.rgb is not None
            if j.strength <= 0.0:  # all original: no network call
                j.future.set_result(self._finish(j, j.rgb))
                continue
            groups.setdefault(j.rgb.shape, []).append(j)
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
        j.stages["to_rgb"] = (t1 - t0) * 1000
        j.stages["resize"] = (t2 - t1) * 1000

    def _infer(self, group: list[_Job]) -> list[np.ndarray | BaseException]:
        frames = [j.rgb for j in group]
        if len(group) > 1 and self._can_batch:
            t0 = time.perf_counter()
            try:
                weights = np.stack([j.weights for j in group])
                outs = self.backend.stylize_batch(frames, weights)  # type: ignore[attr-defined]
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
                results.append(self.backend.stylize(j.rgb, j.weights))
                self._record([j], (time.perf_counter() - t0) * 1000)
            except Exception as e:
                results.append(e)
        return results

    def _record(self, group: list[_Job], ms: float) -> None:
        self.batches += 1
        self.frames += len(group)
        self.infer_ms.observe(ms)
        for j in group:
            j.stages["infer"] = ms
            j.stages["batch"] = len(group)

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
        j.stages["blend"] = (t1 - t0) * 1000
        j.stages["to_frame"] = (t2 - t1) * 1000
        batch = int(j.stages.pop("batch", 1))
        return Result(frame, j.stages.get("infer", 0.0), batch, dict(j.stages))
