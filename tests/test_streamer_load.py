"""The loopback load test (``bench.load``), small: several peers at once, none starved, memory steady."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from bench.load import run_load
from bench.loopback import local_server

pytestmark = pytest.mark.timeout(120)


async def test_concurrent_peers_all_get_frames_and_memory_stays_steady(tiny_onnx: Path) -> None:
    async with local_server(tiny_onnx, "onnxruntime", max_sessions=3) as srv:
        result = await run_load(srv.url, peers=3, seconds=5, size=(160, 120), warmup=1.5)
    rows = result["rows"]
    assert len(rows) == 3
    for r in rows:
        # None starved: each peer got a fair part of the frames it sent during the window
        # (a starved peer would get ~0 while the others keep going).
        sent_in_window = 30 * result["seconds"]
        assert r["frames"] >= 0.2 * sent_in_window, r
        assert r["error"] is None
    fps = [r["fps"] for r in rows]
    assert min(fps) >= 0.3 * max(fps), fps  # shared fairly, not one peer hogging the worker
    # RSS once a second (MiB). It may step up once or twice (allocator arenas, codec and jitter
    # buffers settling), but keeping every 160x120 RGB frame (57 kB) of 3 peers at 15-30 fps
    # would add 2.5-5 MiB in *every* second. So: the typical (median) second must not grow
    # like that, and the total stays within a few such steps.
    rss = result["rss_mib"]
    print(f"fps per peer {fps}, RSS {rss}")
    steps = [b - a for (_, a), (_, b) in zip(rss, rss[1:], strict=False)]
    assert len(steps) >= 4, rss
    assert statistics.median(steps) < 1.5, rss
    assert rss[-1][1] - rss[0][1] < 20, rss
