"""What abuse costs the people using the server: large offers, large control messages, big uploads.

    python -m bench.abuse                       # all three, the shipped model, 160x120 peers
    python -m bench.abuse offers control --seconds 8
    python -m bench.abuse uploads --json /tmp/abuse.json

The server runs as its own process (``python -m streamer`` on loopback), so its memory
and CPU are its own; the peers and the abuser run here, real aiortc and HTTP clients.

* **offers**: one peer streams; a client sends ten 0.9 MB offers (under aiohttp's own
  1 MiB body cap). Reported: each answer's status and time, the server's worst event-loop
  lag (its ``stylecast_loop_lag_max_ms``), the peer's fps while they arrive as a share
  of its fps before.
* **control**: two peers stream; a third sends 256 KiB control messages at 40 a second
  (far under the message rate, 30/s, that closes a flood at 300/s). Reported: how soon
  the sender is closed, and the other two's fps from the flood's start as a share of before.
* **uploads**: six clients upload a 7000x7000 PNG (a few hundred kB: flat paint) at
  once to a server that learns paintings; reported: the server's resident memory before,
  at its highest and after, and the answers.

A table and JSON (``bench/results/abuse.json``, with the CPU); nothing passes or fails.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.loopback import Peer, loopback_ice, pattern, rss_mib, server_process
from bench.results import RESULTS_DIR, write_json
from common.cpu import cpu_summary
from common.paths import DEFAULT_MODEL

log = logging.getLogger("bench.abuse")
SIZE = (160, 120)
SCENARIOS = ("offers", "control", "uploads")


async def fps_over(peers: list[Peer], seconds: float) -> list[float]:
    """Frames each peer received per second over the next ``seconds``."""
    before = [p.frames for p in peers]
    await asyncio.sleep(seconds)
    return [(p.frames - b) / seconds for p, b in zip(peers, before, strict=True)]


async def metric(http: Any, url: str, name: str) -> float:
    async with http.get(url + "/metrics") as r:
        for line in (await r.text()).splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return float("nan")


async def offers(model: Path, seconds: float, work: Path) -> dict[str, Any]:
    import aiohttp

    extra = ["--offer-rate", "20", "--offer-burst", "20"]
    with server_process(model, work / "offers.log", extra) as (url, _proc), loopback_ice():
        async with aiohttp.ClientSession() as http:
            peer = Peer(pattern(*SIZE))
            await peer.connect(http, url)
            await peer.wait_frames(30, timeout=60)
            before = (await fps_over([peer], seconds))[0]
            lag_before = await metric(http, url, "stylecast_loop_lag_max_ms")
            sdp = "v=0\r\n" + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:96 VP8/90000\r\n" * 14_000
            body = json.dumps({"sdp": sdp[:900_000], "type": "offer"}).encode()
            answers: list[tuple[int, float]] = []
            frames0, t0 = peer.frames, time.monotonic()
            for _ in range(10):
                s = time.perf_counter()
                async with http.post(url + "/offer", data=body, headers={"Content-Type": "application/json"}) as r:
                    answers.append((r.status, round((time.perf_counter() - s) * 1000, 1)))
            await asyncio.sleep(max(0.0, 2.0 - (time.monotonic() - t0)))  # at least 2 s of video to count
            during = (peer.frames - frames0) / (time.monotonic() - t0)
            lag_after = await metric(http, url, "stylecast_loop_lag_max_ms")
            await peer.close()
    return {
        "body_bytes": len(body),
        "answers": answers,
        "fps_before": round(before, 1),
        "fps_during": round(during, 1),
        "fps_share": round(during / before, 3) if before else None,
        "loop_lag_max_ms_before": lag_before,
        "loop_lag_max_ms_after": lag_after,
    }


async def control(model: Path, seconds: float, work: Path) -> dict[str, Any]:
    import aiohttp

    with server_process(model, work / "control.log") as (url, _proc), loopback_ice():
        async with aiohttp.ClientSession() as http:
            good = [Peer(pattern(*SIZE, seed=i)) for i in range(2)]
            flooder = Peer(pattern(*SIZE, seed=9))
            for p in (*good, flooder):
                await p.connect(http, url)
            await asyncio.gather(*(p.wait_frames(30, timeout=60) for p in good))
            await flooder.request({"type": "ping", "t": 1})
            before = await fps_over(good, seconds)
            frames0 = [p.frames for p in good]
            big = '{"type": "set", "strength": 1, "pad": "' + "x" * (256 * 1024 - 50) + '"}'
            t0 = time.monotonic()
            sent, closed_after = 0, None
            while time.monotonic() - t0 < seconds:
                if any(m.get("type") == "bye" for m in flooder.messages) or flooder.pc.connectionState == "closed":
                    closed_after = closed_after or round(time.monotonic() - t0, 2)
                elif flooder.channel is not None and flooder.channel.readyState == "open":
                    try:
                        flooder.channel.send(big)
                        sent += 1
                    except Exception:  # the server hung up: the point
                        closed_after = closed_after or round(time.monotonic() - t0, 2)
                await asyncio.sleep(1 / 40)
            elapsed = time.monotonic() - t0
            during = [(p.frames - f) / elapsed for p, f in zip(good, frames0, strict=True)]
            for p in (*good, flooder):
                await p.close()
    return {
        "message_bytes": len(big),
        "sent": sent,
        "closed_after_s": closed_after,
        "fps_before": [round(f, 1) for f in before],
        "fps_during": [round(f, 1) for f in during],
        "fps_share": round(statistics.mean(d / b for d, b in zip(during, before, strict=True)), 3),
    }


class PeakRss:
    """The highest resident memory of a process, sampled every 50 ms while :meth:`run` runs."""

    def __init__(self, pid: int) -> None:
        self.pid, self.mib = pid, 0.0

    async def run(self) -> None:
        while True:
            self.mib = max(self.mib, rss_mib(self.pid) or 0.0)
            await asyncio.sleep(0.05)


def big_png(side: int = 7000) -> bytes:
    """A 7000x7000 'painting' of flat colour fields: a few hundred kB of PNG, 147 MB once decoded."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (side, side), (200, 180, 120))
    draw = ImageDraw.Draw(im)
    for i in range(12):  # nested frames of flat paint
        m = i * side // 26
        draw.rectangle([m, m, side - 1 - m, side - 1 - m], fill=(40 * i % 256, 90 + 10 * i, 255 - 15 * i))
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


async def uploads(model: Path, seconds: float, work: Path) -> dict[str, Any]:
    import aiohttp

    png = await asyncio.get_running_loop().run_in_executor(None, big_png)
    results: dict[str, Any] = {"png_bytes": len(png), "runs": {}}
    # As shipped (two per client, four queued), and with the limits opened so all six are decoded.
    for label, extra in (
        ("default limits", []),
        ("all six decoded", ["--max-styles-per-client", "6", "--max-queued-styles", "6"]),
    ):
        slug = label.replace(" ", "-")
        args = ["--allow-new-styles", "--models-dir", str(work / slug), "--learn-steps", "2000", *extra]
        with server_process(model, work / f"uploads-{slug}.log", args) as (url, proc):
            await asyncio.sleep(2.0)
            start = rss_mib(proc.pid) or float("nan")
            peak = PeakRss(proc.pid)
            sampler = asyncio.get_running_loop().create_task(peak.run())
            async with aiohttp.ClientSession() as http:

                async def one(i: int) -> int:
                    form = aiohttp.FormData()
                    form.add_field("image", png, filename=f"big{i}.png", content_type="image/png")
                    form.add_field("name", f"Big painting {chr(ord('A') + i)}")
                    async with http.post(url + "/api/styles", data=form) as r:
                        return r.status

                t0 = time.monotonic()
                codes = await asyncio.gather(*(one(i) for i in range(6)))
                took = time.monotonic() - t0
                await asyncio.sleep(seconds)
                sampler.cancel()
                after = rss_mib(proc.pid) or float("nan")
        results["runs"][label] = {
            "answers": sorted(codes),
            "seconds_for_all_answers": round(took, 1),
            "rss_start_mib": round(start, 1),
            "rss_peak_mib": round(max(peak.mib, start), 1),
            "rss_after_mib": round(after, 1),
            "rss_growth_mib": round(after - start, 1),
        }
    return results


def report(r: dict[str, Any]) -> str:
    lines = [f"CPU: {r['cpu']}; model {r['model']}; peers {SIZE[0]}x{SIZE[1]}", ""]
    if "offers" in r:
        o = r["offers"]
        times = [t for _, t in o["answers"]]
        lines += [
            f"offers: ten {o['body_bytes'] / 1e6:.2f} MB offers -> {sorted({c for c, _ in o['answers']})}, "
            f"answered in {min(times)}-{max(times)} ms (median {statistics.median(times)}); streaming peer "
            f"{o['fps_before']} -> {o['fps_during']} fps ({o['fps_share']:.0%}); server loop lag max "
            f"{o['loop_lag_max_ms_before']} ms before, {o['loop_lag_max_ms_after']} ms after",
        ]
    if "control" in r:
        c = r["control"]
        lines += [
            f"control: {c['message_bytes'] // 1024} KiB messages at 40/s: sender closed after {c['closed_after_s']} s "
            f"({c['sent']} sent); the other two {c['fps_before']} -> {c['fps_during']} fps ({c['fps_share']:.0%})",
        ]
    if "uploads" in r:
        u = r["uploads"]
        for label, run in u["runs"].items():
            lines.append(
                f"uploads ({label}): six {u['png_bytes'] / 1e3:.0f} kB 7000x7000 PNGs -> {run['answers']} in "
                f"{run['seconds_for_all_answers']} s; server RSS {run['rss_start_mib']} -> peak {run['rss_peak_mib']} "
                f"-> {run['rss_after_mib']} MiB (growth {run['rss_growth_mib']} MiB)"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.abuse", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "scenarios", nargs="*", metavar="SCENARIO", help=f"which to run: {', '.join(SCENARIOS)} (default: all)"
    )
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="stylecast .onnx the server runs")
    p.add_argument("--seconds", type=float, default=10.0, help="measuring window per phase (default: 10)")
    p.add_argument("--json", type=Path, default=RESULTS_DIR / "abuse.json", help="results file")
    args = p.parse_args(argv)
    if unknown := set(args.scenarios) - set(SCENARIOS):
        p.error(f"unknown scenario(s) {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result: dict[str, Any] = {"cpu": cpu_summary(), "model": str(args.model), "seconds": args.seconds}
    runners = {"offers": offers, "control": control, "uploads": uploads}
    with tempfile.TemporaryDirectory(prefix="stylecast-abuse-") as tmp:
        for name in args.scenarios or SCENARIOS:
            print(f"{name} ...", file=sys.stderr, flush=True)
            result[name] = asyncio.run(runners[name](args.model, args.seconds, Path(tmp)))
    print(report(result))
    print(f"wrote {write_json(result, args.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
