"""Scale-out on NVIDIA Triton: repositories whose configs Triton parses, and a real server (PyTriton) behind
the streamer. The server tests run in CI (STYLECAST_REQUIRE_TRITON=1) and skip elsewhere with the reason."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from bench.loopback import Peer, loopback_ice, pattern, serve
from engines.runtime import EngineError, load_backend
from engines.runtime.manifest import Manifest, ManifestMismatch
from engines.runtime.model import file_sha256
from engines.triton import RepoSpec, check_config, pytriton_unavailable_reason, write_repo
from streamer.config import StreamerConfig

ROOT = Path(__file__).resolve().parents[1]
SIZE = (160, 120)
pytestmark = pytest.mark.timeout(300)


# ----------------------------------------------------------------------------- repositories


@pytest.mark.parametrize("kind", ["onnxruntime", "openvino", "tensorrt"])
def test_every_kind_of_repository_config_parses_as_a_model_config(tiny_onnx: Path, tmp_path: Path, kind: str) -> None:
    plan = None
    if kind == "tensorrt":  # a plan folder as engines.build writes it (TensorRT itself is not needed to package one)
        plan = tmp_path / "plan"
        plan.mkdir()
        (plan / "model.plan").write_bytes(b"serialized engine")
        shapes = [{"min_hw": [240, 320], "opt_hw": [480, 640], "max_hw": [720, 1280]}]
        Manifest("tensorrt", tiny_onnx.name, file_sha256(tiny_onnx), "fp16", shapes, 8, "10.15", "H200", "9.0",
                 "model.plan").write(plan)  # fmt: skip
    folder = write_repo(tiny_onnx, tmp_path / "repo", RepoSpec(kind=kind, max_batch=8, instances=2), plan)
    cfg = check_config((folder / "config.pbtxt").read_text())
    assert cfg.name == "stylecast" and cfg.max_batch_size == 8
    assert [i.name for i in cfg.input] == ["image", "style"] and list(cfg.input[0].dims) == [-1, -1, 3]
    assert list(cfg.input[1].dims) == [3] and cfg.output[0].name == "stylized"
    assert list(cfg.dynamic_batching.preferred_batch_size) == [2, 4, 8]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500 and cfg.instance_group[0].count == 2
    assert cfg.model_warmup[0].batch_size == 1
    assert json.loads(cfg.parameters["stylecast.styles"].string_value) == ["ember", "glacier", "moss"]
    assert cfg.parameters["stylecast.stride"].string_value == "4"
    if kind == "tensorrt":
        assert cfg.platform == "tensorrt_plan" and (folder / "1" / "model.plan").read_bytes() == b"serialized engine"
        assert list(cfg.instance_group[0].profile) == ["0"] and cfg.instance_group[0].kind == 1  # KIND_GPU
        assert json.loads(cfg.parameters["stylecast.profiles"].string_value) == shapes
    else:
        assert cfg.backend == kind and (folder / "1" / "model.onnx").read_bytes() == tiny_onnx.read_bytes()


def test_a_plan_for_another_model_is_refused_and_a_typo_fails_at_build_time(tiny_onnx: Path, tmp_path: Path) -> None:
    plan = tmp_path / "plan"
    plan.mkdir()
    (plan / "model.plan").write_bytes(b"x")
    Manifest("tensorrt", "other.onnx", "0" * 64, "fp16", [], 8, "10", "gpu", "9.0", "model.plan").write(plan)
    with pytest.raises(ManifestMismatch, match="onnx_sha256"):
        write_repo(tiny_onnx, tmp_path / "repo", RepoSpec(kind="tensorrt"), plan)
    assert not (tmp_path / "repo").exists()
    with pytest.raises(ValueError, match="does not parse as Triton's ModelConfig"):
        check_config('name: "x"\nmax_batch_size: 8\ndynamic_batchin { }\n')


# ----------------------------------------------------------------------------- a real server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class TritonServer:
    """``python -m engines triton serve`` in its own process group, on loopback ports."""

    model: Path
    log: Path
    grpc: int = 0
    http: int = 0
    metrics: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc}"

    def start(self, timeout: float = 120) -> None:
        if not self.grpc:
            self.grpc, self.http, self.metrics = free_port(), free_port(), free_port()
        cmd = [sys.executable, "-m", "engines", "triton", "serve", str(self.model), "--backend", "openvino",
               "--precision", "fp32", "--grpc-port", str(self.grpc), "--http-port", str(self.http),
               "--metrics-port", str(self.metrics), "--queue-delay-us", "4000", "--threads", "1"]  # fmt: skip
        with open(self.log, "a") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(f"127.0.0.1:{self.grpc}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            with contextlib.suppress(Exception):
                if client.is_model_ready("stylecast") and client.is_model_ready("stylecast-info"):
                    return
            time.sleep(0.5)
        raise TimeoutError(f"Triton did not come up:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the whole group: tritonserver and its model stubs
            self.proc.wait(timeout=30)

    def batch_sizes(self) -> dict[int, int]:
        """Triton's own statistics: batch size -> executions, for the stylecast model."""
        import tritonclient.grpc as grpcclient

        stats = grpcclient.InferenceServerClient(f"127.0.0.1:{self.grpc}").get_inference_statistics(
            "stylecast", as_json=True
        )
        return {
            int(b["batch_size"]): int(b["compute_infer"]["count"])
            for b in stats["model_stats"][0].get("batch_stats", [])
        }


@pytest.fixture(scope="module")
def triton(tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    if reason := pytriton_unavailable_reason():
        if os.environ.get("STYLECAST_REQUIRE_TRITON"):
            pytest.fail(f"{reason}, and STYLECAST_REQUIRE_TRITON is set")
        pytest.skip(reason)
    server = TritonServer(tiny_onnx, tmp_path_factory.mktemp("triton") / "triton.log")
    server.start()
    yield server
    server.kill()


def test_triton_backend_matches_local_openvino(triton: TritonServer, tiny_onnx: Path) -> None:
    remote = load_backend(tiny_onnx, "triton", triton_url=triton.url)
    local = load_backend(tiny_onnx, "openvino-cpu", precision="fp32", num_threads=1)
    # Everything came from the server: styles, stride, batch limit, version, the precision it runs.
    assert remote.styles == local.styles and remote.max_batch == 8 and remote.version == "1"  # type: ignore[attr-defined]
    assert remote.precision == "fp32" and "openvino-cpu" in remote.precision_reason
    frames = [pattern(96, 72, seed=i) for i in range(3)] + [pattern(83, 61)]  # an odd size is padded and cropped
    weights = np.array([[1, 0, 0], [0.2, 0.3, 0.5], [0, 0, 4]], np.float32)
    for f, w in zip(frames[:3], weights, strict=True):
        diff = np.abs(remote.stylize(f, w).astype(int) - local.stylize(f, w).astype(int))
        assert diff.max() <= 1, diff.max()
    batch = remote.stylize_batch(frames[:3], weights)
    for b, f, w in zip(batch, frames[:3], weights, strict=True):
        assert np.abs(b.astype(int) - local.stylize(f, w).astype(int)).max() <= 1
    assert remote.stylize(frames[3], weights[0]).shape == (61, 83, 3)
    shm = load_backend(tiny_onnx, "triton", triton_url=triton.url, triton_shared_memory=True)
    via_shm, want = shm.stylize(frames[0], weights[0]), local.stylize(frames[0], weights[0])
    assert np.abs(via_shm.astype(int) - want.astype(int)).max() <= 1
    shm.close()
    assert remote.status() == {"url": triton.url, "server_ready": True, "model_ready": True, "model": "stylecast",
                               "model_version": "1"}  # fmt: skip
    with pytest.raises(EngineError, match=r"Triton at grpc://127\.0\.0\.1:1 cannot be reached"):
        load_backend(tiny_onnx, "triton", triton_url="grpc://127.0.0.1:1", triton_timeout_s=1.0)


async def test_two_peers_get_stylized_video_through_triton(triton: TritonServer, tiny_onnx: Path) -> None:
    remote = load_backend(tiny_onnx, "triton", triton_url=triton.url)
    local = load_backend(tiny_onnx, "openvino-cpu", precision="fp32", num_threads=1)
    config = StreamerConfig(model_path=tiny_onnx, backend="triton", offer_rate=100, offer_burst=100)
    async with serve(config, remote) as srv, aiohttp.ClientSession() as http:
        peers = [Peer(pattern(*SIZE, seed=i)) for i in range(2)]
        try:
            for p in peers:
                await p.connect(http, srv.url)
            await asyncio.gather(*(p.wait_frames(20, timeout=60) for p in peers))
            for i, p in enumerate(peers):
                sent = pattern(*SIZE, seed=i)
                want = local.stylize(sent, srv.server.sessions[p.session].mixer.step()[0])  # type: ignore[index]
                got = p.latest_rgb()
                assert np.abs(got.astype(float) - want).mean() < 0.35 * np.abs(sent.astype(float) - want).mean()
            async with http.get(srv.url + "/health") as r:
                health = await r.json()
            assert health["backend"]["name"] == "triton" and health["inference_server"]["server_ready"] is True
            assert health["inference_server"]["model_version"] == "1"
        finally:
            for p in peers:
                await p.close()
    remote.close()


def test_two_streamer_processes_are_batched_by_triton(triton: TritonServer, tiny_onnx: Path, tmp_path: Path) -> None:
    before = triton.batch_sizes()
    procs, urls = [], []
    for i in range(2):
        port = free_port()
        log = tmp_path / f"streamer{i}.log"
        cmd = [sys.executable, "-m", "streamer", "--backend", "triton", "--triton-url", triton.url, "--port", str(port)]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT))  # noqa: SIM115
        urls.append((f"http://127.0.0.1:{port}", log))
    try:
        for _, log in urls:
            for _ in range(300):
                if "serving on" in log.read_text():
                    break
                time.sleep(0.1)
            assert "serving on" in log.read_text(), log.read_text()

        async def stream() -> list[int]:
            with loopback_ice():
                async with aiohttp.ClientSession() as http:
                    peers = [Peer(pattern(*SIZE, seed=i)) for i in range(4)]
                    try:
                        for i, p in enumerate(peers):  # two peers on each streamer
                            await p.connect(http, urls[i % 2][0])
                        await asyncio.gather(*(p.wait_frames(60, timeout=90) for p in peers))
                        return [p.frames for p in peers]
                    finally:
                        for p in peers:
                            await p.close()

        frames = asyncio.run(stream())
        assert min(frames) >= 60
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=30)
    after = triton.batch_sizes()
    grown = {b: n - before.get(b, 0) for b, n in after.items() if n > before.get(b, 0)}
    print(f"Triton's executions by batch size during the run: {grown}")
    assert any(b > 1 for b in grown), grown  # frames of different streamers went through in one call


async def test_a_dead_triton_leaves_the_video_and_stylized_frames_return(tiny_onnx: Path, tmp_path: Path) -> None:
    if reason := pytriton_unavailable_reason():
        if os.environ.get("STYLECAST_REQUIRE_TRITON"):
            pytest.fail(f"{reason}, and STYLECAST_REQUIRE_TRITON is set")
        pytest.skip(reason)
    server = TritonServer(tiny_onnx, tmp_path / "triton.log")
    server.start()
    try:
        remote = load_backend(tiny_onnx, "triton", triton_url=server.url, triton_timeout_s=1.0)
        config = StreamerConfig(model_path=tiny_onnx, backend="triton", stats_interval_s=0.3)
        async with serve(config, remote) as srv, aiohttp.ClientSession() as http:
            peer = Peer(pattern(*SIZE))
            try:
                await peer.connect(http, srv.url)
                await peer.wait(lambda: any(m["error"] is None and m["fps_out"] > 0 for m in peer.stats()), timeout=60,
                                what="stylized frames")  # fmt: skip
                server.kill()
                await peer.wait(lambda: peer.stats()[-1]["error"] is not None, timeout=30, what="the error in stats")
                assert f"Triton at {server.url}" in peer.stats()[-1]["error"]
                before = peer.frames
                await peer.wait_frames(20, timeout=30)  # the camera's frames keep coming back
                assert peer.frames >= before + 20
                async with http.get(srv.url + "/health") as r:
                    assert (await r.json())["inference_server"]["server_ready"] is False
                server.start()
                t0 = time.monotonic()
                await peer.wait(lambda: peer.stats()[-1]["error"] is None, timeout=30, what="stylized frames again")
                print(f"stylized again {time.monotonic() - t0:.1f} s after the server was ready")
                assert time.monotonic() - t0 < 10
            finally:
                await peer.close()
        remote.close()
    finally:
        server.kill()
