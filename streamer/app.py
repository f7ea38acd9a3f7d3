"""The aiohttp application: the page, signalling, control, /health and /metrics.

``create_app(config, backend)`` builds everything (no module-level state): the
shared inference worker starts with the app and stops with it, and shutdown
tells every page, then closes every peer connection. Every request must name
this server in its Host, and a state-changing one with an Origin must come from
this server's page or an ``--allowed-origin`` (``streamer.security.AccessPolicy``:
no page on another site can drive a local server). With ``config.token`` set,
the API, the thumbnails and (unless ``public_metrics``) ``/metrics`` need it
(``streamer.security``); ``/health`` answers everyone but names no sessions or
paths without it. Bodies are bounded before they are parsed (``streamer.sdp``).
Routes::

    GET  /                 the page (static/index.html)
    GET  /static/...       the page's files
    GET  /api/info         styles (with thumbnail URLs), presets, backend, strokes, resolutions ("auto" first)
    GET  /styles/{i}.jpg   painting thumbnail of style i (404 if the model ships none)
    ...  /api/styles...    learning a user's painting, deleting a learned style (streamer.styles_api)
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

from engines.runtime import load_backend
from engines.runtime.base import Backend, EngineError
from engines.runtime.versions import ModelVersion
from streamer import allocator, metrics
from streamer.config import AUTO_RESOLUTION, StreamerConfig
from streamer.counters import Counters
from streamer.learning import parse_index, training_unavailable
from streamer.sdp import MAX_BODY_BYTES, BoundsError, check_sdp, read_bounded, require_type
from streamer.security import STATE_CHANGING, AccessPolicy, KeyedBuckets, presented_token, token_matches
from streamer.served import ServedModel
from streamer.session import OfferError, Session
from streamer.styles_api import StylesApi
from streamer.whip import WhipApi
from streamer.worker import InferenceWorker

log = logging.getLogger(__name__)


class Server:
    """Everything one running app holds: config, the served model, worker, sessions, the styles API."""

    def __init__(self, config: StreamerConfig, backend: Backend) -> None:
        self.config = config
        # What is served now: replaced whole when a version swaps in (serve()), read by every session.
        self.model = ServedModel.load(
            backend, Path(config.model_path), config.thumbnails, remote=config.backend == "triton"
        )
        self.worker = InferenceWorker(backend, max_batch=config.max_batch)
        self.sessions: dict[str, Session] = {}
        self.sessions_started = 0
        self.counters = Counters()  # refusals and drops, server-wide (no session detail)
        self.offers = KeyedBuckets(config.offer_rate, config.offer_burst)  # per client address
        self.access = AccessPolicy.for_server(config.host, config.allowed_hosts, config.allowed_origins)
        self.shutting_down = False
        self._original = backend  # the caller's: closed by the caller, never here
        self.styles_api = StylesApi(config, lambda: self.model, self.publish, self.counters, self._new_styles_off())
        self.whip = WhipApi(self)  # WHIP publishers are sessions; their WHEP viewers live here
        self.lag = metrics.LoopLag()
        self.registry = metrics.registry_for(
            lambda: self.sessions.values(),
            self.worker,
            config.max_sessions,
            lambda: self.sessions_started,
            self.counters,
            self.lag,
        )
        self._trimmed = 0.0  # when free heap memory was last given back (allocator.trim)

    # ------------------------------------------------------------------ access

    def authorized(self, request: web.Request) -> bool:
        """Whether the request may see what the token guards (always, where no token is set)."""
        token = self.config.token
        return token is None or token_matches(token, presented_token(request.headers, request.query))

    @web.middleware
    async def boundary(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Host and Origin, before anything else (the token included): the page next door stops here."""
        host = request.headers.get("Host")
        if not self.access.host_allowed(host):
            self.counters.foreign += 1
            log.debug("refused %s %s: foreign Host %r", request.method, request.path, host)
            return _error(403, self.access.refusal(host))
        origin = request.headers.get("Origin")
        own = origin is not None and self.access.same_origin(origin, request.scheme, host or "")
        cross = origin is not None and not own and self.access.cross_origin_allowed(origin)
        if request.method == "OPTIONS" and cross:
            return web.Response(status=204, headers=_cors(origin or "", preflight=True))
        if request.method in STATE_CHANGING and origin is not None and not (own or cross):
            self.counters.foreign += 1
            log.debug("refused %s %s: foreign Origin %r", request.method, request.path, origin)
            return _error(
                403,
                f"a page from {origin} may not change anything on this server: only its own page "
                "(or an origin given with --allowed-origin) may",
            )
        response = await handler(request)
        if cross:
            response.headers.update(_cors(origin or ""))
        return response

    @web.middleware
    async def guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        path = request.path
        guarded = path == "/offer" or path.startswith(("/api/", "/styles/", "/whip", "/whep"))
        guarded = guarded or (path == "/metrics" and not self.config.public_metrics)
        if guarded and not self.authorized(request):
            self.counters.unauthorized += 1
            log.debug("refused %s %s from %s: no or wrong token", request.method, path, request.remote)
            response = _error(
                401,
                "the access token is missing or wrong: open the URL with ?token=... that the server printed, "
                "or send Authorization: Bearer TOKEN",
            )
            response.headers["WWW-Authenticate"] = 'Bearer realm="stylecast"'  # RFC 9725 section 4.5
            return response
        return await handler(request)

    def _new_styles_off(self) -> str | None:
        """Why the page cannot add paintings here, or None when it can."""
        cfg = self.config
        if not cfg.allow_new_styles:
            return "adding paintings is off on this server (start it with --allow-new-styles)"
        if cfg.backend == "triton":
            return "the model is served by a Triton server: add paintings where its model repository is made"
        if self.model.backend.name == "tensorrt":
            # A new version would need a plan of its own, built on this GPU for minutes: not done on the fly.
            return (
                "the model runs on a TensorRT plan, and a new version would need its own "
                "(python -m engines build): adding paintings is off on TensorRT"
            )
        from streamer.security import is_loopback

        if cfg.token is None and not is_loopback(cfg.host):
            return "adding paintings needs an access token on a server other machines can reach (--token)"
        if not self.model.path.with_suffix(".safetensors").is_file():
            return f"the served model {self.model.path.name} has no checkpoint beside it to learn from"
        return training_unavailable()

    async def publish(self, folder: Path) -> int | None:
        """Serve the model version in ``folder`` from the next frame on; every session keeps streaming.

        Loaded off the loop on the running backend kind and precision, so the old styles' pixels
        do not change. Returns the index of the added style (None for a delete).
        """
        version = ModelVersion.read(folder)
        loop = asyncio.get_running_loop()
        backend = await loop.run_in_executor(None, self._load, version.onnx)
        keep = await self.serve(ServedModel.load(backend, version.onnx, version.thumbnails), version.record.change)
        added = [i for i, k in enumerate(keep) if k < 0]
        return added[0] if added else None

    async def serve(self, new: ServedModel, change: str) -> list[int]:
        """The one place the served model changes: the worker runs it from its next batch, the server's
        reference is replaced whole, every session's mix follows. Returns, per new style, its old index
        (or -1 for a new one)."""
        old = self.model
        keep = [old.styles.index(n) if n in old.styles else -1 for n in new.styles]
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.worker.swap, new.backend, keep)
        self.model = new
        styles_json = new.styles_json()
        for session in list(self.sessions.values()):
            session.restyle(list(new.styles), list(new.presets), keep, styles_json, change)
        if old.backend is not self._original and old.backend is not new.backend:
            await loop.run_in_executor(None, old.backend.close)
        log.info("serving %s: %s (%d styles, %s at %s)", new.path, change, len(new.styles), new.backend.name,
                 new.backend.precision)  # fmt: skip
        return keep

    def _load(self, onnx: Path) -> Backend:
        """``onnx`` on the running backend at its precision; where that cannot run it, the config's choice."""
        cfg, running = self.config, self.model.backend
        try:
            return load_backend(onnx, backend=running.name, precision=running.precision, num_threads=cfg.num_threads)
        except (EngineError, ValueError) as e:
            # Said at WARNING: the old styles' pixels may change with the runtime or precision.
            log.warning("the new version cannot run on %s at %s (%s): loading it as configured",
                        running.name, running.precision, e)  # fmt: skip
            return load_backend(onnx, backend=cfg.backend, precision=cfg.precision, num_threads=cfg.num_threads)

    # ------------------------------------------------------------------ handlers

    async def index(self, request: web.Request) -> web.StreamResponse:
        page = self.config.static_dir / "index.html"
        if not page.is_file():
            raise web.HTTPNotFound(text=f"the page is missing: {page}")
        return web.FileResponse(page, headers={"Cache-Control": "no-cache"})

    async def info(self, request: web.Request) -> web.Response:
        model = self.model
        return web.json_response(
            {
                "styles": model.styles_json(),
                "presets": [p.to_json() for p in model.presets],
                "backend": model.backend_info,
                "strokes": list(model.backend.stroke_scale.anchors),  # empty: one brush size, the stroke resamples
                # "auto" first: the page's default choice where the server's default is auto.
                "resolutions": [AUTO_RESOLUTION, *self.config.resolutions],
                "default_resolution": self.config.default_resolution,
                "max_message_bytes": self.config.max_message_bytes,
                "transition_ms": self.config.transition_ms,
                # STUN/TURN for the page's RTCPeerConnection (behind the token, with TURN credentials)
                "ice_servers": self.config.ice_server_list(),
                "new_styles": self.styles_api.info(),
            }
        )

    async def style_thumbnail(self, request: web.Request) -> web.StreamResponse:
        index = parse_index(request.match_info["index"])
        if index is None:
            raise web.HTTPNotFound()
        path = self.model.thumbnail(index)
        if path is None:
            raise web.HTTPNotFound(text=f"no thumbnail for style {index}")
        return web.FileResponse(path, headers={"Cache-Control": "max-age=3600"})

    def full(self) -> str | None:
        """Why no session can start now (503), or None."""
        if len(self.sessions) >= self.config.max_sessions:
            return (
                f"the server is full: {len(self.sessions)} of {self.config.max_sessions} sessions in use "
                "(--max-sessions); try again when one ends"
            )
        return None

    def new_session(self, kind: str = "page") -> Session:
        """A session of ``kind``, registered at once, before any await: concurrent offers count against the limit."""
        session = Session(
            self.config, self.worker, lambda: self.model, on_closed=self._forget, counters=self.counters, kind=kind
        )
        self.sessions[session.id] = session
        return session

    def pending(self) -> int:
        """Connections answered whose peer has not connected yet: sessions, and WHEP viewers."""
        sessions = sum(1 for s in self.sessions.values() if not s.closed and s.pc.connectionState != "connected")
        return sessions + self.whip.pending()

    def admit(self, request: web.Request) -> web.Response | None:
        """The cheap refusals of a new connection (a page's, a WHIP publisher's or a WHEP viewer's),
        before its body is read: shutting down, too many attempts from this client, too many
        connections being set up. None: go on."""
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
        return None

    async def offer(self, request: web.Request) -> web.Response:
        if refused := self.admit(request):
            return refused
        try:
            require_type(request, "application/json")
            raw = await read_bounded(request, MAX_BODY_BYTES)
            body = json.loads(raw)
            if not isinstance(body, dict) or not isinstance(body.get("sdp"), str) or body.get("type") != "offer":
                return _error(400, "the body must be JSON {'sdp': <string>, 'type': 'offer'}")
            check_sdp(body["sdp"])
        except BoundsError as e:
            self.counters.oversized += e.status == 413
            return _error(e.status, str(e))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError) as e:
            return _error(400, f"the body must be JSON {{'sdp': ..., 'type': 'offer'}}: {e}")
        if full := self.full():
            return _error(503, full)
        session = self.new_session()
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
        model = self.model
        remote = await asyncio.get_running_loop().run_in_executor(None, model.backend.status)
        # a remote backend's model lives on the server: name it there, not by a local path it never read
        where = {"path": str(model.path)}
        if remote:
            where = {"server": f"{remote['url']} model {remote['model']}"}
        return web.json_response(
            {
                "status": status,
                "backend": model.backend_info,
                "model": {**where, "styles": list(model.styles)},
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
        # A session's codecs and frames are freed now: give the free pages back (at most every 10 s).
        loop = asyncio.get_running_loop()
        if loop.time() - self._trimmed > 10.0:
            self._trimmed = loop.time()
            loop.run_in_executor(None, allocator.trim)

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
        await self.styles_api.start()
        self.worker.start()
        lag = asyncio.get_running_loop().create_task(self.lag.run(), name="stylecast-loop-lag")
        yield
        lag.cancel()
        await self.styles_api.close()
        await self.close_all()
        # Joining waits for the frame in progress; keep the loop free meanwhile.
        await asyncio.get_running_loop().run_in_executor(None, self.worker.stop)
        if self.model.backend is not self._original:
            self.model.backend.close()  # a version this server swapped in


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _cors(origin: str, preflight: bool = False) -> dict[str, str]:
    """CORS headers for an ``--allowed-origin`` (never sent to any other origin)."""
    headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    if preflight:
        headers.update(
            {
                "Access-Control-Allow-Methods": "GET, POST, PATCH, DELETE",
                "Access-Control-Allow-Headers": "Authorization, Content-Type, X-Stylecast-Token, If-Match",
                "Access-Control-Expose-Headers": "Location, Link, ETag",
                "Access-Control-Max-Age": "600",
            }
        )
    else:
        headers["Access-Control-Expose-Headers"] = "Location, Link, ETag"
    return headers


SERVER_KEY = web.AppKey("stylecast_server", Server)


def create_app(config: StreamerConfig, backend: Backend) -> web.Application:
    """The stylecast web application for an already loaded ``backend``.

    The caller owns the backend (closes it after the app has shut down). The
    server object is at ``app[SERVER_KEY]`` (sessions, worker, counters).
    """
    server = Server(config, backend)
    # Host and Origin first, then the token; an SDP offer is a few kB (streamer.sdp bounds it further).
    app = web.Application(client_max_size=1024 * 1024, middlewares=[server.boundary, server.guard])
    app[SERVER_KEY] = server
    app.router.add_get("/", server.index)
    app.router.add_get("/api/info", server.info)
    app.router.add_get("/styles/{index}.jpg", server.style_thumbnail)
    server.styles_api.add_routes(app)
    server.whip.add_routes(app)
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
