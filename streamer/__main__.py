"""Serve the stylecast page and WebRTC stylization.

    python -m streamer                                   # http://127.0.0.1:8080, the shipped model
    python -m streamer --host 0.0.0.0 --port 8443        # reachable from the local network
    python -m streamer --model my.onnx --backend openvino # another model / runtime
    python -m streamer --max-sessions 2 --transition-ms 500
    python -m streamer --default-resolution 640x480      # a fixed size instead of auto
    python -m streamer --ice-server stun:stun.example.org:3478   # peers behind NAT

Open the URL in a browser (localhost, or https elsewhere: browsers only give the
camera to secure origins), press "Start camera". ``/health`` and ``/metrics`` are
for monitoring. Ctrl-C closes every peer and stops.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from streamer.config import AUTO_RESOLUTION, DEFAULT_MODEL, StreamerConfig, parse_resolution

log = logging.getLogger("streamer")

BACKENDS = ("auto", "openvino", "onnxruntime", "torch", "tensorrt")


def _resolution(text: str) -> str:
    try:
        w, h = parse_resolution(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return f"{w}x{h}"


def _resolution_or_auto(text: str) -> str:
    return AUTO_RESOLUTION if text.strip().lower() == AUTO_RESOLUTION else _resolution(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m streamer",
        description="Real-time style transfer for browser webcams over WebRTC (aiohttp + aiortc).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8080, help="TCP port to listen on")
    p.add_argument(
        "--model",
        type=Path,
        default=DEFAULT_MODEL,
        help="stylecast model (.onnx, or a .safetensors checkpoint for --backend torch)",
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="inference runtime; auto picks the fastest available and logs why",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads for inference (default: all cores)")
    p.add_argument("--max-sessions", type=int, default=4, help="peers served at once; further offers get HTTP 503")
    p.add_argument(
        "--resolutions",
        type=_resolution,
        nargs="+",
        default=["320x240", "640x480", "1280x720"],
        help="processing resolutions the page offers (WIDTHxHEIGHT, pixels); frames are scaled down to fit",
    )
    p.add_argument(
        "--default-resolution",
        type=_resolution_or_auto,
        default=AUTO_RESOLUTION,
        help="processing resolution a session starts at (WIDTHxHEIGHT), or auto: the largest of --resolutions "
        "this machine stylizes at the camera's frame rate, chosen per session from measured frame times",
    )
    p.add_argument(
        "--auto-budget",
        type=float,
        default=0.7,
        help="auto resolution: fraction (0..1] of the camera's frame interval inference may take; "
        "the rest is for video decoding, encoding and the browser",
    )
    p.add_argument(
        "--transition-ms",
        type=int,
        default=300,
        help="milliseconds a style or strength change takes to blend in (a client may ask for 0..5000)",
    )
    p.add_argument("--max-batch", type=int, default=4, help="most frames (from different peers) per network call")
    p.add_argument("--max-message-bytes", type=int, default=4096, help="longest control message accepted, in bytes")
    p.add_argument(
        "--ice-server",
        action="append",
        default=[],
        metavar="URL",
        help="STUN/TURN server URL offered to WebRTC (repeatable); none by default (host candidates only)",
    )
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # aioice/aiortc log every candidate pair at INFO.
        for noisy in ("aioice", "aiortc"):
            logging.getLogger(noisy).setLevel(logging.WARNING)

    model = args.model
    if model == DEFAULT_MODEL and not model.is_file():
        log.error("the shipped default model %s is missing; pass --model PATH (a stylecast .onnx file)", model)
        return 2
    try:
        config = StreamerConfig(
            host=args.host,
            port=args.port,
            model_path=model,
            backend=args.backend,
            max_sessions=args.max_sessions,
            resolutions=tuple(args.resolutions),
            default_resolution=args.default_resolution,
            auto_budget=args.auto_budget,
            transition_ms=args.transition_ms,
            max_message_bytes=args.max_message_bytes,
            max_batch=args.max_batch,
            ice_servers=tuple(args.ice_server),
        )
    except ValueError as e:
        log.error("%s", e)
        return 2

    # Imported here so --help works without the serving stack installed.
    from aiohttp import web

    from engines.runtime import EngineError, load_backend
    from streamer.app import create_app

    try:
        backend = load_backend(model, backend=args.backend, num_threads=args.threads)
    except EngineError as e:
        log.error("cannot load %s on backend %r: %s", model, args.backend, e)
        return 2
    log.info("backend %s: %s", backend.name, getattr(backend, "reason", ""))
    log.info("model %s: %d styles (%s)", model, len(backend.styles), ", ".join(backend.styles))
    try:
        web.run_app(
            create_app(config, backend),
            host=config.host,
            port=config.port,
            print=lambda _msg: log.info("serving on http://%s:%d", config.host, config.port),
        )
    finally:
        backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
