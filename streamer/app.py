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
    GET  /api/info         styles (with thumbnail URLs), presets, backend, resolutions ("auto" first)
    GET  /styles/{i}.jpg   painting thumbnail of style i (404 if the model ships none)
    POST /api/styles       multipart image + name: learn a painting (--allow-new-styles) -> 202 {job}
    GET  /api/styles/jobs            every job (queued, running, recent)
    GET  /api/styles/jobs/{id}       state, step, steps, eta_s, queue_position, preview URL, error
    GET  /api/styles/jobs/{id}/preview.jpg   the newest preview frame in the new style
    DELETE /api/styles/jobs/{id}     cancel it
    DELETE /api/styles/{i}           delete learned style i (a job too; shipped styles: 403)
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

from aiohttp import BodyPartReader, web

from engines.runtime import load_backend
from engines.runtime.base import Backend, EngineError
from engines.runtime.versions import ModelVersion, lineage, version_of
from streamer import metrics
from streamer.config import AUTO_RESOLUTION, StreamerConfig
from streamer.counters import Counters
from streamer.learning import (
    MAX_UPLOAD_BYTES,
    Job,
    StyleJobs,
    UploadError,
    check_name,
    parse_index,
    prepare_painting,
    training_unavailable,
)
from streamer.mixer import Preset, build_presets
from streamer.sdp import MAX_BODY_BYTES, BoundsError, check_sdp, read_bounded, require_type
from streamer.security import STATE_CHANGING, AccessPolicy, KeyedBuckets, presented_token, token_matches
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
        self.access = AccessPolicy.for_server(config.host, config.allowed_hosts, config.allowed_origins)
        self.shutting_down = False
        # What is served now; a learned style swaps in a new version (publish()).
        self.model_path = Path(config.model_path)
        self.thumbnails_dir = config.thumbnails
        self.version: ModelVersion | None = version_of(self.model_path)
        self.shipped_styles = self._shipped_styles()
        self._original = backend  # the caller's: closed by the caller, never here
        self.new_styles_off = self._new_styles_off()
        self.jobs = StyleJobs(
            config.models_dir / "jobs",
            config.models_dir,
            lambda: self.model_path,
            self.publish,
            content=config.content_dir,
            steps=config.learn_steps,
            size=config.learn_size,
            threads=config.learn_threads,
            max_queued=config.max_queued_styles,
            per_client=config.max_styles_per_client,
        )
        self.decode_gate = asyncio.Semaphore(1)  # uploads are decoded one at a time (streamer.painting)
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
        folder = self.thumbnails_dir
        if not 0 <= index < len(self.styles):
            return None
        for name in (f"{index}.jpg", f"{self.styles[index]}.jpg"):
            path = folder / name
            # The style name comes from the model file: never let it leave the folder.
            if path.is_file() and path.resolve().parent == folder.resolve():
                return path
        return None

    def _shipped_styles(self) -> int:
        """How many of the served styles came with the shipped model (the rest were learned)."""
        if self.config.backend == "triton" or not self.model_path.is_file():
            return len(self.styles)
        try:
            return lineage(self.model_path)[1]
        except EngineError:
            return len(self.styles)

    def _new_styles_off(self) -> str | None:
        """Why the page cannot add paintings here, or None when it can."""
        cfg = self.config
        if not cfg.allow_new_styles:
            return "adding paintings is off on this server (start it with --allow-new-styles)"
        if cfg.backend == "triton":
            return "the model is served by a Triton server: add paintings where its model repository is made"
        from streamer.security import is_loopback

        if cfg.token is None and not is_loopback(cfg.host):
            return "adding paintings needs an access token on a server other machines can reach (--token)"
        if not self.model_path.with_suffix(".safetensors").is_file():
            return f"the served model {self.model_path.name} has no checkpoint beside it to learn from"
        return training_unavailable()

    def styles_json(self) -> list[dict[str, Any]]:
        v = self.version.record.number if self.version else 0
        return [
            {
                "index": i,
                "name": n,
                # the version in the URL: after a delete, index i is another painting
                "thumbnail": f"/styles/{i}.jpg?v={v}" if self.thumbnail(i) else None,
                "learned": i >= self.shipped_styles,
            }
            for i, n in enumerate(self.styles)
        ]

    async def publish(self, folder: Path) -> int | None:
        """Serve the model version in ``folder`` from the next frame on; every session keeps streaming.

        The new backend is loaded off the loop with the running one's runtime and precision, so
        the old styles' pixels do not change; the worker swaps it in between two batches, and
        every session's mix grows by a zero weight (or loses the deleted style). Returns the
        index of the added style (None for a delete).
        """
        version = ModelVersion.read(folder)
        loop = asyncio.get_running_loop()
        new = await loop.run_in_executor(None, self._load, version.onnx)
        old_styles = self.styles
        keep = [old_styles.index(n) if n in old_styles else -1 for n in new.styles]
        old = await loop.run_in_executor(None, self.worker.swap, new, keep)
        self.backend = new
        self.styles = list(new.styles)
        self.presets = build_presets(self.styles)
        self.version, self.model_path, self.thumbnails_dir = version, version.onnx, version.thumbnails
        styles_json = self.styles_json()
        for session in list(self.sessions.values()):
            session.restyle(self.styles, self.presets, keep, styles_json, version.record.change)
        if old is not self._original:
            await loop.run_in_executor(None, old.close)
        log.info("serving %s: %s (%d styles)", folder, version.record.change, len(self.styles))
        added = [i for i, k in enumerate(keep) if k < 0]
        return added[0] if added else None

    def _load(self, onnx: Path) -> Backend:
        """``onnx`` on the running backend at its precision; where that cannot run it, the config's choice."""
        cfg = self.config
        try:
            return load_backend(onnx, backend=self.backend.name, precision=self.backend.precision,
                                num_threads=cfg.num_threads)  # fmt: skip
        except (EngineError, ValueError) as e:
            log.info("the new version cannot run on %s at %s (%s): loading it as configured",
                     self.backend.name, self.backend.precision, e)  # fmt: skip
            return load_backend(onnx, backend=cfg.backend, precision=cfg.precision, num_threads=cfg.num_threads)

    # ------------------------------------------------------------------ handlers

    async def index(self, request: web.Request) -> web.StreamResponse:
        page = self.config.static_dir / "index.html"
        if not page.is_file():
            raise web.HTTPNotFound(text=f"the page is missing: {page}")
        return web.FileResponse(page, headers={"Cache-Control": "no-cache"})

    async def info(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "styles": self.styles_json(),
                "presets": [p.to_json() for p in self.presets],
                "backend": self.backend_info,
                # "auto" first: the page's default choice where the server's default is auto.
                "resolutions": [AUTO_RESOLUTION, *self.config.resolutions],
                "default_resolution": self.config.default_resolution,
                "max_message_bytes": self.config.max_message_bytes,
                "transition_ms": self.config.transition_ms,
                # STUN/TURN for the page's RTCPeerConnection (behind the token, with TURN credentials)
                "ice_servers": self.config.ice_server_list(),
                "new_styles": {
                    "enabled": self.new_styles_off is None,
                    "reason": self.new_styles_off,
                    "max_bytes": MAX_UPLOAD_BYTES,
                    "jobs": [self._job_json(j) for j in self.jobs.jobs.values() if j.active],
                },
            }
        )

    # ------------------------------------------------------------------ new styles

    def _job_json(self, job: Job) -> dict[str, Any]:
        return job.to_json(self.jobs.position(job))

    def _job(self, request: web.Request) -> Job:
        job = self.jobs.jobs.get(request.match_info["job"])
        if job is None:
            raise web.HTTPNotFound(text=json.dumps({"error": "no such job (finished jobs are forgotten on restart)"}),
                                   content_type="application/json")  # fmt: skip
        return job

    async def add_style(self, request: web.Request) -> web.Response:
        """Cheap refusals first (off, shutting down, wrong type, too large, no room for this client),
        then the bounded read, the name, and the picture decoded in a child process."""
        if self.new_styles_off is not None:
            return _error(403, self.new_styles_off)
        if self.shutting_down:
            return _error(503, "the server is shutting down")
        if not request.content_type.startswith("multipart/"):
            return _error(415, "send the painting as multipart/form-data with fields image (the file) and name")
        if request.content_length is not None and request.content_length > MAX_UPLOAD_BYTES + 65536:
            self.counters.oversized += 1
            return _error(413, f"the upload is {request.content_length / 2**20:.1f} MB; at most "
                               f"{MAX_UPLOAD_BYTES // 2**20} MB")  # fmt: skip
        client = request.remote or "?"
        try:
            self.jobs.check_room(client)  # before a byte of the upload is read
            data, filename, raw_name = await _read_upload(request)
            name = check_name(raw_name, [*self.styles, *self.jobs.names_in_flight()])
            job = self.jobs.new_job("add", name, client=client)
        except UploadError as e:
            return _error(e.status, str(e))
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(filename or "painting").stem)[:60]
        job.painting = job.folder / f"{stem or 'painting'}.png"
        try:
            w, h = await prepare_painting(data, job.painting, self.decode_gate)
        except UploadError as e:
            await self.jobs.cancel(job)  # never queued: its folder goes
            return _error(e.status, str(e))
        self.jobs.submit(job)
        log.info("painting %r uploaded (%dx%d, %d bytes): job %s", name, w, h, len(data), job.id)
        body = {**self._job_json(job), "cancel_token": job.cancel_token}  # the uploader's alone
        return web.json_response(body, status=202, headers={"Location": f"/api/styles/jobs/{job.id}"})

    async def delete_style(self, request: web.Request) -> web.Response:
        if self.new_styles_off is not None:
            return _error(403, self.new_styles_off)
        index = parse_index(request.match_info["index"])
        if index is None:
            return _error(404, "styles are addressed by their index in ASCII digits: DELETE /api/styles/INDEX")
        if not 0 <= index < len(self.styles):
            return _error(404, f"there is no style {index}; the model has {len(self.styles)}")
        if index < self.shipped_styles:
            return _error(403, f"{self.styles[index]!r} came with the shipped model and cannot be deleted")
        try:
            job = self.jobs.new_job("delete", self.styles[index], client=request.remote or "?")
        except UploadError as e:
            return _error(e.status, str(e))
        self.jobs.submit(job)
        body = {**self._job_json(job), "cancel_token": job.cancel_token}
        return web.json_response(body, status=202, headers={"Location": f"/api/styles/jobs/{job.id}"})

    async def list_jobs(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"jobs": [self._job_json(j) for j in self.jobs.jobs.values()], "kept": self.jobs.kept()}
        )

    async def get_job(self, request: web.Request) -> web.Response:
        return web.json_response(self._job_json(self._job(request)))

    async def cancel_job(self, request: web.Request) -> web.Response:
        job = self._job(request)
        token = request.headers.get("X-Cancel-Token") or request.query.get("cancel_token")
        if not job.may_cancel(token):
            return _error(403, "only the page that asked for this job can cancel it (it holds the job's cancel token)")
        try:
            await self.jobs.cancel(job)
        except UploadError as e:
            return _error(e.status, str(e))
        return web.json_response(self._job_json(job))

    async def job_preview(self, request: web.Request) -> web.StreamResponse:
        job = self._job(request)
        data = await asyncio.get_running_loop().run_in_executor(None, job.preview_bytes)
        if data is None:
            raise web.HTTPNotFound(text="no preview yet")
        return web.Response(body=data, content_type="image/jpeg", headers={"Cache-Control": "no-store"})

    async def style_thumbnail(self, request: web.Request) -> web.StreamResponse:
        index = parse_index(request.match_info["index"])
        if index is None:
            raise web.HTTPNotFound()
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
        where = {"path": str(self.model_path)}
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
        if self.new_styles_off is None:
            await asyncio.get_running_loop().run_in_executor(None, self.jobs.clean_leftovers)
        self.worker.start()
        yield
        await self.jobs.close()
        await self.close_all()
        # Joining waits for the frame in progress; keep the loop free meanwhile.
        await asyncio.get_running_loop().run_in_executor(None, self.worker.stop)
        if self.backend is not self._original:
            self.backend.close()  # a version this server swapped in


async def _read_upload(request: web.Request) -> tuple[bytes, str | None, str | None]:
    """(image bytes, its file name, the name field) of a multipart upload, at most MAX_UPLOAD_BYTES read."""
    reader = await request.multipart()
    data, filename, name = None, None, None
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            continue
        if part.name == "image":
            filename = part.filename
            chunks, size = [], 0
            while chunk := await part.read_chunk(256 * 1024):
                size += len(chunk)
                if size > MAX_UPLOAD_BYTES:
                    raise UploadError(f"the file is over {MAX_UPLOAD_BYTES // 2**20} MB; at most "
                                      f"{MAX_UPLOAD_BYTES // 2**20} MB", 413)  # fmt: skip
                chunks.append(chunk)
            data = b"".join(chunks)
        elif part.name == "name":
            raw = await part.read_chunk(4096)
            try:
                name = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise UploadError("the name must be UTF-8 text") from None
    if data is None:
        raise UploadError("no image field: send the painting as the multipart field 'image'")
    return data, filename, name


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
    app.router.add_post("/api/styles", server.add_style)
    app.router.add_get("/api/styles/jobs", server.list_jobs)
    app.router.add_get("/api/styles/jobs/{job}", server.get_job)
    app.router.add_delete("/api/styles/jobs/{job}", server.cancel_job)
    app.router.add_get("/api/styles/jobs/{job}/preview.jpg", server.job_preview)
    app.router.add_delete("/api/styles/{index}", server.delete_style)
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
