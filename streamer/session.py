"""One browser peer: its RTCPeerConnection, mixer, stylized track and control channel.

Control messages (JSON text on the data channel labelled ``control``)::

    -> {"type": "set", "weights": {"moss": 1} | [w0, w1, ...], "strength": 0..1, "stroke": 0.5..2,
        "resolution": "320x240" | "auto", "transition_ms": 0..5000}   (any subset)
    -> {"type": "preset", "name": "moss"}
    -> {"type": "ping", "t": 123.4}
    -> {"type": "stats"}             (the latest stats message, for a client without the channel:
                                      a WHEP watcher asks over ``PATCH /api/sessions/ID``)
    <- {"type": "ack", "state": {"weights": [...], "strength": x, "stroke": s, "resolution": "WxH" | "auto",
        "preset": name|null, "auto_resolution": "WxH"}}   (auto_resolution: only on "auto", the size it applies now)
    <- {"type": "pong", "t": 123.4}
    <- {"type": "styles", "styles": [...], "presets": [...], "state": {...}, "change": "added NAME"}
                                          (the model changed: a style was learned or deleted)
    <- {"type": "error", "message": "..."}
    <- {"type": "stats", "fps_in", "fps_out", "infer_ms", "dropped", "backend", "resolution", "error",
        "stages_ms", ...}                                           (every stats interval)

A bad message gets an error reply and changes nothing; the session goes on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcdatachannel import RTCDataChannel

from streamer.autores import AutoResolution
from streamer.config import StreamerConfig
from streamer.counters import Counters
from streamer.mixer import ControlError, Mixer, Preset, finite_float32
from streamer.security import TokenBucket
from streamer.served import ServedModel
from streamer.track import LatestFrame, SharedFrames, StylizedTrack
from streamer.worker import InferenceWorker

log = logging.getLogger(__name__)


def _no_constants(name: str) -> float:
    raise ValueError(f"malformed JSON: {name} is not a number")


class OfferError(ValueError):
    """An offer the server cannot answer (malformed SDP, no video); the reply says why."""


class Session:
    """One peer. Create, :meth:`answer` the browser's offer, :meth:`close` when done (idempotent)."""

    def __init__(
        self,
        config: StreamerConfig,
        worker: InferenceWorker,
        served: Callable[[], ServedModel],
        on_closed: Callable[[Session], None] | None = None,
        counters: Counters | None = None,
        clock: Callable[[], float] = time.monotonic,
        kind: str = "page",
    ) -> None:
        self.id = uuid.uuid4().hex[:12]
        # "page": the stylized video goes back on the peer's own connection; "whip": a publisher
        # (streamer.whip), whose stylized video goes out through one relay to its WHEP viewers.
        self.kind = kind
        self.relay: MediaRelay | None = None
        self.shared: SharedFrames | None = None  # the stylized track, as the relay hands it out
        self._close_listeners: list[Callable[[Session], Awaitable[None]]] = []
        self.counters = counters if counters is not None else Counters()
        self.clock = clock
        # Control messages: a token bucket; over it, messages are dropped with at most one
        # error reply a second, so a flood costs this session's messages, not others' frames.
        self.bucket = TokenBucket(config.control_rate, config.control_burst, clock)
        self.byte_bucket = TokenBucket(config.control_bytes, config.control_bytes, clock)
        self.control_dropped = 0
        self._dropped_reply_at = -1e9
        self._window = (clock(), 0, 0)  # (start, messages, bytes) of the current second, for the flood check
        self.config = config
        self.worker = worker
        # The server's current model, read through its one reference: after a swap, the next stats
        # message names the runtime actually in use.
        self.served = served
        model = served()
        self.mixer = Mixer(
            list(model.styles),
            list(model.presets),
            config.resolutions,
            config.default_resolution,
            transition_ms=config.transition_ms,
            max_transition_ms=config.max_transition_ms,
        )
        # Chooses the processing size while the client asks for "auto"; fed by the track.
        self.auto = AutoResolution(config.boxes, budget=config.auto_budget)
        self.created = clock()
        self.source: LatestFrame | None = None
        self.track: StylizedTrack | None = None
        self.channel: RTCDataChannel | None = None
        self.messages_rejected = 0
        self.fps_in = 0.0  # frames per second over the last stats interval
        self.fps_out = 0.0
        self.closed = False
        self.answered = False  # the offer was applied and answered
        self._on_closed = on_closed
        self._stats_task: asyncio.Task[None] | None = None
        self._close_task: asyncio.Task[None] | None = None
        self._expiry_task: asyncio.Task[None] | None = None
        self._last = (time.monotonic(), 0, 0)  # (time, frames_in, frames_out) at the last stats message
        self.last_stats: dict[str, Any] | None = None  # the latest stats message, for {"type": "stats"}
        ice = [RTCIceServer(**server) for server in config.ice_server_list()]
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=ice))
        self.pc.on("track", self._on_track)
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("connectionstatechange", self._on_state)

    # ------------------------------------------------------------------ signalling

    async def answer(self, sdp: str, kind: str) -> RTCSessionDescription:
        """Apply the browser's offer and return the answer (ICE candidates included)."""
        # aiortc's parser skips lines it does not know, so garbage would pass as an empty offer.
        lines = sdp.replace("\r\n", "\n").split("\n")
        if not lines or lines[0].strip() != "v=0" or not any(line.startswith("m=") for line in lines):
            raise OfferError("the offer's SDP is malformed: it must start with v=0 and have at least one m= line")
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
        except Exception as e:  # aiortc raises ValueError, but also others on malformed SDP
            raise OfferError(f"the offer's SDP cannot be used: {type(e).__name__}: {e}") from e
        if self.track is None:
            raise OfferError("the offer has no video track: add the camera track before creating the offer")
        try:
            await self.pc.setLocalDescription(await self.pc.createAnswer())
        except Exception as e:  # an offer aiortc took but cannot answer (found by tests/test_fuzz.py)
            raise OfferError(f"the offer's SDP cannot be answered: {type(e).__name__}: {e}") from e
        self.answered = True
        loop = asyncio.get_running_loop()
        self._expiry_task = loop.create_task(self.expire_unless_connected(self.config.connect_timeout_s))
        # Runs whether or not the peer opens a control channel: it also rolls the per-interval
        # stats over (fps for /metrics), sending them only where a channel is open.
        self._stats_task = loop.create_task(self._stats_loop(), name="stylecast-stats")
        return self.pc.localDescription

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind != "video" or self.track is not None:
            return  # audio, or a second camera: not ours to stylize
        self.source = LatestFrame(track, self.clock)
        self.track = StylizedTrack(self.source, self.mixer, self.worker, self.auto)
        if self.kind == "whip":
            # One relay: however many viewers subscribe, the stylized track is pulled (and the
            # network run) once per frame.
            self.relay = MediaRelay()
            self.shared = SharedFrames(self.track)
        else:
            # Fired during setRemoteDescription, so the answer sends this track back on the same transceiver.
            self.pc.addTrack(self.track)
        self.source.start()

    def relayed(self) -> MediaStreamTrack | None:
        """A viewer's copy of a publisher's stylized track (newest frame only), or None before it has video."""
        if self.relay is None or self.shared is None:
            return None
        return self.relay.subscribe(self.shared, buffered=False)

    def on_close(self, listener: Callable[[Session], Awaitable[None]]) -> None:
        """Run ``listener(session)`` when the session closes (its viewers go with it)."""
        self._close_listeners.append(listener)

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label != "control":
            log.info("session %s: ignoring data channel %r", self.id, channel.label)
            return
        self.channel = channel
        channel.on("message", self._on_message)

    def _on_state(self) -> None:
        state = self.pc.connectionState
        log.info("session %s: connection %s", self.id, state)
        if state in ("failed", "closed") and not self.closed and self._close_task is None:
            self._close_task = asyncio.get_running_loop().create_task(self.close())

    async def expire_unless_connected(self, timeout_s: float) -> None:
        """Close the session if the peer has not connected within ``timeout_s`` seconds."""
        await asyncio.sleep(timeout_s)
        if not self.closed and self.pc.connectionState != "connected":
            log.info(
                "session %s: not connected after %.0f s (%s); closing", self.id, timeout_s, self.pc.connectionState
            )
            await self.close()

    # ------------------------------------------------------------------ control messages

    def _on_message(self, message: str | bytes) -> None:
        reply = self.receive(message)
        if reply is not None:
            self._send(reply)

    def receive(self, message: str | bytes) -> dict[str, Any] | None:
        """A message off the channel, through the rate limit: the reply to send, or None (dropped).

        A session sending at ``flood_factor`` times the message rate, or the byte rate, for a
        second is closed: each message costs decryption, reassembly and parsing before it can
        be dropped, on the loop that every session's video shares, and large ones cost more
        (256 KiB messages at 40 a second stay far under the message rate).
        """
        now = self.clock()
        size = len(message) if isinstance(message, bytes) else len(message.encode("utf-8", "surrogatepass"))
        start, count, nbytes = self._window
        if now - start >= 1.0:
            start, count, nbytes = now, 0, 0
        count, nbytes = count + 1, nbytes + size
        self._window = (start, count, nbytes)
        cfg = self.config
        if (count > cfg.control_rate * cfg.flood_factor or nbytes > cfg.control_bytes * cfg.flood_factor) and not (
            self.closed
        ):
            log.info(
                "session %s: closing, it flooded the control channel (%d messages, %d bytes in a second)",
                self.id,
                count,
                nbytes,
            )
            self.say({"type": "bye", "message": "closed for flooding the control channel"})
            if self._close_task is None:
                self._close_task = asyncio.get_running_loop().create_task(self.close())
            return None
        if self.byte_bucket.take(size) and self.bucket.take():
            return self.handle_message(message)
        self.control_dropped += 1
        self.counters.control_dropped += 1
        if now - self._dropped_reply_at < 1.0:
            return None
        self._dropped_reply_at = now
        log.debug("session %s: dropping control messages over the rate limit", self.id)
        return {
            "type": "error",
            "message": f"too many control messages: at most {self.config.control_rate:g} a second "
            f"(bursts of {self.config.control_burst}) and {self.config.control_bytes} bytes a second; "
            f"{self.control_dropped} dropped so far",
        }

    def handle_message(self, message: str | bytes) -> dict[str, Any]:
        """One data-channel message -> the reply (ack, pong or error). Never raises."""
        size = len(message.encode("utf-8")) if isinstance(message, str) else len(message)
        if size > self.config.max_message_bytes:
            return self._error(f"message too long: {size} bytes (at most {self.config.max_message_bytes})")
        if isinstance(message, bytes):
            return self._error("binary messages are not supported: send JSON text")
        try:
            msg = json.loads(message, parse_constant=_no_constants)
        except (json.JSONDecodeError, RecursionError) as e:
            return self._error(f"malformed JSON: {e}")
        except ValueError as e:  # NaN, Infinity
            return self._error(str(e))
        if isinstance(msg, dict) and msg.get("type") == "ping":
            t = msg.get("t")
            if not finite_float32(t):
                return self._error("ping needs a number t, finite and within float32's range (echoed in the pong)")
            return {"type": "pong", "t": t}
        if msg == {"type": "stats"}:  # asked, not pushed: the interval's counters are not reset
            return self.last_stats or {"type": "stats"}  # none yet: the first comes after one interval
        try:
            self.mixer.apply(msg)
        except ControlError as e:
            return self._error(str(e))
        return {"type": "ack", "state": self.state_json()}

    def state_json(self) -> dict[str, Any]:
        """The ack's state: what the client asked for, plus the size auto resolution applies now."""
        state = self.mixer.state.to_json()
        if self.mixer.auto:
            if self.source is not None and self.source.size is not None:
                self.auto.set_source(*self.source.size)  # the choice is fitted to the camera's frames
            w, h = self.auto.size
            state["auto_resolution"] = f"{w}x{h}"
        return state

    def _error(self, message: str) -> dict[str, Any]:
        self.messages_rejected += 1
        log.debug("session %s: rejected a control message: %s", self.id, message)  # a client's doing: not INFO
        return {"type": "error", "message": message}

    def restyle(
        self, styles: list[str], presets: list[Preset], keep: list[int], styles_json: list[dict[str, Any]], change: str
    ) -> None:
        """The server swapped in a model with other styles: carry the mix over and tell the page."""
        self.mixer.restyle(styles, presets, keep)
        self.say(
            {
                "type": "styles",
                "styles": styles_json,
                "presets": [p.to_json() for p in presets],
                "state": self.state_json(),
                "change": change,
            }
        )

    def say(self, payload: dict[str, Any]) -> bool:
        """Send ``payload`` on the control channel if it is open; whether it was sent."""
        if self.channel is None or self.channel.readyState != "open":
            return False
        self._send(payload)
        return True

    def _send(self, payload: dict[str, Any]) -> None:
        ch = self.channel
        if ch is not None and ch.readyState == "open":
            try:
                ch.send(json.dumps(payload))
            except Exception:  # the channel may close between the check and the send
                log.debug("session %s: could not send on the control channel", self.id, exc_info=True)

    # ------------------------------------------------------------------ stats

    @property
    def frames_in(self) -> int:
        return self.source.frames_in if self.source else 0

    @property
    def frames_dropped(self) -> int:
        return self.source.dropped if self.source else 0

    @property
    def frames_out(self) -> int:
        return self.track.stats.frames_out if self.track else 0

    def stats_message(self, now: float | None = None) -> dict[str, Any]:
        """The stats since the previous call: rates over that interval, counters since the start."""
        now = time.monotonic() if now is None else now
        t0, in0, out0 = self._last
        dt = max(now - t0, 1e-6)
        self._last = (now, self.frames_in, self.frames_out)
        self.fps_in = (self.frames_in - in0) / dt
        self.fps_out = (self.frames_out - out0) / dt
        ts = self.track.stats if self.track else None
        infer = ts.infer_ms.take() if ts else None
        stages = {k: round(m, 2) for k, mean in ts.stages_ms.items() if (m := mean.take()) is not None} if ts else {}
        lag_s = ts.lag_s.take() if ts else None
        lag = lag_s * 1000 if lag_s is not None else None
        w, h = self.mixer.resolution or self.auto.size
        return {
            "type": "stats",
            "fps_in": round(self.fps_in, 2),
            "fps_out": round(self.fps_out, 2),
            "infer_ms": round(infer, 2) if infer is not None else None,
            "dropped": self.frames_dropped,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "backend": self.served().backend.name,
            "precision": self.served().backend.precision,
            # The size actually sent (processing size); the requested box until the first frame.
            "resolution": (ts.resolution if ts and ts.resolution else f"{w}x{h}"),
            "error": ts.error if ts else None,
            # Mean age (ms) of the frames sent relative to the newest frame received.
            "lag_ms": round(lag, 1) if lag is not None else None,
            "stages_ms": stages,
        }

    async def _stats_loop(self) -> None:
        limit = self.config.max_session_minutes
        while not self.closed:
            await asyncio.sleep(self.config.stats_interval_s)
            self.last_stats = self.stats_message()
            self._send(self.last_stats)
            now = self.clock()
            # No video for idle_timeout_s (a vanished browser keeps ICE alive ~30 s): free the place.
            last = self.source.last_frame_at if self.source is not None else None
            idle = now - (last if last is not None else self.created)
            if self.pc.connectionState == "connected" and idle > self.config.idle_timeout_s:
                log.info("session %s: no video for %.0f s; closing", self.id, idle)
                await self.close()
            elif limit is not None and now - self.created > limit * 60:
                log.info("session %s: reached --max-session-minutes %g; closing", self.id, limit)
                self.say({"type": "bye", "message": f"the session reached its time limit ({limit:g} min)"})
                await asyncio.sleep(0.2)  # let the message out before the channel closes
                await self.close()

    # ------------------------------------------------------------------ shutdown

    async def close(self) -> None:
        """Stop the tasks, the tracks and the peer connection; tell the owner. Safe to call twice."""
        if self.closed:
            return
        self.closed = True
        current = asyncio.current_task()
        for task in (self._stats_task, self._expiry_task):
            if task is not None and task is not current:
                task.cancel()
        if self.source is not None:
            await self.source.stop()
        if self.track is not None:
            self.track.stop()
        try:
            await self.pc.close()
        except Exception:
            # A connection that a malformed offer left half set up may not close cleanly: not news.
            level = logging.WARNING if self.answered else logging.DEBUG
            log.log(level, "session %s: closing the peer connection failed", self.id, exc_info=True)
        if self._on_closed is not None:
            self._on_closed(self)
        for listener in self._close_listeners:
            try:
                await listener(self)
            except Exception:
                log.exception("session %s: a close listener failed", self.id)
        log.info(
            "session %s closed (%d frames in, %d out, %d dropped)",
            self.id,
            self.frames_in,
            self.frames_out,
            self.frames_dropped,
        )
