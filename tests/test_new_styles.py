"""A user's painting learned from the API: uploads checked, jobs queued, the version swapped in live.

The real app runs in this process (``bench.loopback.serve``) on the tiny model, with
``--allow-new-styles``; each job is the real child process (``python -m engines.learn``)
with a few steps at a small crop size, so a job takes seconds. Real aiortc peers
stream through the swap.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from bench.loopback import LocalServer, Peer, pattern, serve
from engines.runtime import load_backend
from streamer.config import StreamerConfig

pytest.importorskip("torch")
pytest.importorskip("PIL")

FAST = {"learn_steps": 4, "learn_size": 32}


def painting_png(size: tuple[int, int] = (160, 120), seed: int = 1) -> bytes:
    """A small striped 'painting' as PNG bytes."""
    from PIL import Image

    w, h = size
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    for x in range(0, w, 8):
        img[:, x : x + 4] = rng.integers(0, 256, 3)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


StartServer = Callable[..., Awaitable[LocalServer]]


@pytest.fixture
async def start_server(tiny_onnx: Path, tmp_path: Path) -> AsyncIterator[StartServer]:
    """start(**config) -> the real app on the tiny model, learning into tmp_path/models."""
    from streamer.__main__ import newest_version

    async with contextlib.AsyncExitStack() as stack:

        async def start(**config: Any) -> LocalServer:
            fields = {"allow_new_styles": True, "models_dir": tmp_path / "models", **FAST, **config}
            cfg = newest_version(StreamerConfig(model_path=tiny_onnx, **fields))
            backend = load_backend(cfg.model_path, precision="fp32")
            stack.callback(backend.close)
            return await stack.enter_async_context(serve(cfg, backend))

        yield start


def form(data: bytes | None, name: str | None, filename: str = "painting.png") -> aiohttp.FormData:
    f = aiohttp.FormData()
    if data is not None:
        f.add_field("image", data, filename=filename, content_type="application/octet-stream")
    if name is not None:
        f.add_field("name", name)
    return f


async def upload(http: aiohttp.ClientSession, url: str, data: bytes | None, name: str | None) -> tuple[int, Any]:
    async with http.post(f"{url}/api/styles", data=form(data, name)) as resp:
        return resp.status, await resp.json()


async def cancel(http: aiohttp.ClientSession, url: str, job: dict[str, Any]) -> dict[str, Any]:
    """Cancel a job as the page that asked for it does: with the job's cancel token."""
    headers = {"X-Cancel-Token": job["cancel_token"]}
    async with http.delete(f"{url}/api/styles/jobs/{job['id']}", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return dict(await resp.json())


async def wait_for(cond: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def _as(png: bytes, fmt: str) -> bytes:
    """The same picture in another format (PIL writes TIFF and BMP too)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.open(io.BytesIO(png)).save(buf, format=fmt)
    return buf.getvalue()


async def wait_job(
    http: aiohttp.ClientSession, url: str, job_id: str, until: Callable[[dict[str, Any]], bool], timeout: float = 120
) -> list[dict[str, Any]]:
    """Poll the job until ``until(job)``; returns every state seen."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with http.get(f"{url}/api/styles/jobs/{job_id}") as resp:
            assert resp.status == 200
            job = await resp.json()
        seen.append(job)
        if until(job):
            return seen
        assert job["state"] not in ("failed", "cancelled") or until(job), job
        await asyncio.sleep(0.2)
    raise TimeoutError(f"job {job_id} still {seen[-1]['state']} after {timeout} s")


def done(job: dict[str, Any]) -> bool:
    return job["state"] == "done"


async def test_bad_uploads_are_refused_with_a_plain_reason(start_server: StartServer) -> None:
    from PIL import Image

    srv = await start_server()
    wide = io.BytesIO()
    Image.new("1", (20_000, 40)).save(wide, format="PNG")  # a few kB, absurd dimensions
    tiny = io.BytesIO()
    Image.new("RGB", (40, 40)).save(tiny, format="PNG")
    good = painting_png()
    cases = [
        (b"", "Empty", 400, "empty (0 bytes)"),
        (b"%PDF-1.4 not a picture" * 50, "Doc", 400, "not an image"),
        (good[: len(good) // 2], "Cut", 400, "not an image"),  # a truncated PNG
        (wide.getvalue(), "Wide", 400, "20000x40 pixels"),
        (tiny.getvalue(), "Tiny", 400, "at least 64"),
        (b"\xff" * (20 * 1024 * 1024 + 10), "Huge", 413, "at most 20 MB"),
        (good, "", 400, "give the painting a name"),
        (good, "   ", 400, "give the painting a name"),
        (good, "<script>alert(1)</script>", 400, "may not contain"),
        (good, 'Nice" onload="x', 400, "may not contain"),
        (good, "x" * 41, 400, "at most 40"),
        (good, "ember", 400, "named 'ember' already"),  # a style of the tiny model
        (None, "No file", 415, "fields image (the file)"),  # a form without a file is urlencoded, not multipart
        (_as(good, "TIFF"), "Tiff", 400, "TIFF images are not taken"),  # the README promises JPEG, PNG, WebP
        (_as(good, "BMP"), "Bmp", 400, "BMP images are not taken"),
        (good, "-Kandinsky", 400, "may not start with '-'"),  # would read as an option of the learner
        (good, "0", 400, "only digits"),  # "0" is style 0 in every control message
        (good, "12 34", 400, "only digits"),
        (good, "Emb\u0435r", 400, "mixes letters of Cyrillic and Latin"),  # a Cyrillic e
        (good, "\u0415mber", 400, "mixes letters"),  # a Cyrillic capital E: one Cyrillic letter
        (good, "\u0433\u043b\u0430\u0441", 202, ""),  # all Cyrillic is a fine name
        (good, "ＥＭＢＥＲ", 400, "named 'ember' already"),  # full-width letters: NFKC makes them ember
    ]
    async with aiohttp.ClientSession() as http:
        for data, name, status, text in cases:
            code, body = await upload(http, srv.url, data, name)
            if status == 202:
                assert code == 202, (name, code, body)
                await cancel(http, srv.url, body)
                continue
            assert code == status and text in body["error"], (name, code, body)
            assert "<_io" not in body["error"]  # no Python reprs in a message for people
        async with http.post(f"{srv.url}/api/styles", json={"image": "x"}) as resp:
            assert resp.status == 415 and "multipart/form-data" in (await resp.json())["error"]
        async with http.get(f"{srv.url}/api/info") as resp:
            info = await resp.json()
    assert info["new_styles"]["enabled"] and info["new_styles"]["jobs"] == []  # nothing left queued
    assert [s["name"] for s in info["styles"]] == ["ember", "glacier", "moss"]


async def test_uploads_stay_off_unless_allowed_and_say_why(
    start_server: StartServer, tiny_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamer import learning
    from streamer.app import Server

    srv = await start_server(allow_new_styles=False)
    async with aiohttp.ClientSession() as http:
        code, body = await upload(http, srv.url, painting_png(), "Mine")
        async with http.get(f"{srv.url}/api/info") as resp:
            info = (await resp.json())["new_styles"]
    assert code == 403 and "--allow-new-styles" in body["error"]
    assert not info["enabled"] and "--allow-new-styles" in info["reason"]
    guarded_srv = await start_server(token="secret")
    async with aiohttp.ClientSession() as http:
        code, body = await upload(http, guarded_srv.url, painting_png(), "Mine")
        assert code == 401 and "token" in body["error"]
        async with http.post(
            f"{guarded_srv.url}/api/styles", data=form(painting_png(), "Mine"), headers={"X-Stylecast-Token": "secret"}
        ) as resp:
            assert resp.status == 202  # with the token it is taken
    backend = load_backend(tiny_onnx, precision="fp32")
    try:
        exposed = Server(
            StreamerConfig(model_path=tiny_onnx, host="0.0.0.0", no_auth=True, allow_new_styles=True), backend
        )
        assert exposed.styles_api.off is not None and "access token" in exposed.styles_api.off
        guarded = StreamerConfig(model_path=tiny_onnx, host="0.0.0.0", token="t", allow_new_styles=True)
        assert Server(guarded, backend).styles_api.off is None
        # Without the train extra (here: a module that is not installed) the reason names it.
        monkeypatch.setattr(learning, "TRAIN_MODULES", (*learning.TRAIN_MODULES, "no_such_module_xyz"))
        off = Server(StreamerConfig(model_path=tiny_onnx, allow_new_styles=True), backend).styles_api.off
        assert off is not None and "no_such_module_xyz not installed" in off and "stylecast[train]" in off
    finally:
        backend.close()


async def test_a_learned_style_swaps_in_live_and_survives_a_restart(start_server: StartServer, tmp_path: Path) -> None:
    srv = await start_server()
    server = srv.server
    frame = pattern(96, 64)
    old_weights = [np.eye(3, dtype=np.float32)[i] for i in range(3)] + [np.asarray([0.2, 0.5, 0.3], np.float32)]
    before = [server.model.backend.stylize(frame, w) for w in old_weights]
    async with aiohttp.ClientSession() as http:
        peer = Peer(pattern(160, 120))
        await peer.connect(http, srv.url)
        await peer.wait_frames(10, timeout=30)
        code, job = await upload(http, srv.url, painting_png(), "Stripes")
        assert code == 202 and job["state"] in ("queued", "learning"), job
        seen = await wait_job(http, srv.url, job["id"], done)
        # progress was visible: steps counted up, an ETA once a step was done, and a preview picture.
        # (Four tiny steps can all fall between two polls, so the ETA is checked wherever a step
        # was seen, not required to have been caught.)
        steps = [j["step"] for j in seen]
        assert steps == sorted(steps) and seen[-1]["step"] == seen[-1]["steps"] == FAST["learn_steps"]
        assert all(j["eta_s"] is not None for j in seen if j["state"] == "learning" and j["step"] > 0), seen
        assert seen[-1]["style_index"] == 3 and seen[-1]["preview"]
        async with http.get(srv.url + seen[-1]["preview"]) as resp:
            assert resp.status == 200 and resp.content_type == "image/jpeg"
            assert (await resp.read())[:2] == b"\xff\xd8"

        # The session kept streaming through the swap and was told of the new style, weight 0.
        await peer.wait(lambda: any(m["type"] == "styles" for m in peer.messages), 10, "the styles message")
        msg = next(m for m in peer.messages if m["type"] == "styles")
        assert [s["name"] for s in msg["styles"]] == ["ember", "glacier", "moss", "Stripes"]
        assert msg["styles"][3]["learned"] and not msg["styles"][0]["learned"] and msg["change"] == "added Stripes"
        assert len(msg["state"]["weights"]) == 4 and msg["state"]["weights"][3] == 0
        await peer.wait_frames(15, timeout=30)
        assert not any(s["error"] for s in peer.stats()[-3:]), peer.stats()[-3:]
        reply = await peer.request({"type": "set", "weights": {"Stripes": 1}})
        assert reply["type"] == "ack" and reply["state"]["weights"] == [0, 0, 0, 1], reply
        await peer.wait_frames(5, timeout=30)

        # The old styles give the same pixels, bit for bit, on the new version.
        after = [server.model.backend.stylize(frame, np.append(w, np.float32(0))) for w in old_weights]
        for a, b in zip(before, after, strict=True):
            assert np.array_equal(a, b)
        new = server.model.backend.stylize(frame, np.eye(4, dtype=np.float32)[3])
        assert not any(np.array_equal(new, b) for b in before)

        async with http.get(f"{srv.url}/api/info") as resp:
            info = await resp.json()
        assert info["styles"][3] == {"index": 3, "name": "Stripes", "thumbnail": "/styles/3.jpg?v=1", "learned": True}
        async with http.get(srv.url + info["styles"][3]["thumbnail"]) as resp:
            assert resp.status == 200
        await peer.close()
    await srv.stop()

    # A restart serves the newest version.
    again = await start_server()
    assert list(again.server.model.styles) == ["ember", "glacier", "moss", "Stripes"]
    assert again.server.model.version is not None and again.server.model.version.record.change == "added Stripes"
    assert np.array_equal(again.server.model.backend.stylize(frame, np.eye(4, dtype=np.float32)[3]), new)

    # Shipped styles cannot be deleted; the learned one can, and sessions lose it.
    async with aiohttp.ClientSession() as http:
        async with http.delete(f"{again.url}/api/styles/0") as resp:
            assert resp.status == 403 and "shipped" in (await resp.json())["error"]
        async with http.delete(f"{again.url}/api/styles/3") as resp:
            assert resp.status == 202
            job = await resp.json()
        await wait_job(http, again.url, job["id"], done)
    assert list(again.server.model.styles) == ["ember", "glacier", "moss"]
    assert np.array_equal(again.server.model.backend.stylize(frame, old_weights[0]), before[0])


async def test_a_second_upload_queues_behind_the_first_and_jobs_cancel(start_server: StartServer) -> None:
    srv = await start_server(learn_steps=2000, max_styles_per_client=4)  # the first job runs until cancelled
    async with aiohttp.ClientSession() as http:
        code, first = await upload(http, srv.url, painting_png(seed=1), "First")
        assert code == 202
        await wait_job(http, srv.url, first["id"], lambda j: j["state"] == "learning" and j["step"] > 0)
        code, second = await upload(http, srv.url, painting_png(seed=2), "Second")
        assert code == 202 and second["state"] == "queued" and second["queue_position"] == 0, second
        code, third = await upload(http, srv.url, painting_png(seed=3), "Third")
        assert third["queue_position"] == 1
        code, body = await upload(http, srv.url, painting_png(seed=4), "First")  # a name in flight
        assert code == 400 and "already" in body["error"]
        # Only the page that uploaded a painting may cancel it: without its token, or with another's, 403.
        for headers in ({}, {"X-Cancel-Token": second["cancel_token"]}, {"X-Cancel-Token": "\u00ff" * 22}):
            async with http.delete(f"{srv.url}/api/styles/jobs/{third['id']}", headers=headers) as resp:
                assert resp.status == 403 and "only the page" in (await resp.json())["error"]
        async with http.get(f"{srv.url}/api/styles/jobs") as resp:
            listing = await resp.json()
        assert "cancel_token" not in str(listing)  # no one else learns the tokens
        assert sorted(listing["kept"]["job_folders"]) == sorted(j["id"] for j in (first, second, third))
        assert (await cancel(http, srv.url, third))["state"] == "cancelled"
        assert (await cancel(http, srv.url, first))["state"] == "cancelled"
        # the second one starts once the first is gone
        await wait_job(http, srv.url, second["id"], lambda j: j["state"] == "learning" and j["step"] > 0)
        assert (await cancel(http, srv.url, second))["state"] == "cancelled"
        async with http.get(f"{srv.url}/api/info") as resp:
            info = await resp.json()
    assert [s["name"] for s in info["styles"]] == ["ember", "glacier", "moss"]  # nothing was published
    # a cancelled job leaves no half-written version behind, and no job folder
    await wait_for(lambda: not any((srv.server.config.models_dir / "jobs").iterdir()), "the job folders to go")
    assert not [p.name for p in srv.server.config.models_dir.iterdir() if p.name != "jobs"]
    assert srv.server.styles_api.jobs.running is None or srv.server.styles_api.jobs.running.state == "cancelled"


async def test_nothing_of_a_killed_server_survives_a_restart(tiny_onnx: Path, tmp_path: Path) -> None:
    """SIGKILL the server mid-learning: its learner notices the dead pipe and removes its work folder
    on its way out, and the next start removes the job folders and any work folder whose process is gone."""
    import signal
    import socket
    import subprocess
    import sys

    models = tmp_path / "models"

    def start() -> tuple[subprocess.Popen[bytes], str, Path]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        log = tmp_path / f"server-{port}.log"
        cmd = [
            sys.executable, "-m", "streamer", "--model", str(tiny_onnx), "--port", str(port), "--allow-new-styles",
            "--models-dir", str(models), "--learn-steps", "5000", "--learn-size", "32", "--precision", "fp32",
        ]  # fmt: skip
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[1], stdout=out, stderr=subprocess.STDOUT)
        return proc, f"http://127.0.0.1:{port}", log

    async def wait_up(url: str, log: Path) -> None:
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(url + "/health") as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.2)
        raise AssertionError(f"the server did not come up: {log.read_text()[-2000:]}")

    proc, url, log = start()
    try:
        await wait_up(url, log)
        async with aiohttp.ClientSession() as http:
            code, job = await upload(http, url, painting_png(), "Doomed")
            assert code == 202, job
            await wait_job(http, url, job["id"], lambda j: j["state"] == "learning" and j["step"] > 0)
        work = list(models.glob(".learning-*"))
        assert len(work) == 1 and (models / "jobs" / job["id"]).is_dir()
        learner = int((work[0] / "pid").read_text())
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        await wait_for(lambda: not _alive(learner), "the learner to notice the dead pipe and exit", timeout=60)
        assert not work[0].exists()  # it cleaned up on its way out (a broken pipe, as on SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()

    # What a learner killed outright would leave, beside one whose process still runs (ours, here).
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (models / ".learning-dead").mkdir()
    (models / ".learning-dead" / "pid").write_text(str(dead.pid))
    (models / ".deleting-nopid").mkdir()
    (models / ".learning-live").mkdir()
    (models / ".learning-live" / "pid").write_text(str(os.getpid()))
    assert (models / "jobs" / job["id"]).is_dir()  # the killed server's job folder

    proc, url, log = start()
    try:
        await wait_up(url, log)
        left = sorted(p.name for p in models.iterdir())
        assert left == [".learning-live", "jobs"] and not any((models / "jobs").iterdir()), left
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/api/styles/jobs") as r:
                assert (await r.json())["kept"]["job_folders"] == []
    finally:
        proc.kill()
        proc.wait(10)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its dead parent's reaper) counts as gone
    with contextlib.suppress(OSError):
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    return True


def test_learning_is_off_on_tensorrt_and_says_why(tiny_onnx: Path, tmp_path: Path) -> None:
    """A learned version would need a plan of its own (minutes of building on the GPU): refused, with the reason.
    TensorRT cannot run here, so a real ONNX Runtime backend stands in under the kind's name."""
    from engines.runtime import FrameBackend
    from streamer.app import Server

    inner = load_backend(tiny_onnx, "onnxruntime-cpu", precision="fp32")

    class AsTensorRT(FrameBackend):
        name, styles, shapes, precision = "tensorrt", inner.styles, inner.shapes, "fp16"

        def _run(self, images: np.ndarray, weights: np.ndarray, strokes: np.ndarray | None) -> np.ndarray:
            return inner._run(images, weights, strokes)

    config = StreamerConfig(model_path=tiny_onnx, allow_new_styles=True, models_dir=tmp_path / "models")
    off = Server(config, AsTensorRT()).styles_api.off
    assert off is not None and "TensorRT" in off and "python -m engines build" in off
    inner.close()


def test_a_restart_never_points_the_backend_at_a_version_it_cannot_load(
    tiny_onnx: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import json
    import logging
    import shutil

    from engines.runtime.model import file_sha256
    from engines.runtime.versions import VersionRecord
    from streamer.__main__ import load_served

    models = tmp_path / "models"
    broken = models / "v0001"
    broken.mkdir(parents=True)
    shutil.copyfile(tiny_onnx, broken / "model.onnx")
    record = VersionRecord(1, file_sha256(tiny_onnx), str(tiny_onnx), ("ember", "glacier", "moss", "x"), 3,
                           "added x", "2026-12-02T00:00:00+00:00")  # fmt: skip
    (broken / "version.json").write_text(json.dumps(record.to_json()))
    (broken / "model.onnx").write_bytes(b"half a model")  # a version whose file cannot be loaded
    config = StreamerConfig(model_path=tiny_onnx, models_dir=models, backend="onnxruntime-cpu", precision="fp32")
    with caplog.at_level(logging.WARNING):
        served, backend = load_served(config)
    assert served.model_path == tiny_onnx and backend.styles == ["ember", "glacier", "moss"]
    assert "cannot run on onnxruntime-cpu" in caplog.text and "serving" in caplog.text
    backend.close()


def test_a_new_version_loads_on_the_running_backend_and_precision(
    tiny_onnx: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """The swap loads the new file as load_backend(name=running.name, precision=running.precision): for every
    CPU kind and precision that runs here it must come back the same (a name with a precision in it did not)."""
    import shutil

    from common.cpu import cpu_bf16_flag
    from streamer.app import Server

    version = tmp_path / "v0001"
    version.mkdir()
    shutil.copyfile(tiny_onnx, version / "model.onnx")
    shutil.copyfile(tiny_checkpoint, version / "model.safetensors")  # the torch backend runs the checkpoint
    runs = [("openvino-cpu", "fp32"), ("onnxruntime-cpu", "fp32"), ("torch-cpu", "fp32")]
    if cpu_bf16_flag():
        runs.append(("openvino-cpu", "bf16"))
    for kind, precision in runs:
        backend = load_backend(tiny_onnx, kind, precision=precision, num_threads=1)
        server = Server(StreamerConfig(model_path=tiny_onnx, backend="auto", precision="auto"), backend)
        new = server._load(version / "model.onnx")
        assert (new.name, new.precision) == (kind, precision)
        new.close()
        backend.close()


async def test_concurrent_uploads_respect_the_limits(start_server: StartServer) -> None:
    """Six uploads at once from one client: a job holds its place while its upload is being checked, so
    exactly the client's share (2) is taken and the rest get 429 (before, all six were accepted)."""
    srv = await start_server(learn_steps=2000)
    async with aiohttp.ClientSession() as http:
        results = await asyncio.gather(
            *(upload(http, srv.url, painting_png(seed=10 + i), f"Concurrent {chr(65 + i)}") for i in range(6))
        )
        codes = sorted(code for code, _ in results)
        assert codes == [202, 202, 429, 429, 429, 429], codes
        assert all("you have 2 paintings" in body["error"] for code, body in results if code == 429)
        for code, body in results:
            if code == 202:
                await cancel(http, srv.url, body)
