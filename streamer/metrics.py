"""``/metrics``: the server's counters in Prometheus' text format, through ``prometheus_client``.

Each app has its own :class:`~prometheus_client.CollectorRegistry` (no module-level
state): :func:`registry_for` registers one collector that reads the live sessions
and the inference worker at scrape time, so a session's series appear while it
exists and go with it. Names (``stylecast_*``): per session (label ``session``,
the random id the peer got in its answer) frames in, out, dropped and failed and
the fps sent back; the inference-time histogram; sessions now, allowed and started.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from streamer.counters import Counters
from streamer.session import Session
from streamer.worker import InferenceWorker

__all__ = ["CONTENT_TYPE", "Counters", "registry_for", "render"]

# Text format 0.0.4, which every Prometheus reads (our names are plain ASCII, so the
# rendering is the same as 1.0.0's; the library's default header names 1.0.0).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# (name without _total, kind, help, value of one session)
PER_SESSION: tuple[tuple[str, str, str, Callable[[Session], float]], ...] = (
    ("stylecast_frames_in", "counter", "Frames received from the peer.", lambda s: s.frames_in),
    ("stylecast_frames_out", "counter", "Frames sent back to the peer.", lambda s: s.frames_out),
    (
        "stylecast_frames_dropped",
        "counter",
        "Frames replaced by a newer one before inference (newest-frame-only).",
        lambda s: s.frames_dropped,
    ),
    (
        "stylecast_frames_failed",
        "counter",
        "Frames whose inference failed (sent unstylized).",
        lambda s: s.track.stats.frames_failed if s.track else 0,
    ),
    ("stylecast_fps_out", "gauge", "End-to-end frames per second sent back, last stats interval.", lambda s: s.fps_out),
)


LAG_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


class LoopLag:
    """How long the event loop was held: a task asks to wake every ``period_s`` and records how
    late it woke (a handler that parses for 2 s shows up as a 2000 ms lag). ``max_ms`` is the worst
    since start; the histogram goes to /metrics as ``stylecast_loop_lag_ms``."""

    def __init__(self, period_s: float = 0.05) -> None:
        self.period_s = period_s
        self.max_ms = 0.0
        self.histogram = Histogram(
            "stylecast_loop_lag_ms",
            "How late the event loop woke a 50 ms timer (ms): time some handler held the loop.",
            buckets=LAG_BUCKETS_MS,
            registry=None,
        )

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(self.period_s)
            lag_ms = max(0.0, (loop.time() - t0 - self.period_s) * 1000.0)
            self.max_ms = max(self.max_ms, lag_ms)
            self.histogram.observe(lag_ms)


class _ServerCollector(Collector):
    """Reads the sessions, the worker and the session counts each time /metrics is asked for."""

    def __init__(
        self,
        sessions: Callable[[], Iterable[Session]],
        worker: InferenceWorker,
        max_sessions: int,
        sessions_started: Callable[[], int],
        counters: Counters,
        lag: LoopLag | None = None,
    ) -> None:
        self.sessions, self.worker = sessions, worker
        self.max_sessions, self.sessions_started, self.counters = max_sessions, sessions_started, counters
        self.lag = lag

    def collect(self) -> Iterator[Any]:
        sessions = list(self.sessions())
        for name, kind, help_text, value in PER_SESSION:
            family: CounterMetricFamily | GaugeMetricFamily = (
                CounterMetricFamily(name, help_text, labels=["session"])
                if kind == "counter"
                else GaugeMetricFamily(name, help_text, labels=["session"])
            )
            for s in sessions:
                family.add_metric([s.id], float(value(s)))
            yield family
        histograms = [self.worker.infer_ms, *([self.lag.histogram] if self.lag else [])]
        for metric in (m for h in histograms for m in h.collect()):
            # The same series as before the client library: buckets, sum and count (no _created).
            metric.samples = [x for x in metric.samples if not x.name.endswith("_created")]
            yield metric
        if self.lag is not None:
            yield GaugeMetricFamily(
                "stylecast_loop_lag_max_ms", "The longest the event loop was held since start (ms).", self.lag.max_ms
            )
        yield CounterMetricFamily(
            "stylecast_inference_frames", "Frames stylized by the inference worker.", value=self.worker.frames
        )
        yield GaugeMetricFamily("stylecast_sessions", "Peers connected now.", value=len(sessions))
        yield GaugeMetricFamily("stylecast_max_sessions", "Peers allowed at once (--max-sessions).", self.max_sessions)
        yield CounterMetricFamily(
            "stylecast_sessions_started", "Offers answered since the server started.", value=self.sessions_started()
        )
        c = self.counters
        yield CounterMetricFamily(
            "stylecast_unauthorized_requests", "Requests refused for a missing or wrong token.", value=c.unauthorized
        )
        yield CounterMetricFamily(
            "stylecast_offers_limited",
            "Offers refused by the per-address rate or the pending cap.",
            value=c.offers_limited,
        )
        yield CounterMetricFamily(
            "stylecast_control_dropped",
            "Control messages dropped over a session's rate limit.",
            value=c.control_dropped,
        )
        yield CounterMetricFamily(
            "stylecast_foreign_requests",
            "Requests refused for a Host or Origin that is not this server's (another site's page).",
            value=c.foreign,
        )
        yield CounterMetricFamily(
            "stylecast_oversized_requests", "Requests refused for a body or SDP over its bounds.", value=c.oversized
        )


def registry_for(
    sessions: Callable[[], Iterable[Session]],
    worker: InferenceWorker,
    max_sessions: int,
    sessions_started: Callable[[], int],
    counters: Counters,
    lag: LoopLag | None = None,
) -> CollectorRegistry:
    """A registry of one app's metrics (``auto_describe`` off: the collector is read only when scraped)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ServerCollector(sessions, worker, max_sessions, sessions_started, counters, lag))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The /metrics page (Prometheus text format 0.0.4)."""
    return generate_latest(registry)
