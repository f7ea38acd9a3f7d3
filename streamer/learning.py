"""New styles from the page: upload checks, the job queue, and the child process that learns.

``POST /api/styles`` (multipart ``image`` and ``name``) checks the upload here
(:func:`check_upload`, :func:`check_name`), saves it in the job's folder and queues
a :class:`Job`. :class:`StyleJobs` runs one job at a time as a child process,
``sys.executable -m engines.learn`` (never in the server's process: training would
take the GIL and the memory every stream shares), at the lowest CPU priority, and
reads its JSON-line progress (step, ETA, preview). When the child has written the
new model version, ``on_published(folder)`` swaps it in (``streamer.app``).

Jobs live in memory: a restart forgets the queue, never a finished version.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import io
import json
import logging
import re
import shutil
import sys
import time
import unicodedata
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MIN_SIDE = 64  # px: smaller has no brushwork to learn
MAX_SIDE = 12_000  # px
MAX_PIXELS = 50_000_000  # a 7000x7000 painting scan is fine; a decompression bomb is not
MAX_NAME = 40
FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}
# What a name may not hold: markup and quote characters (the name is shown on every page).
UNSAFE_NAME = re.compile(r"[<>&\"'`\\/]")
# What learning needs besides the serving extra (pip install 'stylecast[train]').
TRAIN_MODULES = ("torch", "safetensors", "onnx", "onnxscript", "PIL", "trainer")


class UploadError(ValueError):
    """An upload the server refuses; ``status`` is the HTTP status, the text says why."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def training_unavailable() -> str | None:
    """Why this server cannot learn styles (a missing package), or None."""
    missing = [m for m in TRAIN_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        return (
            f"this server cannot learn new paintings: {', '.join(missing)} not installed "
            "(pip install 'stylecast[train]' on the server)"
        )
    return None


def check_name(raw: str | None, existing: list[str]) -> str:
    """The style name, trimmed; ``UploadError`` if it is empty, too long, markup, or taken."""
    name = " ".join((raw or "").split())
    if not name:
        raise UploadError("give the painting a name")
    if len(name) > MAX_NAME:
        raise UploadError(f"the name is {len(name)} characters long; at most {MAX_NAME}")
    if UNSAFE_NAME.search(name) or any(unicodedata.category(c).startswith("C") for c in name):
        raise UploadError("the name may not contain < > & quotes, slashes or control characters: use plain words")
    if name.casefold() in {s.casefold() for s in existing}:
        raise UploadError(f"there is a style named {name!r} already; pick another name")
    return name


def check_upload(data: bytes) -> tuple[str, int, int]:
    """(file suffix, width, height) of an uploaded painting; ``UploadError`` saying what is wrong.

    The header is read first, so a huge declared size is refused before anything is
    decoded; then the whole image is decoded once (blocking: call it off the event loop).
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise UploadError("the file is empty (0 bytes)")
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadError(f"the file is {len(data) / 2**20:.1f} MB; at most {MAX_UPLOAD_BYTES // 2**20} MB", 413)
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, (w, h) = im.format or "", im.size
            if fmt not in FORMATS:
                raise UploadError(f"{fmt or 'this'} images are not supported: upload a JPEG, PNG or WebP painting")
            if min(w, h) < MIN_SIDE:
                raise UploadError(f"the picture is {w}x{h} pixels; it needs at least {MIN_SIDE} on each side")
            if max(w, h) > MAX_SIDE or w * h > MAX_PIXELS:
                raise UploadError(
                    f"the picture is {w}x{h} pixels; at most {MAX_SIDE} a side and {MAX_PIXELS // 10**6} megapixels"
                )
            im.load()  # the whole file decodes (a truncated or corrupt one fails here)
    except UploadError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        raise UploadError(f"the file is not an image this server can read (JPEG, PNG or WebP): {e}") from None
    return FORMATS[fmt], w, h


@dataclass
class Job:
    """One request to add (or delete) a style, from queued to done."""

    kind: str  # "add" or "delete"
    name: str
    folder: Path  # the job's scratch folder (upload, preview, log)
    painting: Path | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    state: str = "queued"  # queued, learning, exporting, publishing, done, failed, cancelled
    step: int = 0
    steps: int = 0
    eta_s: float | None = None
    error: str | None = None
    previews: int = 0  # how many previews were written (the preview URL changes with it)
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    style_index: int | None = None  # the new style's index, once published
    process: asyncio.subprocess.Process | None = None

    @property
    def preview(self) -> Path:
        return self.folder / "preview.jpg"

    @property
    def active(self) -> bool:
        return self.state not in ("done", "failed", "cancelled")

    def to_json(self, position: int | None) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "id": self.id,
            "kind": self.kind,
            "name": self.name,
            "state": self.state,
            "step": self.step,
            "steps": self.steps,
            "eta_s": self.eta_s,
            "queue_position": position,  # jobs ahead of this one (0: next); None once it runs
            "preview": f"/api/styles/jobs/{self.id}/preview.jpg?n={self.previews}" if self.previews else None,
            "error": self.error,
            "elapsed_s": round((self.finished or now) - self.started, 1) if self.started else None,
            "style_index": self.style_index,
        }


Publish = Callable[[Path], Awaitable[int | None]]


class StyleJobs:
    """The queue: one job runs at a time, as a child process, the rest wait in order.

    ``model()`` is the ONNX file being served (each job starts from the newest version),
    ``on_published(folder)`` swaps the new version in and returns the new style's index.
    """

    def __init__(
        self,
        work_dir: Path,
        models_dir: Path,
        model: Callable[[], Path],
        on_published: Publish,
        *,
        content: Path | None = None,
        steps: int | None = None,
        size: int | None = None,
        threads: int | None = None,
        max_queued: int = 4,
        keep_finished: int = 50,
    ) -> None:
        self.work_dir = work_dir
        self.models_dir = models_dir
        self.model = model
        self.on_published = on_published
        self.content = content
        self.steps = steps
        self.size = size
        self.threads = threads
        self.max_queued = max_queued
        self.keep_finished = keep_finished
        self.jobs: dict[str, Job] = {}
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.running: Job | None = None

    # ------------------------------------------------------------------ queue

    def waiting(self) -> list[Job]:
        return [j for j in self.jobs.values() if j.state == "queued"]

    def position(self, job: Job) -> int | None:
        waiting = self.waiting()
        return waiting.index(job) if job in waiting else None

    def new_job(self, kind: str, name: str) -> Job:
        """A job with its own scratch folder (``UploadError`` 503 if the queue is full)."""
        if len(self.waiting()) >= self.max_queued:
            raise UploadError(f"{self.max_queued} paintings are waiting already; try again when one is done", 503)
        job_id = uuid.uuid4().hex[:12]
        job = Job(kind, name, self.work_dir / job_id, id=job_id)
        job.folder.mkdir(parents=True, exist_ok=True)
        return job

    def submit(self, job: Job) -> Job:
        self.jobs[job.id] = job
        self._forget_old()
        self._queue.put_nowait(job)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="stylecast-learning")
        log.info("style job %s queued: %s %r (%d waiting)", job.id, job.kind, job.name, len(self.waiting()))
        return job

    def names_in_flight(self) -> list[str]:
        return [j.name for j in self.jobs.values() if j.active and j.kind == "add"]

    async def cancel(self, job: Job) -> None:
        """Cancel a queued job, or stop a running one (its child process is killed; nothing is published)."""
        if not job.active:
            return
        if job.state == "publishing":
            raise UploadError("the new style is being swapped in; it can be deleted once it is done", 409)
        job.state = "cancelled"
        job.finished = time.monotonic()
        proc = job.process
        if proc is not None and proc.returncode is None:
            proc.terminate()
            with contextlib.suppress(TimeoutError, ProcessLookupError):
                await asyncio.wait_for(proc.wait(), 5)
            if proc.returncode is None:
                proc.kill()
        log.info("style job %s cancelled", job.id)

    async def close(self) -> None:
        """Stop the running job and forget the queue (the app's cleanup)."""
        for job in list(self.jobs.values()):
            if job.active and job.state != "publishing":
                await self.cancel(job)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _forget_old(self) -> None:
        finished = [j for j in self.jobs.values() if not j.active]
        for j in finished[: max(0, len(finished) - self.keep_finished)]:
            self.jobs.pop(j.id, None)
            shutil.rmtree(j.folder, ignore_errors=True)

    # ------------------------------------------------------------------ running

    def command(self, job: Job) -> list[str]:
        model = self.model()
        cmd = [sys.executable, "-m", "engines.learn", job.kind, "--model", str(model)]
        cmd += ["--models-dir", str(self.models_dir)]
        if self.threads:
            cmd += ["--threads", str(self.threads)]
        if job.kind == "add":
            assert job.painting is not None
            cmd += ["--painting", str(job.painting), "--name", job.name, "--preview", str(job.preview)]
            if self.content is not None:
                cmd += ["--content", str(self.content)]
            if self.steps is not None:
                cmd += ["--steps", str(self.steps)]
            if self.size is not None:
                cmd += ["--size", str(self.size)]
        else:
            cmd += ["--style", job.name]
        return cmd

    async def _run(self) -> None:
        while True:
            job = await self._queue.get()
            if job.state != "queued":
                continue  # cancelled while it waited
            self.running = job
            try:
                await self._run_one(job)
            except Exception as e:  # a bug here must not stop the queue
                log.exception("style job %s failed", job.id)
                job.state, job.error = "failed", f"{type(e).__name__}: {e}"
            finally:
                self.running = None
                job.process = None
                if job.finished is None:
                    job.finished = time.monotonic()

    async def _run_one(self, job: Job) -> None:
        job.state = "learning"
        job.started = time.monotonic()
        log_path = job.folder / "learn.log"
        folder: Path | None = None
        with open(log_path, "wb") as errors:
            proc = await asyncio.create_subprocess_exec(
                *self.command(job), stdout=asyncio.subprocess.PIPE, stderr=errors, stdin=asyncio.subprocess.DEVNULL
            )
            job.process = proc
            assert proc.stdout is not None
            async for line in proc.stdout:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                folder = self._apply(job, event) or folder
            await proc.wait()
        if job.state == "cancelled":
            return
        if proc.returncode != 0 or folder is None:
            job.state = "failed"
            job.error = job.error or f"the learning process exited with status {proc.returncode} ({_tail(log_path)})"
            log.warning("style job %s failed: %s", job.id, job.error)
            return
        job.state = "publishing"
        job.style_index = await self.on_published(folder)
        job.state = "done"
        job.finished = time.monotonic()
        log.info("style job %s done in %.0f s: %s", job.id, job.finished - job.started, folder.name)

    def _apply(self, job: Job, event: dict[str, Any]) -> Path | None:
        kind = event.get("event")
        if job.state == "cancelled":
            return None
        if kind == "started":
            job.steps = int(event.get("steps", 0))
        elif kind == "step":
            job.step, job.steps = int(event["step"]), int(event["steps"])
            job.eta_s = float(event["eta_s"])
        elif kind == "preview":
            job.previews += 1
        elif kind == "exporting":
            job.state, job.eta_s = "exporting", None
        elif kind == "error":
            job.error = str(event.get("message"))
        elif kind == "done":
            return Path(event["folder"])
        return None


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return " | ".join(text[-lines:])[-500:] or "no output"
