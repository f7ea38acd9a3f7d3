"""The page in a real headless Chromium against the real server and runtime.

The server runs in-process (``bench.loopback.serve``: the app on 127.0.0.1, a random
port) with ``create_app(config, load_backend(tiny_onnx))``; Chromium (Debian's package,
driven by Playwright) gets a fake camera that plays a still picture from a Y4M file made
here, so every frame has the same content and a change in the stylized picture is
the mixer's doing, not the camera's. The tests click and drag the real controls;
``window.stylecast`` (the page's ``?hook=1`` extra) only reads counters and samples pixels.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from bench.chromium import BASE_ARGS, FAKE_CAMERA, open_hooked, still_camera
from bench.loopback import LocalServer, serve
from engines.runtime import load_backend
from streamer.config import StreamerConfig

pytestmark = pytest.mark.browser


def write_y4m(path: Path, size: tuple[int, int] = (640, 480)) -> Path:
    """The fake camera's still picture, as a Y4M file."""
    still_camera(path, size)
    return path


# ----------------------------------------------------------------------------- server


StartServer = Callable[..., Awaitable[LocalServer]]


@pytest.fixture
async def start_server(tiny_onnx: Path) -> AsyncIterator[StartServer]:
    """Starts the real app (config fields may be overridden); everything is cleaned up after."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(ssl_context: ssl.SSLContext | None = None, **config: Any) -> LocalServer:
            backend = load_backend(tiny_onnx)
            stack.callback(backend.close)
            cfg = StreamerConfig(model_path=tiny_onnx, **config)
            return await stack.enter_async_context(serve(cfg, backend, ssl_context))

        yield start


# ----------------------------------------------------------------------------- browser


@pytest.fixture
async def launch(chromium_path: str) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """launch(*extra_args) -> a new page in a fresh headless Chromium (closed after the test)."""
    from playwright.async_api import async_playwright

    pw = await async_playwright().start()
    browsers: list[Any] = []

    async def new_page(*args: str, permissions: list[str] | None = None) -> Any:
        browser = await pw.chromium.launch(executable_path=chromium_path, headless=True, args=BASE_ARGS + list(args))
        browsers.append(browser)
        context = await browser.new_context(viewport={"width": 1200, "height": 820}, permissions=permissions or [])
        page = await context.new_page()
        page.on("pageerror", lambda e: print(f"page error: {e}"))
        return page

    yield new_page
    for b in browsers:
        await b.close()
    await pw.stop()


async def alert_text(page: Any) -> str:
    alert = page.get_by_role("alert")
    await alert.wait_for(state="visible", timeout=30_000)
    return (await alert.text_content()) or ""


def mad(a: list[float], b: list[float]) -> float:
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean())


async def frames_after(page: Any, count: int, timeout_s: float = 30) -> None:
    """Wait until ``count`` more stylized frames have been presented."""
    n0 = await page.evaluate("stylecast.renderedFrames")
    await page.wait_for_function(f"stylecast.renderedFrames >= {n0 + count}", timeout=timeout_s * 1000)


# ----------------------------------------------------------------------------- tests


async def test_page_streams_stylized_video_and_sliders_change_it(
    start_server: StartServer, launch: Callable[..., Awaitable[Any]], tmp_path: Path
) -> None:
    server = await start_server()
    camera = write_y4m(tmp_path / "camera.y4m")
    page = await launch(*FAKE_CAMERA, f"--use-file-for-fake-video-capture={camera}")
    await open_hooked(page, f"{server.url}/?hook=1&res=320x240")

    # The mixer is built from /api/info: one slider per style, strength, presets.
    ember = page.get_by_label("ember weight")
    glacier = page.get_by_label("glacier weight")
    await ember.wait_for()
    assert await page.get_by_label("Resolution").input_value() == "320x240"
    await page.get_by_label("Transition").select_option(label="instant")
    # This server cannot learn paintings: the page says why instead of showing the form.
    assert await page.get_by_label("Painting file").is_hidden()
    assert "--allow-new-styles" in (await page.locator("#learn-off").text_content() or "")

    await page.get_by_role("button", name="Start camera").click()
    await page.wait_for_function(
        "stylecast.renderedFrames > 10 || !document.getElementById('message').hidden", timeout=60_000
    )
    assert await page.get_by_role("alert").is_hidden(), await page.get_by_role("alert").text_content()
    assert await page.evaluate("stylecast.framesDecoded()") > 0
    assert (await page.get_by_role("status", name="Connection status").text_content()) == "Live"

    # The picture that comes back is stylized, not the camera picture.
    difference = await page.evaluate("stylecast.compare()")
    assert difference is not None and difference > 20, difference

    # How much the picture moves by itself (codec noise on a still camera) ...
    before = await page.evaluate("stylecast.sample()")
    await frames_after(page, 10)
    still = await page.evaluate("stylecast.sample()")
    noise = mad(before, still)

    # ... against the change from moving the sliders: all glacier, no ember.
    await glacier.fill("100")
    await ember.fill("0")
    await page.wait_for_function(
        "(() => { const w = stylecast.lastAck && stylecast.lastAck.state.weights;"
        " return w && w[0] === 0 && w[1] > 0; })()",
        timeout=10_000,
    )
    await frames_after(page, 15)
    after = await page.evaluate("stylecast.sample()")
    change = mad(still, after)
    print(f"stylized vs camera {difference:.1f}, slider change {change:.2f}, still noise {noise:.2f}")
    assert change > 3 * noise + 2, f"slider change {change:.2f} vs still-picture noise {noise:.2f}"

    # A preset moves the sliders to the server's mix for it.
    await page.get_by_role("button", name="moss", exact=True).click()
    await page.wait_for_function("stylecast.lastAck && stylecast.lastAck.state.preset === 'moss'", timeout=10_000)
    assert await page.get_by_label("moss weight").input_value() == "100"
    assert await ember.input_value() == "0"
    assert await page.get_by_role("button", name="moss", exact=True).get_attribute("aria-pressed") == "true"

    # A larger processing resolution comes back as a larger picture.
    await page.get_by_label("Resolution").select_option("640x480")
    await page.wait_for_function("document.getElementById('stylized').videoWidth === 640", timeout=20_000)

    # The readout shows live numbers and the backend.
    await page.wait_for_function("document.getElementById('fps').textContent !== '–'", timeout=10_000)
    assert float(await page.locator("#fps").text_content()) > 0
    readout = await page.locator("#backend").text_content()
    assert readout == f"{server.backend.name} · {server.backend.precision}", readout
    assert server.backend.precision_reason in (await page.locator("#backend").get_attribute("title"))
    await page.wait_for_function("stylecast.rttMs !== null", timeout=10_000)

    # Snapshot saves a PNG of the stylized video.
    async with page.expect_download() as download_info:
        await page.get_by_role("button", name="Snapshot").click()
    download = await download_info.value
    png = tmp_path / download.suggested_filename
    await download.save_as(png)
    assert png.suffix == ".png"
    snap = cv2.imread(str(png))
    assert snap is not None and snap.shape[:2] == (480, 640)

    # Auto: the server chooses the size (the camera's 640x480 at most); the select shows which.
    resolution = page.get_by_label("Resolution")
    assert (await resolution.locator("option").first.text_content()) == "Auto"
    await resolution.select_option("auto")
    await page.wait_for_function("stylecast.lastAck && stylecast.lastAck.state.resolution === 'auto'", timeout=10_000)
    assert (await page.evaluate("stylecast.lastAck.state.auto_resolution")) in ("320x240", "640x480")
    label = page.locator("#resolution option[value=auto]")
    await page.wait_for_function(
        "document.querySelector('#resolution option[value=auto]').textContent.startsWith('Auto · ')", timeout=10_000
    )
    assert (await label.text_content()) in ("Auto · 320 × 240", "Auto · 640 × 480")
    await frames_after(page, 10)  # the stream goes on

    shot = tmp_path / "page.png"
    await page.screenshot(path=str(shot))
    print(f"page screenshot: {shot}")

    await page.get_by_role("button", name="Stop").click()
    assert (await page.get_by_role("status", name="Connection status").text_content()) == "Stopped"
    assert await page.get_by_role("alert").is_hidden(), await page.get_by_role("alert").text_content()


async def test_record_downloads_a_playable_webm_of_the_stylized_video(
    start_server: StartServer, launch: Callable[..., Awaitable[Any]], tmp_path: Path
) -> None:
    import av

    server = await start_server()
    camera = tmp_path / "camera.y4m"
    picture = still_camera(camera, (320, 240))
    page = await launch(*FAKE_CAMERA, f"--use-file-for-fake-video-capture={camera}")
    await open_hooked(page, f"{server.url}/?hook=1&res=320x240")
    record = page.get_by_role("button", name="Record")
    assert await record.is_disabled()  # nothing to record before the video comes
    await page.get_by_role("button", name="Start camera").click()
    await page.wait_for_function("stylecast.renderedFrames > 10", timeout=60_000)

    await record.click()
    timer = page.get_by_role("timer", name="Recording time")
    await page.wait_for_function("document.getElementById('record-time').textContent.includes('0:03')", timeout=20_000)
    assert (await timer.text_content() or "").startswith("● 0:03")
    async with page.expect_download() as download_info:
        await page.get_by_role("button", name="Stop recording").click()
    download = await download_info.value
    webm = tmp_path / download.suggested_filename
    await download.save_as(webm)
    assert webm.suffix == ".webm" and await timer.is_hidden()

    with av.open(str(webm)) as container:
        assert container.format.name.startswith("matroska")  # WebM is Matroska
        stream = container.streams.video[0]
        pts = []
        for frame in container.decode(stream):
            assert (frame.width, frame.height) == (320, 240)
            pts.append(float(frame.pts * frame.time_base))
            last = frame.to_ndarray(format="rgb24")
        header_s = float(container.duration or 0) / av.time_base  # the page writes it in (MediaRecorder does not)
    duration = pts[-1] - pts[0]
    print(f"recorded {len(pts)} frames over {duration:.2f} s, header {header_s:.2f} s ({stream.codec_context.name})")
    assert 3.0 <= duration <= 6.0, duration
    assert abs(header_s - duration) < 0.5, (header_s, duration)  # players show the length and can seek
    assert len(pts) >= 10 * duration, (len(pts), duration)
    # The stylized picture, not the camera's.
    assert mad(last.ravel().tolist(), picture.ravel().tolist()) > 20


async def test_page_says_when_the_server_is_unreachable(
    start_server: StartServer, launch: Callable[..., Awaitable[Any]]
) -> None:
    server = await start_server()
    page = await launch(*FAKE_CAMERA)
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    await page.goto(server.url)
    await page.get_by_label("ember weight").wait_for()
    # The production page carries no test or bench code: neither extra is loaded, no hook is set.
    assert await page.evaluate("typeof window.stylecast") == "undefined"
    assert not [u for u in requested if u.endswith(("/hook.js", "/bench.js"))], requested
    await server.stop()
    await page.get_by_role("button", name="Start camera").click()
    text = await alert_text(page)
    assert "Cannot reach the stylecast server" in text, text
    assert await page.get_by_role("button", name="Start camera").is_enabled()


async def test_page_says_when_the_server_is_full(
    start_server: StartServer, launch: Callable[..., Awaitable[Any]], tmp_path: Path
) -> None:
    server = await start_server(max_sessions=1)
    camera = write_y4m(tmp_path / "camera.y4m")
    first = await launch(*FAKE_CAMERA, f"--use-file-for-fake-video-capture={camera}")
    await open_hooked(first, f"{server.url}/?hook=1&res=320x240")
    await first.get_by_role("button", name="Start camera").click()
    await first.wait_for_function("stylecast.state.connected || !document.getElementById('message').hidden")
    assert await first.get_by_role("alert").is_hidden(), await first.get_by_role("alert").text_content()

    second = await first.context.new_page()
    await open_hooked(second, f"{server.url}/?hook=1&res=320x240")
    await second.get_by_role("button", name="Start camera").click()
    text = await alert_text(second)
    assert text.startswith("The server is busy:"), text
    assert len(text) > len("The server is busy: . Try again in a moment."), "the server's reason is shown"
    assert (await second.get_by_role("status", name="Connection status").text_content()) == "Stopped"
    # The first viewer is not disturbed.
    assert await first.evaluate("stylecast.state.connected")


@pytest.mark.parametrize(
    ("args", "permissions", "expected"),
    [
        pytest.param(["--use-fake-device-for-media-stream"], [], "Camera access was denied", id="denied"),
        pytest.param([], ["camera"], "No camera was found", id="no-camera"),
    ],
)
async def test_page_explains_camera_problems(
    start_server: StartServer,
    launch: Callable[..., Awaitable[Any]],
    args: list[str],
    permissions: list[str],
    expected: str,
) -> None:
    if not args and os.path.exists("/dev/video0"):
        pytest.skip("this machine has a real camera")
    server = await start_server()
    page = await launch(*args, permissions=permissions)
    await page.goto(server.url)
    await page.get_by_label("ember weight").wait_for()
    await page.get_by_role("button", name="Start camera").click()
    text = await alert_text(page)
    assert expected in text, text


# ----------------------------------------------------------------------------- running it for others

TOKEN = "page-token"


async def test_page_takes_the_token_once_from_its_url_and_says_when_it_is_wrong(
    start_server: StartServer, launch: Callable[..., Awaitable[Any]], tmp_path: Path
) -> None:
    server = await start_server(token=TOKEN)
    camera = write_y4m(tmp_path / "camera.y4m")
    page = await launch(*FAKE_CAMERA, f"--use-file-for-fake-video-capture={camera}")
    await open_hooked(page, f"{server.url}/?hook=1&token={TOKEN}&res=320x240")
    await page.get_by_label("ember weight").wait_for()
    # Kept for the tab, taken out of the address bar.
    assert "token" not in page.url and "hook=1" in page.url
    assert await page.evaluate("sessionStorage.getItem('stylecast.token')") == TOKEN
    # Thumbnails, the offer and the control channel work with it.
    await page.get_by_role("button", name="Start camera").click()
    await page.wait_for_function("stylecast.renderedFrames > 5 || !document.getElementById('message').hidden")
    assert await page.get_by_role("alert").is_hidden(), await page.get_by_role("alert").text_content()

    # A wrong token: the page asks (a prompt, dismissed here) and says plainly what is wrong.
    wrong = await page.context.new_page()
    asked: list[str] = []

    async def dismiss(dialog: Any) -> None:
        asked.append(dialog.message)
        await dialog.dismiss()

    wrong.on("dialog", dismiss)
    await wrong.goto(f"{server.url}/?token=not-it")
    text = await alert_text(wrong)
    assert "access token is wrong" in text, text
    assert asked and "access token is wrong" in asked[0]
    assert (await wrong.get_by_role("status", name="Connection status").text_content()) == "Access token needed"

    # The server going away is said on the page, not left to a frozen picture.
    await server.stop()
    text = await alert_text(page)
    assert text.startswith("The server is shutting down"), text


async def test_page_streams_over_https_with_a_self_signed_certificate(
    start_server: StartServer, launch: Callable[..., Awaitable[Any]], tmp_path: Path
) -> None:
    from streamer.security import self_signed

    cert, key, _ = self_signed(tmp_path / "tls")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    server = await start_server(ssl_context=context, token=TOKEN)
    assert server.url.startswith("https://")
    camera = write_y4m(tmp_path / "camera.y4m")
    # A phone would show the certificate warning once; the test browser skips it.
    page = await launch(*FAKE_CAMERA, f"--use-file-for-fake-video-capture={camera}", "--ignore-certificate-errors")
    await open_hooked(page, f"{server.url}/?hook=1&token={TOKEN}&res=320x240")
    assert await page.evaluate("window.isSecureContext")
    await page.get_by_role("button", name="Start camera").click()
    await page.wait_for_function(
        "stylecast.renderedFrames > 10 || !document.getElementById('message').hidden", timeout=60_000
    )
    assert await page.get_by_role("alert").is_hidden(), await page.get_by_role("alert").text_content()
    assert (await page.get_by_role("status", name="Connection status").text_content()) == "Live"


async def test_page_learns_a_dropped_painting_and_shows_it_as_a_slider_without_reconnecting(
    start_server: StartServer, launch: Callable[..., Awaitable[Any]], tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    server = await start_server(
        allow_new_styles=True, models_dir=tmp_path / "models", learn_steps=40, learn_size=32, transition_ms=0
    )
    painting = tmp_path / "Blue_Stripes.png"
    stripes = np.zeros((120, 160, 3), np.uint8)
    stripes[:, ::8] = (30, 60, 220)
    stripes[:, 1::8] = (230, 230, 40)
    cv2.imwrite(str(painting), stripes)
    camera = write_y4m(tmp_path / "camera.y4m")
    page = await launch(*FAKE_CAMERA, f"--use-file-for-fake-video-capture={camera}")
    await open_hooked(page, f"{server.url}/?hook=1&res=320x240")
    await page.get_by_role("button", name="Start camera").click()
    await page.wait_for_function("stylecast.renderedFrames > 10", timeout=60_000)

    # A file that is no picture gets the server's plain reason.
    bogus = tmp_path / "notes.png"
    bogus.write_text("not a picture at all")
    await page.get_by_label("Painting file").set_input_files(str(bogus))
    await page.get_by_label("Style name").fill("Notes")
    await page.get_by_role("button", name="Learn it").click()
    assert "not an image" in await alert_text(page)

    # The real painting: the name comes from the file name; progress shows while it learns.
    await page.get_by_label("Style name").fill("")
    await page.get_by_label("Painting file").set_input_files(str(painting))
    assert await page.get_by_label("Style name").input_value() == "Blue Stripes"
    await page.get_by_role("button", name="Learn it").click()
    progress = page.get_by_role("status", name="Learning progress")
    await page.wait_for_function(
        "/step \\d+ of 40/.test(document.getElementById('learn-text').textContent)", timeout=120_000
    )
    during = await page.evaluate("stylecast.renderedFrames")
    await page.wait_for_function(
        "document.getElementById('learn-text').textContent.includes('is ready')", timeout=180_000
    )
    assert "for every session" in (await progress.text_content() or "")
    assert await page.locator("#learn-progress").evaluate("p => p.value") == 1
    assert not await page.locator("#learn-preview").is_hidden()  # the preview tile showed the new style
    assert await page.evaluate("stylecast.renderedFrames") > during + 10  # video went on while it learned

    # The new slider is there, in the same session (no reconnect), and it works.
    new = page.get_by_label("Blue Stripes weight")
    await new.wait_for(timeout=10_000)
    assert await page.evaluate("stylecast.state.session") == next(iter(server.server.sessions))
    assert (await page.get_by_role("status", name="Connection status").text_content()) == "Live"
    before = await page.evaluate("stylecast.sample()")
    await new.fill("100")
    await page.get_by_label("ember weight").fill("0")
    await page.wait_for_function(
        "(() => { const w = stylecast.lastAck && stylecast.lastAck.state.weights;"
        " return w && w.length === 4 && w[0] === 0 && w[3] > 0; })()",
        timeout=10_000,
    )
    await frames_after(page, 20)
    after = await page.evaluate("stylecast.sample()")
    assert mad(before, after) > 2, mad(before, after)
    assert await page.locator(".style img.thumb").count() == 1  # the tiny model ships none; the new one has one
    shot = tmp_path / "learned.png"
    await page.screenshot(path=str(shot))
    print(f"page screenshot: {shot}")


ATTACKER_PAGE = """<!doctype html><meta charset="utf-8"><title>next door</title>
<iframe name="sink" style="display:none"></iframe>
<form id="f" method="post" enctype="multipart/form-data" target="sink">
  <input type="file" name="image" id="file"><input name="name" value="Next door">
</form>
<script>
window.results = {};
async function attempt(name, fn) {
  try { window.results[name] = await fn(); } catch (e) { window.results[name] = "blocked: " + e.name; }
}
(async () => {
  const victim = new URLSearchParams(location.search).get("victim");
  const offer = JSON.stringify({sdp: "v=0\\r\\n", type: "offer"});
  // A JSON POST needs a CORS preflight, which the server does not grant: the fetch fails.
  await attempt("json offer", async () => (await fetch(victim + "/offer", {method: "POST",
      headers: {"Content-Type": "application/json"}, body: offer})).status);
  // text/plain needs no preflight: it is sent, and the browser hides the (refusing) answer.
  await attempt("text offer", async () => (await fetch(victim + "/offer", {method: "POST", mode: "no-cors",
      headers: {"Content-Type": "text/plain"}, body: offer})).type);
  // multipart needs no preflight either: an upload of a real PNG, by fetch and by a form post.
  const png = await (await fetch("/painting.png")).blob();
  const form = new FormData(); form.append("image", png, "p.png"); form.append("name", "By fetch");
  await attempt("fetch upload", async () => (await fetch(victim + "/api/styles", {method: "POST",
      mode: "no-cors", body: form})).type);
  const dt = new DataTransfer(); dt.items.add(new File([png], "p.png", {type: "image/png"}));
  document.getElementById("file").files = dt.files;
  const f = document.getElementById("f"); f.action = victim + "/api/styles";
  await attempt("form upload", async () => { f.submit(); await new Promise(r => setTimeout(r, 1500)); return "sent"; });
  // Reading the server's answers from another origin: refused by the browser (no CORS headers).
  await attempt("read info", async () => (await fetch(victim + "/api/info")).status);
  await attempt("delete", async () => (await fetch(victim + "/api/styles/0", {method: "DELETE"})).status);
  window.done = true;
})();
</script>"""


async def test_a_page_on_another_origin_cannot_offer_upload_or_read(
    start_server: StartServer, launch: Callable[..., Awaitable[Any]], tmp_path: Path
) -> None:
    """A real Chromium page served from a second origin (another loopback port) tries what a page
    the user happens to visit could: its fetches and form posts fail, and the server starts nothing."""
    import io

    from aiohttp import web
    from PIL import Image

    server = await start_server(allow_new_styles=True, models_dir=tmp_path / "models")
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(png, "PNG")
    attacker = web.Application()
    attacker.router.add_get("/", lambda r: web.Response(text=ATTACKER_PAGE, content_type="text/html"))
    attacker.router.add_get("/painting.png", lambda r: web.Response(body=png.getvalue(), content_type="image/png"))
    runner = web.AppRunner(attacker)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        other = f"http://127.0.0.1:{runner.addresses[0][1]}"
        page = await launch()
        await page.goto(f"{other}/?victim={server.url}")
        await page.wait_for_function("window.done === true", timeout=60_000)
        results = await page.evaluate("window.results")
    finally:
        await runner.cleanup()
    assert results["json offer"].startswith("blocked"), results  # the preflight is not granted
    assert results["read info"].startswith("blocked") and results["delete"].startswith("blocked"), results
    # The no-cors ones were sent; the server refused them (counted), and started nothing.
    assert server.server.counters.foreign >= 3, (server.server.counters, results)
    assert not server.server.sessions and not server.server.styles_api.jobs.jobs
    assert not (tmp_path / "models" / "jobs").exists() or not any((tmp_path / "models" / "jobs").iterdir())
