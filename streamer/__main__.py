"""Serve the stylecast page and WebRTC stylization.

    python -m streamer                                   # http://127.0.0.1:8080, the shipped model
    python -m streamer --host 0.0.0.0 --port 8443        # reachable from the local network
    python -m streamer --model my.onnx --backend openvino # another model / runtime
    python -m streamer --max-sessions 2 --transition-ms 500
    python -m streamer --default-resolution 640x480      # a fixed size instead of auto
    python -m streamer --ice-server stun:stun.example.org:3478   # peers behind NAT
    python -m streamer --host 0.0.0.0 --port 8443 --self-signed --token generate   # for phones on the LAN
    python -m streamer --backend triton --triton-url grpc://127.0.0.1:8001         # inference on a Triton server
    python -m streamer --allow-new-styles                # the page learns a dropped painting in ~3 min

Open the URL in a browser (localhost, or https elsewhere: browsers only give the
camera to secure origins), press "Start camera". ``/health`` and ``/metrics`` are
for monitoring. Ctrl-C closes every peer and stops.
"""

from __future__ import annotations

import argparse
import logging
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from common.cli import add_options, from_args
from common.paths import DEFAULT_MODEL
from engines.runtime.base import Backend
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
        config = secure(config)
    except ValueError as e:
        parser.error(str(e))
    if config.backend != "triton" and config.model_path == DEFAULT_MODEL and not DEFAULT_MODEL.is_file():
        log.error("the shipped default model %s is missing; pass --model PATH (a stylecast .onnx file)", DEFAULT_MODEL)
        return 2

    from streamer import allocator

    log.info(allocator.tune())  # before the threads start: they take their arenas on first use

    # Imported here so --help works without the serving stack installed.
    from aiohttp import web

    from engines.runtime import EngineError
    from streamer.app import create_app

    try:
        ssl_context = tls_context(config)
    except (OSError, ValueError) as e:
        log.error("cannot use the TLS certificate: %s", e)
        return 2
    try:
        config, backend = load_served(config)
    except EngineError as e:
        log.error("cannot load %s on backend %r: %s", config.model_path, config.backend, e)
        return 2
    log.info("backend %s: %s", backend.name, backend.reason)
    log.info("precision %s", backend.precision_reason)
    source = f"{config.triton_url} model {config.triton_model}" if config.backend == "triton" else config.model_path
    log.info("model %s: %d styles (%s)", source, len(backend.styles), ", ".join(backend.styles))
    try:
        web.run_app(
            create_app(config, backend),
            host=config.host,
            port=config.port,
            ssl_context=ssl_context,
            access_log_class=AccessLog,
            print=lambda _msg: log.info("serving on %s", page_url(config)),
        )
    finally:
        backend.close()
    log.info("stopped")
    return 0


def load_served(config: StreamerConfig) -> tuple[StreamerConfig, Backend]:
    """The newest version of ``--model`` loaded on the configured backend; where that backend cannot
    load it (a learned version has no TensorRT plan of its own), the model as given, with a warning
    that says why. A restart never leaves a backend pointed at a model it cannot run."""
    from engines.runtime import EngineError, ModelFileError, load_backend

    def load(c: StreamerConfig) -> Backend:
        return load_backend(
            c.model_path,
            backend=c.backend,
            num_threads=c.num_threads,
            precision=c.precision,
            triton_url=c.triton_url,
            triton_model=c.triton_model,
            triton_timeout_s=c.triton_timeout_s,
            triton_shared_memory=c.triton_shared_memory,
        )

    newest = newest_version(config)
    if newest is config:
        return config, load(config)
    try:
        return newest, load(newest)
    except (EngineError, ModelFileError) as e:
        log.warning("the newest version %s cannot run on %s (%s): serving %s as given", newest.model_path,
                    config.backend, e, config.model_path)  # fmt: skip
        return config, load(config)


def newest_version(config: StreamerConfig) -> StreamerConfig:
    """The config serving the newest version learned from ``--model`` in ``--models-dir``, if any
    (styles added from the page survive a restart); else the config as it is."""
    import dataclasses

    from engines.runtime.versions import latest

    if config.backend == "triton":
        return config
    version = latest(config.models_dir, Path(config.model_path))
    if version is None:
        return config
    log.info("serving %s (%s; %d styles), the newest version learned from %s",
             version.folder, version.record.change, len(version.record.styles), config.model_path)  # fmt: skip
    return dataclasses.replace(config, model_path=version.onnx)


def secure(config: StreamerConfig) -> StreamerConfig:
    """The config with its secrets settled: --token, else $STYLECAST_TOKEN ('generate' makes one);
    --ice-credential, else $STYLECAST_ICE_CREDENTIAL.

    Refuses (ValueError) a non-loopback address without a token, unless --no-auth.
    """
    import dataclasses
    import os
    import secrets

    from streamer.security import is_loopback

    token = config.token or os.environ.get("STYLECAST_TOKEN") or None
    if token == "generate":
        token = secrets.token_urlsafe(18)
    if token is None and not is_loopback(config.host) and not config.no_auth:
        raise ValueError(
            f"--host {config.host} lets other machines in: give an access token (--token TOKEN, --token generate "
            "or STYLECAST_TOKEN), or pass --no-auth to serve without one"
        )
    if token is not None and config.no_auth:
        raise ValueError("--no-auth and a token contradict each other: leave one out")
    credential = config.ice_credential or os.environ.get("STYLECAST_ICE_CREDENTIAL") or None
    return dataclasses.replace(config, token=token, ice_credential=credential)


def tls_context(config: StreamerConfig) -> ssl.SSLContext | None:
    """The server's TLS context for --cert/--key or --self-signed; None for plain http."""
    if not config.tls:
        return None
    from streamer.security import self_signed, warn_if_readable_by_others

    cert, key = config.cert, config.key
    if config.self_signed:
        cert, key, made = self_signed(config.tls_dir)
        log.info("%s self-signed certificate %s", "made a" if made else "reusing the", cert)
    assert cert is not None and key is not None
    for what, path in (("--cert", cert), ("--key", key)):
        if not Path(path).is_file():
            raise ValueError(f"{what} {path}: no such file")
    warn_if_readable_by_others(Path(key))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as e:
        raise ValueError(f"cannot use the certificate {cert} with the key {key}: {e}") from e
    return context


def page_url(config: StreamerConfig) -> str:
    """The URL to open, with the token (the page keeps it and takes it out of the address bar)."""
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
    if config.host in ("0.0.0.0", "::"):
        from streamer.security import machine_names

        lan = [a for a in machine_names()[1] if "." in a and not a.startswith("127.")]
        host = lan[0] if lan else host
    url = f"{'https' if config.tls else 'http'}://{host}:{config.port}/"
    return url + (f"?token={config.token}" if config.token else "")


class AccessLog(AbstractAccessLogger):
    """One line per request, without query strings: the page's first load carries the token."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %s %s %.1f ms', request.remote, request.method, request.path, response.status,
            response.body_length, time * 1000,
        )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
