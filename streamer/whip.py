"""WHIP in, WHEP out, and control over HTTP: so OBS, players and video calls can use the service.

    POST   /whip                    SDP offer (application/sdp, video to publish) -> 201, Location /whip/{id}, answer
    PATCH  /whip/{id}               trickle ICE (application/trickle-ice-sdpfrag) -> 204
    DELETE /whip/{id}               end the publishing session
    POST   /whep/{id}  or  /whep    SDP offer (receive-only) -> 201, Location /whep/{id}/{viewer}, answer:
                                    the publisher's *stylized* stream (/whep: the newest publisher)
    PATCH  /whep/{id}/{viewer}      trickle ICE -> 204
    DELETE /whep/{id}/{viewer}      end the viewer
    PATCH  /api/sessions/{id}       a control message as JSON (the data channel's, same checks and limits)

WHIP is RFC 9725; WHEP the matching playback draft. A publisher is a :class:`~streamer.session.Session`
whose stylized track is not sent back on its own connection but through one
:class:`aiortc.contrib.media.MediaRelay`: every viewer subscribes to it, so any number of viewers
share one inference per frame. Answers carry every ICE candidate (OBS does not trickle); a client
that does may PATCH its candidates. ICE servers go out as ``Link: <url>; rel="ice-server"``
headers, with their TURN credentials only to an authorised client. Offers are bounded like
``/offer``'s (``streamer.sdp``) and must be ``application/sdp``; the Host and Origin checks and
the token come from the app's middleware (a 401 here says ``WWW-Authenticate: Bearer``).
A publisher that vanishes without DELETE is closed by the idle timeout like a vanished page,
and its viewers with it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from aiortc.sdp import candidate_from_sdp

from streamer.sdp import MAX_SDP_BYTES, BoundsError, check_sdp, read_bounded, require_type

if TYPE_CHECKING:
    from streamer.app import Server
    from streamer.session import Session

log = logging.getLogger(__name__)

SDP = "application/sdp"
TRICKLE = "application/trickle-ice-sdpfrag"
MAX_VIEWERS = 8  # per publisher: each is an encoder of its own


class Viewer:
    """One WHEP viewer: a peer connection that sends a relayed copy of a publisher's stylized track."""

    def __init__(self, ice: list[dict[str, Any]], track: MediaStreamTrack, on_closed: Callable[[Viewer], None]) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[RTCIceServer(**s) for s in ice]))
        self.track = track
        self.closed = False
        self._on_closed = on_closed
        self.pc.on("connectionstatechange", self._on_state)

    async def answer(self, sdp: str) -> RTCSessionDescription:
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except Exception as e:
            raise WhipError(400, f"the offer's SDP cannot be used: {type(e).__name__}: {e}") from e
        if not any(t.kind == "video" for t in self.pc.getTransceivers()):
            raise WhipError(400, "the offer has no video to receive: add a receive-only video transceiver")
        self.pc.addTrack(self.track)  # takes the offered video transceiver: sendonly from here
        try:
            await self.pc.setLocalDescription(await self.pc.createAnswer())
        except Exception as e:
            raise WhipError(400, f"the offer's SDP cannot be answered: {type(e).__name__}: {e}") from e
        return self.pc.localDescription

    def _on_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed") and not self.closed:
            asyncio.get_running_loop().create_task(self.close())

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.track.stop()
        try:
            await self.pc.close()
        except Exception:
            log.debug("viewer %s: closing the peer connection failed", self.id, exc_info=True)
        self._on_closed(self)


class WhipError(Exception):
    """A WHIP/WHEP request refused: the HTTP status and the plain reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def offered_video(sdp: str) -> str | None:
    """The direction of the offer's first video section ("sendonly", "recvonly", "sendrecv", "inactive"),
    or None when it has no video. Read off the SDP text: cheap, and before aiortc sees it."""
    direction = None
    in_video = False
    for line in sdp.replace("\r\n", "\n").split("\n"):
        if line.startswith("m="):
            if in_video:
                break
            in_video = line.startswith("m=video ") and not line.startswith("m=video 0 ")
            direction = "sendrecv" if in_video else None
        elif in_video and line.strip() in ("a=sendonly", "a=recvonly", "a=sendrecv", "a=inactive"):
            direction = line.strip()[2:]
    return direction


def ice_links(servers: list[dict[str, Any]], with_credentials: bool) -> list[str]:
    """``Link`` header values for the ICE servers (RFC 9725 section 4.6); credentials only when authorised."""
    links = []
    for s in servers:
        value = f'<{s["urls"]}>; rel="ice-server"'
        if with_credentials and "username" in s:
            value += f'; username="{s["username"]}"; credential="{s["credential"]}"; credential-type="password"'
        links.append(value)
    return links


class WhipApi:
    """The routes above, over the server's sessions (a publisher is one) and their viewers."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.viewers: dict[str, dict[str, Viewer]] = {}  # publisher id -> viewer id -> viewer
        self.publishers: list[str] = []  # ids in the order they started: /whep plays the newest

    def pending(self) -> int:
        """Viewers answered that have not connected yet."""
        return sum(
            1
            for vs in self.viewers.values()
            for v in vs.values()
            if not v.closed and v.pc.connectionState != "connected"
        )

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/whip", self.publish)
        app.router.add_patch("/whip/{id}", self.trickle_publisher)
        app.router.add_delete("/whip/{id}", self.stop_publisher)
        app.router.add_post("/whep", self.view_newest)
        app.router.add_post("/whep/{id}", self.view)
        app.router.add_patch("/whep/{id}/{viewer}", self.trickle_viewer)
        app.router.add_delete("/whep/{id}/{viewer}", self.stop_viewer)
        app.router.add_patch("/api/sessions/{id}", self.control)

    # ------------------------------------------------------------------ helpers

    async def _offer(self, request: web.Request) -> str:
        """The offer's SDP: the right type, bounded, before anything parses it."""
        require_type(request, SDP)
        raw = await read_bounded(request, MAX_SDP_BYTES)
        try:
            sdp = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BoundsError("the SDP is not UTF-8 text") from None
        check_sdp(sdp)
        return sdp

    def _answer(self, request: web.Request, sdp: str, location: str, status: int = 201) -> web.Response:
        headers = {"Location": location, "ETag": f'"{uuid.uuid4().hex[:16]}"'}
        response = web.Response(status=status, text=sdp, content_type=SDP, headers=headers)
        for link in ice_links(self.server.config.ice_server_list(), self.server.authorized(request)):
            response.headers.add("Link", link)
        return response

    def _publisher(self, request: web.Request) -> Session:
        session = self.server.sessions.get(request.match_info["id"])
        if session is None or session.kind != "whip" or session.closed:
            raise WhipError(404, f"there is no publishing session {request.match_info['id']!r}")
        return session

    @staticmethod
    async def _trickle(request: web.Request, pc: RTCPeerConnection) -> web.Response:
        """Candidates from an ``application/trickle-ice-sdpfrag`` body (RFC 8840), added to ``pc``."""
        if request.content_type != TRICKLE:
            raise WhipError(415, f"trickle ICE is sent as {TRICKLE}")
        body = (await read_bounded(request, 16 * 1024)).decode("utf-8", "replace")
        mid = None
        added = 0
        for line in body.replace("\r\n", "\n").split("\n"):
            if line.startswith("a=mid:"):
                mid = line[6:].strip()
            elif line.strip() == "a=end-of-candidates":
                await pc.addIceCandidate(None)  # the peer has sent them all
            elif line.startswith("a=candidate:") and added < 64:
                candidate = candidate_from_sdp(line[2:])
                candidate.sdpMid = mid
                candidate.sdpMLineIndex = 0 if mid is None else None
                try:
                    await pc.addIceCandidate(candidate)
                    added += 1
                except Exception as e:  # a candidate for a section we do not have: say which
                    raise WhipError(400, f"cannot add the candidate: {type(e).__name__}: {e}") from e
        return web.Response(status=204)

    def _refusal(self, e: Exception) -> web.Response:
        status = e.status if isinstance(e, WhipError | BoundsError) else 400
        if isinstance(e, BoundsError) and status == 413:
            self.server.counters.oversized += 1
        return web.json_response({"error": str(e)}, status=status)

    # ------------------------------------------------------------------ WHIP

    async def publish(self, request: web.Request) -> web.Response:
        server = self.server
        if refused := server.admit(request):
            return refused
        try:
            sdp = await self._offer(request)
            direction = offered_video(sdp)
            if direction is None:
                raise WhipError(400, "the offer has no video: WHIP here takes a camera or screen to stylize")
            if direction not in ("sendonly", "sendrecv"):
                raise WhipError(400, f"the offer's video is {direction}: a WHIP publisher sends video")
        except (WhipError, BoundsError) as e:
            return self._refusal(e)
        if full := server.full():
            return web.json_response({"error": full}, status=503)
        session = server.new_session(kind="whip")
        try:
            answer = await session.answer(sdp, "offer")
        except Exception as e:
            await session.close()
            return self._refusal(WhipError(400, str(e)))
        self.publishers.append(session.id)
        self.viewers[session.id] = {}
        session.on_close(self._publisher_closed)
        server.sessions_started += 1
        log.info("WHIP session %s started (%d of %d)", session.id, len(server.sessions), server.config.max_sessions)
        return self._answer(request, answer.sdp, f"/whip/{session.id}")

    async def trickle_publisher(self, request: web.Request) -> web.Response:
        try:
            return await self._trickle(request, self._publisher(request).pc)
        except (WhipError, BoundsError) as e:
            return self._refusal(e)

    async def stop_publisher(self, request: web.Request) -> web.Response:
        try:
            session = self._publisher(request)
        except WhipError as e:
            return self._refusal(e)
        await session.close()
        return web.Response(status=200)

    async def _publisher_closed(self, session: Session) -> None:
        if session.id in self.publishers:
            self.publishers.remove(session.id)
        for viewer in list(self.viewers.pop(session.id, {}).values()):
            await viewer.close()

    # ------------------------------------------------------------------ WHEP

    async def view_newest(self, request: web.Request) -> web.Response:
        if not self.publishers:
            return web.json_response({"error": "no one is publishing (POST /whip first)"}, status=404)
        return await self._view(request, self.publishers[-1])

    async def view(self, request: web.Request) -> web.Response:
        return await self._view(request, request.match_info["id"])

    async def _view(self, request: web.Request, publisher_id: str) -> web.Response:
        if refused := self.server.admit(request):
            return refused
        session = self.server.sessions.get(publisher_id)
        try:
            if session is None or session.kind != "whip" or session.closed:
                raise WhipError(404, f"there is no publishing session {publisher_id!r}")
            sdp = await self._offer(request)
            direction = offered_video(sdp)
            if direction is None:
                raise WhipError(400, "the offer has no video to receive")
            if direction not in ("recvonly", "sendrecv"):
                raise WhipError(400, f"the offer's video is {direction}: a WHEP viewer receives video")
            viewers = self.viewers.setdefault(publisher_id, {})
            if len(viewers) >= MAX_VIEWERS:
                raise WhipError(503, f"{MAX_VIEWERS} viewers watch this session already")
            track = session.relayed()
            if track is None:
                raise WhipError(409, "the publisher's video has not started yet; try again in a moment")
        except (WhipError, BoundsError) as e:
            return self._refusal(e)

        def forget(v: Viewer) -> None:
            viewers.pop(v.id, None)

        viewer = Viewer(self.server.config.ice_server_list(), track, forget)
        viewers[viewer.id] = viewer
        try:
            answer = await viewer.answer(sdp)
        except WhipError as e:
            await viewer.close()
            return self._refusal(e)
        log.info("WHEP viewer %s watches session %s (%d viewers)", viewer.id, publisher_id, len(viewers))
        return self._answer(request, answer.sdp, f"/whep/{publisher_id}/{viewer.id}")

    def _viewer(self, request: web.Request) -> Viewer:
        viewer = self.viewers.get(request.match_info["id"], {}).get(request.match_info["viewer"])
        if viewer is None:
            raise WhipError(404, "there is no such viewer")
        return viewer

    async def trickle_viewer(self, request: web.Request) -> web.Response:
        try:
            return await self._trickle(request, self._viewer(request).pc)
        except (WhipError, BoundsError) as e:
            return self._refusal(e)

    async def stop_viewer(self, request: web.Request) -> web.Response:
        try:
            viewer = self._viewer(request)
        except WhipError as e:
            return self._refusal(e)
        await viewer.close()
        return web.Response(status=200)

    # ------------------------------------------------------------------ control over HTTP

    async def control(self, request: web.Request) -> web.Response:
        """A control message for any session (a WHIP publisher's, or a page's), for scripts and OBS docks."""
        session = self.server.sessions.get(request.match_info["id"])
        if session is None or session.closed:
            return web.json_response({"error": f"there is no session {request.match_info['id']!r}"}, status=404)
        try:
            require_type(request, "application/json")
            raw = await read_bounded(request, self.server.config.max_message_bytes + 1)
        except BoundsError as e:
            return self._refusal(e)
        reply = session.receive(raw.decode("utf-8", "replace"))
        if reply is None:  # over the rate limit (dropped), or the session was closed for flooding
            return web.json_response({"error": "too many control messages: slow down"}, status=429)
        if reply.get("type") == "error":  # the HTTP API's errors all read {"error": ...}
            return web.json_response({"error": reply.get("message", "")}, status=400)
        return web.json_response(reply)
