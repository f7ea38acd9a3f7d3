"""Prometheus text exposition (format 0.0.4) of the server's counters, without a client library."""

from __future__ import annotations

from collections.abc import Iterable

from streamer.session import Session
from streamer.worker import InferenceWorker


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(sessions: Iterable[Session], worker: InferenceWorker, max_sessions: int, sessions_started: int) -> str:
    """The /metrics page: per-session frame counters and fps, inference time, session counts."""
    sessions = list(sessions)
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")

    per_session = [
        ("stylecast_frames_in_total", "counter", "Frames received from the peer.", lambda s: s.frames_in),
        ("stylecast_frames_out_total", "counter", "Frames sent back to the peer.", lambda s: s.frames_out),
        (
            "stylecast_frames_dropped_total",
            "counter",
            "Frames replaced by a newer one before inference (newest-frame-only).",
            lambda s: s.frames_dropped,
        ),
        (
            "stylecast_frames_failed_total",
            "counter",
            "Frames whose inference failed (sent unstylized).",
            lambda s: s.track.stats.frames_failed if s.track else 0,
        ),
        ("stylecast_fps_out", "gauge", "End-to-end frames per second sent back, last stats interval.", None),
    ]
    for name, kind, help_text, get in per_session:
        family(name, kind, help_text)
        for s in sessions:
            value = s.fps_out if get is None else get(s)
            lines.append(f'{name}{{session="{_esc(s.id)}"}} {value:g}')

    family("stylecast_inference_ms", "histogram", "Milliseconds per network call (a batched call counts once).")
    buckets, total, count = worker.infer_ms.snapshot()
    for le, c in buckets:
        lines.append(f'stylecast_inference_ms_bucket{{le="{le}"}} {c}')
    lines.append(f"stylecast_inference_ms_sum {total:.3f}")
    lines.append(f"stylecast_inference_ms_count {count}")
    family("stylecast_inference_frames_total", "counter", "Frames stylized by the inference worker.")
    lines.append(f"stylecast_inference_frames_total {worker.frames}")

    family("stylecast_sessions", "gauge", "Peers connected now.")
    lines.append(f"stylecast_sessions {len(sessions)}")
    family("stylecast_max_sessions", "gauge", "Peers allowed at once (--max-sessions).")
    lines.append(f"stylecast_max_sessions {max_sessions}")
    family("stylecast_sessions_started_total", "counter", "Offers answered since the server started.")
    lines.append(f"stylecast_sessions_started_total {sessions_started}")
    return "\n".join(lines) + "\n"
