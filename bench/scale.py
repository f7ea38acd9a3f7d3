"""Scale-out: K streamer processes x P real peers each, all stylized by one Triton server.

    python -m bench.scale --streamers 2 --peers 2 --seconds 20          # the shipped model, 320x240 peers
    python -m bench.scale --streamers 3 --peers 1 --size 640x480 --json bench/results/scale.json

Starts ``python -m engines triton serve MODEL`` (PyTriton; the model on the fastest
backend here) and K ``python -m streamer --backend triton`` processes on loopback, then
connects P real aiortc peers to each (30 fps, VP8). Over ``--seconds`` it reports:

* fps per peer, and the streamers' own stats (frames in/out, dropped, inference ms);
* Triton's batch-size distribution over the window (its inference statistics);
* what the network hop adds per frame: one frame through ``TritonBackend`` vs the same
  model in this process, timed in turns while nothing else runs (``hop_ms``), and the
  inference ms the streamers saw under load;
* CPU per stream: CPU seconds of the streamers and of the Triton process tree over the
  window, divided by the number of streams and the window (1.0 = one core).

A table and JSON; nothing passes or fails on a time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bench.loopback import Peer, free_port, loopback_ice, pattern
from bench.results import RESULTS_DIR, write_json
from common.cpu import cpu_summary
from common.paths import DEFAULT_MODEL
from common.sizes import parse_size

log = logging.getLogger("bench.scale")
REPO = Path(__file__).resolve().parents[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and all its descendants (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                stats[int(entry.name)] = fields
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    todo = [pid]
    while todo:
        p = todo.pop()
        if p in stats:
            total += (int(stats[p][11]) + int(stats[p][12])) / tick  # utime, stime
        todo.extend(children.get(p, []))
    return total


@contextlib.contextmanager
def triton_server(model: Path, log_path: Path, max_batch: int, queue_delay_us: int) -> Iterator[tuple[str, Any]]:
    ports = [free_port() for _ in range(3)]
    cmd = [sys.executable, "-m", "engines", "triton", "serve", str(model), "--grpc-port", str(ports[0]),
           "--http-port", str(ports[1]), "--metrics-port", str(ports[2]), "--max-batch", str(max_batch),
           "--queue-delay-us", str(queue_delay_us)]  # fmt: skip
    with open(log_path, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{ports[0]}")
    try:
        for _ in range(600):
            if proc.poll() is not None:
                raise RuntimeError(f"Triton exited:\n{log_path.read_text()[-3000:]}")
            with contextlib.suppress(Exception):
                if client.is_model_ready("stylecast") and client.is_model_ready("stylecast-info"):
                    break
            time.sleep(0.5)
        yield f"grpc://127.0.0.1:{ports[0]}", proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def batch_stats(url: str) -> dict[int, int]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url.split("://", 1)[1])
    stats = client.get_inference_statistics("stylecast", as_json=True)["model_stats"][0]
    return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}


def hop_ms(model: Path, url: str, size: tuple[int, int], rounds: int = 40) -> dict[str, float]:
    """One frame through Triton vs the same model here, timed in turns (nothing else streaming)."""
    from engines.runtime import load_backend

    remote = load_backend(model, "triton", triton_url=url)
    # The same runtime and precision the server runs it on, in this process.
    local = load_backend(model, remote.server_backend, precision=remote.precision)  # type: ignore[attr-defined]
    shm = load_backend(model, "triton", triton_url=url, triton_shared_memory=True)
    frame = pattern(*size)
    w = np.eye(len(remote.styles), dtype=np.float32)[0]
    times: dict[str, list[float]] = {"triton": [], "triton_shm": [], "local": []}
    for i in range(rounds + 3):
        for name, b in (("triton", remote), ("triton_shm", shm), ("local", local)):
            t0 = time.perf_counter()
            b.stylize(frame, w)
            if i >= 3:
                times[name].append((time.perf_counter() - t0) * 1000)
    for b in (remote, local, shm):
        b.close()
    med = {k: round(statistics.median(v), 2) for k, v in times.items()}
    return {**med, "hop": round(med["triton"] - med["local"], 2), "hop_shm": round(med["triton_shm"] - med["local"], 2)}


async def stream(urls: list[str], peers: int, size: tuple[int, int], seconds: float, on_start: Any) -> dict[str, Any]:
    import aiohttp

    with loopback_ice():
        async with aiohttp.ClientSession() as http:
            clients = [(u, Peer(pattern(*size, seed=i * 10 + j))) for i, u in enumerate(urls) for j in range(peers)]
            try:
                for u, p in clients:
                    await p.connect(http, u)
                await asyncio.gather(*(p.wait_frames(30, timeout=120) for _, p in clients))
                await asyncio.sleep(2.0)
                marks = on_start()
                f0, t0 = [p.frames for _, p in clients], time.monotonic()
                await asyncio.sleep(seconds)
                dt = time.monotonic() - t0
                rows = []
                for (u, p), f in zip(clients, f0, strict=True):
                    st = p.stats()[-int(seconds) :]
                    infer = [s["infer_ms"] for s in st if isinstance(s.get("infer_ms"), int | float)]
                    rows.append(
                        {
                            "streamer": urls.index(u),
                            "fps": round((p.frames - f) / dt, 2),
                            "server_infer_ms": round(statistics.median(infer), 2) if infer else None,
                            "dropped": st[-1].get("dropped") if st else None,
                            "error": st[-1].get("error") if st else None,
                        }
                    )
                return {"rows": rows, "seconds": round(dt, 2), "marks": marks}
            finally:
                for _, p in clients:
                    await p.close()


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    size = parse_size(args.size)
    with triton_server(args.model, tmp / "triton.log", args.max_batch, args.queue_delay_us) as (url, triton):
        hop = hop_ms(args.model, url, size)
        procs, urls = [], []
        try:
            for i in range(args.streamers):
                port = free_port()
                log_path = tmp / f"streamer{i}.log"
                cmd = [
                    sys.executable, "-m", "streamer", "--backend", "triton", "--triton-url", url,
                    "--port", str(port), "--max-sessions", str(args.peers), "--resolutions", args.size,
                ]  # fmt: skip
                with open(log_path, "w") as out:
                    procs.append(subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT))
                urls.append(f"http://127.0.0.1:{port}")
                for _ in range(300):
                    if "serving on" in log_path.read_text():
                        break
                    time.sleep(0.1)

            def marks() -> dict[str, Any]:
                return {
                    "t": time.monotonic(),
                    "batches": batch_stats(url),
                    "cpu_triton": cpu_seconds(triton.pid),
                    "cpu_streamers": sum(cpu_seconds(p.pid) for p in procs),
                }

            result = asyncio.run(stream(urls, args.peers, size, args.seconds, marks))
            end = marks()
        finally:
            for p in procs:
                p.terminate()
                p.wait(timeout=30)
    start = result.pop("marks")
    window = end["t"] - start["t"]
    batches = {b: n - start["batches"].get(b, 0) for b, n in end["batches"].items() if n > start["batches"].get(b, 0)}
    streams = args.streamers * args.peers
    frames = sum(b * n for b, n in batches.items())
    return {
        "bench": "scale",
        "streamers": args.streamers,
        "peers_per_streamer": args.peers,
        "size": args.size,
        **result,
        "triton_batches": dict(sorted(batches.items())),
        "mean_batch": round(frames / max(1, sum(batches.values())), 2),
        "hop_ms": hop,
        "cpu_per_stream": {
            "streamer": round((end["cpu_streamers"] - start["cpu_streamers"]) / window / streams, 3),
            "triton": round((end["cpu_triton"] - start["cpu_triton"]) / window / streams, 3),
        },
    }


def print_report(r: dict[str, Any]) -> None:
    print(f"{r['streamers']} streamers x {r['peers_per_streamer']} peers at {r['size']}, one Triton, {r['seconds']} s")
    print("| streamer | fps per peer | inference ms (as the streamer saw it) | dropped |\n| --- | --- | ---: | ---: |")
    for s in range(r["streamers"]):
        rows = [x for x in r["rows"] if x["streamer"] == s]
        infer = [x["server_infer_ms"] for x in rows if x["server_infer_ms"] is not None]
        fps = " / ".join(str(x["fps"]) for x in rows)
        print(
            f"| {s} | {fps} | {statistics.median(infer) if infer else '-'} | {sum(x['dropped'] or 0 for x in rows)} |"
        )
    print(f"Triton's batches (size: executions): {r['triton_batches']}, mean {r['mean_batch']}")
    h = r["hop_ms"]
    print(
        f"one frame alone: in-process {h['local']} ms, through Triton {h['triton']} ms (+{h['hop']} ms), "
        f"with shared memory {h['triton_shm']} ms (+{h['hop_shm']} ms)"
    )
    c = r["cpu_per_stream"]
    print(f"CPU per stream: streamer {c['streamer']:.2f} core, Triton {c['triton']:.2f} core")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="stylecast .onnx Triton serves")
    p.add_argument("--streamers", type=int, default=2, help="streamer processes (default: 2)")
    p.add_argument("--peers", type=int, default=2, help="peers per streamer (default: 2)")
    p.add_argument("--size", default="320x240", help="frame size every peer sends and is processed at")
    p.add_argument("--seconds", type=float, default=20.0, help="measured window (default: 20)")
    p.add_argument("--max-batch", type=int, default=8, help="Triton's largest batch (default: 8)")
    p.add_argument("--queue-delay-us", type=int, default=2000, help="Triton's batcher delay (default: 2000)")
    p.add_argument("--json", type=Path, default=RESULTS_DIR / "scale.json", help="results file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="stylecast-scale-") as tmp:
        result = run(args, Path(tmp))
    result["command"] = "python -m bench.scale " + " ".join(sys.argv[1:] if argv is None else argv)
    result["cpu"] = cpu_summary()
    print_report(result)
    print(f"wrote {write_json(result, args.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
