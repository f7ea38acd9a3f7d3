"""WHIP and WHEP with third-party clients in a real Chromium, and the page's view of a WHIP session.

The third-party clients are npm's ``whip-whep`` (WHIPClient and WHEPClient by the RFC's author),
installed into ``tests/web/node_modules`` by ``npm ci --prefix tests/web`` (``make test`` does it
where npm is installed). They trickle their candidates with PATCH and send the token as
``Authorization: Bearer``. Their pages are served at the stylecast server's own origin through
Playwright's request routing (so their fetches are same-origin, as on a real deployment that hosts
such a page); every request to ``/whip`` and ``/whep`` goes to the real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from bench.chromium import BASE_ARGS, FAKE_CAMERA, FULL_RATE, open_hooked, still_camera
from bench.loopback import LocalServer, WhipClient, pattern, serve
from engines.runtime import load_backend
from streamer.config import StreamerConfig

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

WEB = Path(__file__).parent / "web"
LIBRARY = WEB / "node_modules" / "whip-whep"
TOKEN = "obs-token"

PUBLISH_PAGE = """<!doctype html><meta charset="utf-8"><title>WHIP publisher</title>
<video id="camera" autoplay muted playsinline></video>
<script type="module">
import { WHIPClient } from "./whip.js";
window.publish = async (token) => {
  const camera = await navigator.mediaDevices.getUserMedia({ video: { width: 320, height: 240, frameRate: 30 } });
  document.getElementById("camera").srcObject = camera;
  const pc = new RTCPeerConnection();
  pc.addTransceiver(camera.getVideoTracks()[0], { direction: "sendonly" });
  const whip = new WHIPClient();
  await whip.publish(pc, location.origin + "/whip", token);
  window.whip = whip;
  window.pc = pc;
  return whip.resourceURL.pathname;
};
</script>"""

PLAY_PAGE = """<!doctype html><meta charset="utf-8"><title>WHEP player</title>
<video id="player" autoplay muted playsinline></video>
<script type="module">
import { WHEPClient } from "./whep.js";
const video = document.getElementById("player");
window.frames = 0;
const tick = () => { window.frames += 1; video.requestVideoFrameCallback(tick); };
video.requestVideoFrameCallback(tick);
window.play = async (path, token) => {
  const pc = new RTCPeerConnection();
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.ontrack = (ev) => { video.srcObject = ev.streams[0] || new MediaStream([ev.track]); };
  const whep = new WHEPClient();
  await whep.view(pc, location.origin + path, token);
  window.whep = whep;
  return whep.resourceURL.pathname;
};
// The picture as RGB rows (h x w x 3, flattened), drawn at the video's own size.
window.picture = () => {
  const c = document.createElement("canvas");
  c.width = video.videoWidth; c.height = video.videoHeight;
  const ctx = c.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(video, 0, 0);
  const d = ctx.getImageData(0, 0, c.width, c.height).data;
  const out = new Array((d.length / 4) * 3);
  for (let i = 0, j = 0; i < d.length; i += 4) { out[j++] = d[i]; out[j++] = d[i + 1]; out[j++] = d[i + 2]; }
  return { w: c.width, h: c.height, rgb: out };
};
</script>"""


@pytest.fixture
def library() -> Path:
    if (LIBRARY / "whip.js").is_file():
        return LIBRARY
    msg = f"npm's whip-whep is not installed in {WEB} (npm ci --prefix tests/web)"
    if os.environ.get("STYLECAST_REQUIRE_BROWSER"):
        pytest.fail(f"{msg}, and STYLECAST_REQUIRE_BROWSER is set")
    pytest.skip(msg)


@pytest.fixture
async def server(tiny_onnx: Path) -> AsyncIterator[LocalServer]:
    backend = load_backend(tiny_onnx, backend="onnxruntime", precision="fp32")
    config = StreamerConfig(model_path=tiny_onnx, token=TOKEN, resolutions=("320x240",), default_resolution="320x240")
    try:
        async with serve(config, backend) as srv:
            yield srv
    finally:
        backend.close()


@pytest.fixture
async def browser(chromium_path: str) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """new_page(*args) -> a page in a fresh headless Chromium."""
    from playwright.async_api import async_playwright

    pw = await async_playwright().start()
    browsers: list[Any] = []

    async def new_page(*args: str) -> Any:
        b = await pw.chromium.launch(
            executable_path=chromium_path, headless=True, args=BASE_ARGS + FULL_RATE + list(args)
        )
        browsers.append(b)
        page = await (await b.new_context(viewport={"width": 900, "height": 700})).new_page()
        page.on("pageerror", lambda e: print(f"page error: {e}"))
        page.on("console", lambda m: print(f"console: {m.text}") if m.type == "error" else None)
        return page

    yield new_page
    for b in browsers:
        await b.close()
    await pw.stop()


async def route_client_pages(page: Any, origin: str, library: Path) -> None:
    """Serve the client pages and the library at ``origin/clients/``; nothing else is intercepted."""
    files = {"publish.html": PUBLISH_PAGE, "play.html": PLAY_PAGE}

    async def handle(route: Any) -> None:
        name = route.request.url.split("/clients/", 1)[1].split("?")[0]
        if name in files:
            await route.fulfill(status=200, content_type="text/html", body=files[name])
        elif name in ("whip.js", "whep.js"):
            await route.fulfill(status=200, content_type="text/javascript", body=(library / name).read_text())
        else:
            await route.fulfill(status=404, body="not here")

    await page.route(f"{origin}/clients/**", handle)


def mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


async def test_third_party_whip_client_publishes_and_its_whep_client_plays_the_stylized_stream(
    server: LocalServer, browser: Callable[..., Awaitable[Any]], library: Path, tmp_path: Path
) -> None:
    camera_file = tmp_path / "camera.y4m"
    camera = still_camera(camera_file, (320, 240))
    publisher = await browser(*FAKE_CAMERA, f"--use-file-for-fake-video-capture={camera_file}")
    await route_client_pages(publisher, server.url, library)
    await publisher.goto(f"{server.url}/clients/publish.html")
    resource = await publisher.evaluate("token => publish(token)", TOKEN)
    assert resource.startswith("/whip/")
    session_id = resource.split("/")[-1]
    # The library's offer has no candidates: it sends them afterwards, with PATCH (RFC 8840).
    await publisher.wait_for_function("pc.connectionState === 'connected'", timeout=30_000)
    session = server.server.sessions[session_id]
    assert session.kind == "whip"

    player = await browser()
    await route_client_pages(player, server.url, library)
    await player.goto(f"{server.url}/clients/play.html")
    viewer = await player.evaluate("([path, token]) => play(path, token)", [f"/whep/{session_id}", TOKEN])
    assert viewer.startswith(f"/whep/{session_id}/")
    await player.wait_for_function("window.frames > 45", timeout=60_000)

    shot = await player.evaluate("picture()")
    got = np.asarray(shot["rgb"], np.uint8).reshape(shot["h"], shot["w"], 3)
    assert got.shape[:2] == camera.shape[:2]
    want = server.backend.stylize(camera, session.mixer.step()[0])
    # Stylized: far from the camera's picture, close to the network's output for it (both went
    # through VP8 twice, so not equal).
    to_camera, to_stylized = mad(got, camera), mad(got, want)
    print(
        f"played vs camera {to_camera:.1f}, vs stylized {to_stylized:.1f} (camera vs stylized {mad(camera, want):.1f})"
    )
    assert to_stylized < 0.4 * to_camera

    # A wrong token is refused, for the player as for the publisher.
    refused = await player.evaluate(
        "path => play(path, 'wrong').then(() => 'played', e => String(e))", f"/whep/{session_id}"
    )
    assert "401" in refused

    # The library's stop() sends DELETE: the session ends, and its viewer with it.
    await publisher.evaluate("whip.stop()")
    for _ in range(50):
        if session_id not in server.server.sessions:
            break
        await asyncio.sleep(0.1)
    assert session_id not in server.server.sessions
    await player.wait_for_function(
        "['closed', 'failed', 'disconnected'].includes(whep.pc.connectionState)", timeout=30_000
    )


async def test_the_page_watches_and_steers_a_whip_session_and_the_clean_view_shows_only_video(
    server: LocalServer, browser: Callable[..., Awaitable[Any]]
) -> None:
    async with aiohttp.ClientSession() as http, contextlib.AsyncExitStack() as stack:
        pub = WhipClient(pattern(320, 240))
        stack.push_async_callback(pub.close)
        status, _, _ = await pub.post(http, server.url + "/whip", TOKEN)
        assert status == 201 and pub.resource is not None
        session_id = pub.resource.split("/")[-1]
        session = server.server.sessions[session_id]

        page = await browser()
        await open_hooked(page, f"{server.url}/?token={TOKEN}&hook=1&session={session_id}")
        await page.get_by_role("button", name="Watch").click()
        await page.wait_for_function("stylecast.renderedFrames > 20", timeout=60_000)
        assert not await page.locator("#original").is_visible()  # no camera on this page
        # No data channel pushes the server's numbers to a watcher: the page asks for them.
        await page.wait_for_function(
            "/\\d/.test(document.querySelector('#server-fps').textContent)"
            " && /ms/.test(document.querySelector('#infer').textContent)",
            timeout=20_000,
        )

        # The page's controls drive that session's mixer, over PATCH.
        await page.wait_for_function("stylecast.acks >= 1", timeout=10_000)
        before = session.mixer.state.weights
        await page.get_by_label("Transition").select_option(label="instant")
        await page.get_by_label("moss weight").fill("100")
        await page.wait_for_function("stylecast.acks >= 2", timeout=10_000)
        for _ in range(50):
            if session.mixer.state.weights != before:
                break
            await asyncio.sleep(0.1)
        assert session.mixer.state.weights[2] > 0.5, (before, session.mixer.state.weights)
        await page.locator("#stroke").fill("2")
        for _ in range(50):
            if session.mixer.state.stroke != 1.0:
                break
            await asyncio.sleep(0.1)
        assert session.mixer.state.stroke > 1.0

        # The clean view: only the video, filling the window, playing without a click.
        clean = await browser()
        await open_hooked(clean, f"{server.url}/?token={TOKEN}&hook=1&session=latest&view=1")
        await clean.wait_for_function("stylecast.renderedFrames > 10", timeout=60_000)
        box = await clean.locator("#stylized").bounding_box()
        assert box == {"x": 0, "y": 0, "width": 900, "height": 700}
        for hidden in ("#start", "#styles", ".topbar", "#learn", "#original", ".readout"):
            assert not await clean.locator(hidden).first.is_visible(), hidden
        assert await clean.evaluate("stylecast.state.session") == session_id  # "latest" found this one

        # The publisher goes: both pages say so; the clean view waits for the next one by itself.
        async with http.delete(server.url + pub.resource, headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert r.status == 200  # what OBS sends when it stops streaming
        await page.get_by_role("alert").wait_for(state="visible", timeout=30_000)
        assert session_id in (await page.get_by_role("alert").text_content() or "")
        nxt = WhipClient(pattern(320, 240, seed=3))
        stack.push_async_callback(nxt.close)
        assert (await nxt.post(http, server.url + "/whip", TOKEN))[0] == 201
        next_id = nxt.resource.split("/")[-1]  # type: ignore[union-attr]
        await clean.wait_for_function(
            f"stylecast.state.session === '{next_id}' && stylecast.state.connected", timeout=60_000
        )
