"""How the project launches Debian's headless Chromium (page tests, e2e bench, README screenshot)."""

from __future__ import annotations

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
