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
- The concerns with rules of their own are modules of their own:
  ``edge_publish`` (``POST /events/publish`` and the ingest link),
  ``edge_control`` (``/producers/{producer}``, the control calls in threads
  of their own) and ``edge_protocol`` (uvicorn's protocol, one send per
  response). This module is the app: its routes, auth, metrics and run.
- With a token every route but ``/healthz`` needs ``Authorization: Bearer
  <token>`` (401 without it); the stream and the viewer also take it as
  ``?token=`` (a browser's EventSource cannot set headers). CORS headers only
  for the ``cors_origins`` named. At most ``max_clients`` streams: the next
  gets 503. Bad requests get 400 with ``{"error": "…"}``.
- Nothing here prints: uvicorn logs warnings only, through ``logging``.
"""

import asyncio
import contextlib
import hmac
import json
import pathlib
import resource
from urllib.parse import unquote_to_bytes

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

from .aio import AsyncReader, archive_supported
from .edge import EdgeConfig
from .edge_control import producer_config_route
from .edge_protocol import HttpProtocol
from .edge_publish import Envelopes, Ingest, Publish, PublishFirst, error_response
from .errors import ConfigError, RingNotFound, ShmringError
from .logdir import CHECKPOINT_FILE, GAPS_FILE
from .sse import event_frames, session_frame, stream_start
from .stats import ring_stats

__all__ = ["create_app", "run_edge"]

SEND_TIMEOUT_S = 120.0
"""A client whose socket takes nothing for this long is disconnected (a slow one gets drops instead)."""
STREAM_MAX_DELAY_S = 0.005
"""Each stream's latency budget: events collect for up to 5 ms, then go out in one chunk."""
VIEWER = pathlib.Path(__file__).with_name("static") / "viewer.html"


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
            response = error_response(401, "missing or wrong token: send Authorization: Bearer <token> "
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
    publish = Publish(Ingest(config.socket_path), Envelopes(config.name), publishes)
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
            return error_response(503, f"too many streams: this edge serves at most {config.max_clients}; retry later")
        try:
            ring = ring_stats(name)
            start = stream_start(request.headers.get("last-event-id"), request.query_params.multi_items(),
                                 ring["latest_seq"])
            # Unpopulated: a stream attaches in ~0.3 ms, not ~8 ms of the event loop, and an idle one maps
            # only what it reads (1,000 populated streams would hold 1,000 page tables of the whole ring).
            reader = await AsyncReader.attach(name, after_seq=start.after_seq, filter=start.filter,
                                              archive=archive, max_delay_s=STREAM_MAX_DELAY_S, populate=False)
        except RingNotFound as exc:
            return error_response(503, str(exc))
        except ConfigError as exc:
            return error_response(400, str(exc))
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
            return error_response(503, str(exc))
        s["flusher_checkpoint"] = _checkpoint(config.log_dir) if config.log_dir is not None else None
        return JSONResponse(s)

    async def metrics_route(request: Request):
        data = await run_in_threadpool(generate_latest, metrics)
        return Response(data, media_type=CONTENT_TYPE_LATEST)

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
    middleware.append(Middleware(PublishFirst, publish=publish))
    routes = [
        Route("/", viewer),
        Route("/events/stream", stream),
        Route("/events/publish", publish, methods=["POST"]),
        Route("/events/capture_session", capture_session),
        Route("/metrics", metrics_route),
        Route("/healthz", healthz),
        Route("/producers/{producer}", producer_config_route(name, config.control_timeout_s),
              methods=["GET", "PUT", "PATCH"]),
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
        http=HttpProtocol, proxy_headers=False))  # nothing here reads the client's address

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
