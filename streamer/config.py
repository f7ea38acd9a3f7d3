"""The server's configuration: one typed, frozen dataclass; ``python -m streamer`` builds its options from it.

Every field with a help text is a command-line option (``common.cli``), so each
default is written here once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.cli import opt
from common.paths import DEFAULT_MODEL, user_data_dir
from common.sizes import format_size, parse_size
from engines.runtime.precision import PRECISIONS
from engines.runtime.registry import backend_choices

STATIC_DIR = Path(__file__).resolve().parent / "static"
# The resolution choice that lets each session pick among ``resolutions`` by measured speed
# (streamer.autores); accepted wherever a WIDTHxHEIGHT choice is, except in ``resolutions``.
AUTO_RESOLUTION = "auto"


def canonical_size(text: str) -> str:
    """``" 640X480"`` -> ``"640x480"`` (``ValueError`` with the reason if it is no size)."""
    return format_size(parse_size(text))


def size_or_auto(text: str) -> str:
    return AUTO_RESOLUTION if text.strip().lower() == AUTO_RESOLUTION else canonical_size(text)


@dataclass(frozen=True)
class StreamerConfig:
    """Everything ``create_app`` needs besides the loaded backend.

    Every field has a default, so ``StreamerConfig()`` is a working local server.
    """

    host: str = opt("127.0.0.1", "address to listen on (0.0.0.0: every interface)")
    port: int = opt(8080, "TCP port to listen on; 0 picks a free one")
    # The model the backend was loaded from: reported on /health; its folder holds thumbnails/.
    model_path: Path = opt(
        DEFAULT_MODEL, "stylecast model (.onnx, or a .safetensors checkpoint for --backend torch)", flag="--model"
    )
    backend: str = opt(
        "auto",
        "inference runtime: " + ", ".join(backend_choices()) + "; auto picks the first that runs here, in a "
        "preferred order, and says why (on /health and in the page)",
        choices=backend_choices(),
        metavar="NAME",
    )
    precision: str = opt(
        "auto",
        "arithmetic: auto (the fastest that passes its parity gate on this machine, e.g. bf16 on CPUs with "
        "AMX or AVX512-BF16, and says why), fp32, bf16, fp16 or int8",
        choices=("auto", *PRECISIONS),
    )
    num_threads: int | None = opt(None, "CPU threads for inference (default: all cores)", flag="--threads")
    triton_url: str | None = opt(
        None, "--backend triton: the Triton server's gRPC address, e.g. grpc://127.0.0.1:8001", metavar="URL"
    )
    triton_model: str = opt("stylecast", "--backend triton: the model's name on the server")
    triton_timeout_s: float = opt(
        2.0,
        "--backend triton: seconds a request may take before the frame goes out unstylized",
        flag="--triton-timeout",
    )
    triton_shared_memory: bool = opt(
        False, "--backend triton on the same host: send frames through system shared memory, not gRPC"
    )
    max_sessions: int = opt(4, "peers served at once; further offers get HTTP 503 with the reason")
    # Processing resolutions the page may choose. Frames are scaled down, aspect kept, to fit
    # inside the chosen box; never scaled up.
    resolutions: tuple[str, ...] = opt(
        ("320x240", "640x480", "1280x720"),
        "processing resolutions the page offers (WIDTHxHEIGHT, pixels); frames are scaled down to fit",
        parse=canonical_size,
        metavar="WxH",
    )
    default_resolution: str = opt(
        AUTO_RESOLUTION,
        "processing resolution a session starts at (WIDTHxHEIGHT), or auto: the largest of --resolutions "
        "this machine stylizes at the camera's frame rate, chosen per session from measured frame times",
        parse=size_or_auto,
        metavar="WxH|auto",
    )
    # 0.8: on 2 cores with the browser on them too, 640x480 at 0.7-0.75 of the interval still ran
    # at 29 fps (python -m bench.e2e); 0.7 stepped such a session down to 320x240.
    auto_budget: float = opt(
        0.8,
        "auto resolution: fraction (0..1] of the camera's frame interval a frame's processing may take; "
        "the rest is for video decoding, encoding and the browser",
    )
    transition_ms: int = opt(
        300, "milliseconds a style or strength change takes to blend in (a client may ask for 0..5000)"
    )
    max_transition_ms: int = 5000  # the largest transition a client may ask for (ms)
    max_message_bytes: int = opt(4096, "longest control message accepted, in bytes")
    stats_interval_s: float = 1.0  # how often each session gets a stats message (s)
    # A peer that has not connected this long after its offer was answered is closed, so
    # abandoned offers do not hold one of the max_sessions places (s).
    connect_timeout_s: float = 30.0
    max_batch: int = opt(4, "most frames (from different peers) in one network call")
    static_dir: Path = STATIC_DIR  # the page (index.html, app.js, ...)
    thumbnails_dir: Path | None = None  # painting thumbnails; default: <model dir>/thumbnails
    # STUN/TURN URLs offered to aiortc. Empty: host candidates only (local network,
    # loopback), which also keeps aiortc from contacting a public STUN server.
    ice_servers: tuple[str, ...] = opt(
        (),
        "STUN/TURN server URL offered to WebRTC (repeatable); none by default (host candidates only)",
        flag="--ice-server",
        action="append",
        metavar="URL",
    )
    # TURN servers want credentials; both the server's aiortc and the page (through /api/info,
    # which the token guards) use them, so a browser behind a strict NAT can relay.
    ice_username: str | None = opt(None, "username for the --ice-server TURN URLs")
    ice_credential: str | None = opt(
        None, "password for the --ice-server TURN URLs (or $STYLECAST_ICE_CREDENTIAL, which keeps it out of ps)"
    )

    # ----------------------------------------------------------------- access, TLS and limits
    token: str | None = opt(
        None,
        "access token required on /offer, /api/*, the thumbnails and /metrics (default: $STYLECAST_TOKEN); "
        "'generate' makes a random one; the startup log prints the URL with it",
        metavar="TOKEN",
    )
    no_auth: bool = opt(False, "serve without a token on a non-loopback address (refused otherwise)")
    allowed_hosts: tuple[str, ...] = opt(
        (),
        "another name this server may be reached by (repeatable), e.g. a LAN name or the name a reverse "
        "proxy forwards; requests for any other Host get 403, so a page on another site cannot reach the "
        "server through DNS rebinding. Default: the --host address, localhost, and on 0.0.0.0 this "
        "machine's names and addresses; '*' allows any (only behind a proxy that checks Host itself)",
        flag="--allowed-host",
        action="append",
        metavar="NAME",
    )
    allowed_origins: tuple[str, ...] = opt(
        (),
        "a web origin (scheme://host[:port]) whose pages may POST, PATCH and DELETE here besides the "
        "server's own page (repeatable); it also gets CORS headers. Default: none",
        flag="--allowed-origin",
        action="append",
        metavar="ORIGIN",
    )
    public_metrics: bool = opt(False, "serve /metrics without the token (for a scraper on a trusted network)")
    cert: Path | None = opt(None, "TLS certificate (PEM); with --key the server speaks https")
    key: Path | None = opt(None, "TLS private key (PEM) for --cert")
    self_signed: bool = opt(
        False,
        "https with a certificate for this machine's names and addresses, made once and reused "
        "(kept in --tls-dir); browsers warn once, then the camera works from other devices",
    )
    tls_dir: Path = opt(user_data_dir() / "tls", "where --self-signed keeps its certificate and key")
    control_rate: float = opt(30.0, "control messages a session may send per second (excess dropped)")
    control_burst: int = opt(60, "control messages a session may send at once")
    control_bytes: int = opt(
        65536,
        "control-channel bytes a session may send per second, counted before any is parsed; a session "
        "over --flood-factor times this in a second is closed (large messages cost every stream)",
    )
    flood_factor: float = opt(
        10.0,
        "close a session that sends control messages at this many times --control-rate for a second "
        "(a flood costs every session's frames before it can be dropped)",
    )
    offer_rate: float = opt(0.5, "offers per second per client address (a new session every 2 s)")
    offer_burst: int = opt(5, "offers a client address may make at once")
    max_pending: int = opt(4, "offers answered whose peer has not connected yet (further ones get 503)")
    idle_timeout_s: float = opt(
        10.0, "close a session that received no video frame for this many seconds", flag="--idle-timeout"
    )
    max_session_minutes: float | None = opt(None, "close every session after this many minutes (default: never)")
    shutdown_grace_s: float = 1.0  # on SIGTERM: how long pages get to read the shutdown message (s)

    # ----------------------------------------------------------------- new styles from the page
    allow_new_styles: bool = opt(
        False,
        "let the page (and POST /api/styles) learn a user's painting into the model, in a child process at "
        "the lowest priority; needs the train extra, and a token unless the server is on loopback",
    )
    models_dir: Path = opt(
        user_data_dir() / "models",
        "where learned model versions are kept; the server serves the newest one grown from --model",
    )
    content_dir: Path | None = opt(
        None, "photos new paintings are learned on (default: the credited set in trainer/content)",
        flag="--content", metavar="DIR",
    )  # fmt: skip
    learn_steps: int | None = opt(None, "optimisation steps per new painting (default: add-style's)")
    learn_size: int | None = opt(None, "crop side in px when learning a painting (default: add-style's)")
    learn_threads: int | None = opt(None, "CPU threads the learning process uses (default: all cores)")
    max_queued_styles: int = opt(4, "paintings that may wait for their turn to be learned")
    max_styles_per_client: int = opt(
        2, "paintings one client address may have queued or learning at once (more get 429)"
    )

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("--cert and --key go together")
        if self.self_signed and self.cert is not None:
            raise ValueError("--self-signed makes its own certificate: leave out --cert and --key")
        for name in ("control_rate", "offer_rate", "idle_timeout_s", "flood_factor"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.control_burst < 1 or self.offer_burst < 1 or self.max_pending < 1:
            raise ValueError("control_burst, offer_burst and max_pending must be at least 1")
        if self.control_bytes < self.max_message_bytes:
            raise ValueError(
                f"control_bytes ({self.control_bytes}) must hold at least one message of max_message_bytes "
                f"({self.max_message_bytes})"
            )
        for origin in self.allowed_origins:
            if origin.strip() != "*" and not origin.strip().lower().startswith(("http://", "https://")):
                raise ValueError(f"--allowed-origin takes scheme://host[:port], got {origin!r}")
        if self.max_session_minutes is not None and self.max_session_minutes <= 0:
            raise ValueError(f"max_session_minutes must be positive, got {self.max_session_minutes}")
        if self.max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, got {self.max_sessions}")
        if not self.resolutions:
            raise ValueError("resolutions must not be empty")
        for r in self.resolutions:
            parse_size(r)
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
        for name in ("learn_steps", "learn_size", "learn_threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be at least 1, got {self.num_threads}")

    @property
    def boxes(self) -> list[tuple[int, int]]:
        """``resolutions`` as (width, height) boxes."""
        return [parse_size(r) for r in self.resolutions]

    def ice_server_list(self) -> list[dict[str, Any]]:
        """The ICE servers as RTCIceServer dictionaries (credentials on the turn:/turns: URLs only)."""
        out: list[dict[str, Any]] = []
        for url in self.ice_servers:
            server: dict[str, Any] = {"urls": url}
            if url.startswith(("turn:", "turns:")) and self.ice_username is not None:
                server.update(username=self.ice_username, credential=self.ice_credential or "")
            out.append(server)
        return out

    @property
    def tls(self) -> bool:
        return self.cert is not None or self.self_signed

    @property
    def thumbnails(self) -> Path:
        """The folder painting thumbnails are served from (it may not exist)."""
        return self.thumbnails_dir if self.thumbnails_dir is not None else Path(self.model_path).parent / "thumbnails"
