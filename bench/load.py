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
import logging
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.loopback import Peer, local_server, pattern
from bench.results import write_json
from common.cli import arg_type
from common.paths import DEFAULT_MODEL
from common.sizes import parse_size

log = logging.getLogger("bench.load")


def rss_mib() -> float:
    """Resident memory of this process (MiB), from /proc (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


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


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="stylecast .onnx model for the in-process server")
    p.add_argument("--backend", default="auto", help="inference runtime for the in-process server")
    p.add_argument("--url", default=None, help="use a running server instead of starting one")
    p.add_argument("--peers", type=int, default=4, help="concurrent peers")
    p.add_argument("--size", type=arg_type(parse_size), default="320x240",
                   help="frame size each peer sends (WIDTHxHEIGHT, pixels; default: %(default)s)")  # fmt: skip
    p.add_argument("--fps", type=float, default=30.0, help="frames per second each peer sends")
    p.add_argument("--seconds", type=float, default=20.0, help="measured window (s)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds streamed before measuring")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    async def go() -> dict[str, Any]:
        if args.url:
            return await run_load(args.url, args.peers, args.seconds, args.size, args.fps, args.warmup)
        async with local_server(args.model, args.backend, max_sessions=args.peers) as srv:
            return await run_load(srv.url, args.peers, args.seconds, args.size, args.fps, args.warmup)

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
        print(f"wrote {write_json(result, args.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
