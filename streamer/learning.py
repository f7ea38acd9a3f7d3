"""New styles from the page: upload checks, the job queue, and the child process that learns.

``POST /api/styles`` (multipart ``image`` and ``name``) checks the upload here: room in
the queue and within the client's share first (:meth:`StyleJobs.check_room`, before
the body is read), then the name (:func:`check_name`), then the picture, decoded and
reduced one upload at a time in a child process under a memory cap
(:func:`prepare_painting`, ``streamer.painting``); the reduced painting goes to the
job's folder and a :class:`Job` is queued. The upload's answer carries a cancel token:
only the page that uploaded a painting can cancel it. :class:`StyleJobs` runs one job at a time as a child process,
``sys.executable -m engines.learn`` (never in the server's process: training would
take the GIL and the memory every stream shares), at the lowest CPU priority, and
reads its JSON-line progress (step, ETA, preview). When the child has written the
new model version, ``on_published(folder)`` swaps it in (``streamer.app``).

Jobs live in memory: a restart forgets the queue, never a finished version. A job's
folder goes when the job ends (the painting is kept in the new version's folder, the
last preview in memory), and whatever a killed server left behind (job folders, a
learner's ``.learning-*`` work folder whose process is gone) is removed at start-up
(:meth:`StyleJobs.clean_leftovers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import importlib.util
import json
import logging
import os
import re
import secrets
import shutil
import sys
import time
import unicodedata
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.runtime.versions import PID_FILE, WORK_PREFIXES

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_NAME = 40
KEEP_SIDE = 1024  # px: the short side an uploaded painting is reduced to (v2 learns from up to 960)
DECODE_BUDGET_MB = 768  # address space of the child that decodes one upload
DECODE_TIMEOUT_S = 60.0
# What a name may not hold: markup and quote characters (the name is shown on every page).
UNSAFE_NAME = re.compile(r"[<>&\"'`\\/]")
# Letters that look like Latin ones in other scripts, folded to the Latin letter before names are
# compared, so "The Great Wav\u0435" (Cyrillic e) cannot pass for "The Great Wave" beside it.
CONFUSABLES = str.maketrans(
    "\u0430\u0435\u043e\u0440\u0441\u0443\u0445\u0456\u0458\u0455\u0501\u04bb\u0410\u0412\u0415\u041a"
    "\u041c\u041d\u041e\u0420\u0421\u0422\u0423\u0425\u0406\u0408\u0405\u0391\u0392\u0395\u0396\u0397"
    "\u0399\u039a\u039c\u039d\u039f\u03a1\u03a4\u03a5\u03a7\u03bf\u03bd\u03b1\u03b9\u0261\u0131",
    "aeopcyxijsdhABEKMHOPCTYXIJSABEZHIKMNOPTYXovaigi",
)
# Scripts whose letters may share one name (Japanese mixes these three).
SCRIPT_GROUPS = {"HIRAGANA": "CJK", "KATAKANA": "CJK", "CJK": "CJK"}
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


def _script(c: str) -> str | None:
    """The script of a letter ("LATIN", "CYRILLIC", "CJK", ...); None for digits, spaces, punctuation."""
    if not c.isalpha():
        return None
    first = unicodedata.name(c, "UNKNOWN").split(" ")[0]
    return SCRIPT_GROUPS.get(first, first)


def name_key(name: str) -> str:
    """What two names are compared by: NFKC, case folded, look-alike letters folded to Latin."""
    return unicodedata.normalize("NFKC", name).translate(CONFUSABLES).casefold()


def check_name(raw: str | None, existing: list[str]) -> str:
    """The style name, NFKC-normalised and trimmed; ``UploadError`` saying why it cannot be one.

    Refused: empty, too long, markup, quotes, slashes or control characters; a leading ``-``
    (it would read as an option); only digits (a control message's ``"0"`` means style 0);
    letters of more than one script (``Wav\u0435`` with a Cyrillic e); and a name that is
    another style's once case and look-alike letters are folded.
    """
    name = " ".join(unicodedata.normalize("NFKC", raw or "").split())
    if not name:
        raise UploadError("give the painting a name")
    if len(name) > MAX_NAME:
        raise UploadError(f"the name is {len(name)} characters long; at most {MAX_NAME}")
    if UNSAFE_NAME.search(name) or any(unicodedata.category(c).startswith("C") for c in name):
        raise UploadError("the name may not contain < > & quotes, slashes or control characters: use plain words")
    if name.startswith("-"):
        raise UploadError("the name may not start with '-': begin it with a letter or a digit")
    if name.replace(" ", "").isdigit():
        raise UploadError(f"the name {name!r} is only digits, which mean a style's number: add a word")
    scripts = {s for c in name if (s := _script(c)) is not None}
    if len(scripts) > 1:
        raise UploadError(
            f"the name mixes letters of {' and '.join(sorted(s.title() for s in scripts))} scripts: "
            "use one script, so it cannot pass for another style's name"
        )
    key = name_key(name)
    for other in existing:
        if name_key(other) == key:
            raise UploadError(f"there is a style named {other!r} already; pick another name")
    return name


def parse_index(text: str) -> int | None:
    """A style or job index from a URL or a key: ASCII digits only (int() also reads '\u0669' and '\u0969')."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 6 else None


async def prepare_painting(data: bytes, out: Path, gate: asyncio.Semaphore) -> tuple[int, int]:
    """Check an upload and write it reduced to ``out`` (PNG); its (width, height), or ``UploadError``.

    One upload at a time (``gate``), in a child process (``python -m streamer.painting``) under a
    memory cap, so a large or hostile picture costs the server neither memory nor event-loop time.
    """
    if not data:
        raise UploadError("the file is empty (0 bytes)")
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadError(f"the file is {len(data) / 2**20:.1f} MB; at most {MAX_UPLOAD_BYTES // 2**20} MB", 413)
    async with gate:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "streamer.painting", str(out), f"--max-side={KEEP_SIDE}",
            f"--budget-mb={DECODE_BUDGET_MB}",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(data), DECODE_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise UploadError(f"the picture took over {DECODE_TIMEOUT_S:.0f} s to read; send a smaller file") from None
    try:
        facts = json.loads(stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        log.warning("the painting check failed: %s", stderr.decode(errors="replace")[-500:])
        raise UploadError("the picture could not be read (the check failed); try a JPEG, PNG or WebP file") from None
    if "error" in facts:
        out.unlink(missing_ok=True)
        raise UploadError(str(facts["error"]))
    return int(facts["width"]), int(facts["height"])


@dataclass
class Job:
    """One request to add (or delete) a style, from queued to done."""

    kind: str  # "add" or "delete"
    name: str
    folder: Path  # the job's scratch folder (upload, preview, log); removed when the job ends
    painting: Path | None = None
    client: str = "?"  # the address that asked (each has StyleJobs.per_client places)
    cancel_token: str = field(default_factory=lambda: secrets.token_urlsafe(16))  # given to the uploader only
    last_preview: bytes | None = None  # the newest preview, kept once the folder is gone
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    state: str = "queued"  # checking (its upload), queued, learning, exporting, publishing, done, failed, cancelled
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

    def may_cancel(self, token: str | None) -> bool:
        """Only whoever holds the job's cancel token (the page that uploaded it) may cancel it."""
        return token is not None and hmac.compare_digest(self.cancel_token.encode(), token.encode("utf-8", "replace"))

    def preview_bytes(self) -> bytes | None:
        """The newest preview JPEG: from the job's folder while it runs, from memory after."""
        if self.previews and self.preview.is_file():
            with contextlib.suppress(OSError):
                return self.preview.read_bytes()
        return self.last_preview

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
        per_client: int = 2,
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
        self.per_client = per_client  # jobs one client address may have queued or running
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

    def check_room(self, client: str) -> None:
        """``UploadError`` unless a job from ``client`` can be queued now: 503 when the queue is full,
        429 when this client has its share in it. Cheap: called before an upload is read."""
        # Jobs whose upload is still being checked hold their place: uploads arrive concurrently.
        waiting = len(self.waiting()) + sum(1 for j in self.jobs.values() if j.state == "checking")
        if waiting >= self.max_queued:
            raise UploadError(f"{self.max_queued} paintings are waiting already; try again when one is done", 503)
        mine = sum(1 for j in self.jobs.values() if j.active and j.client == client)
        if mine >= self.per_client:
            raise UploadError(
                f"you have {mine} paintings queued or learning already; add another when one is done", 429
            )

    def new_job(self, kind: str, name: str, client: str = "?", checking: bool = False) -> Job:
        """A job with its own scratch folder, registered at once so it counts against the limits
        (``UploadError`` 503/429 if there is no room for it). ``checking``: its upload is still being
        checked; :meth:`submit` queues it (or :meth:`cancel` drops it)."""
        self.check_room(client)
        job_id = uuid.uuid4().hex[:12]
        job = Job(kind, name, self.work_dir / job_id, client=client, id=job_id)
        if checking:
            job.state = "checking"
        job.folder.mkdir(parents=True, exist_ok=True)
        self.jobs[job.id] = job
        return job

    def clean_leftovers(self) -> list[Path]:
        """Remove what a killed server or learner left: every job folder (jobs live in memory, so
        none survives a restart) and ``.learning-*`` work folders whose learner is gone."""
        removed: list[Path] = []
        if self.work_dir.is_dir():
            for folder in self.work_dir.iterdir():
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
        work = [f for prefix in WORK_PREFIXES for f in self.models_dir.glob(prefix + "*")]
        for folder in work:
            if not _owner_alive(folder):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
        if removed:
            log.info("removed %d leftover job or learning folder(s) from an earlier run", len(removed))
        return removed

    def kept(self) -> dict[str, Any]:
        """What this server keeps on disk and in memory for new styles (``GET /api/styles/jobs``)."""
        folders = sorted(p.name for p in self.work_dir.iterdir()) if self.work_dir.is_dir() else []
        return {"job_folders": folders, "jobs_in_memory": len(self.jobs), "keep_finished": self.keep_finished}

    def submit(self, job: Job) -> Job:
        self.jobs[job.id] = job
        job.state = "queued"
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
        queued = job.state in ("queued", "checking")
        job.state = "cancelled"
        job.finished = time.monotonic()
        if queued:  # never ran: nothing else will clean up after it
            self._finish(job)
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

    def _finish(self, job: Job) -> None:
        """The job ended (done, failed, cancelled): keep its last preview in memory, remove its folder.
        The painting lives on in the new version's folder; the upload is not kept twice."""
        job.last_preview = job.preview_bytes()
        shutil.rmtree(job.folder, ignore_errors=True)

    # ------------------------------------------------------------------ running

    def command(self, job: Job) -> list[str]:
        model = self.model()
        cmd = [sys.executable, "-m", "engines.learn", job.kind, "--model", str(model)]
        cmd += ["--models-dir", str(self.models_dir)]
        if self.threads:
            cmd += ["--threads", str(self.threads)]
        if job.kind == "add":
            assert job.painting is not None
            # --name=VALUE: a name is never read as an option, whatever it starts with.
            cmd += ["--painting", str(job.painting), f"--name={job.name}", "--preview", str(job.preview)]
            if self.content is not None:
                cmd += ["--content", str(self.content)]
            if self.steps is not None:
                cmd += ["--steps", str(self.steps)]
            if self.size is not None:
                cmd += ["--size", str(self.size)]
        else:
            cmd += [f"--style={job.name}"]
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
                self._finish(job)

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


def _owner_alive(folder: Path) -> bool:
    """Whether the learner that made a ``.learning-*`` folder (its ``pid`` file) still runs."""
    try:
        pid = int((folder / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return False  # no pid: from before pid files, or half made; nobody is using it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return " | ".join(text[-lines:])[-500:] or "no output"
