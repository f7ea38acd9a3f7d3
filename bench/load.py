"""Load test on loopback: N aiortc peers stream a synthetic camera through one server at once.

    python -m bench.load                                    # shipped model, 4 peers, 320x240, 20 s
    python -m bench.load --model tiny.onnx --peers 3 --size 160x120 --seconds 10
    python -m bench.load --peers 2 --json bench/results/load.json
    python -m bench.load --url http://127.0.0.1:8080        # a server that is already running

Unless ``--url`` is given, the server runs in this process (``create_app`` with
the real backend on 127.0.0.1, a random port), so the resident memory measured
is the server's plus the peers'. Each peer is a real ``RTCPeerConnection`` that
sends a 30 fps synthetic picture (VP8) and counts the stylized frames it gets
back. Reported per peer: frames received and fps over the measured window
(after ``--warmup`` seconds), the server's dropped-frame count and inference
ms; plus RSS after warm-up and at the end. Printed as a table, optionally
written as JSON. Nothing passes or fails on a time (tests/test_streamer_load.py
runs the same code small and checks that no peer starves).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import json
import logging
import os
import platform
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

log = logging.getLogger("bench.load")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "engines" / "models" / "default.onnx"
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
        self._start: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        # Pace to the wall clock (like a camera): frame n is due at start + n / fps.
        due = self._start + self.sent / self.fps
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        frame = av.VideoFrame.from_ndarray(self.image, format="rgb24")
        frame.pts = int(self.sent * VIDEO_CLOCK / self.fps)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.last_pts = frame.pts
        self.sent += 1
        return frame


class Peer:
    """One loopback client: sends a picture, receives the stylized video, talks on ``control``."""

    def __init__(self, image: np.ndarray, fps: float = 30.0) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.camera = PatternTrack(image, fps)
        self.pc.addTrack(self.camera)
        self.channel = self.pc.createDataChannel("control")
        self.session: str | None = None
        self.frames = 0  # stylized frames received
        self.arrivals: list[float] = []  # monotonic arrival time of each frame
        self.last: av.VideoFrame | None = None
        self.messages: list[dict[str, Any]] = []  # everything the server sent on the channel
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._open = asyncio.Event()
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

    async def connect(self, http: Any, url: str) -> dict[str, Any]:
        """Offer to ``url``/offer with the aiohttp ``http`` client; returns the server's JSON answer."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        offer = {"sdp": self.pc.localDescription.sdp, "type": self.pc.localDescription.type}
        async with http.post(f"{url}/offer", json=offer) as resp:
            body = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"offer refused ({resp.status}): {body.get('error')}")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type=body["type"]))
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


def rss_mib() -> float:
    """Resident memory of this process (MiB), from /proc (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.asynccontextmanager
async def local_server(model: Path, backend_name: str, max_sessions: int) -> AsyncIterator[str]:
    """The real app on 127.0.0.1 (random port) with the real backend; yields its URL."""
    import aioice.ice
    from aiohttp import web

    from engines.runtime import load_backend
    from streamer.app import create_app
    from streamer.config import StreamerConfig

    # The peers run on this machine: offer only loopback host candidates (aioice skips 127.0.0.1).
    original = aioice.ice.get_host_addresses
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]  # type: ignore[assignment]
    backend = load_backend(model, backend=backend_name)
    config = StreamerConfig(host="127.0.0.1", port=0, model_path=model, max_sessions=max_sessions)
    runner = web.AppRunner(create_app(config, backend))
    try:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
        backend.close()
        aioice.ice.get_host_addresses = original  # type: ignore[assignment]


async def run_load(
    url: str, peers: int, seconds: float, size: tuple[int, int], fps: float = 30.0, warmup: float = 3.0
) -> dict[str, Any]:
    """Stream ``peers`` peers at ``size`` (w, h) for ``warmup`` + ``seconds``; per-peer results and RSS."""
    import aiohttp

    w, h = size
    clients = [Peer(pattern(w, h, seed=i), fps) for i in range(peers)]
    rss: list[tuple[float, float]] = []
    async with aiohttp.ClientSession() as http:
        try:
            await asyncio.gather(*(c.connect(http, url) for c in clients))
            await asyncio.gather(*(c.wait_frames(1, timeout=30) for c in clients))
            await asyncio.sleep(warmup)
            t0 = time.monotonic()
            counts0 = [c.frames for c in clients]
            rss.append((0.0, rss_mib()))
            while (elapsed := time.monotonic() - t0) < seconds:
                await asyncio.sleep(min(1.0, seconds - elapsed))
                rss.append((round(time.monotonic() - t0, 1), rss_mib()))
            dt = time.monotonic() - t0
            rows = []
            for i, c in enumerate(clients):
                got = c.frames - counts0[i]
                stats = c.stats()
                last = stats[-1] if stats else {}
                infer = [s["infer_ms"] for s in stats[-int(seconds) :] if isinstance(s.get("infer_ms"), int | float)]
                rows.append(
                    {
                        "peer": i,
                        "session": c.session,
                        "frames": got,
                        "fps": round(got / dt, 2),
                        "sent": c.camera.sent,
                        "server_dropped": last.get("dropped"),
                        "server_infer_ms": round(float(np.median(infer)), 2) if infer else None,
                        "server_lag_ms": last.get("lag_ms"),
                        "resolution": last.get("resolution"),
                        "error": last.get("error"),
                    }
                )
        finally:
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    return {
        "peers": peers,
        "size": f"{w}x{h}",
        "send_fps": fps,
        "seconds": round(dt, 2),
        "warmup_s": warmup,
        "rows": rows,
        "rss_mib": [(t, round(m, 1)) for t, m in rss],
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"{result['peers']} peers at {result['size']}, {result['send_fps']:g} fps sent, {result['seconds']} s")
    print(f"{'peer':>4} {'frames':>7} {'fps':>7} {'sent':>6} {'dropped':>8} {'infer ms':>9} {'lag ms':>7}  error")
    for r in result["rows"]:
        print(
            f"{r['peer']:>4} {r['frames']:>7} {r['fps']:>7.2f} {r['sent']:>6} {r['server_dropped']!s:>8}"
            f" {r['server_infer_ms']!s:>9} {r['server_lag_ms']!s:>7}  {r['error'] or ''}"
        )
    rss = result["rss_mib"]
    if rss:
        print(
            f"RSS after warm-up {rss[0][1]:.1f} MiB, at the end {rss[-1][1]:.1f} MiB (max {max(m for _, m in rss):.1f})"
        )


def _size(text: str) -> tuple[int, int]:
    w, h = (int(v) for v in text.lower().split("x"))
    return w, h


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="stylecast .onnx model for the in-process server")
    p.add_argument("--backend", default="auto", help="inference runtime for the in-process server")
    p.add_argument("--url", default=None, help="use a running server instead of starting one")
    p.add_argument("--peers", type=int, default=4, help="concurrent peers")
    p.add_argument("--size", type=_size, default=(320, 240), help="frame size each peer sends (WIDTHxHEIGHT, pixels)")
    p.add_argument("--fps", type=float, default=30.0, help="frames per second each peer sends")
    p.add_argument("--seconds", type=float, default=20.0, help="measured window (s)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds streamed before measuring")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    async def go() -> dict[str, Any]:
        if args.url:
            return await run_load(args.url, args.peers, args.seconds, args.size, args.fps, args.warmup)
        async with local_server(args.model, args.backend, max_sessions=args.peers) as url:
            return await run_load(url, args.peers, args.seconds, args.size, args.fps, args.warmup)

    result = asyncio.run(go())
    result.update(
        {
            "model": None if args.url else str(args.model),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "load_average": os.getloadavg(),
        }
    )
    print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
