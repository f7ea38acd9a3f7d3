"""What the server refused or dropped, in total: counted where it happens, reported on /metrics."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Counters:
    """Server-wide counts (no session or client detail: /metrics may be public)."""

    unauthorized: int = 0  # requests without the right token
    offers_limited: int = 0  # offers refused by the per-address rate or the pending cap
    control_dropped: int = 0  # control messages over a session's rate
    foreign: int = 0  # requests refused for a Host or Origin that is not this server's
    oversized: int = 0  # requests refused for a body or SDP over its bounds
