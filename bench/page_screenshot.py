"""The README's picture of the page: the real page, live, with a style mix, in headless Chromium.

Copy-paste command (from the repository root)::

    python -m bench.page_screenshot --model engines/models/default.onnx --video ../shared/data/video/vtest.avi \\
        --mix "The Starry Night:1,The Great Wave:0.4" --out docs/screenshots/page.png

What it does: the first ``--seconds`` of ``--video`` become a Y4M file in a temporary
folder (scaled to fit 640x480, aspect kept, at the video's frame rate), which
Chromium's fake camera plays in a loop. The server runs in this process
(``streamer.app.create_app`` on 127.0.0.1, a free port, with the model's painting
thumbnails); headless Chromium (Debian's ``/usr/bin/chromium``, driven by
Playwright) opens the page at a 1280x820 viewport, presses "Start camera", picks
640 × 480 in the Resolution select and moves the style sliders to the ``--mix``
weights (every style not named goes to 0). Once the server has acknowledged those
weights and ``--settle`` seconds of stylized frames with that mix have been shown,
a full-page screenshot is written to ``--out`` (``--no-full-page``: the viewport only).
Everything is closed afterwards.

With ``--learn PAINTING`` the server runs with ``--allow-new-styles`` (a temporary models
folder), the painting is dropped into the page's *Add a painting* form, and the screenshot
is taken mid-training, once the preview tile shows the new style and ``--learn-step``
steps are done (the README's second picture)::

    P=../shared/data/styles/gcompris-qt-data__paintings
    python -m bench.page_screenshot --learn $P/Bazille_The_Ramparts_at_Aigues_Mortes_1867.png \\
        --out docs/screenshots/learning.png

With ``--watch`` the video is not the page's camera: a WHIP client (aiortc, as OBS would) publishes
it to ``/whip``, and the page opens ``/?session=latest``, watching that session over WHEP and
steering its mix over HTTP (the README's OBS picture)::

    python -m bench.page_screenshot --watch --mix "Composition VIII:1,The Great Wave:0.3" \\
        --out docs/screenshots/watch.png

The video's credit is in ``docs/CREDITS.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import sys
import tempfile
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from bench.chromium import BASE_ARGS, CHROMIUM, FAKE_CAMERA, FULL_RATE, open_hooked
from bench.data import VIDEO
from bench.loopback import WhipClient, local_server
from common.mix import parse_mix
from common.paths import DEFAULT_MODEL
from common.sizes import fit_size

log = logging.getLogger("bench.page_screenshot")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MIX = "The Starry Night:1,The Great Wave:0.4"
CAMERA_BOX = (640, 480)  # the page opens the camera at 640x480
RESOLUTION = "640x480"  # the processing resolution chosen in the page
CHROMIUM_ARGS = [*FAKE_CAMERA, *BASE_ARGS, *FULL_RATE]


# ----------------------------------------------------------------------------- inputs


def check_mix(text: str) -> str:
    """``--mix`` as slider positions: a mix (``common.mix`` rules) of weights within 0..1 each."""
    for part in text.split(","):
        name, sep, value = part.rpartition(":")
        try:
            weight = float(value) if sep else 1.0
        except ValueError:
            continue  # the mix parser names the problem once the styles are known
        if not 0 <= weight <= 1:
            raise ValueError(f"the weight of {name.strip()!r} must be within 0..1 (a slider position), got {weight}")
    return text


def write_camera_y4m(video: Path, path: Path, seconds: float) -> tuple[int, int, float, int]:
    """The first ``seconds`` of ``video`` as a Y4M (I420) file for Chromium's fake camera.

    Returns (width, height, fps, frames).
    """
    import cv2

    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise RuntimeError(f"cannot read the video {video}")
    try:
        fps = cap.get(cv2.CAP_PROP_FPS)
        if not fps or math.isnan(fps) or not 1 <= fps <= 120:
            fps = 30.0
        rate = Fraction(fps).limit_denominator(1001)
        # Even sides (I420), never larger than the video.
        w, h = fit_size(int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), CAMERA_BOX, 2)
        w, h = w - w % 2, h - h % 2
        wanted = max(1, round(seconds * fps))
        frames = 0
        with open(path, "wb") as f:
            f.write(f"YUV4MPEG2 W{w} H{h} F{rate.numerator}:{rate.denominator} Ip A1:1 C420jpeg\n".encode())
            while frames < wanted:
                ok, bgr = cap.read()
                if not ok:
                    break
                if bgr.shape[1] != w or bgr.shape[0] != h:
                    bgr = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA)
                f.write(b"FRAME\n" + cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420).tobytes())
                frames += 1
    finally:
        cap.release()
    if frames == 0:
        raise RuntimeError(f"no frames could be decoded from {video}")
    return w, h, float(fps), frames


# ----------------------------------------------------------------------------- page


async def raise_if_alert(page: Any, what: str) -> None:
    """Fail with the page's own error text if it shows one."""
    alert = page.get_by_role("alert")
    if await alert.is_visible():
        raise RuntimeError(f"{what}: the page says: {await alert.text_content()}")


async def resolve_mix(page: Any, mix: str) -> dict[str, float]:
    """Every style of the page's model (in slider order) -> its slider position 0..1 (0 if not in ``mix``)."""
    styles = [s["name"] for s in await page.evaluate("stylecast.state.info.styles")]
    weights = parse_mix(mix, styles)
    return {style: round(w * 100) / 100 for style, w in zip(styles, weights, strict=True)}


async def set_sliders(page: Any, wanted: dict[str, float]) -> None:
    """Move each style's slider to its position, the way a user drags it."""
    # Positive weights first: the page sends nothing while every slider is at 0.
    for style in sorted(wanted, key=lambda s: wanted[s] <= 0):
        value = round(wanted[style] * 100)
        log.info("slider %-24s -> %3d%%", style, value)
        await page.get_by_label(f"{style} weight", exact=True).fill(str(value))
    await page.evaluate("document.activeElement && document.activeElement.blur()")  # no focus ring in the picture


async def frames_after(page: Any, count: int, timeout_s: float) -> None:
    """Wait until ``count`` more stylized frames have been presented."""
    n0 = await page.evaluate("stylecast.renderedFrames")
    await page.wait_for_function(f"stylecast.renderedFrames >= {n0 + count}", timeout=timeout_s * 1000)


async def learn_on_page(page: Any, args: argparse.Namespace) -> None:
    """Drop ``args.learn`` into the page's form and wait until it is ``args.learn_step`` steps in, with a preview."""
    log.info("adding the painting %s", args.learn)
    await page.get_by_label("Painting file").set_input_files(str(args.learn))
    await page.get_by_role("button", name="Learn it").click()
    await page.wait_for_function(
        "(n) => { const m = /step (\\d+) of/.exec(document.getElementById('learn-text').textContent);"
        " return !!m && Number(m[1]) >= n && !document.getElementById('learn-preview').hidden; }",
        arg=args.learn_step,
        timeout=600_000,
    )
    log.info("mid-training: %s", await page.locator("#learn-text").text_content())
    await page.evaluate("document.activeElement && document.activeElement.blur()")


async def publish(stack: contextlib.AsyncExitStack, url: str, video: Path) -> str:
    """Publish ``video`` (looped) to ``url``/whip as a WHIP client; returns the session id."""
    import aiohttp
    from aiortc.contrib.media import MediaPlayer

    player = MediaPlayer(str(video), loop=True)
    stack.callback(lambda: player.video and player.video.stop())
    client = WhipClient(track=player.video)
    stack.push_async_callback(client.close)
    http = await stack.enter_async_context(aiohttp.ClientSession())
    status, _, body = await client.post(http, url + "/whip")
    if status != 201 or client.resource is None:
        raise RuntimeError(f"WHIP publish refused: {status} {body}")
    log.info("publishing %s over WHIP: %s", video, client.resource)
    return client.resource.rsplit("/", 1)[-1]


async def take(args: argparse.Namespace, camera: Path) -> None:
    from playwright.async_api import async_playwright

    timeout_ms = args.timeout * 1000
    config: dict[str, Any] = {}
    if args.learn:
        config = {"allow_new_styles": True, "models_dir": Path(tempfile.mkdtemp(prefix="stylecast-shot-models-"))}
    async with local_server(args.model, args.backend, **config) as srv, contextlib.AsyncExitStack() as stack:
        url, backend_name = srv.url, srv.backend.name
        log.info("server at %s, backend %s", url, backend_name)
        if args.watch:
            await publish(stack, url, args.video)
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=args.chromium,
                headless=True,
                args=[*CHROMIUM_ARGS, f"--use-file-for-fake-video-capture={camera}"],
            )
            try:
                context = await browser.new_context(viewport={"width": args.width, "height": args.height})
                page = await context.new_page()
                page.on("pageerror", lambda e: log.warning("page error: %s", e))
                await open_hooked(page, f"{url}/?hook=1" + ("&session=latest" if args.watch else ""))
                await page.locator("#styles input[type=range]").first.wait_for(timeout=timeout_ms)
                wanted = await resolve_mix(page, args.mix)

                log.info("watching the WHIP session" if args.watch else "starting the camera")
                await page.get_by_role("button", name="Watch" if args.watch else "Start camera").click()
                await page.wait_for_function(
                    "stylecast.renderedFrames > 5 || !document.getElementById('message').hidden", timeout=timeout_ms
                )
                await raise_if_alert(page, "the stream did not start")

                if not args.watch:  # a WHIP session's size is its publisher's
                    log.info("resolution %s", RESOLUTION)
                    await page.get_by_label("Resolution").select_option(RESOLUTION)
                    await page.wait_for_function(
                        f"document.getElementById('stylized').videoWidth === {RESOLUTION.split('x')[0]}",
                        timeout=timeout_ms,
                    )

                await set_sliders(page, wanted)
                weights = list(wanted.values())
                await page.wait_for_function(
                    "(want) => { const w = stylecast.lastAck && stylecast.lastAck.state.weights;"
                    " return !!w && w.length === want.length && w.every((v, i) => Math.abs(v - want[i]) < 0.006); }",
                    arg=weights,
                    timeout=timeout_ms,
                )
                log.info("server acknowledged weights %s; letting the mix settle for %.1f s", weights, args.settle)
                await asyncio.sleep(args.settle)
                await frames_after(page, 5, args.timeout)
                # The readout shows live numbers, not dashes (a watcher gets no server stats: no channel).
                readouts = ["fps", "latency"] if args.watch else ["fps", "infer", "server-fps", "latency"]
                await page.wait_for_function(
                    "(ids) => ids.every((id) => document.getElementById(id).textContent !== '–')",
                    arg=readouts,
                    timeout=timeout_ms,
                )
                await raise_if_alert(page, "while streaming")
                if args.learn:
                    await learn_on_page(page, args)

                args.out.parent.mkdir(parents=True, exist_ok=True)
                await page.screenshot(path=str(args.out), full_page=args.full_page)
                fps = await page.locator("#fps").text_content()
                log.info("wrote %s (page fps %s, backend %s)", args.out, fps, backend_name)
                await page.get_by_role("button", name="Stop").click()
            finally:
                await browser.close()


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.page_screenshot",
        description="Screenshot of the live page (headless Chromium, a video file as the camera) for the README.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="stylecast model (.onnx) the server runs")
    p.add_argument("--backend", default="auto", help="inference backend for the in-process server")
    p.add_argument("--video", type=Path, default=VIDEO, help="video played by the fake camera")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds of --video made into the camera clip")
    p.add_argument(
        "--mix",
        default=DEFAULT_MIX,
        help="slider positions 'STYLE:WEIGHT,STYLE:WEIGHT' (names or indices, weights 0..1; styles not named go to 0)",
    )
    p.add_argument("--settle", type=float, default=2.0, help="seconds streamed with the mix before the screenshot")
    p.add_argument("--width", type=int, default=1280, help="browser viewport width (CSS px)")
    p.add_argument("--height", type=int, default=820, help="browser viewport height (CSS px)")
    p.add_argument(
        "--full-page",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the whole page (taller than the viewport when the mixer is); --no-full-page: the viewport only",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each step of the page")
    p.add_argument("--chromium", default=CHROMIUM, help="Chromium executable")
    p.add_argument("--learn", type=Path, help="a painting to add on the page; the screenshot shows it being learned")
    p.add_argument("--learn-step", type=int, default=120, help="with --learn: the step to take the screenshot at")
    p.add_argument(
        "--watch",
        action="store_true",
        help="publish --video over WHIP and screenshot the page watching and steering that session (?session=latest)",
    )
    p.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots" / "page.png", help="PNG to write")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("aiohttp.access", "aioice"):  # a line per request / per ICE check
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not args.model.is_file():
        p.error(f"model not found: {args.model} (make one with python -m engines.ship, or pass --model PATH.onnx)")
    if not args.video.is_file():
        p.error(f"video not found: {args.video}")
    if not Path(args.chromium).exists():
        p.error(f"Chromium not found at {args.chromium} (apt-get install chromium)")
    try:
        check_mix(args.mix)
    except ValueError as e:
        p.error(f"--mix: {e}")
    if args.seconds <= 0 or args.settle < 0 or args.timeout <= 0:
        p.error("--seconds and --timeout must be positive, --settle not negative")

    with tempfile.TemporaryDirectory(prefix="stylecast-shot-") as tmp:
        camera = Path(tmp) / "camera.y4m"
        w, h, fps, frames = write_camera_y4m(args.video, camera, args.seconds)
        log.info("camera clip: %d frames of %s at %dx%d, %.3g fps", frames, args.video, w, h, fps)
        try:
            asyncio.run(take(args, camera))
        except (RuntimeError, ValueError) as e:
            log.error("%s", e)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
