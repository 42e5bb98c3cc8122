"""The HTTP edge: a Starlette app on uvicorn that serves one ring over HTTP (run by ``serve --http``).

Rules:
- The edge is its own process. It reads the ring as a reader (an AsyncReader
  per stream, see sse.py) and publishes through the writer's single write
  path, the ingest socket; it never holds the writer's GIL.
- Routes: ``GET /events/stream`` (SSE), ``POST /events/publish`` (a JSON
  Event, or ``application/x-ndjson``: one reply line per event, as the
  socket gives), ``GET /events/capture_session`` (``stat --json``'s content
  and the flusher's checkpoint), ``GET /metrics`` (Prometheus), ``GET
  /healthz`` (200 while the writer lives, else 503), ``GET /`` (the viewer)
  and ``GET``/``PUT``/``PATCH /producers/cdp`` (the producer's config,
  through ``shmring.control``: never touched by a stream's filter).
- The producer's control calls block (up to ``control_timeout_s``), so they
  run in worker threads of their own (at most ``CONTROL_THREADS`` at once),
  never on the loop and never in the pool the other routes use. Their
  errors: ``ConfigError`` 400, ``ProducerNotRunning`` 503,
  ``ControlTimeout`` 504, any other ``ControlError`` 502; a target that
  could not apply a change is listed in the 200 reply's ``failed``.
- With a token every route but ``/healthz`` needs ``Authorization: Bearer
  <token>`` (401 without it); the stream and the viewer also take it as
  ``?token=`` (a browser's EventSource cannot set headers). CORS headers only
  for the ``cors_origins`` named. At most ``max_clients`` streams: the next
  gets 503. Bodies over ``MAX_BODY_BYTES`` get 413; bad requests 400 with
  ``{"error": "…"}``.
- ``POST /events/publish`` is a plain ASGI app that the innermost middleware
  hands the request to before the routing (the auth and CORS around it
  apply as to every route). It publishes over one pipelined connection to
  the ingest socket and answers from the ring, mapped once. A lone
  exchange (none other in flight) polls the socket for its reply for up to
  ``REPLY_SPIN_S`` before the loop sleeps: the reply takes about as long as
  waking a sleeping process on another CPU costs here, so the wait costs no
  more CPU and ends sooner. The spin yields the CPU between looks, and backs
  off while it finds nothing (``waiting.SpinBackoff``).
- A connection's writes in one turn of the loop go out as one send (a
  response's head and body together): ``_HttpProtocol``.
- Nothing here prints: uvicorn logs warnings only, through ``logging``.
"""

import asyncio
import collections
import contextlib
import functools
import hmac
import json
import os
import pathlib
import resource
import select
import time
from urllib.parse import unquote_to_bytes

import anyio
import msgspec
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .aio import AsyncReader, archive_supported
from .control import PRODUCERS, get_config, set_config
from .edge import EdgeConfig
from .errors import ConfigError, ControlError, ControlTimeout, ProducerNotRunning, RingNotFound, ShmringError
from .header import open_ring_info
from .logdir import CHECKPOINT_FILE, GAPS_FILE
from .ring import RingReaderCore
from .segment import open_segment, ring_shm_name
from .sse import event_frames, session_frame, stream_start
from .stats import ring_stats
from .waiting import SpinBackoff

__all__ = ["create_app", "run_edge"]

MAX_BODY_BYTES = 4 * 1024 * 1024
SEND_TIMEOUT_S = 120.0
"""A client whose socket takes nothing for this long is disconnected (a slow one gets drops instead)."""
STREAM_MAX_DELAY_S = 0.005
"""Each stream's latency budget: events collect for up to 5 ms, then go out in one chunk."""
REPLY_SPIN_S = 200e-6
"""How long a lone publish polls the ingest socket for its reply before it sleeps (module rules)."""
CONTROL_BODY_BYTES = 64 * 1024
CONTROL_THREADS = 4
VIEWER = pathlib.Path(__file__).with_name("static") / "viewer.html"

_decode_json = msgspec.json.Decoder()


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class _IngestLink(asyncio.Protocol):
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


class _Ingest:
    """The edge's one connection to the serve's ingest socket, shared by every request, opened when first needed
    and again after it breaks."""

    def __init__(self, path: str):
        self.path = path
        self._link: _IngestLink | None = None
        self._opening: asyncio.Future | None = None
        self._spins = SpinBackoff()

    async def _connected(self) -> _IngestLink:
        link = self._link
        if link is not None and not link.lost:
            return link
        if self._opening is None:  # one connect for all the requests that find no link
            self._opening = asyncio.ensure_future(
                asyncio.get_running_loop().create_unix_connection(_IngestLink, self.path))
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


class _Envelopes:
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


class _Publish:
    """``POST /events/publish`` as a plain ASGI app (the route a single-event client waits on, one request
    at a time): a JSON Event gets the Envelope JSON as the ring holds it; ``application/x-ndjson`` gets one
    reply line per event as the ingest socket gives it."""

    def __init__(self, ingest: "_Ingest", envelopes: "_Envelopes", publishes: Counter):
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
            return await _error(413, _TOO_LARGE)(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client is gone: nobody to answer
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                return await _error(413, _TOO_LARGE)(scope, receive, send)
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
                return _error(400, f"the body is not a JSON Event object ({exc}); send one Event, "
                                   "or application/x-ndjson lines")
            (reply,) = await self.ingest.exchange([line])
        except (OSError, ConnectionError) as exc:
            return _error(503, f"the ring's ingest socket is not available ({exc}); retry later")
        answer = _decode_json.decode(reply)
        if "seq" not in answer:
            self.rejected.inc()
            return _error(400, str(answer.get("error", "event not accepted")))
        self.accepted.inc()
        envelope = self.envelopes.at(answer["seq"])
        if envelope is None:  # overwritten already: a ring far too small for its rate
            return JSONResponse({"seq": answer["seq"]})
        return envelope, b"application/json"


class _PublishFirst:
    """ASGI middleware, innermost: a ``POST /events/publish`` goes straight to `publish`, past the routing
    (the route stays, for the 405 of other methods). What is outside it (the auth, CORS) applies as before."""

    def __init__(self, app, publish: _Publish):
        self.app = app
        self.publish = publish

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/events/publish" and scope["method"] == "POST":
            return await self.publish(scope, receive, send)
        return await self.app(scope, receive, send)


class _Batched:
    """A connection's transport whose writes in one turn of the loop reach the socket as one write: a
    response's head and body are one send, not two (a client then wakes once per response, not twice).
    What is held goes out when the response completes, else when the loop turns; ``close`` sends it first."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []
        self._flush_handle: asyncio.Handle | None = None

    def write(self, data: bytes) -> None:
        if not self._held:
            self._flush_handle = self._loop.call_soon(self.flush)
        self._held.append(data)

    def flush(self) -> None:
        if self._held:
            self._flush_handle.cancel()
            data = b"".join(self._held) if len(self._held) > 1 else self._held[0]
            self._held.clear()
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._held))

    def __getattr__(self, name):  # the rest (is_closing, get_extra_info, pause_reading, ...) is the socket's
        return getattr(self._transport, name)


class _HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing through `_Batched`."""

    def connection_made(self, transport):
        super().connection_made(_Batched(transport, self.loop))

    def on_response_complete(self):
        self.transport.flush()
        super().on_response_complete()


class _RingCollector:
    """The ring's figures, read at each scrape."""

    def __init__(self, config: EdgeConfig):
        self.config = config

    def collect(self):
        try:
            s = ring_stats(self.config.name)
        except (ShmringError, OSError):
            return
        session = s["capture_session_id"]
        yield CounterMetricFamily("shmring_published_events", "events the ring's writer published",
                                  value=s["latest_seq"] - s["first_seq"] + 1)
        yield GaugeMetricFamily("shmring_latest_seq", "the latest published seq", value=s["latest_seq"])
        yield GaugeMetricFamily("shmring_writer_up", "1 while the ring's writer lives", value=int(s["writer"]["alive"]))
        lag = GaugeMetricFamily("shmring_reader_lag", "events between a reader's cursor and the latest seq",
                                labels=["role", "pid"])
        dropped = CounterMetricFamily("shmring_reader_dropped", "events a reader lost", labels=["role", "pid"])
        delivered = CounterMetricFamily("shmring_reader_delivered", "events a reader took", labels=["role", "pid"])
        for r in s["readers"]:
            labels = [r["role"], str(r["pid"])]
            lag.add_metric(labels, r["lag"])
            dropped.add_metric(labels, r["dropped"])
            delivered.add_metric(labels, r["delivered"])
        yield lag
        yield dropped
        yield delivered
        if self.config.log_dir is not None:
            checkpoint = _checkpoint(self.config.log_dir)
            if checkpoint.get("capture_session_id") in (None, session) and "seq" in checkpoint:
                yield GaugeMetricFamily("shmring_flusher_checkpoint_seq", "the seq the flusher has made durable",
                                        value=checkpoint["seq"])
            yield CounterMetricFamily("shmring_gap_events", "events recorded lost in the log directory's _gaps.jsonl",
                                      value=_gap_events(self.config.log_dir, session))


def _checkpoint(log_dir: str) -> dict:
    try:
        data = json.loads(pathlib.Path(log_dir, CHECKPOINT_FILE).read_bytes())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _gap_events(log_dir: str, session: str) -> int:
    total = 0
    with contextlib.suppress(OSError):
        for line in pathlib.Path(log_dir, GAPS_FILE).read_bytes().splitlines():
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                gap = json.loads(line)
                if gap.get("capture_session_id") == session:
                    total += int(gap.get("dropped", 0))
    return total


class _Auth:
    """ASGI middleware: the bearer token (or ?token= on the stream and the viewer) on every route but /healthz."""

    QUERY_TOKEN_PATHS = ("/", "/events/stream")

    def __init__(self, app, token: str | None):
        self.app = app
        self.token = None if token is None else token.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.token is None or scope["path"] == "/healthz":
            return await self.app(scope, receive, send)
        given = b""
        for key, value in scope["headers"]:
            if key == b"authorization" and value[:7].lower() == b"bearer ":
                given = value[7:].strip()
        if not given and scope["path"] in self.QUERY_TOKEN_PATHS:
            for part in scope.get("query_string", b"").split(b"&"):
                if part.startswith(b"token="):
                    given = unquote_to_bytes(part[6:].replace(b"+", b" "))
        if not given or not hmac.compare_digest(given, self.token):
            response = _error(401, "missing or wrong token: send Authorization: Bearer <token> "
                                   "(or ?token= on /events/stream and /)")
            response.headers["WWW-Authenticate"] = "Bearer"
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)


class _Stream(EventSourceResponse):
    """An SSE response that gives back its client slot and its reader however it ends."""

    def __init__(self, *args, on_end, **kwargs):
        super().__init__(*args, **kwargs)
        self._on_end = on_end

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_end()


def create_app(config: EdgeConfig) -> Starlette:
    disable_created_metrics()
    metrics = CollectorRegistry()
    metrics.register(_RingCollector(config))
    clients_gauge = Gauge("shmring_sse_clients", "connected SSE clients", registry=metrics)
    publishes = Counter("shmring_http_publishes", "events published through POST /events/publish",
                        ["result"], registry=metrics)
    sse_events = Counter("shmring_sse_events_sent", "event frames sent to SSE clients", registry=metrics)
    sse_drops = Counter("shmring_sse_drop_frames_sent", "dropped frames sent to SSE clients", registry=metrics)
    publish = _Publish(_Ingest(config.socket_path), _Envelopes(config.name), publishes)
    clients = 0
    name = config.name
    archive = config.log_dir if archive_supported() else None  # replay-merge: history beyond the ring

    def client_count() -> int:
        return clients

    def on_sent(events: int, drops: int) -> None:
        if events:
            sse_events.inc(events)
        if drops:
            sse_drops.inc(drops)

    async def stream(request: Request):
        nonlocal clients
        if clients >= config.max_clients:
            return _error(503, f"too many streams: this edge serves at most {config.max_clients}; retry later")
        try:
            ring = ring_stats(name)
            start = stream_start(request.headers.get("last-event-id"), request.query_params.multi_items(),
                                 ring["latest_seq"])
            reader = await AsyncReader.attach(name, after_seq=start.after_seq, filter=start.filter,
                                              archive=archive, max_delay_s=STREAM_MAX_DELAY_S)
        except RingNotFound as exc:
            return _error(503, str(exc))
        except ConfigError as exc:
            return _error(400, str(exc))
        clients += 1
        clients_gauge.inc()

        def ended():
            nonlocal clients
            clients -= 1
            clients_gauge.dec()
            reader.close()

        async def body():
            yield session_frame(reader.capture_session_id, ring["latest_seq"])
            async for chunk in event_frames(reader, keepalive_s=config.keepalive_s, on_sent=on_sent):
                yield chunk

        return _Stream(body(), on_end=ended, ping=0, send_timeout=SEND_TIMEOUT_S,
                       headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def capture_session(request: Request):
        try:
            s = await run_in_threadpool(ring_stats, name, sample_s=0.25, accelerator=True)
        except RingNotFound as exc:
            return _error(503, str(exc))
        s["flusher_checkpoint"] = _checkpoint(config.log_dir) if config.log_dir is not None else None
        return JSONResponse(s)

    async def metrics_route(request: Request):
        data = await run_in_threadpool(generate_latest, metrics)
        return Response(data, media_type=CONTENT_TYPE_LATEST)

    control_threads = None

    async def control(call, *args, **kwargs):
        nonlocal control_threads
        if control_threads is None:
            control_threads = anyio.CapacityLimiter(CONTROL_THREADS)
        return await anyio.to_thread.run_sync(functools.partial(call, name, *args, timeout_s=config.control_timeout_s,
                                                                **kwargs), limiter=control_threads)

    async def producer_config(request: Request):
        producer = request.path_params["producer"]
        if producer not in PRODUCERS:
            return _error(404, f"unknown producer {producer!r}: the producers are {', '.join(PRODUCERS)}")
        try:
            if request.method in ("GET", "HEAD"):
                return JSONResponse((await control(get_config, producer)).to_dict())
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > CONTROL_BODY_BYTES:
                    return _error(413, f"a producer config is at most {CONTROL_BODY_BYTES} bytes")
            try:
                patch = _decode_json.decode(body)
            except msgspec.DecodeError as exc:
                raise ConfigError(f"the body is not JSON ({exc}); send a JSON object with some of enabled, "
                                  "categories, detail_level (PUT: all of them)") from None
            change = await control(set_config, patch, producer, replace=request.method == "PUT")
        except ConfigError as exc:
            return _error(400, str(exc))
        except ProducerNotRunning as exc:
            return _error(503, str(exc))
        except ControlTimeout as exc:
            return _error(504, str(exc))
        except ControlError as exc:
            return _error(502, str(exc))
        reply = change.new.to_dict()
        if change.failed:
            reply["failed"] = change.failed
        return JSONResponse(reply)

    async def healthz(request: Request):
        try:
            s = ring_stats(name)
        except (ShmringError, OSError):
            return JSONResponse({"writer_alive": False}, status_code=503)
        alive = s["writer"]["alive"] and not s["closed"]
        return JSONResponse({"writer_alive": alive, "latest_seq": s["latest_seq"]}, status_code=200 if alive else 503)

    async def viewer(request: Request):
        return Response(VIEWER.read_bytes(), media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-cache"})

    middleware = []
    if config.cors_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(config.cors_origins),
                                     allow_methods=["GET", "POST", "PUT", "PATCH"],
                                     allow_headers=["Authorization", "Content-Type", "Last-Event-ID"]))
    middleware.append(Middleware(_Auth, token=config.token))
    middleware.append(Middleware(_PublishFirst, publish=publish))
    routes = [
        Route("/", viewer),
        Route("/events/stream", stream),
        Route("/events/publish", publish, methods=["POST"]),
        Route("/events/capture_session", capture_session),
        Route("/metrics", metrics_route),
        Route("/healthz", healthz),
        Route("/producers/{producer}", producer_config, methods=["GET", "PUT", "PATCH"]),
    ]
    app = Starlette(routes=routes, middleware=middleware)
    app.state.clients = client_count
    return app


RING_CHECK_S = 0.25
END_GRACE_S = 5.0


def _ring_open(name: str) -> bool:
    try:
        return not ring_stats(name)["closed"]
    except (ShmringError, OSError):
        return False


async def _exit_when_ring_ends(server, name: str, clients) -> None:
    """Once the ring is closed (or gone), let the streams send their end frame, then stop serving."""
    while _ring_open(name):
        await asyncio.sleep(RING_CHECK_S)
    deadline = asyncio.get_running_loop().time() + END_GRACE_S
    while clients() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    server.should_exit = True


def run_edge(config: EdgeConfig) -> None:
    """Serve `config` until SIGINT/SIGTERM. Raises ShmringError if the ring is missing or the port is taken."""
    ring_stats(config.name)  # RingNotFound now, not at the first request
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # a stream costs a socket and its reader a pidfd
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    app = create_app(config)
    server = uvicorn.Server(uvicorn.Config(
        app, host=config.host, port=config.port, log_level="warning", access_log=False,
        lifespan="off", backlog=4096, timeout_graceful_shutdown=3, server_header=False,
        http=_HttpProtocol, proxy_headers=False))  # nothing here reads the client's address

    async def main():
        watcher = asyncio.ensure_future(_exit_when_ring_ends(server, config.name, app.state.clients))
        try:
            await server.serve()
        finally:
            watcher.cancel()

    asyncio.run(main())
    if not server.started:
        raise ConfigError(f"the HTTP edge cannot listen on {config.host}:{config.port} (in use, or not an address "
                          "of this machine); choose another --http")
