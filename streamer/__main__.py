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

from common.cli import add_options, from_args
from common.paths import DEFAULT_MODEL
from streamer.config import StreamerConfig

log = logging.getLogger("streamer")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m streamer",
        description="Real-time style transfer for browser webcams over WebRTC (aiohttp + aiortc).",
        epilog=__doc__.split("\n\n")[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(p, StreamerConfig)
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # aioice/aiortc log every candidate pair at INFO.
        for noisy in ("aioice", "aiortc"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        config = from_args(StreamerConfig, args)
    except ValueError as e:
        parser.error(str(e))
    if config.model_path == DEFAULT_MODEL and not DEFAULT_MODEL.is_file():
        log.error("the shipped default model %s is missing; pass --model PATH (a stylecast .onnx file)", DEFAULT_MODEL)
        return 2

    # Imported here so --help works without the serving stack installed.
    from aiohttp import web

    from engines.runtime import EngineError, load_backend
    from streamer.app import create_app

    try:
        backend = load_backend(
            config.model_path, backend=config.backend, num_threads=config.num_threads, precision=config.precision
        )
    except EngineError as e:
        log.error("cannot load %s on backend %r: %s", config.model_path, config.backend, e)
        return 2
    log.info("backend %s: %s", backend.name, backend.reason)
    log.info("precision %s", backend.precision_reason)
    log.info("model %s: %d styles (%s)", config.model_path, len(backend.styles), ", ".join(backend.styles))
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
