"""WHIP in, WHEP out, control over HTTP: the protocol's edges with plain aiortc clients on the real server."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import pytest

from bench.loopback import LocalServer, WhipClient, pattern, serve
from engines.runtime import FrameBackend, load_backend
from streamer.config import StreamerConfig
from streamer.track import to_i420
from streamer.whip import ice_links, offered_video

pytestmark = pytest.mark.timeout(120)
SIZE = (160, 120)
TOKEN = "whip-token"


@pytest.fixture(scope="module")
def backend(tiny_onnx: Path) -> FrameBackend:
    return load_backend(tiny_onnx, backend="onnxruntime", precision="fp32")


Start = Callable[..., Awaitable[LocalServer]]


@pytest.fixture
async def start(backend: FrameBackend, tiny_onnx: Path) -> AsyncIterator[Start]:
    async with contextlib.AsyncExitStack() as stack:

        async def go(**config: Any) -> LocalServer:
            config.setdefault("model_path", tiny_onnx)
            return await stack.enter_async_context(serve(StreamerConfig(**config), backend))

        yield go


def mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


async def metric(http: aiohttp.ClientSession, url: str, name: str, token: str | None = None) -> float:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.get(url + "/metrics", headers=headers) as r:
        for line in (await r.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not on /metrics")


async def test_publish_view_stylized_and_delete(start: Start) -> None:
    srv = await start(token=TOKEN, ice_servers=("stun:stun.example.org:3478", "turn:turn.example.org"),
                      ice_username="u", ice_credential="secret")  # fmt: skip
    sent = pattern(*SIZE)
    async with aiohttp.ClientSession() as http:
        pub, viewer = WhipClient(sent), WhipClient()
        try:
            status, headers, answer = await pub.post(http, srv.url + "/whip", TOKEN)
            assert status == 201 and headers["Content-Type"].startswith("application/sdp")
            assert pub.resource is not None and pub.resource.startswith("/whip/")
            assert "a=candidate:" in answer  # every candidate in the answer: OBS does not trickle
            links = headers.getall("Link")
            assert '<stun:stun.example.org:3478>; rel="ice-server"' in links
            assert any('username="u"' in link and 'credential="secret"' in link for link in links)
            status, headers, _ = await viewer.post(http, srv.url + "/whep", TOKEN)  # the newest publisher
            assert status == 201 and viewer.resource is not None and viewer.resource.startswith("/whep/")
            await viewer.wait_frames(15, timeout=30)
            got = viewer.latest_rgb()
            assert got.shape[:2] == (SIZE[1], SIZE[0])
            want = srv.backend.stylize(sent, srv.server.sessions[pub.resource.split("/")[-1]].mixer.step()[0])
            assert mad(got, want) < 0.35 * mad(sent, want)  # the stylized picture, not the camera's
            async with http.delete(srv.url + pub.resource, headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                assert r.status == 200
            await asyncio.sleep(0.5)
            assert not srv.server.sessions
            async with http.delete(srv.url + pub.resource, headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                assert r.status == 404
        finally:
            await pub.close()
            await viewer.close()


async def test_an_obs_like_offer_with_audio_and_h264_is_stylized(start: Start) -> None:
    """OBS offers audio first and H.264 video: the audio is answered and left alone, the video stylized."""
    srv = await start()
    sent = pattern(*SIZE)
    async with aiohttp.ClientSession() as http:
        pub, viewer = WhipClient(sent, codec="video/H264", audio=True), WhipClient()
        try:
            status, _, answer = await pub.post(http, srv.url + "/whip")
            assert status == 201, answer
            media = [line.split()[0] for line in answer.splitlines() if line.startswith("m=")]
            assert media == ["m=audio", "m=video"]
            video = answer[answer.index("m=video") :]
            assert "H264/90000" in video and "VP8" not in video
            assert (await viewer.post(http, srv.url + "/whep"))[0] == 201
            await viewer.wait_frames(15, timeout=30)
            session = srv.server.sessions[pub.resource.split("/")[-1]]  # type: ignore[union-attr]
            want = srv.backend.stylize(sent, session.mixer.step()[0])
            assert mad(viewer.latest_rgb(), want) < 0.35 * mad(sent, want)
        finally:
            await pub.close()
            await viewer.close()


async def test_the_protocol_edges(start: Start) -> None:
    srv = await start(token=TOKEN, max_sessions=1, ice_servers=("turn:turn.example.org",), ice_username="u",
                      ice_credential="secret")  # fmt: skip
    async with aiohttp.ClientSession() as http:
        # 401 with WWW-Authenticate: Bearer, and no TURN credential, without the token.
        c = WhipClient(pattern(*SIZE))
        status, headers, _ = await c.post(http, srv.url + "/whip")
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        assert "secret" not in " ".join(headers.getall("Link", []))
        await c.close()
        auth = {"Authorization": f"Bearer {TOKEN}"}
        # A body that is not SDP: 415; SDP without video: 400, with the reason.
        async with http.post(srv.url + "/whip", data=b'{"sdp": "v=0"}', headers={**auth,
                             "Content-Type": "application/json"}) as r:  # fmt: skip
            assert r.status == 415 and "application/sdp" in (await r.json())["error"]
        audio = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendonly\r\n"
        async with http.post(srv.url + "/whip", data=audio, headers={**auth, "Content-Type": "application/sdp"}) as r:
            assert r.status == 400 and "no video" in (await r.json())["error"]
        # The page next door cannot publish or view: a foreign Origin or Host is refused before the token.
        for extra in ({"Origin": "http://evil.example"}, {"Host": "evil.example"}):
            async with http.post(srv.url + "/whip", data=audio, headers={**auth, **extra,
                                 "Content-Type": "application/sdp"}) as r:  # fmt: skip
                assert r.status == 403, extra
            async with http.patch(srv.url + "/api/sessions/x", json={"type": "ping"}, headers={**auth, **extra}) as r:
                assert r.status == 403, extra
        # A WHEP offer to a session that does not exist: 404.
        v = WhipClient()
        status, _, body = await v.post(http, srv.url + "/whep/nosuchsession", TOKEN)
        assert status == 404 and "no publishing session" in body
        await v.close()
        # The server holds one session: a second publisher gets 503, as a page does.
        first, second = WhipClient(pattern(*SIZE)), WhipClient(pattern(*SIZE))
        try:
            assert (await first.post(http, srv.url + "/whip", TOKEN))[0] == 201
            status, _, body = await second.post(http, srv.url + "/whip", TOKEN)
            assert status == 503 and "full" in body
        finally:
            await first.close()
            await second.close()


async def test_three_viewers_cost_one_inference_per_frame(start: Start) -> None:
    srv = await start(resolutions=("160x120",), default_resolution="160x120")
    async with aiohttp.ClientSession() as http:
        pub = WhipClient(pattern(*SIZE), fps=15)
        viewers = [WhipClient() for _ in range(3)]
        try:
            assert (await pub.post(http, srv.url + "/whip"))[0] == 201
            for v in viewers:
                assert (await v.post(http, srv.url + "/whep"))[0] == 201
            await asyncio.gather(*(v.wait_frames(10, timeout=30) for v in viewers))
            f0, s0, t0 = (
                await metric(http, srv.url, "stylecast_inference_frames_total"),
                pub.camera.sent,
                time.monotonic(),
            )  # type: ignore[union-attr]
            await asyncio.sleep(4.0)
            f1, s1 = await metric(http, srv.url, "stylecast_inference_frames_total"), pub.camera.sent  # type: ignore[union-attr]
            inferred, sent = f1 - f0, s1 - s0
            assert all(v.frames > 30 for v in viewers)  # each viewer gets the video ...
            assert inferred <= sent * 1.1, (inferred, sent, time.monotonic() - t0)  # ... at one inference a frame
        finally:
            for c in (pub, *viewers):
                await c.close()


async def test_a_vanished_publisher_is_cleaned_up_with_its_viewers(start: Start) -> None:
    srv = await start(idle_timeout_s=1.5)
    async with aiohttp.ClientSession() as http:
        pub, viewer = WhipClient(pattern(*SIZE)), WhipClient()
        try:
            assert (await pub.post(http, srv.url + "/whip"))[0] == 201
            assert (await viewer.post(http, srv.url + "/whep"))[0] == 201
            await viewer.wait_frames(5, timeout=30)
            pub.camera.paused = True  # type: ignore[union-attr]  # gone without a DELETE
            deadline = time.monotonic() + 15
            while srv.server.sessions and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert not srv.server.sessions
            await asyncio.sleep(0.5)
            assert viewer.pc.connectionState in ("closed", "failed", "disconnected") or not any(
                srv.server.whip.viewers.values()
            )
        finally:
            await pub.close()
            await viewer.close()


async def test_control_over_http_drives_a_whip_session(start: Start) -> None:
    srv = await start(control_rate=5, control_burst=5, stats_interval_s=0.2)
    async with aiohttp.ClientSession() as http:
        pub = WhipClient(pattern(*SIZE))
        try:
            assert (await pub.post(http, srv.url + "/whip"))[0] == 201
            session_id = pub.resource.split("/")[-1]  # type: ignore[union-attr]
            url = f"{srv.url}/api/sessions/{session_id}"
            session = srv.server.sessions[session_id]
            for _ in range(100):  # a watcher has no data channel: it asks for the stats
                if session.last_stats and session.last_stats["fps_in"] > 0:  # (out: only while watched)
                    break
                await asyncio.sleep(0.1)
            async with http.patch(url, json={"type": "stats"}) as r:
                stats = await r.json()
                assert r.status == 200 and stats["type"] == "stats" and stats["fps_in"] > 0, stats
                assert stats["backend"] == session.served().backend.name
            async with http.patch(url, json={"type": "set", "weights": {"moss": 1}, "stroke": 1.5}) as r:
                body = await r.json()
                assert r.status == 200 and body["type"] == "ack" and body["state"]["stroke"] == 1.5
            assert srv.server.sessions[session_id].mixer.state.weights == (0.0, 0.0, 1.0)
            async with http.patch(url, json={"type": "set", "strength": 7}) as r:
                assert r.status == 400 and "strength must be 0..1" in (await r.json())["error"]
            async with http.patch(url, data="strength=1", headers={"Content-Type": "text/plain"}) as r:
                assert r.status == 415
            codes = []
            for _ in range(8):  # the same rate limit as the data channel's
                async with http.patch(url, json={"type": "ping", "t": 1}) as r:
                    codes.append(r.status)
            assert 429 in codes
            async with http.patch(f"{srv.url}/api/sessions/nosuch", json={"type": "ping", "t": 1}) as r:
                assert r.status == 404
        finally:
            await pub.close()


def test_offer_directions_and_links() -> None:
    base = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    assert offered_video(base + "m=audio 9 RTP 0\r\nm=video 9 RTP 96\r\na=sendonly\r\n") == "sendonly"
    assert offered_video(base + "m=video 9 RTP 96\r\na=recvonly\r\nm=audio 9 RTP 0\r\na=sendonly\r\n") == "recvonly"
    assert offered_video(base + "m=video 9 RTP 96\r\n") == "sendrecv"
    assert offered_video(base + "m=video 0 RTP 96\r\n") is None  # a rejected section
    assert offered_video(base + "m=audio 9 RTP 0\r\n") is None
    servers = [{"urls": "turn:t.example", "username": "u", "credential": "c"}, {"urls": "stun:s.example"}]
    assert ice_links(servers, False) == ['<turn:t.example>; rel="ice-server"', '<stun:s.example>; rel="ice-server"']
    assert 'credential="c"' in ice_links(servers, True)[0]


def test_shared_frames_are_i420_once_with_the_clock_kept() -> None:
    rgb = pattern(*SIZE)
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    frame.pts, frame.time_base = 1234, Fraction(1, 90000)
    out = to_i420(frame)
    assert out.format.name == "yuv420p" and (out.pts, out.time_base) == (1234, Fraction(1, 90000))
    # The same colours as the encoder's own conversion would give (BT.601, video range).
    assert mad(out.to_ndarray(format="rgb24"), frame.reformat(format="yuv420p").to_ndarray(format="rgb24")) < 2.0
    odd = av.VideoFrame.from_ndarray(pattern(161, 121), format="rgb24")
    assert to_i420(odd) is odd  # 4:2:0 needs even sizes: left to the encoder
