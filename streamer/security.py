"""What keeps the server closed and fair: who may talk to it, the access token, rate limits, TLS.

* :class:`AccessPolicy`: the web page next door. A server on 127.0.0.1 is reachable
  from every page the user opens; with DNS rebinding such a page can read the answers
  too. So every request's ``Host`` must name this server (the bound address,
  ``localhost``, the machine's own addresses on a wildcard bind, or an
  ``--allowed-host``), and a state-changing request (POST, PUT, PATCH, DELETE) that
  carries an ``Origin`` must come from this server's own origin or an
  ``--allowed-origin``. Requests without an Origin (curl, WHIP clients) rely on the
  token and the Host check. As Jupyter does against the same threat.
* :func:`token_matches`: the token check, in constant time (``hmac.compare_digest``),
  from an ``Authorization: Bearer`` header, an ``X-Stylecast-Token`` header or a
  ``token`` query parameter (the page's first load). A token that is not text (bytes
  that are no UTF-8) simply does not match.
* :class:`TokenBucket`: ``rate`` events a second on average, ``burst`` at once; an
  injected clock so tests step time exactly. :class:`KeyedBuckets` keeps one per key
  (a client IP) and forgets idle ones, so its memory is bounded by the active keys.
* :func:`self_signed`: a certificate for this machine's names and addresses, made
  once with ``cryptography`` and reused while it still covers them and is valid.
"""

from __future__ import annotations

import datetime as dt
import hmac
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

TOKEN_HEADER = "X-Stylecast-Token"
LOOPBACK_NAMES = ("localhost",)
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
WILDCARD_BINDS = ("0.0.0.0", "::", "")
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
ANY = "*"


def host_name(host_header: str) -> str:
    """The host part of a Host header (``name[:port]`` or ``[v6]:port``), lower case, no trailing dot."""
    h = host_header.strip().lower()
    if h.startswith("["):
        end = h.find("]")
        h = h[1:end] if end > 0 else h[1:]
    elif h.count(":") == 1:
        h = h.split(":", 1)[0]
    return h.rstrip(".")


def origin_key(origin: str) -> str:
    """An origin as compared here: lower case, no trailing slash (``https://Example.org/`` -> ``https://example.org``)."""
    return origin.strip().lower().rstrip("/")


@dataclass(frozen=True)
class AccessPolicy:
    """Which Host names and Origins this server answers (see the module docstring)."""

    hosts: frozenset[str]  # lower-case names and addresses; "*" allows any
    origins: frozenset[str]  # origin_key()s allowed besides the server's own; "*" allows any

    @classmethod
    def for_server(cls, bind: str, allowed_hosts: tuple[str, ...], allowed_origins: tuple[str, ...]) -> AccessPolicy:
        """The bound address and ``localhost``; on a wildcard bind every name and address of this machine."""
        hosts = {*LOOPBACK_HOSTS, host_name(bind) if ":" not in bind else bind.lower()}
        if bind in WILDCARD_BINDS:
            names, addresses = machine_names()
            hosts |= {n.lower() for n in names} | {a.lower() for a in addresses}
        hosts |= {ANY if h.strip() == ANY else host_name(h) for h in allowed_hosts}
        hosts.discard("")
        origins = {ANY if o.strip() == ANY else origin_key(o) for o in allowed_origins}
        return cls(frozenset(hosts), frozenset(origins))

    def host_allowed(self, host_header: str | None) -> bool:
        if ANY in self.hosts:
            return True
        return bool(host_header) and host_name(host_header or "") in self.hosts

    @staticmethod
    def same_origin(origin: str, scheme: str, host_header: str) -> bool:
        """``origin`` is this server's own: the scheme and Host the request reached it by."""
        return origin_key(origin) == f"{scheme}://{host_header.strip().lower()}"

    def cross_origin_allowed(self, origin: str) -> bool:
        """Whether ``origin`` (another site's) was configured with --allowed-origin: it may change
        things here and gets CORS headers. ``null`` (sandboxed frames, file:// pages) only with '*'."""
        return ANY in self.origins or (origin_key(origin) != "null" and origin_key(origin) in self.origins)

    def refusal(self, host_header: str | None) -> str:
        """The plain reason a Host is refused, with what to do about it."""
        shown = ", ".join(sorted(h for h in self.hosts if h != ANY)[:8])
        return (
            f"this server does not answer to the host {host_header!r} (it answers to {shown}); "
            "a page on another site cannot reach it. To open it under another name, start it with "
            "--allowed-host NAME"
        )


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine only."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def presented_token(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """The token a request carries, if any."""
    auth = headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return headers.get(TOKEN_HEADER) or query.get("token")


def token_matches(expected: str, presented: str | None) -> bool:
    """Constant-time comparison (a wrong token takes as long as a right one). A token that cannot
    be text (undecodable bytes arrive as surrogates) is a wrong token, never an error."""
    if presented is None:
        return False
    try:
        candidate = presented.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(expected.encode(), candidate)


@dataclass
class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; :meth:`take` spends one if there is one."""

    rate: float
    burst: float
    clock: Callable[[], float] = time.monotonic
    tokens: float = field(init=False)
    stamp: float = field(init=False)

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError(f"a token bucket needs rate > 0 and burst >= 1, got {self.rate}, {self.burst}")
        self.tokens, self.stamp = float(self.burst), self.clock()

    def take(self, amount: float = 1.0) -> bool:
        """Spend ``amount`` tokens if there are that many (a byte budget spends a message's size)."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= amount:
            self.tokens -= amount
            return True
        return False

    def wait_s(self) -> float:
        """Seconds until the next token."""
        return max(0.0, (1.0 - self.tokens) / self.rate)


@dataclass
class KeyedBuckets:
    """One :class:`TokenBucket` per key (e.g. a client IP); full, idle buckets are forgotten."""

    rate: float
    burst: float
    clock: Callable[[], float] = time.monotonic
    buckets: dict[str, TokenBucket] = field(default_factory=dict)

    def take(self, key: str) -> bool:
        self._forget_idle()
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = TokenBucket(self.rate, self.burst, self.clock)
        return bucket.take()

    def wait_s(self, key: str) -> float:
        bucket = self.buckets.get(key)
        return bucket.wait_s() if bucket else 0.0

    def _forget_idle(self) -> None:
        # A bucket idle long enough to be full again holds nothing worth keeping.
        now, full_after = self.clock(), self.burst / self.rate
        for key in [k for k, b in self.buckets.items() if now - b.stamp > full_after]:
            del self.buckets[key]


# ----------------------------------------------------------------------------- TLS


def machine_names() -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) this machine answers to: hostname, FQDN, localhost, its addresses."""
    names = {"localhost", socket.gethostname(), socket.getfqdn()}
    addresses = {"127.0.0.1", "::1"}
    for name in list(names):
        try:
            for info in socket.getaddrinfo(name, None):
                addresses.add(str(info[4][0]).split("%")[0])
        except OSError:
            continue
    try:  # the address of the default route, which a phone on the same network sees
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent
            addresses.add(s.getsockname()[0])
    except OSError:
        pass
    return sorted(n for n in names if n), sorted(addresses)


def _covers(cert_path: Path, names: list[str], addresses: list[str]) -> bool:
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        return False
    if cert.not_valid_after_utc < dt.datetime.now(dt.UTC) + dt.timedelta(days=7):
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have_names = set(san.get_values_for_type(x509.DNSName))
    have_ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    return set(names) <= have_names and set(addresses) <= have_ips


def warn_if_readable_by_others(key: Path) -> bool:
    """Log a warning when a private key file can be read by users other than its owner."""
    try:
        mode = key.stat().st_mode & 0o777
    except OSError:
        return False
    if mode & 0o077:
        log.warning(
            "the TLS key %s can be read by other users (mode %o): anyone who can read it can pose as "
            "this server; chmod 600 %s",
            key,
            mode,
            key,
        )
        return True
    return False


def self_signed(folder: Path, days: int = 365) -> tuple[Path, Path, bool]:
    """(certificate, key, newly made) for this machine in ``folder``, made if missing or stale.

    Browsers warn about a self-signed certificate once; after that the page is a secure
    origin, so a phone or another computer on the network can use its camera.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    names, addresses = machine_names()
    if key_path.is_file() and _covers(cert_path, names, addresses):
        warn_if_readable_by_others(key_path)
        return cert_path, key_path, False
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"stylecast on {socket.gethostname()}")])
    now = dt.datetime.now(dt.UTC)
    san = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # the key is readable by its owner only
    # O_CREAT's mode applies only to a new file: an old key.pem keeps its mode unless set here,
    # before a byte of the new key is written.
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_bytes)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    log.info("made a self-signed certificate %s for %s", cert_path, ", ".join(names + addresses))
    return cert_path, key_path, True
