"""TURN for clients behind NAT, against a real coturn on loopback: the credentials reach the
server's aiortc and the page, and the video flows through the relay when nothing else can."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiortc import RTCIceServer

from bench.loopback import Peer, pattern, serve
from engines.runtime import FrameBackend, load_backend
from streamer.config import StreamerConfig
from tests.conftest import require_tool

SIZE = (160, 120)
USER, PASSWORD = "stylecast", "relay-pass"
pytestmark = pytest.mark.timeout(120)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def turn_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real coturn on 127.0.0.1 with one long-term user, relaying on loopback."""
    binary = require_tool(shutil.which("turnserver"), "coturn's turnserver", "STYLECAST_REQUIRE_TURN", "coturn")
    port = free_udp_port()
    log = tmp_path_factory.mktemp("turn") / "turnserver.log"
    proc = subprocess.Popen(
        [binary, "-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1", f"--listening-port={port}",
         "--min-port=50000", "--max-port=50999", "--lt-cred-mech", f"--user={USER}:{PASSWORD}",
         "--realm=stylecast.test", "--no-tls", "--no-dtls", "--no-tcp-relay", "--no-cli",
         "--allow-loopback-peers", "--log-file=stdout", "--simple-log"],
        stdout=open(log, "w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while "listener opened" not in log.read_text().lower() and "relay" not in log.read_text().lower():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"turnserver did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)
        time.sleep(0.3)
        yield f"turn:127.0.0.1:{port}?transport=udp"
    finally:
        proc.terminate()
        proc.wait(5)


@pytest.fixture(scope="module")
def backend(tiny_onnx: Path) -> Iterator[FrameBackend]:
    loaded = load_backend(tiny_onnx, backend="onnxruntime", precision="fp32")
    yield loaded
    loaded.close()


def relay_only(sdp: str) -> str:
    """The answer with its relayed candidates only: the client can reach the server through TURN alone."""
    return "".join(
        line for line in sdp.splitlines(keepends=True) if not line.startswith("a=candidate:") or " typ relay" in line
    )


def candidates(sdp: str, kind: str) -> list[str]:
    return [line for line in sdp.splitlines() if line.startswith("a=candidate:") and f" typ {kind}" in line]


async def test_a_client_that_can_only_relay_gets_video_through_turn(
    turn_url: str, backend: FrameBackend, tiny_onnx: Path
) -> None:
    config = StreamerConfig(model_path=tiny_onnx, ice_servers=(turn_url,), ice_username=USER, ice_credential=PASSWORD)
    async with serve(config, backend) as srv, aiohttp.ClientSession() as http:
        async with http.get(srv.url + "/api/info") as r:
            ice = (await r.json())["ice_servers"]
        assert ice == [{"urls": turn_url, "username": USER, "credential": PASSWORD}]  # what the page's peer uses
        # A client behind a NAT nobody can open: it offers its relayed address only and,
        # like a browser with iceTransportPolicy "relay", keeps only the server's relayed one.
        peer = Peer(pattern(*SIZE), ice_servers=[RTCIceServer(**server) for server in ice])
        try:
            answer = await peer.connect(http, srv.url, edit_offer=relay_only, edit_answer=relay_only)
            assert candidates(answer["sdp"], "relay"), answer["sdp"]  # coturn allocated with the server's credentials
            await peer.wait_frames(10, timeout=40)
            nominated = peer.pc.getTransceivers()[0].receiver.transport.transport._connection._nominated
            kinds = {(p.local_candidate.type, p.remote_candidate.type) for p in nominated.values()}
            assert kinds and all("relay" in pair for pair in kinds), kinds  # every packet went through coturn
        finally:
            await peer.close()


async def test_wrong_turn_credentials_cost_the_relay_only(
    turn_url: str, backend: FrameBackend, tiny_onnx: Path
) -> None:
    config = StreamerConfig(model_path=tiny_onnx, ice_servers=(turn_url,), ice_username=USER, ice_credential="wrong")
    async with serve(config, backend) as srv, aiohttp.ClientSession() as http:
        peer = Peer(pattern(*SIZE))
        try:
            answer = await peer.connect(http, srv.url)
            assert not candidates(answer["sdp"], "relay")  # coturn refused the allocation
            assert candidates(answer["sdp"], "host")
            await peer.wait_frames(5, timeout=30)  # host candidates still carry the video
        finally:
            await peer.close()


def test_credentials_go_on_turn_urls_only_and_may_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tiny_onnx: Path
) -> None:
    from streamer.__main__ import secure

    monkeypatch.setenv("STYLECAST_ICE_CREDENTIAL", "from-env")
    config = secure(
        StreamerConfig(model_path=tiny_onnx, ice_servers=("stun:stun.example.org", "turns:t.example.org:5349"),
                       ice_username="u")
    )  # fmt: skip
    assert config.ice_server_list() == [
        {"urls": "stun:stun.example.org"},
        {"urls": "turns:t.example.org:5349", "username": "u", "credential": "from-env"},
    ]
    assert secure(StreamerConfig(model_path=tiny_onnx, ice_credential="given")).ice_credential == "given"
