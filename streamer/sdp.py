"""Bounded reading of what clients send before anything parses it: request bodies and SDP.

aiortc parses an SDP in pure Python on the event loop every session shares: a
1 MB offer with 560 ``m=`` sections took 2 s there. So an offer is held to a
size, a number of media sections, candidates and lines, and refused with 413 or
400 before aiortc sees it; a request body is refused from its Content-Length
before it is read, or as soon as reading passes the limit.
"""

from __future__ import annotations

from aiohttp import web

MAX_SDP_BYTES = 64 * 1024  # a browser's offer is 4-10 kB; OBS's with audio and video about as much
MAX_BODY_BYTES = MAX_SDP_BYTES + 4096  # the offer's JSON envelope
MAX_SECTIONS = 8  # m= sections: the page uses 2 (video, control), OBS 2 (audio, video)
MAX_CANDIDATES = 64  # a=candidate lines in the whole SDP
MAX_LINES = 1024
MAX_LINE = 4096  # bytes


class BoundsError(ValueError):
    """Input over a bound; ``status`` is 413 for size, 400 for structure, 415 for the wrong type."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def require_type(request: web.Request, *types: str) -> None:
    """415 unless the request's Content-Type is one of ``types`` (parameters such as charset aside).

    Nothing here reads a text/plain body: that is what a page on another site can send
    without asking (a CORS "simple request"); application/json and application/sdp are not.
    """
    if request.content_type not in types:
        raise BoundsError(
            f"the body must be sent as {' or '.join(types)}, not {request.content_type or 'no type'}", 415
        )


async def read_bounded(request: web.Request, limit: int) -> bytes:
    """The request body, at most ``limit`` bytes: 413 from the Content-Length, or while reading."""
    if request.content_length is not None and request.content_length > limit:
        raise BoundsError(f"the body is {request.content_length} bytes; at most {limit}", 413)
    chunks, size = [], 0
    while chunk := await request.content.read(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise BoundsError(f"the body is over {limit} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def check_sdp(sdp: str) -> None:
    """Refuse an SDP over the bounds (:class:`BoundsError`); cheap: one pass over its lines."""
    size = len(sdp.encode("utf-8", "surrogatepass"))
    if size > MAX_SDP_BYTES:
        raise BoundsError(f"the SDP is {size} bytes; at most {MAX_SDP_BYTES}", 413)
    lines = sdp.split("\n")
    if len(lines) > MAX_LINES:
        raise BoundsError(f"the SDP has {len(lines)} lines; at most {MAX_LINES}")
    sections = candidates = 0
    for line in lines:
        if len(line) > MAX_LINE:
            raise BoundsError(f"an SDP line is {len(line)} characters long; at most {MAX_LINE}")
        if line.startswith("m="):
            sections += 1
        elif line.startswith("a=candidate:"):
            candidates += 1
    if sections > MAX_SECTIONS:
        raise BoundsError(f"the SDP has {sections} media sections; at most {MAX_SECTIONS}")
    if candidates > MAX_CANDIDATES:
        raise BoundsError(f"the SDP has {candidates} candidates; at most {MAX_CANDIDATES}")
