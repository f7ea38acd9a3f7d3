"""The stylizing video track of one session, and the newest-frame-only reader in front of it.

aiortc's receive queue is unbounded: a transform slower than the camera makes
latency grow without limit. :class:`LatestFrame` therefore drains the incoming
track continuously and keeps only the newest decoded frame (counting the ones
it replaces as dropped); :class:`StylizedTrack` takes that newest frame each
time the sender asks for one, has the shared inference worker stylize it, and
returns it with the source's ``pts``/``time_base``. On ``"auto"`` resolution
the track feeds each frame's measured cost and the camera's frame interval to
the session's :class:`~streamer.autores.AutoResolution`, which picks the
processing size of the next frames.

An exception escaping ``recv()`` silently stops the outgoing video while the
connection still says "connected", so ``recv()`` catches everything but the end
of the stream: on an inference error it returns the camera frame unchanged and
records the error, which the session's stats message shows to the page.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import av
import cv2
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from streamer.autores import AutoResolution
from streamer.mixer import Mixer
from streamer.worker import InferenceWorker, Result

log = logging.getLogger(__name__)

INTERVAL_SMOOTHING = 0.1  # EMA weight of one new frame interval
MAX_INTERVAL_S = 1.0  # a longer gap between frames is a pause (or a pts wrap), not the frame rate


class LatestFrame:
    """Reads ``track`` in a task of its own and holds only its newest frame."""

    def __init__(self, track: MediaStreamTrack, clock: Callable[[], float] = time.monotonic) -> None:
        self.track = track
        self.clock = clock
        self.frames_in = 0  # frames decoded from the peer
        self.last_frame_at: float | None = None  # clock() when the newest frame arrived
        self.dropped = 0  # frames replaced by a newer one before they were stylized
        self.newest_pts: int | None = None  # pts of the newest frame received (source time base)
        self.size: tuple[int, int] | None = None  # (width, height) of the newest frame received
        # The camera's frame interval (ms): an EMA over every frame received, dropped ones
        # included; None until two frames have arrived.
        self.interval_ms: float | None = None
        self._prev: tuple[float, float] | None = None  # (pts in s or None, arrival in s) of the previous frame
        self._frame: av.VideoFrame | None = None
        self._ready = asyncio.Event()
        self._ended = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="stylecast-reader")

    async def _run(self) -> None:
        try:
            while True:
                frame = await self.track.recv()
                if not isinstance(frame, av.VideoFrame):
                    continue  # a video track only yields video frames; this keeps the types honest
                self.frames_in += 1
                self.last_frame_at = self.clock()
                if self._frame is not None:
                    self.dropped += 1
                self._frame = frame
                self.newest_pts = frame.pts
                self.size = (frame.width, frame.height)
                self._measure_interval(frame)
                self._ready.set()
        except MediaStreamError:
            pass  # the peer stopped sending (hung up or closed the track)
        except Exception:
            log.exception("reading the incoming video failed")
        finally:
            self._ended = True
            self._ready.set()

    def _measure_interval(self, frame: av.VideoFrame) -> None:
        # The camera's own clock (pts) when there is one: arrival times carry network jitter.
        arrival = time.monotonic()
        pts_s = float(frame.pts * frame.time_base) if frame.pts is not None and frame.time_base else None
        prev, self._prev = self._prev, (pts_s if pts_s is not None else arrival, arrival)
        if prev is None:
            return
        dt = (pts_s - prev[0]) if pts_s is not None else (arrival - prev[1])
        if not 0 < dt <= MAX_INTERVAL_S:
            return
        ms = dt * 1000
        self.interval_ms = (
            ms if self.interval_ms is None else self.interval_ms + INTERVAL_SMOOTHING * (ms - self.interval_ms)
        )

    async def get(self) -> av.VideoFrame:
        """The newest frame not handed out yet (waits for one); ``MediaStreamError`` once the input ended."""
        while True:
            if self._frame is not None:
                frame, self._frame = self._frame, None
                return frame
            if self._ended:
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._ended = True
        self._ready.set()


@dataclass
class Mean:
    """A running mean: constant memory however long nobody reads it."""

    total: float = 0.0
    count: int = 0

    def add(self, value: float) -> None:
        self.total += value
        self.count += 1

    def take(self) -> float | None:
        """The mean since the last take (None if nothing was added), and start over."""
        mean = self.total / self.count if self.count else None
        self.total, self.count = 0.0, 0
        return mean


@dataclass
class TrackStats:
    """What the outgoing track did; read by the session's stats message and /metrics.

    The means cover the frames since the session last read them (its stats loop,
    about once a second); they are running sums, so their size never grows.
    """

    frames_out: int = 0  # frames handed to the sender (stylized or, on error, the original)
    frames_failed: int = 0  # frames whose inference failed (sent unstylized)
    error: str | None = None  # the last inference error; None once a frame succeeds again
    infer_ms: Mean = field(default_factory=Mean)
    stages_ms: dict[str, Mean] = field(default_factory=dict)  # stage name -> mean ms
    # How far the frame sent trails the newest frame received (s, from pts): one inference
    # or so when frames are dropped as they should be.
    lag_s: Mean = field(default_factory=Mean)
    resolution: str | None = None  # size of the last frame sent, WxH
    last_pts: int | None = None  # pts of the last frame sent


class StylizedTrack(MediaStreamTrack):
    """The video the server sends back: the peer's newest frame through the mixer's current style."""

    kind = "video"

    def __init__(self, source: LatestFrame, mixer: Mixer, worker: InferenceWorker, auto: AutoResolution) -> None:
        super().__init__()
        self.source = source
        self.mixer = mixer
        self.worker = worker
        self.auto = auto
        self.stats = TrackStats()
        self._was_auto = False

    def _box(self, frame: av.VideoFrame) -> tuple[int, int]:
        """The processing box for ``frame``: the client's choice, or auto resolution's."""
        box = self.mixer.resolution
        if box is not None:
            self._was_auto = False
            return box
        if not self._was_auto:
            self.auto.reset()  # decisions pending from an earlier auto period are stale
            self._was_auto = True
        self.auto.set_source(frame.width, frame.height)
        return self.auto.size

    def _measured(self, result: Result) -> None:
        """Feed auto resolution one frame's cost (frames that skipped the network say nothing)."""
        if not self._was_auto or result.stages.infer is None:
            return
        cost_ms = result.stages.total_ms()
        before = self.auto.size
        after = self.auto.update(
            cost_ms, self.source.interval_ms, time.monotonic(), (result.frame.width, result.frame.height)
        )
        if after != before:
            log.info(
                "auto resolution %dx%d -> %dx%d (%.1f ms a frame at %dx%d, frame interval %.1f ms)",
                *before,
                *after,
                cost_ms,
                result.frame.width,
                result.frame.height,
                self.auto.interval_ms,
            )

    async def recv(self) -> av.VideoFrame:
        frame = await self.source.get()  # MediaStreamError here ends the track cleanly
        try:
            mix = self.mixer.step()
            box = self._box(frame)
            result = await asyncio.wrap_future(self.worker.submit(frame, box, mix.weights, mix.strength, mix.stroke))
        except asyncio.CancelledError:
            raise
        except Exception as e:
            return self._failed(frame, e)
        s = self.stats
        s.frames_out += 1
        s.error = None
        if result.stages.infer is not None:
            s.infer_ms.add(result.stages.infer)
        for k, v in result.stages.as_dict().items():
            s.stages_ms.setdefault(k, Mean()).add(v)
        s.resolution = f"{result.frame.width}x{result.frame.height}"
        s.last_pts = result.frame.pts
        try:
            self._measured(result)
        except Exception:  # a bug here must not stop the video (see the module docstring)
            log.exception("auto resolution failed; keeping %dx%d", *self.auto.size)
        newest = self.source.newest_pts
        if newest is not None and frame.pts is not None and frame.time_base is not None:
            ticks = newest - frame.pts
            if 0 <= ticks < 2**31:  # RTP timestamps wrap at 2**32; skip the one frame across a wrap
                s.lag_s.add(float(ticks * frame.time_base))
        return result.frame

    def _failed(self, frame: av.VideoFrame, e: Exception) -> av.VideoFrame:
        s = self.stats
        message = f"inference failed: {type(e).__name__}: {e}"
        if message != s.error:  # log each new error once, not at 30 fps
            log.warning("%s (sending the camera frame unchanged)", message, exc_info=e)
        s.error = message
        s.frames_out += 1
        s.frames_failed += 1
        s.resolution = f"{frame.width}x{frame.height}"
        s.last_pts = frame.pts
        return frame


def to_i420(frame: av.VideoFrame) -> av.VideoFrame:
    """``frame`` as yuv420p (BT.601, video range, as libswscale's default), with its pts and time base.
    Odd sizes cannot be 4:2:0 without padding: those are left to the encoder."""
    if frame.format.name == "yuv420p" or frame.width % 2 or frame.height % 2:
        return frame
    rgb = frame.to_ndarray(format="rgb24")
    yuv: np.ndarray = np.ascontiguousarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420), dtype=np.uint8)
    out = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
    out.pts = frame.pts
    out.time_base = frame.time_base
    return out


class SharedFrames(MediaStreamTrack):
    """A track whose frames several encoders read at once (a WHEP relay): each frame is converted to
    yuv420p once, off the event loop, before it is shared.

    An encoder given an RGB frame converts it with ``frame.reformat``, which keeps its libswscale
    context on the frame: encoders in parallel threads converting the same frame share that
    context, which crashes the process. Converting first also does the work once, not per viewer.
    """

    kind = "video"

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self.source = source

    async def recv(self) -> av.VideoFrame:
        frame = await self.source.recv()
        assert isinstance(frame, av.VideoFrame)
        return await asyncio.get_running_loop().run_in_executor(None, to_i420, frame)
