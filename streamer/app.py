"""The aiohttp application: the page, signalling, control, /health and /metrics.

``create_app(config, backend)`` builds everything (no module-level state): the
shared inference worker starts with the app and stops with it, and shutdown
tells every page, then closes every peer connection. With ``config.token`` set,
the API, the thumbnails and (unless ``public_metrics``) ``/metrics`` need it
(``streamer.security``); ``/health`` answers everyone but names no sessions or
paths without it. Routes::

    GET  /                 the page (static/index.html)
    GET  /static/...       the page's files
    GET  /api/info         styles (with thumbnail URLs), presets, backend, resolutions ("auto" first)
    GET  /styles/{i}.jpg   painting thumbnail of style i (404 if the model ships none)
    POST /offer            {"sdp", "type": "offer"} -> {"sdp", "type": "answer", "session"}
    GET  /health           JSON: status; with the token also backend and why, model and styles, sessions
    GET  /metrics          Prometheus text
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from engines.runtime.base import Backend
from streamer import metrics
from streamer.config import AUTO_RESOLUTION, StreamerConfig
from streamer.counters import Counters
from streamer.mixer import Preset, build_presets
from streamer.security import KeyedBuckets, presented_token, token_matches
from streamer.session import OfferError, Session
from streamer.worker import InferenceWorker

log = logging.getLogger(__name__)


class Server:
    """Everything one running app holds: config, backend, worker, sessions."""

    def __init__(self, config: StreamerConfig, backend: Backend) -> None:
        self.config = config
        self.backend = backend
        self.styles = list(backend.styles)
        self.presets: list[Preset] = build_presets(self.styles)
        self.worker = InferenceWorker(backend, max_batch=config.max_batch)
        self.sessions: dict[str, Session] = {}
        self.sessions_started = 0
        self.counters = Counters()  # refusals and drops, server-wide (no session detail)
        self.offers = KeyedBuckets(config.offer_rate, config.offer_burst)  # per client address
        self.shutting_down = False
        self.registry = metrics.registry_for(
            lambda: self.sessions.values(),
            self.worker,
            config.max_sessions,
            lambda: self.sessions_started,
            self.counters,
        )

    # ------------------------------------------------------------------ access

    def authorized(self, request: web.Request) -> bool:
        """Whether the request may see what the token guards (always, where no token is set)."""
        token = self.config.token
        return token is None or token_matches(token, presented_token(request.headers, request.query))

    @web.middleware
    async def guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        path = request.path
        guarded = path == "/offer" or path.startswith(("/api/", "/styles/"))
        guarded = guarded or (path == "/metrics" and not self.config.public_metrics)
        if guarded and not self.authorized(request):
            self.counters.unauthorized += 1
            log.debug("refused %s %s from %s: no or wrong token", request.method, path, request.remote)
            return _error(
                401, "the access token is missing or wrong: open the URL with ?token=... that the server printed"
            )
        return await handler(request)

    @property
    def backend_info(self) -> dict[str, str]:
        b = self.backend
        return {"name": b.name, "precision": b.precision, "reason": b.reason, "precision_reason": b.precision_reason}

    def thumbnail(self, index: int) -> Path | None:
        """The thumbnail file of style ``index``: ``<i>.jpg`` or ``<style name>.jpg``, if present."""
        folder = self.config.thumbnails
        if not 0 <= index < len(self.styles):
            return None
        for name in (f"{index}.jpg", f"{self.styles[index]}.jpg"):
            path = folder / name
            # The style name comes from the model file: never let it leave the folder.
            if path.is_file() and path.resolve().parent == folder.resolve():
                return path
        return None

    # ------------------------------------------------------------------ handlers

    async def index(self, request: web.Request) -> web.StreamResponse:
        page = self.config.static_dir / "index.html"
        if not page.is_file():
            raise web.HTTPNotFound(text=f"the page is missing: {page}")
        return web.FileResponse(page, headers={"Cache-Control": "no-cache"})

    async def info(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "styles": [
                    {"index": i, "name": n, "thumbnail": f"/styles/{i}.jpg" if self.thumbnail(i) else None}
                    for i, n in enumerate(self.styles)
                ],
                "presets": [p.to_json() for p in self.presets],
                "backend": self.backend_info,
                # "auto" first: the page's default choice where the server's default is auto.
                "resolutions": [AUTO_RESOLUTION, *self.config.resolutions],
                "default_resolution": self.config.default_resolution,
                "max_message_bytes": self.config.max_message_bytes,
                "transition_ms": self.config.transition_ms,
                # STUN/TURN for the page's RTCPeerConnection (behind the token, with TURN credentials)
                "ice_servers": self.config.ice_server_list(),
            }
        )

    async def style_thumbnail(self, request: web.Request) -> web.StreamResponse:
        try:
            index = int(request.match_info["index"])
        except ValueError:
            raise web.HTTPNotFound() from None
        path = self.thumbnail(index)
        if path is None:
            raise web.HTTPNotFound(text=f"no thumbnail for style {index}")
        return web.FileResponse(path, headers={"Cache-Control": "max-age=3600"})

    def pending(self) -> int:
        """Sessions answered whose peer has not connected yet."""
        return sum(1 for s in self.sessions.values() if not s.closed and s.pc.connectionState != "connected")

    async def offer(self, request: web.Request) -> web.Response:
        # Cheap refusals first, before the body is read.
        if self.shutting_down:
            return _error(503, "the server is shutting down")
        client = request.remote or "?"
        if not self.offers.take(client):
            self.counters.offers_limited += 1
            wait = max(1, round(self.offers.wait_s(client) + 0.5))
            resp = _error(429, f"too many connection attempts from {client}: try again in {wait} s")
            resp.headers["Retry-After"] = str(wait)
            return resp
        if self.pending() >= self.config.max_pending:
            self.counters.offers_limited += 1
            return _error(503, f"{self.config.max_pending} connections are being set up already; try again shortly")
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as e:
            return _error(400, f"the body must be JSON {{'sdp': ..., 'type': 'offer'}}: {e}")
        if not isinstance(body, dict) or not isinstance(body.get("sdp"), str) or body.get("type") != "offer":
            return _error(400, "the body must be JSON {'sdp': <string>, 'type': 'offer'}")
        if len(self.sessions) >= self.config.max_sessions:
            return _error(
                503,
                f"the server is full: {len(self.sessions)} of {self.config.max_sessions} sessions in use "
                "(--max-sessions); try again when one ends",
            )
        session = Session(
            self.config,
            self.worker,
            self.styles,
            self.presets,
            self.backend.name,
            on_closed=self._forget,
            counters=self.counters,
        )
        # Registered before the first await, so concurrent offers count against the limit.
        self.sessions[session.id] = session
        try:
            answer = await session.answer(body["sdp"], body["type"])
        except OfferError as e:
            await session.close()
            return _error(400, str(e))
        except Exception as e:
            await session.close()
            log.exception("answering an offer failed")
            return _error(500, f"could not answer the offer: {type(e).__name__}: {e}")
        self.sessions_started += 1
        log.info("session %s started (%d of %d)", session.id, len(self.sessions), self.config.max_sessions)
        return web.json_response({"sdp": answer.sdp, "type": answer.type, "session": session.id})

    async def health(self, request: web.Request) -> web.Response:
        status = "shutting down" if self.shutting_down else "ok"
        if not self.authorized(request):  # for a load balancer: alive or not, nothing more
            return web.json_response({"status": status})
        # {} for in-process backends; a remote one asks its server (blocking, up to its timeout): off the loop
        remote = await asyncio.get_running_loop().run_in_executor(None, self.backend.status)
        # a remote backend's model lives on the server: name it there, not by a local path it never read
        where = {"path": str(self.config.model_path)}
        if remote:
            where = {"server": f"{remote['url']} model {remote['model']}"}
        return web.json_response(
            {
                "status": status,
                "backend": self.backend_info,
                "model": {**where, "styles": self.styles},
                "sessions": len(self.sessions),
                "max_sessions": self.config.max_sessions,
                **({"inference_server": remote} if remote else {}),
            }
        )

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(self.registry), headers={"Content-Type": metrics.CONTENT_TYPE})

    # ------------------------------------------------------------------ lifecycle

    def _forget(self, session: Session) -> None:
        self.sessions.pop(session.id, None)

    async def close_all(self) -> None:
        """Close every peer connection."""
        sessions = list(self.sessions.values())
        if sessions:
            log.info("closing %d session(s)", len(sessions))
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)

    async def shutdown(self) -> None:
        """Refuse new offers, tell every page, give the message a moment, close (the app's on_shutdown)."""
        self.shutting_down = True
        told = [
            s for s in self.sessions.values() if s.say({"type": "shutdown", "message": "the server is shutting down"})
        ]
        if told:
            log.info("told %d page(s) the server is shutting down", len(told))
            await asyncio.sleep(self.config.shutdown_grace_s)
        await self.close_all()

    async def worker_context(self, app: web.Application) -> AsyncIterator[None]:
        self.worker.start()
        yield
        await self.close_all()
        # Joining waits for the frame in progress; keep the loop free meanwhile.
        await asyncio.get_running_loop().run_in_executor(None, self.worker.stop)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


SERVER_KEY = web.AppKey("stylecast_server", Server)


def create_app(config: StreamerConfig, backend: Backend) -> web.Application:
    """The stylecast web application for an already loaded ``backend``.

    The caller owns the backend (closes it after the app has shut down). The
    server object is at ``app[SERVER_KEY]`` (sessions, worker, counters).
    """
    server = Server(config, backend)
    app = web.Application(client_max_size=1024 * 1024, middlewares=[server.guard])  # an SDP offer is a few kB
    app[SERVER_KEY] = server
    app.router.add_get("/", server.index)
    app.router.add_get("/api/info", server.info)
    app.router.add_get("/styles/{index}.jpg", server.style_thumbnail)
    app.router.add_post("/offer", server.offer)
    app.router.add_get("/health", server.health)
    app.router.add_get("/metrics", server.metrics)
    if config.static_dir.is_dir():
        app.router.add_static("/static", config.static_dir)
    else:
        log.warning("no static folder %s: the page will not be served", config.static_dir)
    app.on_shutdown.append(lambda _app: server.shutdown())
    app.cleanup_ctx.append(server.worker_context)
    return app
