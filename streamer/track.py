"""The stylizing video track of one session, and the newest-frame-only reader in front of it.

aiortc's receive queue is unbounded: a transform slower than the camera makes
latency grow without limit. :class:`LatestFrame` therefore drains the incoming
track continuously and keeps only the newest decoded frame (counting the ones
it replaces as dropped); :class:`StylizedTrack` takes that newest frame each
time the sender asks for one, has the shared inference worker stylize it, and
returns it with the source's ``pts``/``time_base``.

An exception escaping ``recv()`` silently stops the outgoing video while the
connection still says "connected", so ``recv()`` catches everything but the end
of the stream: on an inference error it returns the camera frame unchanged and
records the error, which the session's stats message shows to the page.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from streamer.mixer import Mixer
from streamer.worker import InferenceWorker

log = logging.getLogger(__name__)


class LatestFrame:
    """Reads ``track`` in a task of its own and holds only its newest frame."""

    def __init__(self, track: MediaStreamTrack) -> None:
        self.track = track
        self.frames_in = 0  # frames decoded from the peer
        self.dropped = 0  # frames replaced by a newer one before they were stylized
        self.newest_pts: int | None = None  # pts of the newest frame received (source time base)
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
                if self._frame is not None:
                    self.dropped += 1
                self._frame = frame
                self.newest_pts = frame.pts
                self._ready.set()
        except MediaStreamError:
            pass  # the peer stopped sending (hung up or closed the track)
        except Exception:
            log.exception("reading the incoming video failed")
        finally:
            self._ended = True
            self._ready.set()

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
class TrackStats:
    """What the outgoing track did; read by the session's stats message and /metrics."""

    frames_out: int = 0  # frames handed to the sender (stylized or, on error, the original)
    frames_failed: int = 0  # frames whose inference failed (sent unstylized)
    error: str | None = None  # the last inference error; None once a frame succeeds again
    infer_ms: list[float] = field(default_factory=list)  # since the last stats message
    stages_ms: dict[str, list[float]] = field(default_factory=dict)
    # How far the frame sent trails the newest frame received (s, from pts), since the last
    # stats message: one inference or so when frames are dropped as they should be.
    lag_s: list[float] = field(default_factory=list)
    resolution: str | None = None  # size of the last frame sent, WxH
    last_pts: int | None = None  # pts of the last frame sent


class StylizedTrack(MediaStreamTrack):
    """The video the server sends back: the peer's newest frame through the mixer's current style."""

    kind = "video"

    def __init__(self, source: LatestFrame, mixer: Mixer, worker: InferenceWorker) -> None:
        super().__init__()
        self.source = source
        self.mixer = mixer
        self.worker = worker
        self.stats = TrackStats()

    async def recv(self) -> av.VideoFrame:
        frame = await self.source.get()  # MediaStreamError here ends the track cleanly
        try:
            weights, strength = self.mixer.step()
            result = await asyncio.wrap_future(self.worker.submit(frame, self.mixer.resolution, weights, strength))
        except asyncio.CancelledError:
            raise
        except Exception as e:
            return self._failed(frame, e)
        s = self.stats
        s.frames_out += 1
        s.error = None
        s.infer_ms.append(result.infer_ms)
        for k, v in result.stages_ms.items():
            s.stages_ms.setdefault(k, []).append(v)
        s.resolution = f"{result.frame.width}x{result.frame.height}"
        s.last_pts = result.frame.pts
        newest = self.source.newest_pts
        if newest is not None and frame.pts is not None and frame.time_base is not None:
            ticks = newest - frame.pts
            if 0 <= ticks < 2**31:  # RTP timestamps wrap at 2**32; skip the one frame across a wrap
                s.lag_s.append(float(ticks * frame.time_base))
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
