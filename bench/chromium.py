"""How the project launches Debian's headless Chromium (page tests, e2e bench, README screenshot)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

CHROMIUM = "/usr/bin/chromium"

# Offline, as root, WebRTC on loopback only.
BASE_ARGS = [
    "--allow-loopback-in-peer-connection",  # else no candidates on loopback
    "--disable-background-networking",  # the machine may be offline: no background fetches
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--no-sandbox",  # runs as root in CI
    "--disable-gpu",
    # Plain IP host candidates, not mDNS (.local) names: the server offers only 127.0.0.1, and
    # aioice resolves mDNS through a lock bound to the first event loop (pytest makes one per test).
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]
# A fake camera at 30 fps (without fps=30 it runs at 20), permission granted without a prompt.
FAKE_CAMERA = ["--use-fake-device-for-media-stream=fps=30", "--use-fake-ui-for-media-stream"]
# A headless page must keep presenting frames at full rate when nothing is on screen.
FULL_RATE = [
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
]


def still_camera(path: Path, size: tuple[int, int] = (640, 480), frames: int = 2) -> np.ndarray:
    """Write a Y4M clip of one still picture for the fake camera (``--use-file-for-fake-video-capture``;
    Chromium loops it), so a change in the stylized picture is the server's doing, not the camera's.
    Returns the picture as the camera delivers it (RGB, after the file's 4:2:0)."""
    w, h = size
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2] = (40, 170, 230)  # BGR orange
    img[:, w // 2 :] = (200, 90, 30)  # blue
    img[h // 2 :] //= 2
    cv2.circle(img, (w // 2, h // 2), h // 4, (255, 255, 255), -1)
    cv2.putText(img, "stylecast", (w // 32, h // 8), cv2.FONT_HERSHEY_SIMPLEX, w / 320, (20, 20, 20), 2)
    i420 = cv2.cvtColor(img, cv2.COLOR_BGR2YUV_I420)
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F30:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            f.write(b"FRAME\n" + i420.tobytes())
    return cv2.cvtColor(i420, cv2.COLOR_YUV2RGB_I420)


async def open_hooked(page: Any, url: str, timeout_ms: int = 30_000) -> None:
    """Load a ``?hook=1`` page and wait until ``window.stylecast`` exists.

    The page imports hook.js dynamically, and a dynamic import does not hold back the load event
    that ``page.goto`` waits for. A predicate that reads ``stylecast`` straight after ``goto`` can
    therefore run before the hook exists, and Playwright raises on its ReferenceError instead of
    retrying."""
    await page.goto(url)
    await page.wait_for_function("window.stylecast !== undefined", timeout=timeout_ms)
