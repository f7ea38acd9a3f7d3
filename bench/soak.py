"""Soak: well-behaved peers stream while others join, leave, vanish and flood, at random.

    python -m bench.soak --peers 4 --minutes 10                  # the shipped model, 160x120 peers
    python -m bench.soak --peers 2 --minutes 1 --model tiny.onnx --json /tmp/soak.json

The server runs as its own process (``python -m streamer`` on loopback, so its
memory and CPU are its own; ``--idle-timeout 3``). This process runs the peers,
real aiortc connections on loopback:

1. **baseline**: ``--peers`` well-behaved peers stream alone for ``--baseline`` seconds;
2. **chaos**: they go on streaming while, every one to three seconds, a random
   misbehaving client joins and streams, leaves (hangs up), vanishes (stops sending
   without hanging up: only the idle timeout frees its place) or floods the control
   channel with invalid messages as fast as it can for a few seconds;
3. **settle**: the misbehaving clients are gone; after the idle timeout no session but
   the well-behaved ones may remain (``stuck``).

Reported: the well-behaved peers' fps in the baseline, during chaos, and in the
two seconds from each flood's start (or its whole length, if longer), as a share of
the baseline; the server's RSS once a second (start, end, max, and its slope after the first
``--settle-minutes``); sessions stuck. A table and JSON; nothing passes or fails on a time
(``tests/test_soak.py`` runs a 60-second version).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.loopback import Peer, loopback_ice, pattern, rss_mib, server_process
from bench.results import RESULTS_DIR, write_json
from common.cpu import cpu_summary
from common.paths import DEFAULT_MODEL
from common.sizes import parse_size

log = logging.getLogger("bench.soak")
REPO = Path(__file__).resolve().parents[1]
IDLE_TIMEOUT_S = 3.0


@dataclass
class Chaos:
    """The misbehaving clients of the chaos phase and what they did."""

    peers: list[Peer] = field(default_factory=list)
    actions: dict[str, int] = field(default_factory=dict)
    flood_windows: list[tuple[float, float]] = field(default_factory=list)  # (start, end) monotonic
    flood_sent: int = 0


async def flood(peer: Peer, seconds: float, chaos: Chaos) -> None:
    """Invalid control messages as fast as this process can send them, for ``seconds``."""
    await peer.wait(lambda: peer.channel is not None and peer.channel.readyState == "open", timeout=20, what="open")
    assert peer.channel is not None
    t0 = time.monotonic()
    junk = ['{"type": "set", "weights": [1e308, 1e308]}', "{not json", '{"type": "dance"}', "x" * 5000]
    i = 0
    while time.monotonic() - t0 < seconds and peer.channel.readyState == "open":
        for _ in range(50):
            try:
                peer.channel.send(junk[i % len(junk)])
            except Exception:  # the server closed us for flooding: the point
                break
            i += 1
        await asyncio.sleep(0.01)  # about 4,000 a second from here
    chaos.flood_sent += i
    # The flood's cost outlasts it (the server works through what arrived; the session is closed):
    # its window runs at least two seconds.
    chaos.flood_windows.append((t0, max(time.monotonic(), t0 + 2.0)))


async def run_soak(
    model: Path,
    peers: int,
    seconds: float,
    baseline_s: float,
    size: tuple[int, int],
    seed: int,
    log_path: Path,
    settle_s: float = 300.0,
) -> dict[str, Any]:
    import aiohttp

    rng = random.Random(seed)
    extra = ["--max-sessions", str(peers + 8), "--idle-timeout", str(IDLE_TIMEOUT_S), "--offer-rate", "5",
             "--offer-burst", "20", "--max-pending", "8", "--resolutions", "320x240"]  # fmt: skip
    with server_process(model, log_path, extra) as (url, proc), loopback_ice():
        async with aiohttp.ClientSession() as http:
            good = [Peer(pattern(*size, seed=i)) for i in range(peers)]
            for p in good:
                await p.connect(http, url)
            await asyncio.gather(*(p.wait_frames(10, timeout=60) for p in good))
            rss: list[tuple[float, float]] = []
            t_start = time.monotonic()

            def sample() -> None:
                value = rss_mib(proc.pid)
                if value is not None:
                    rss.append((round(time.monotonic() - t_start, 1), round(value, 1)))

            # 1. baseline
            frames0 = [p.frames for p in good]
            t0 = time.monotonic()
            while time.monotonic() - t0 < baseline_s:
                await asyncio.sleep(1.0)
                sample()
            base_dt = time.monotonic() - t0
            baseline = [(p.frames - f) / base_dt for p, f in zip(good, frames0, strict=True)]

            # 2. chaos: the good peers' arrivals are kept to count frames inside flood windows.
            chaos = Chaos()
            tasks: list[asyncio.Task[None]] = []
            frames1 = [p.frames for p in good]
            t1 = time.monotonic()
            arrivals_from = [len(p.arrivals) for p in good]
            next_sample = time.monotonic() + 1.0
            while time.monotonic() - t1 < seconds:
                action = rng.choice(["join", "join", "leave", "vanish", "flood"])
                chaos.actions[action] = chaos.actions.get(action, 0) + 1
                live = [p for p in chaos.peers if p.pc.connectionState == "connected" and not p.camera.paused]
                if action == "join" or not live:
                    p = Peer(pattern(*size, seed=rng.randrange(1000)))
                    chaos.peers.append(p)
                    try:
                        await p.connect(http, url)
                    except RuntimeError as e:  # refused (full, rate limit): that is the server working
                        log.info("join refused: %s", e)
                elif action == "leave":
                    victim = rng.choice(live)
                    await victim.close()
                elif action == "vanish":
                    rng.choice(live).camera.paused = True  # no frames, no hang-up: the idle timeout's job
                else:
                    tasks.append(asyncio.create_task(flood(rng.choice(live), rng.uniform(2.0, 4.0), chaos)))
                wait = rng.uniform(1.0, 3.0)
                end = time.monotonic() + wait
                while time.monotonic() < end:
                    await asyncio.sleep(min(0.25, end - time.monotonic()))
                    if time.monotonic() >= next_sample:
                        sample()
                        next_sample += 1.0
            await asyncio.gather(*tasks, return_exceptions=True)
            chaos_dt = time.monotonic() - t1
            during = [(p.frames - f) / chaos_dt for p, f in zip(good, frames1, strict=True)]
            in_flood: list[float] = []
            for p, start in zip(good, arrivals_from, strict=True):
                arr = p.arrivals[start:]
                secs = sum(b - a for a, b in chaos.flood_windows)
                n = sum(1 for t in arr for a, b in chaos.flood_windows if a <= t <= b)
                in_flood.append(n / secs if secs > 0 else float("nan"))

            # 3. settle: the misbehaving clients go (vanished ones are left to the idle timeout).
            for p in chaos.peers:
                if not p.camera.paused:
                    await p.close()
            await asyncio.sleep(IDLE_TIMEOUT_S + 3.0)
            sample()
            async with http.get(f"{url}/health") as r:
                health = await r.json()
            stuck = int(health.get("sessions", 0)) - sum(1 for p in good if p.pc.connectionState == "connected")
            for p in [*good, *chaos.peers]:
                await p.close()
    # After warm-up (the first settle_s of chaos, or its first fifth if shorter), MiB per minute.
    settle = min(settle_s, 0.2 * (rss[-1][0] - rss[0][0])) if rss else 0.0
    later = [(t, m) for t, m in rss if t - rss[0][0] >= settle]
    slope = _slope(later) if len(later) > 5 else float("nan")
    return {
        "bench": "soak",
        "peers": peers,
        "size": f"{size[0]}x{size[1]}",
        "baseline_s": round(base_dt, 1),
        "chaos_s": round(chaos_dt, 1),
        "actions": chaos.actions,
        "flood_messages": chaos.flood_sent,
        "flood_seconds": round(sum(b - a for a, b in chaos.flood_windows), 1),
        "fps_baseline": [round(v, 2) for v in baseline],
        "fps_chaos": [round(v, 2) for v in during],
        "fps_in_flood": [round(v, 2) for v in in_flood],
        "flood_over_baseline": round(statistics.fmean(in_flood) / statistics.fmean(baseline), 3)
        if chaos.flood_windows
        else None,
        "chaos_over_baseline": round(statistics.fmean(during) / statistics.fmean(baseline), 3),
        "rss_mib": rss,
        "rss_slope_mib_per_min": round(slope, 3),
        "rss_slope_after_s": round(settle, 1),
        "stuck_sessions": stuck,
        "server_log_errors": sum(
            "Traceback" in line or " ERROR " in line for line in log_path.read_text().splitlines()
        ),
    }


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB), in MiB per minute."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return 60.0 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


def print_report(r: dict[str, Any]) -> None:
    rss = r["rss_mib"]
    print(f"soak: {r['peers']} well-behaved peers at {r['size']}, {r['baseline_s']} s alone, {r['chaos_s']} s of chaos")
    print(f"chaos actions: {json.dumps(r['actions'])}; {r['flood_messages']} flood messages in {r['flood_seconds']} s")
    print("| phase | fps per well-behaved peer | vs baseline |\n| --- | --- | ---: |")
    print(f"| baseline | {' / '.join(map(str, r['fps_baseline']))} | 100 % |")
    print(f"| chaos | {' / '.join(map(str, r['fps_chaos']))} | {r['chaos_over_baseline']:.0%} |")
    if r["flood_over_baseline"] is not None:
        print(f"| while flooding | {' / '.join(map(str, r['fps_in_flood']))} | {r['flood_over_baseline']:.0%} |")
    if rss:
        print(
            f"server RSS: {rss[0][1]} MiB at the start, {rss[-1][1]} MiB at the end, max {max(m for _, m in rss)} MiB, "
            f"slope after {r['rss_slope_after_s'] / 60:.1f} min {r['rss_slope_mib_per_min']} MiB/min; "
            f"sessions stuck: {r['stuck_sessions']}; "
            f"errors in the server log: {r['server_log_errors']}"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="stylecast .onnx the server runs")
    p.add_argument("--peers", type=int, default=4, help="well-behaved peers (default: 4)")
    p.add_argument("--minutes", type=float, default=10.0, help="chaos phase length (default: 10)")
    p.add_argument("--baseline", type=float, default=30.0, help="seconds the good peers stream alone first")
    p.add_argument("--size", default="160x120", help="frame size every peer sends (default: 160x120)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the chaos")
    p.add_argument(
        "--settle-minutes", type=float, default=5.0,
        help="the RSS slope is taken after this much of the chaos (or its first fifth, if shorter; default: 5)",
    )  # fmt: skip
    p.add_argument("--json", type=Path, default=RESULTS_DIR / "soak.json", help="results file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"stylecast-soak-{os.getpid()}.log"
    result = asyncio.run(
        run_soak(
            args.model,
            args.peers,
            args.minutes * 60,
            args.baseline,
            parse_size(args.size),
            args.seed,
            log_path,
            settle_s=args.settle_minutes * 60,
        )  # fmt: skip
    )
    result["command"] = "python -m bench.soak " + " ".join(sys.argv[1:] if argv is None else argv)
    result["cpu"] = cpu_summary()
    print_report(result)
    print(f"wrote {write_json(result, args.json)} (server log: {log_path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
