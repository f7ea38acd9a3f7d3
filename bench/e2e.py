"""End-to-end speed through a real browser: frames delivered to the page and glass-to-glass latency.

    python -m bench.e2e                                          # shipped model, 320x240 and 640x480, 20 s each
    python -m bench.e2e --model tiny.onnx --seconds 10 --sizes 320x240
    python -m bench.e2e --codec h264 --json bench/results/e2e-h264.json
    python -m bench.e2e --url http://127.0.0.1:8080              # a server that is already running

The server runs in this process (``streamer.app.create_app`` on 127.0.0.1, the real
backend) unless ``--url`` is given; headless Chromium (Debian's ``/usr/bin/chromium``,
driven by Playwright) opens the page with its latency bench and test hook
(``/?bench=1&hook=1``, ``streamer/static/bench.js`` and ``hook.js``) and a fake 30 fps
camera, on the same machine, so Chromium, the server and inference share the CPU.

How latency is measured: the page draws each camera frame into a canvas and stamps
``performance.now()`` (ms, mod 65536, with a checksum) as a grid of large black and
white cells in the top-left corner, sends that canvas, and on every stylized frame
it presents reads the cells back (each cell compared with white/black reference
cells, so colour changes from the style do not matter) and takes
``expectedDisplayTime - stamp``. Frames whose stamp cannot be read are counted
(``unreadable``), not guessed. Inference runs on every frame as in normal use; the
strength stays at 1 unless ``--strength`` is given.

Reported per resolution: fps delivered to the page (frames decoded per second, from
``getStats``) and frames presented per second (requestVideoFrameCallback: the
headless compositor can skip a frame when two land in one refresh), latency p50/p90, the server's own stats over the
same window (fps in/out, inference ms, dropped frames, per-stage timings), printed as
a table and written as JSON (``--screenshots DIR``: a picture of the page per size too).
Nothing passes or fails on a time.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from bench.chromium import BASE_ARGS, CHROMIUM, FAKE_CAMERA, FULL_RATE, open_hooked
from bench.results import RESULTS_DIR, write_json
from common.cpu import cpu_summary
from common.paths import DEFAULT_MODEL
from common.sizes import format_size, parse_size

log = logging.getLogger("bench.e2e")

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = [*FAKE_CAMERA, *BASE_ARGS, *FULL_RATE]


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100); None for no values."""
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def median_of(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [float(r[key]) for r in rows if isinstance(r.get(key), int | float) and not isinstance(r[key], bool)]
    return statistics.median(vals) if vals else None


def stage_medians(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Medians of the per-stage timings in the server's stats messages (``stages_ms``: name -> ms)."""
    out: dict[str, list[float]] = {}
    for r in rows:
        for name, v in (r.get("stages_ms") or {}).items():
            out.setdefault(name, []).append(float(v))
    return {k: round(statistics.median(v), 2) for k, v in out.items()}


# ----------------------------------------------------------------------------- one measurement


async def measure(
    browser: Any,
    url: str,
    size: str,
    seconds: float,
    warmup: float,
    codec: str,
    strength: float | None,
    screenshots: Path | None = None,
) -> dict[str, Any]:
    """Stream at one resolution and return what the page and the server saw over ``seconds``."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    page.on("pageerror", lambda e: log.warning("page error: %s", e))
    try:
        await open_hooked(page, f"{url}/?bench=1&hook=1&res={size}&codec={codec}")
        await page.wait_for_function("window.stylecast && window.stylecast.state.info !== null")
        await page.get_by_role("button", name="Start camera").click()
        await page.wait_for_function(
            "() => window.stylecast.renderedFrames > 5 || !document.getElementById('message').hidden",
            timeout=60_000,
        )
        error = await page.evaluate("document.getElementById('message').hidden ? null : stylecast.lastError")
        if error:
            raise RuntimeError(f"the page reports: {error}")
        if strength is not None:
            await page.get_by_label("Strength").fill(str(round(strength * 100)))
        await asyncio.sleep(warmup)
        t0 = await page.evaluate("() => { stylecast.bench.reset(); return performance.now(); }")
        decoded0 = await page.evaluate("stylecast.framesDecoded()")
        await asyncio.sleep(seconds)
        r = await page.evaluate(
            """async (t0) => {
                const b = stylecast.bench;
                return {
                    latencies: b.latencies, frameTimes: b.frameTimes, sent: b.sent,
                    unreadable: b.unreadable, now: performance.now(),
                    decoded: await stylecast.framesDecoded(),
                    stats: stylecast.statsLog.filter((s) => s.t >= t0),
                    videoSize: [document.getElementById('stylized').videoWidth,
                                document.getElementById('stylized').videoHeight],
                    rtt: stylecast.rttMs,
                };
            }""",
            t0,
        )
        if screenshots is not None:
            await page.screenshot(path=str(screenshots / f"e2e-{size}.png"))
    finally:
        await context.close()

    elapsed_s = (r["now"] - t0) / 1000.0
    frames = r["frameTimes"]
    fps_page = (len(frames) - 1) / ((frames[-1] - frames[0]) / 1000.0) if len(frames) > 2 else 0.0
    lat = r["latencies"]
    stats = r["stats"]
    dropped = [s.get("dropped") for s in stats if isinstance(s.get("dropped"), int | float)]
    return {
        "size": size,
        "seconds": round(elapsed_s, 2),
        "fps_page": round(fps_page, 2),
        "frames_presented": len(frames),
        "frames_decoded": (r["decoded"] or 0) - (decoded0 or 0),
        "fps_decoded": round(((r["decoded"] or 0) - (decoded0 or 0)) / elapsed_s, 2),
        "frames_sent": r["sent"],
        "sent_fps": round(r["sent"] / elapsed_s, 2),
        "latency_ms_p50": percentile(lat, 50),
        "latency_ms_p90": percentile(lat, 90),
        "latency_ms_mean": round(statistics.fmean(lat), 1) if lat else None,
        "latency_samples": len(lat),
        "unreadable_frames": r["unreadable"],
        "received_video_size": r["videoSize"],
        "data_channel_rtt_ms": round(r["rtt"], 1) if r["rtt"] is not None else None,
        "server_fps_in": median_of(stats, "fps_in"),
        "server_fps_out": median_of(stats, "fps_out"),
        "server_infer_ms": median_of(stats, "infer_ms"),
        "server_dropped": (max(dropped) - min(dropped)) if len(dropped) > 1 else None,
        "server_resolution": stats[-1].get("resolution") if stats else None,
        "server_stage_ms": stage_medians(stats),
        "stats_samples": len(stats),
    }


def fmt(v: Any, nd: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def print_table(rows: list[dict[str, Any]]) -> None:
    cols = [
        ("size", "size"),
        ("fps_decoded", "decoded fps"),
        ("fps_page", "shown fps"),
        ("latency_ms_p50", "p50 ms"),
        ("latency_ms_p90", "p90 ms"),
        ("latency_samples", "stamps"),
        ("unreadable_frames", "unread"),
        ("sent_fps", "sent fps"),
        ("server_fps_in", "srv in"),
        ("server_fps_out", "srv out"),
        ("server_infer_ms", "infer ms"),
        ("server_dropped", "dropped"),
    ]
    table = [[h for _, h in cols]] + [[fmt(r.get(k)) for k, _ in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    for j, row in enumerate(table):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        if j == 0:
            print("  ".join("-" * w for w in widths))
    for r in rows:
        if r["size"] == "auto":
            print(f"auto: the server processed at {r['server_resolution']} (last stats message)")
        if r["server_stage_ms"]:
            stages = ", ".join(f"{k} {v} ms" for k, v in r["server_stage_ms"].items())
            print(f"{r['size']} server stages (median): {stages}")


# ----------------------------------------------------------------------------- frame profile


def frame_profile(model: Path, backend_name: str, size: str, codec: str, frames: int = 40) -> dict[str, float]:
    """Where one frame's time goes on the server, stage by stage, with the server's own libraries.

    Median ms over ``frames`` moving frames (after a few warm-up frames): decode (aiortc's
    VP8/H264 decoder), yuv -> rgb24, inference (``backend.stylize``), rgb24 -> frame, encode
    (aiortc's encoder at its default bitrate). Run in this process with nothing else
    streaming, so it shows the cost of each stage, not the contention of a live session.
    """
    import fractions

    import av
    import cv2
    import numpy as np
    from aiortc.codecs import h264, vpx
    from aiortc.jitterbuffer import JitterFrame

    from engines.runtime import load_backend

    w, h = parse_size(size)
    backend = load_backend(model, backend=backend_name)
    weights = np.zeros(len(backend.styles), np.float32)
    weights[0] = 1.0
    if codec == "h264":
        encoder: Any = h264.H264Encoder()
        decoder: Any = h264.H264Decoder()
        depayload = h264.H264PayloadDescriptor.parse
    else:
        encoder, decoder = vpx.Vp8Encoder(), vpx.Vp8Decoder()
        depayload = None
    # A smooth texture that moves every frame (codecs do little work on a still picture).
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.integers(0, 255, (h, w * 2, 3), np.uint8), (0, 0), 6)
    times: dict[str, list[float]] = {k: [] for k in ("decode", "to_rgb", "infer", "to_frame", "encode")}
    warmup = 5
    try:
        for i in range(frames + warmup):
            src = av.VideoFrame.from_ndarray(np.ascontiguousarray(texture[:, i * 4 : i * 4 + w]), format="rgb24")
            src.pts, src.time_base = i * 3000, fractions.Fraction(1, 90000)
            payloads, ts = encoder.encode(src)  # what the browser would send
            if depayload is None:
                data = b"".join(vpx.vp8_depayload(pl) for pl in payloads)
            else:
                data = b"".join(depayload(pl)[1] for pl in payloads)
            t0 = time.perf_counter()
            decoded = decoder.decode(JitterFrame(data=data, timestamp=ts))
            t1 = time.perf_counter()
            if not decoded:
                continue
            rgb = decoded[0].to_ndarray(format="rgb24")
            t2 = time.perf_counter()
            out = backend.stylize(rgb, weights)
            t3 = time.perf_counter()
            frame = av.VideoFrame.from_ndarray(out, format="rgb24")
            frame.pts, frame.time_base = src.pts, src.time_base
            t4 = time.perf_counter()
            encoder.encode(frame)
            t5 = time.perf_counter()
            if i >= warmup:
                for k, a, b in (
                    ("decode", t0, t1),
                    ("to_rgb", t1, t2),
                    ("infer", t2, t3),
                    ("to_frame", t3, t4),
                    ("encode", t4, t5),
                ):
                    times[k].append((b - a) * 1000.0)
    finally:
        backend.close()
    result = {k: round(statistics.median(v), 2) for k, v in times.items() if v}
    result["total"] = round(sum(result.values()), 2)
    return result


def print_profile(profile: dict[str, dict[str, float]], codec: str) -> None:
    stages = ["decode", "to_rgb", "infer", "to_frame", "encode", "total"]
    print(f"\nframe profile, ms per frame (median; {codec}, one frame at a time, nothing else streaming)")
    table = [["size", *stages]] + [[size, *(fmt(p.get(s), 2) for s in stages)] for size, p in profile.items()]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for j, row in enumerate(table):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        if j == 0:
            print("  ".join("-" * w for w in widths))


# ----------------------------------------------------------------------------- CLI


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    if args.screenshots is not None:
        args.screenshots.mkdir(parents=True, exist_ok=True)
    # Other jobs on the machine inflate every number: record how busy it was.
    load_before = list(os.getloadavg())
    # "auto": the server's own choice (auto resolution) for the 640x480 camera, reported as server_resolution.
    sizes = [
        "auto" if part.strip().lower() == "auto" else format_size(parse_size(part))
        for part in args.sizes.split(",")
        if part.strip()
    ]
    results: list[dict[str, Any]] = []

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            async with _server(args) as (url, backend_name):
                for size in sizes:
                    log.info("measuring %s for %.0f s (after %.0f s warm-up)", size, args.seconds, args.warmup)
                    results.append(
                        await measure(
                            browser, url, size, args.seconds, args.warmup, args.codec, args.strength, args.screenshots
                        )
                    )
        finally:
            await browser.close()

    profile: dict[str, dict[str, float]] = {}
    if args.profile and not args.url:
        for size in (s for s in sizes if s != "auto"):
            log.info("frame profile at %s", size)
            profile[size] = frame_profile(args.model, args.backend, size, args.codec)

    return {
        "bench": "e2e",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python -m bench.e2e " + " ".join(sys.argv[1:]),
        "model": None if args.url else str(args.model),
        "backend": backend_name,
        "cpu": cpu_summary(),
        "codec": args.codec,
        "strength": args.strength,
        "note": args.note,
        "load_average_before": load_before,
        "load_average_after": list(os.getloadavg()),
        "camera": "Chromium fake device, 640x480 at 30 fps (bench mode: stamped canvas at the chosen size)",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
        "results": results,
        "frame_profile_ms": profile,
    }


@asynccontextmanager
async def _server(args: argparse.Namespace) -> AsyncIterator[tuple[str, str]]:
    """(url, backend name) of the server to measure: ``--url``'s (from its /api/info), or one in this process."""
    if not args.url:
        from bench.loopback import local_server

        async with local_server(args.model, args.backend) as srv:
            yield srv.url, f"{srv.backend.name} {srv.backend.precision}"
        return
    from aiohttp import ClientSession

    url = args.url.rstrip("/")
    async with ClientSession() as s, s.get(f"{url}/api/info") as resp:
        info = await resp.json()
    backend = info.get("backend") or {}
    yield url, f"{backend.get('name', '?')} {backend.get('precision', '')}".strip()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.e2e",
        description="End-to-end fps and glass-to-glass latency through headless Chromium.",
    )
    p.add_argument(
        "--sizes",
        default="320x240,640x480",
        help="processing resolutions to measure, comma-separated, or auto (the server chooses; the size it "
        "settles on is reported) (default: 320x240,640x480)",
    )
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds per resolution (default: 20)")
    p.add_argument(
        "--warmup", type=float, default=5.0, help="seconds streamed before measuring, not counted (default: 5)"
    )
    p.add_argument(
        "--model",
        type=Path,
        default=DEFAULT_MODEL,
        help="ONNX model for the in-process server (default: engines/models/default.onnx)",
    )
    p.add_argument("--backend", default="auto", help="inference backend for the in-process server (default: auto)")
    p.add_argument("--url", default=None, help="bench a running server at this URL instead of starting one")
    p.add_argument(
        "--codec", choices=["vp8", "h264"], default="vp8", help="video codec the page puts first (default: vp8)"
    )
    p.add_argument("--strength", type=float, default=None, help="style strength 0..1 set before measuring (default: 1)")
    p.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time each stage of one frame in-process: decode, yuv->rgb, infer, rgb->frame, encode "
        "(default: on; not with --url)",
    )
    p.add_argument("--note", default=None, help="free text stored in the JSON (e.g. what the model is)")
    p.add_argument("--screenshots", type=Path, default=None, help="also save a screenshot of the page per size here")
    p.add_argument("--chromium", default=CHROMIUM, help="Chromium executable (default: /usr/bin/chromium)")
    p.add_argument(
        "--json",
        type=Path,
        default=RESULTS_DIR / "e2e.json",
        help="JSON output file (default: bench/results/e2e.json)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.url and not args.model.is_file():
        p.error(f"model not found: {args.model} (pass --model PATH.onnx)")
    if not Path(args.chromium).exists():
        p.error(f"Chromium not found at {args.chromium} (apt-get install chromium)")

    report = asyncio.run(run(args))
    print()
    print(
        f"end to end: backend {report['backend']}, codec {report['codec']}, "
        f"{report['machine']['cpus']} CPUs, Chromium on the same machine, "
        f"load average {report['load_average_before'][0]:.1f} before / {report['load_average_after'][0]:.1f} after"
    )
    print_table(report["results"])
    if report["frame_profile_ms"]:
        print_profile(report["frame_profile_ms"], report["codec"])
    print(f"\nwrote {write_json(report, args.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
