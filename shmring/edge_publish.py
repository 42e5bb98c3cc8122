"""The HTTP edge's ``POST /events/publish``: events in over one pipelined connection to the ingest socket, each
answered with its envelope as the ring holds it.

Rules:
- The edge publishes through the writer's single write path, the ingest
  socket, never into the ring: one connection (``Ingest``), opened when
  first needed and again after it breaks, shared by every request; the
  exchanges write their lines whole and in turn, and the replies come back
  in that order (``IngestLink``).
- A JSON Event gets the Envelope JSON as the ring holds it (``Envelopes``:
  the ring mapped once, read-only); ``application/x-ndjson`` gets one reply
  line per event, as the socket gives. Bodies over ``MAX_BODY_BYTES`` get
  413; bad requests 400 with ``{"error": "…"}``; no ingest socket 503.
- ``Publish`` is a plain ASGI app that the innermost middleware
  (``PublishFirst``) hands the request to before the routing, so the auth
  and CORS around it apply as to every route.
- A lone exchange (none other in flight) polls the socket for its reply for
  up to ``REPLY_SPIN_S`` before the loop sleeps: the reply takes about as
  long as waking a sleeping process on another CPU costs here, so the wait
  costs no more CPU and ends sooner. The spin yields the CPU between looks,
  and backs off while it finds nothing (``waiting.SpinBackoff``).
"""

import asyncio
import collections
import os
import select
import time

import msgspec
from prometheus_client import Counter
from starlette.responses import JSONResponse, Response

from .errors import ShmringError
from .header import open_ring_info
from .ring import RingReaderCore
from .segment import open_segment, ring_shm_name
from .waiting import SpinBackoff

__all__ = ["MAX_BODY_BYTES", "REPLY_SPIN_S", "Envelopes", "Ingest", "IngestLink", "Publish", "PublishFirst",
           "error_response"]

MAX_BODY_BYTES = 4 * 1024 * 1024
REPLY_SPIN_S = 200e-6
"""How long a lone publish polls the ingest socket for its reply before it sleeps (module rules)."""

_decode_json = msgspec.json.Decoder()


def error_response(status: int, message: str) -> JSONResponse:
    """The edge's error reply: ``{"error": message}`` with `status`."""
    return JSONResponse({"error": message}, status_code=status)


class IngestLink(asyncio.Protocol):
    """One connection to the serve's ingest socket, pipelined: the exchanges write their lines in turn, and the
    replies, which come back in the order the lines went, are handed out in that order (a FIFO of waiters)."""

    def __init__(self):
        self.transport = None
        self.lost = False
        self._tail = b""  # the start of a reply line still to come
        self._waiting: collections.deque[tuple[list[bytes], int, asyncio.Future]] = collections.deque()
        self._writable: asyncio.Future | None = None  # set while the socket's write buffer is over its high water
        self._poll = select.poll()

    def connection_made(self, transport):
        self.transport = transport
        self._poll.register(transport.get_extra_info("socket").fileno(), select.POLLIN)

    def alone(self) -> bool:
        """Whether one exchange only is waiting for its replies, its lines all handed to the socket."""
        return len(self._waiting) == 1 and self._writable is None

    def spin_until_readable(self, spin_s: float) -> bool:
        """Poll the socket until it has bytes to read, at most `spin_s`, yielding the CPU between looks; whether
        it has (the loop then reads them at once, without sleeping)."""
        poll = self._poll.poll
        end = time.perf_counter() + spin_s
        while not poll(0):
            if time.perf_counter() >= end:
                return False
            os.sched_yield()
        return True

    def send(self, data: bytes, count: int) -> asyncio.Future:
        """Write `data` (`count` lines); the future gets their `count` replies."""
        if self.lost:  # lost after the exchange found it open: its future would never be answered
            raise ConnectionError("the ingest socket closed")
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(([], count, future))
        self.transport.write(data)  # whole, at once: lines of concurrent exchanges never interleave
        return future

    async def writable(self) -> None:
        if self._writable is not None:
            await asyncio.shield(self._writable)

    def data_received(self, data: bytes):
        lines = (self._tail + data if self._tail else data).split(b"\n")
        self._tail = lines.pop()
        i = 0
        while i < len(lines):
            if not self._waiting:
                self._fail(ConnectionError("the ingest socket sent a reply nobody asked for"))
                self.transport.close()
                return
            got, count, future = self._waiting[0]
            take = lines[i:i + count - len(got)]
            got += take
            i += len(take)
            if len(got) == count:
                self._waiting.popleft()
                if not future.done():  # a cancelled exchange's replies are read all the same
                    future.set_result(got)

    def connection_lost(self, exc):
        self.lost = True
        self._fail(ConnectionError("the ingest socket closed"))
        self.resume_writing()

    def _fail(self, exc: Exception) -> None:
        self.lost = True
        while self._waiting:
            future = self._waiting.popleft()[2]
            if not future.done():
                future.set_exception(exc)

    def pause_writing(self):
        if self._writable is None:
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self):
        if self._writable is not None:
            if not self._writable.done():
                self._writable.set_result(None)
            self._writable = None


class Ingest:
    """The edge's one connection to the serve's ingest socket, shared by every request, opened when first needed
    and again after it breaks."""

    def __init__(self, path: str):
        self.path = path
        self._link: IngestLink | None = None
        self._opening: asyncio.Future | None = None
        self._spins = SpinBackoff()

    async def _connected(self) -> IngestLink:
        link = self._link
        if link is not None and not link.lost:
            return link
        if self._opening is None:  # one connect for all the requests that find no link
            self._opening = asyncio.ensure_future(
                asyncio.get_running_loop().create_unix_connection(IngestLink, self.path))
        opening = self._opening
        try:
            _, link = await asyncio.shield(opening)
        finally:
            if self._opening is opening and opening.done():
                self._opening = None
        self._link = link
        return link

    async def exchange(self, lines: list[bytes]) -> list[bytes]:
        """Send `lines` (each one JSON line, no newline); return the reply line for each, in order."""
        link = await self._connected()
        future = link.send(b"\n".join(lines) + b"\n", len(lines))
        if link.alone() and self._spins.allowed():
            self._spins.spun(link.spin_until_readable(REPLY_SPIN_S))
        await link.writable()
        return await future


class Envelopes:
    """The ring, mapped once read-only, from which a publish answers with its event's envelope."""

    def __init__(self, name: str):
        self.name = name
        self._ring = None
        self._core: RingReaderCore | None = None

    def at(self, seq: int) -> bytes | None:
        """Event `seq`'s envelope JSON as the ring holds it; None if it is gone already (or the ring is)."""
        core = self._core
        if core is None or core.closed():  # closed: a ring of this name made later is another segment
            self.close()
            try:
                ring = open_segment(ring_shm_name(self.name), writable=False)
            except ShmringError:
                return None
            try:
                info = open_ring_info(self.name, ring)
            except BaseException:
                ring.close()
                raise
            self._ring, self._core = ring, RingReaderCore(ring.buf, info.capacity, info.data_bytes)
            core = self._core
        taken = core.take_ready(seq)
        return None if taken is None else bytes(taken[0])

    def close(self) -> None:
        if self._ring is not None:
            self._core = None
            self._ring.close()
            self._ring = None


_TOO_LARGE = f"the body is over {MAX_BODY_BYTES} bytes (4 MiB); send fewer events per request"


class Publish:
    """``POST /events/publish`` as a plain ASGI app (the route a single-event client waits on, one request
    at a time): a JSON Event gets the Envelope JSON as the ring holds it; ``application/x-ndjson`` gets one
    reply line per event as the ingest socket gives it."""

    def __init__(self, ingest: "Ingest", envelopes: "Envelopes", publishes: Counter):
        self.ingest = ingest
        self.envelopes = envelopes
        self.accepted = publishes.labels("accepted")
        self.rejected = publishes.labels("rejected")

    async def __call__(self, scope, receive, send):
        length = kind = None
        for key, value in scope["headers"]:
            if key == b"content-length" and length is None:
                length = value
            elif key == b"content-type" and kind is None:
                kind = value
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return await error_response(413, _TOO_LARGE)(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client is gone: nobody to answer
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                return await error_response(413, _TOO_LARGE)(scope, receive, send)
            if not message.get("more_body", False):
                break
        kind = b"" if kind is None else kind.split(b";")[0].strip().lower()
        reply = await self._reply(kind, chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if isinstance(reply, Response):
            return await reply(scope, receive, send)
        content, media_type = reply
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"%d" % len(content)), (b"content-type", media_type)]})
        await send({"type": "http.response.body", "body": content})

    async def _reply(self, kind: bytes, body: bytes) -> Response | tuple[bytes, bytes]:
        """The error response, or the 200 reply's body and content type."""
        try:
            if kind == b"application/x-ndjson":
                lines = [line for line in (raw.strip() for raw in body.split(b"\n")) if line]
                replies = await self.ingest.exchange(lines) if lines else []
                accepted = sum(1 for reply in replies if reply.startswith(b'{"seq"'))
                if accepted:
                    self.accepted.inc(accepted)
                if len(replies) - accepted:
                    self.rejected.inc(len(replies) - accepted)
                return b"".join(reply + b"\n" for reply in replies), b"application/x-ndjson"
            try:
                line = msgspec.json.format(body, indent=0)
                if not isinstance(_decode_json.decode(line), dict):
                    raise msgspec.DecodeError("the body is not a JSON object")
            except msgspec.DecodeError as exc:
                self.rejected.inc()
                return error_response(400, f"the body is not a JSON Event object ({exc}); send one Event, "
                                   "or application/x-ndjson lines")
            (reply,) = await self.ingest.exchange([line])
        except (OSError, ConnectionError) as exc:
            return error_response(503, f"the ring's ingest socket is not available ({exc}); retry later")
        answer = _decode_json.decode(reply)
        if "seq" not in answer:
            self.rejected.inc()
            return error_response(400, str(answer.get("error", "event not accepted")))
        self.accepted.inc()
        envelope = self.envelopes.at(answer["seq"])
        if envelope is None:  # overwritten already: a ring far too small for its rate
            return JSONResponse({"seq": answer["seq"]})
        return envelope, b"application/json"


class PublishFirst:
    """ASGI middleware, innermost: a ``POST /events/publish`` goes straight to `publish`, past the routing
    (the route stays, for the 405 of other methods). What is outside it (the auth, CORS) applies as before."""

    def __init__(self, app, publish: Publish):
        self.app = app
        self.publish = publish

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/events/publish" and scope["method"] == "POST":
            return await self.publish(scope, receive, send)
        return await self.app(scope, receive, send)
