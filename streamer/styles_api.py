"""The styles API: users' paintings learned into the model, and learned styles deleted.

    POST   /api/styles                      multipart image + name -> 202 {job, cancel_token}
    GET    /api/styles/jobs                 every job (queued, running, recent) and what is kept
    GET    /api/styles/jobs/{id}            state, step, steps, eta_s, queue_position, preview URL, error
    GET    /api/styles/jobs/{id}/preview.jpg   the newest preview in the new style
    DELETE /api/styles/jobs/{id}            cancel it (X-Cancel-Token: only the page that asked)
    DELETE /api/styles/{i}                  delete learned style i (a job too; shipped styles: 403)

The jobs and their child processes are :mod:`streamer.learning`'s; a finished version is
handed to ``publish`` (``streamer.app.Server.publish``), which swaps it in whole.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, web

from streamer.config import StreamerConfig
from streamer.counters import Counters
from streamer.learning import (
    MAX_UPLOAD_BYTES,
    Job,
    Publish,
    StyleJobs,
    UploadError,
    check_name,
    parse_index,
    prepare_painting,
)
from streamer.served import ServedModel

log = logging.getLogger(__name__)


class StylesApi:
    """The routes above, over one :class:`StyleJobs` queue. ``off`` says why learning is off (None: on)."""

    def __init__(
        self,
        config: StreamerConfig,
        model: Callable[[], ServedModel],
        publish: Publish,
        counters: Counters,
        off: str | None,
    ) -> None:
        self.config = config
        self.model = model
        self.counters = counters
        self.off = off
        self.jobs = StyleJobs(
            config.models_dir / "jobs",
            config.models_dir,
            lambda: self.model().path,
            publish,
            content=config.content_dir,
            steps=config.learn_steps,
            size=config.learn_size,
            threads=config.learn_threads,
            max_queued=config.max_queued_styles,
            per_client=config.max_styles_per_client,
        )
        self.decode_gate = asyncio.Semaphore(1)  # uploads are decoded one at a time (streamer.painting)
        self.shutting_down = False

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/api/styles", self.add_style)
        app.router.add_get("/api/styles/jobs", self.list_jobs)
        app.router.add_get("/api/styles/jobs/{job}", self.get_job)
        app.router.add_delete("/api/styles/jobs/{job}", self.cancel_job)
        app.router.add_get("/api/styles/jobs/{job}/preview.jpg", self.job_preview)
        app.router.add_delete("/api/styles/{index}", self.delete_style)

    def info(self) -> dict[str, Any]:
        """The page's view of it (in /api/info)."""
        return {
            "enabled": self.off is None,
            "reason": self.off,
            "max_bytes": MAX_UPLOAD_BYTES,
            "jobs": [self._job_json(j) for j in self.jobs.jobs.values() if j.active],
        }

    async def start(self) -> None:
        if self.off is None:
            await asyncio.get_running_loop().run_in_executor(None, self.jobs.clean_leftovers)

    async def close(self) -> None:
        self.shutting_down = True
        await self.jobs.close()

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
        if self.off is not None:
            return _error(403, self.off)
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
            name = check_name(raw_name, [*self.model().styles, *self.jobs.names_in_flight()])
            job = self.jobs.new_job("add", name, client=client, checking=True)
        except UploadError as e:
            return _error(e.status, str(e))
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(filename or "painting").stem)[:60]
        job.painting = job.folder / f"{stem or 'painting'}.png"
        try:
            w, h = await prepare_painting(data, job.painting, self.decode_gate)
        except UploadError as e:
            await self.jobs.cancel(job)  # never queued: its folder goes
            self.jobs.jobs.pop(job.id, None)  # and it was never a job anyone asked about
            return _error(e.status, str(e))
        self.jobs.submit(job)
        log.info("painting %r uploaded (%dx%d, %d bytes): job %s", name, w, h, len(data), job.id)
        body = {**self._job_json(job), "cancel_token": job.cancel_token}  # the uploader's alone
        return web.json_response(body, status=202, headers={"Location": f"/api/styles/jobs/{job.id}"})

    async def delete_style(self, request: web.Request) -> web.Response:
        if self.off is not None:
            return _error(403, self.off)
        index = parse_index(request.match_info["index"])
        if index is None:
            return _error(404, "styles are addressed by their index in ASCII digits: DELETE /api/styles/INDEX")
        model = self.model()
        if not 0 <= index < len(model.styles):
            return _error(404, f"there is no style {index}; the model has {len(model.styles)}")
        if index < model.shipped_styles:
            return _error(403, f"{model.styles[index]!r} came with the shipped model and cannot be deleted")
        try:
            job = self.jobs.new_job("delete", model.styles[index], client=request.remote or "?")
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
