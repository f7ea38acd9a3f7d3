"""The server on loopback, in this process, and real aiortc peers for it: one harness for benches and tests.

    async with local_server(model) as srv:            # the real app and backend on 127.0.0.1, a free port
        peer = Peer(pattern(320, 240))
        await peer.connect(http, srv.url)              # a real RTCPeerConnection, VP8, a control channel
        await peer.wait_frames(10)

WebRTC on loopback needs two things (see the README's tests section): aioice
skips 127.0.0.1 on purpose and offers the machine's other addresses, so
:func:`loopback_ice` makes it offer only 127.0.0.1 while the server runs; and
Chromium needs ``--allow-loopback-in-peer-connection`` (``bench.chromium``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiohttp import web
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, MediaStreamTrack

from engines.runtime import Backend, load_backend
from streamer.app import SERVER_KEY, Server, create_app
from streamer.config import StreamerConfig

REPO = Path(__file__).resolve().parents[1]

VIDEO_CLOCK = 90_000  # RTP video clock rate (Hz): pts are in 1/90000 s


def pattern(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A still synthetic picture (HxWx3 uint8 RGB): gradients, flat blocks and a disc."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.empty((height, width, 3), np.float32)
    img[..., 0] = 40 + 180 * x / max(width - 1, 1)
    img[..., 1] = 60 + 150 * y / max(height - 1, 1)
    img[..., 2] = 120 + 60 * np.sin((x + y + seed * 7) / 9.0)
    img[: height // 3, : width // 3] = (230, 200, 40)
    r2 = (x - width * 0.62) ** 2 + (y - height * 0.55) ** 2
    img[r2 < (min(width, height) * 0.22) ** 2] = (250, 250, 250)
    return img.clip(0, 255).astype(np.uint8)


class PatternTrack(MediaStreamTrack):
    """A camera stand-in: the same RGB picture at ``fps``, with pts on the 90 kHz video clock."""

    kind = "video"

    def __init__(self, image: np.ndarray, fps: float = 30.0) -> None:
        super().__init__()
        self.image = image
        self.fps = fps
        self.sent = 0
        self.last_pts = 0
        self.paused = False  # True: no more frames (a browser that vanished without hanging up)
        self._start: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        # Pace to the wall clock (like a camera): frame n is due at start + n / fps.
        due = self._start + self.sent / self.fps
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        while self.paused and self.readyState == "live":
            await asyncio.sleep(0.05)
        frame = av.VideoFrame.from_ndarray(self.image, format="rgb24")
        frame.pts = int(self.sent * VIDEO_CLOCK / self.fps)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.last_pts = frame.pts
        self.sent += 1
        return frame


class Peer:
    """One loopback client: sends a picture, receives the stylized video, talks on ``control``.

    ``control=False``: a client that never opens the control channel (video only).
    """

    def __init__(
        self, image: np.ndarray, fps: float = 30.0, control: bool = True, ice_servers: list[RTCIceServer] | None = None
    ) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers or []))
        self.camera = PatternTrack(image, fps)
        self.pc.addTrack(self.camera)
        self.channel = self.pc.createDataChannel("control") if control else None
        self.session: str | None = None
        self.frames = 0  # stylized frames received
        self.arrivals: list[float] = []  # monotonic arrival time of each frame
        self.last: av.VideoFrame | None = None
        self.messages: list[dict[str, Any]] = []  # everything the server sent on the channel
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._open = asyncio.Event()
        if self.channel is not None:
            self.channel.on("open", self._open.set)
            self.channel.on("message", self._on_message)
        self.pc.on("track", self._on_track)

    def _on_message(self, message: str | bytes) -> None:
        self.messages.append(json.loads(message))
        self._changed.set()

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(self._read(track)))

    async def _read(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if not isinstance(frame, av.VideoFrame):
                    continue
                self.frames += 1
                self.arrivals.append(time.monotonic())
                self.last = frame
                self._changed.set()

    async def connect(
        self,
        http: Any,
        url: str,
        token: str | None = None,
        edit_offer: Callable[[str], str] | None = None,
        edit_answer: Callable[[str], str] | None = None,
    ) -> dict[str, Any]:
        """Offer to ``url``/offer with the aiohttp ``http`` client (and the access token); returns the answer.

        ``edit_offer``/``edit_answer`` rewrite the SDP sent / the answer's before it is applied
        (e.g. to keep some candidates only)."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        sdp = self.pc.localDescription.sdp
        offer = {"sdp": edit_offer(sdp) if edit_offer else sdp, "type": self.pc.localDescription.type}
        headers = {"X-Stylecast-Token": token} if token else {}
        async with http.post(f"{url}/offer", json=offer, headers=headers) as resp:
            body = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"offer refused ({resp.status}): {body.get('error')}")
        sdp = edit_answer(body["sdp"]) if edit_answer else body["sdp"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=body["type"]))
        self.session = body["session"]
        return body

    async def wait(self, predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
        """Wait until ``predicate()`` holds (checked whenever a frame or message arrives)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.25))

    async def wait_frames(self, count: int, timeout: float = 20.0) -> None:
        """Wait until ``count`` more frames have arrived."""
        target = self.frames + count
        await self.wait(lambda: self.frames >= target, timeout, f"{count} frames")

    async def request(self, message: dict[str, Any] | str, timeout: float = 10.0) -> dict[str, Any]:
        """Send one control message (a dict, or raw text) and return the reply (ack, pong or error)."""
        if self.channel is None:
            raise RuntimeError("this peer has no control channel (control=False)")
        await asyncio.wait_for(self._open.wait(), timeout)
        seen = len(self.messages)
        self.channel.send(message if isinstance(message, str) else json.dumps(message))

        def replied() -> bool:
            return any(m.get("type") != "stats" for m in self.messages[seen:])

        await self.wait(replied, timeout, f"a reply to {str(message)[:60]}")
        return next(m for m in self.messages[seen:] if m.get("type") != "stats")

    def latest_rgb(self) -> np.ndarray:
        """The last received frame as HxWx3 uint8 RGB."""
        if self.last is None:
            raise RuntimeError("no frame received yet")
        return self.last.to_ndarray(format="rgb24")

    def stats(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == "stats"]

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await self.pc.close()


class WhipClient:
    """A plain WHIP publisher (RFC 9725) or WHEP viewer on aiortc, for the protocol's edges.

    ``image`` given: a publisher sending that picture, send-only; ``track``: a publisher sending that
    track (a video file's, say). Neither: a viewer, receive-only, counting the frames it gets.
    :meth:`post` returns the HTTP status, headers and body; on 201 the answer is applied and
    ``resource`` is the Location to DELETE. ``codec`` (a MIME type, ``"video/H264"``) narrows the
    video codecs offered; ``audio`` adds a send-only audio track first, as OBS sends.
    """

    def __init__(
        self,
        image: np.ndarray | None = None,
        fps: float = 30.0,
        track: MediaStreamTrack | None = None,
        codec: str | None = None,
        audio: bool = False,
    ) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.camera = PatternTrack(image, fps) if image is not None else None
        sending = self.camera if self.camera is not None else track
        if audio:
            self.pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        if sending is not None:
            video = self.pc.addTransceiver(sending, direction="sendonly")
            if codec:
                video.setCodecPreferences(
                    [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType.lower() == codec.lower()]
                )
        else:
            self.pc.addTransceiver("video", direction="recvonly")
        self.resource: str | None = None
        self.frames = 0
        self.last: av.VideoFrame | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.pc.on("track", lambda track: self._tasks.append(asyncio.get_running_loop().create_task(self._read(track))))

    async def _read(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if isinstance(frame, av.VideoFrame):
                    self.frames += 1
                    self.last = frame

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def post(self, http: Any, url: str, token: str | None = None) -> tuple[int, Any, str]:
        headers = {"Content-Type": "application/sdp"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        async with http.post(url, data=(await self.offer()).encode(), headers=headers) as resp:
            body = await resp.text()
            if resp.status == 201:
                await self.pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
                self.resource = resp.headers["Location"]
            return resp.status, resp.headers, body

    async def wait_frames(self, count: int, timeout: float = 20.0) -> None:
        deadline, target = time.monotonic() + timeout, self.frames + count
        while self.frames < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {count} frames")
            await asyncio.sleep(0.05)

    def latest_rgb(self) -> np.ndarray:
        if self.last is None:
            raise RuntimeError("no frame received yet")
        return self.last.to_ndarray(format="rgb24")

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await self.pc.close()


@contextlib.contextmanager
def loopback_ice() -> Iterator[None]:
    """While inside: aioice offers only the 127.0.0.1 host candidate (client and server are on this machine)."""
    import aioice.ice

    original = aioice.ice.get_host_addresses

    def loopback_only(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return ["127.0.0.1"]

    aioice.ice.get_host_addresses = loopback_only
    try:
        yield
    finally:
        aioice.ice.get_host_addresses = original


@dataclass
class LocalServer:
    """One app running on 127.0.0.1."""

    url: str
    app: web.Application
    runner: web.AppRunner
    backend: Backend
    stopped: bool = field(default=False, init=False)

    @property
    def server(self) -> Server:
        return self.app[SERVER_KEY]

    async def stop(self) -> None:
        """Shut the app down (closes every peer, stops the worker); the caller owns the backend."""
        if not self.stopped:
            self.stopped = True
            await self.runner.cleanup()


@contextlib.asynccontextmanager
async def serve(
    config: StreamerConfig, backend: Backend, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[LocalServer]:
    """``create_app(config, backend)`` on 127.0.0.1 (a free port, https with ``ssl_context``) with
    loopback ICE; stopped on exit."""
    with loopback_ice():
        app = create_app(config, backend)
        runner = web.AppRunner(app)
        await runner.setup()
        srv: LocalServer | None = None
        try:
            await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context).start()
            scheme = "https" if ssl_context else "http"
            srv = LocalServer(f"{scheme}://127.0.0.1:{runner.addresses[0][1]}", app, runner, backend)
            yield srv
        finally:
            if srv is not None:
                await srv.stop()
            else:
                await runner.cleanup()


@contextlib.asynccontextmanager
async def local_server(model: Path, backend: str = "auto", **config: Any) -> AsyncIterator[LocalServer]:
    """:func:`serve` with ``model`` loaded on ``backend`` (closed afterwards); ``config``: StreamerConfig fields."""
    loaded = load_backend(model, backend=backend)
    try:
        async with serve(StreamerConfig(model_path=model, backend=backend, **config), loaded) as srv:
            yield srv
    finally:
        loaded.close()


# ----------------------------------------------------------------------------- a server process


def rss_mib(pid: int) -> float | None:
    """Resident memory of process ``pid`` in MiB (Linux /proc), None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server_process(model: Path, log_path: Path, extra: list[str] | None = None) -> Any:
    """``python -m streamer`` on 127.0.0.1 in its own process (its memory and CPU its own), with
    ``extra`` options; yields (url, process) once it serves, terminates it afterwards.

    A SIGTERM to the bench (``kill``, a timeout) unwinds through here as SystemExit while the
    server runs, so the server goes too: it used to be left serving, orphaned, taking CPU.
    """
    port = free_port()
    cmd = [sys.executable, "-m", "streamer", "--model", str(model), "--port", str(port), *(extra or [])]
    with open(log_path, "w") as out:
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        for _ in range(600):
            if "serving on" in log_path.read_text() or proc.poll() is not None:
                break
            time.sleep(0.1)
        if proc.poll() is not None:
            raise RuntimeError(f"the server did not start:\n{log_path.read_text()[-2000:]}")
        yield f"http://127.0.0.1:{port}", proc
    finally:
        signal.signal(signal.SIGTERM, previous)
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _exit_on_sigterm(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)
