"""The server's configuration: one typed, frozen dataclass, filled in by ``streamer.__main__``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# Where the shipped default model lives (the lead's ``engines/models/``).
DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "engines" / "models" / "default.onnx"
STATIC_DIR = Path(__file__).resolve().parent / "static"
# The resolution choice that lets each session pick among ``resolutions`` by measured speed
# (streamer.autores); accepted wherever a WIDTHxHEIGHT choice is, except in ``resolutions``.
AUTO_RESOLUTION = "auto"


def parse_resolution(text: str) -> tuple[int, int]:
    """``"640x480"`` -> ``(640, 480)`` (width, height); ``ValueError`` with the reason otherwise."""
    try:
        w_text, h_text = text.lower().split("x")
        w, h = int(w_text), int(h_text)
    except (ValueError, AttributeError):
        raise ValueError(f"resolution must look like 640x480 (WIDTHxHEIGHT), got {text!r}") from None
    if not (16 <= w <= 4096 and 16 <= h <= 4096):
        raise ValueError(f"resolution must be between 16x16 and 4096x4096, got {text!r}")
    return w, h


@dataclass(frozen=True)
class StreamerConfig:
    """Everything ``create_app`` needs besides the loaded backend.

    Every field has a default, so ``StreamerConfig()`` is a working local server.
    """

    host: str = "127.0.0.1"
    port: int = 8080  # TCP port; 0 picks a free one
    # The model the backend was loaded from: reported on /health; its folder holds thumbnails/.
    # None: not known (the backend was built by the caller); /health then says null.
    model_path: Path | None = None
    backend: str = "auto"  # what was asked for (load_backend's argument); the backend's name says what runs
    max_sessions: int = 4  # concurrent peers; a further offer is refused with 503
    # Processing resolutions the page may choose (WIDTHxHEIGHT). Frames are scaled down,
    # aspect kept, to fit inside the chosen box; never scaled up.
    resolutions: tuple[str, ...] = ("320x240", "640x480", "1280x720")
    # One of resolutions, or "auto": the largest of them this machine stylizes at the camera's rate.
    default_resolution: str = AUTO_RESOLUTION
    # Auto: the fraction of the camera's frame interval the worker may spend on a frame; the
    # rest is for decoding, encoding and (on the same machine) the browser.
    auto_budget: float = 0.7
    transition_ms: int = 300  # default time a weight/strength change takes to blend in (ms)
    max_transition_ms: int = 5000  # the largest transition a client may ask for (ms)
    max_message_bytes: int = 4096  # data-channel messages longer than this get an error reply
    stats_interval_s: float = 1.0  # how often each session gets a stats message (s)
    # A peer that has not connected this long after its offer was answered is closed, so
    # abandoned offers do not hold one of the max_sessions places (s).
    connect_timeout_s: float = 30.0
    max_batch: int = 4  # most frames (from different sessions) in one network call
    static_dir: Path = STATIC_DIR  # the page (index.html, app.js, ...)
    thumbnails_dir: Path | None = None  # painting thumbnails; default: <model dir>/thumbnails
    # STUN/TURN URLs offered to aiortc. Empty: host candidates only (local network,
    # loopback), which also keeps aiortc from contacting a public STUN server.
    ice_servers: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, got {self.max_sessions}")
        if not self.resolutions:
            raise ValueError("resolutions must not be empty")
        for r in self.resolutions:
            parse_resolution(r)
        if self.default_resolution != AUTO_RESOLUTION and self.default_resolution not in self.resolutions:
            raise ValueError(
                f"default_resolution {self.default_resolution!r} is neither {AUTO_RESOLUTION!r} "
                f"nor one of {self.resolutions}"
            )
        if not 0 < self.auto_budget <= 1:
            raise ValueError(
                f"auto_budget must be within (0, 1] (a fraction of the frame interval), got {self.auto_budget}"
            )
        if not 0 <= self.transition_ms <= self.max_transition_ms:
            raise ValueError(f"transition_ms must be within 0..{self.max_transition_ms}, got {self.transition_ms}")
        if self.max_message_bytes < 64:
            raise ValueError(f"max_message_bytes must be at least 64, got {self.max_message_bytes}")
        if self.stats_interval_s <= 0:
            raise ValueError(f"stats_interval_s must be positive, got {self.stats_interval_s}")
        if self.connect_timeout_s <= 0:
            raise ValueError(f"connect_timeout_s must be positive, got {self.connect_timeout_s}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {self.max_batch}")

    @property
    def thumbnails(self) -> Path | None:
        """The folder painting thumbnails are served from, if any."""
        if self.thumbnails_dir is not None:
            return self.thumbnails_dir
        if self.model_path is not None:
            return Path(self.model_path).parent / "thumbnails"
        return None
