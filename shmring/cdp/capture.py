"""The capture loop: follows a live Chromium over CDP and publishes its events through serve's ingest socket.

Rules:
- One browser-level websocket with flattened sessions. ``Target.setAutoAttach``
  (``waitForDebuggerOnStart``, ``flatten``) at browser level follows every page,
  including tabs opened later; on each page session the same call follows its
  out-of-process iframes. A new target is resumed (``Runtime.runIfWaitingForDebugger``)
  only after Runtime, Network and Page are enabled and the interaction script
  and the console hook are installed, so its first requests and console calls
  are not lost. Targets of other types are resumed and detached.
- Events go out through the publisher thread (``publisher.py``); the asyncio
  loop never blocks on the socket. If the socket stays down and the backlog
  grows past ``BACKLOG_HIGH_WATER``, the oldest are dropped and counted.
- What is captured is the producer's own config (``ProducerConfig``:
  enabled, categories, detail level); readers filter on their side and
  nothing here is reconfigured by a subscriber. The config changes at run
  time only through the control channel: under ``serve --cdp``, serve's end
  of a socket pair (``control_fd``; serve owns the ring's control socket and
  the config); standalone (``control_socket=True``), the ring's control
  socket itself (``shmring.control``'s server, the same protocol and the
  same ``shmring producer NAME cdp``), refused at start if a live producer
  already serves it. Either way (see ``set_config``) the change is applied to the mapper at
  once (events of a category turned off stop there), published as one
  ``system.producer_config`` event with the old and the new config, then
  sent to every followed target at once (``domains.py``: ``Network.disable``
  and the like), each within ``APPLY_TIMEOUT_S``. A target set up or being
  set up while it changes is brought to the new config when its set-up ends.
  A target that cannot apply it (a crashed tab) is reported, the others are
  changed; the browser connection is kept throughout.
- The CDP messages received are counted per domain (``stats()["received"]``),
  so what the browser still sends after a domain is disabled can be seen.
- serve's control channel closing means serve is gone: the producer stops.
- Browser gone: one line through ``log`` when the connection is lost (not one
  per retry), reconnection with back-off capped at ``max_backoff_s``, a fresh
  websocket URL resolved each time, so a restarted browser on the same port
  is followed.
- A message that is not valid CDP, or that the mapper cannot read, is logged
  (rate limited) and skipped. Nothing here prints; messages go to ``log``.

What Chromium (156) imposes, measured: a tab that another client creates with
a URL (``Target.createTarget``, ``/json/new``) loads its first document before
an auto-attached debugger can hold it, so that document's request and
navigation are missed; tabs a page opens (``window.open``) are held and
complete, as is everything after. ``BrowserControl.open_tab`` opens
``about:blank`` first for that reason.
"""

import asyncio
import collections
import contextlib
import socket
import sys
import threading

import msgspec

from ..control import ControlServer, requested_config
from ..errors import CdpError, ConfigError, MalformedCdp, SocketPathError
from ..producer_config import ProducerConfig
from ..segment import control_socket_path
from ..unix_socket import prepare_socket_path
from .connection import _Connection, _http_base, resolve_browser_ws
from .domains import change_commands, console_hook_stacks, hook_script_params, hook_stacks_expression, setup_commands
from .mapper import CdpMapper
from .publisher import _Publisher

BACKLOG_HIGH_WATER = 50_000
APPLY_TIMEOUT_S = 3.0
"""How long one target may take to answer the commands of a config change (a hung one is then reported)."""


class CdpCapture:
    """Follows the browser at `cdp_url` and publishes its events to `socket_path`.

    ``run(stop)`` blocks until `stop` is set; ``connected`` is set while a
    browser connection is up; ``stats()`` is safe to call from any thread.
    """

    def __init__(self, cdp_url: str, socket_path: str, *, detail_level: str = "standard", log=lambda msg: None,
                 max_backoff_s: float = 3.0, name: str | None = None, console_hook: bool | None = None,
                 config: ProducerConfig | None = None, control_fd: int | None = None,
                 control_socket: bool = False):
        _http_base(cdp_url)  # reject a bad URL now
        if control_socket and (name is None or control_fd is not None):
            raise ConfigError("a capture serves its ring's control socket only standalone: with a ring name, "
                              "and without serve's control channel")
        self.cdp_url = cdp_url
        self.config = ProducerConfig(detail_level=detail_level) if config is None else config
        # By default console calls go through the in-page hook; at detail level
        # raw (the untouched CDP params) through Runtime.consoleAPICalled.
        # Chosen at start: a later config change keeps it.
        self.console_hook = self.config.detail_level != "raw" if console_hook is None else bool(console_hook)
        self.socket_path = socket_path
        self.name = name
        self.log = log
        self.max_backoff_s = max_backoff_s
        self.mapper = CdpMapper(self.config.detail_level)
        self.mapper.configure(self.config)
        self.control_fd = control_fd
        self.control_socket = control_socket
        self.received = collections.Counter()  # CDP events received, per domain (Network, Runtime, Page, ...)
        self.connected = threading.Event()
        self.counts = collections.Counter(published=0, rejected=0, truncated=0, lost=0, malformed=0,
                                          connections=0, disconnects=0, targets_attached=0, events=0,
                                          setup_failures=0, dropped_backlog=0)
        self._publisher = _Publisher(socket_path, log, self.counts)
        self._tasks: set[asyncio.Task] = set()
        self._conn: _Connection | None = None
        self._malformed_logged = 0
        self._dropping = False
        self._following: set[str] = set()  # target ids whose set-up is complete
        self._applied: dict[str, ProducerConfig] = {}  # session id -> the config its domains are set for
        self._locks: dict[str, asyncio.Lock] = {}  # session id -> held while its domains change
        self._hook_scripts: dict[str, str] = {}  # session id -> identifier of its console hook script
        self._crashed: set[str] = set()  # session ids whose renderer crashed: they answer nothing
        self._stop: threading.Event | None = None

    def stats(self) -> dict:
        out = dict(self.counts)
        out.update(sessions=len(self.mapper.sessions), pages=len(self.mapper.pages),
                   requests_in_flight=sum(len(t.requests) for t in list(self.mapper.sessions.values())),
                   setup_tasks=len(self._tasks), following=len(self._following),
                   backlog=self._publisher.backlog(), connected=self.connected.is_set(),
                   received=dict(self.received), config=self.config.to_dict(), targets=sorted(self._following))
        return out

    def is_following(self, target_id: str) -> bool:
        """True once `target_id` is set up (domains enabled, script installed) and resumed."""
        return target_id in self._following

    def run(self, stop: threading.Event) -> dict:
        self._stop = stop
        self._publisher.start()
        try:
            asyncio.run(self._main(stop))
        finally:
            self._publisher.close()
        return self.stats()

    # -- internals -----------------------------------------------------------

    def _emit(self, events: list[dict]) -> None:
        if events:
            self.counts["events"] += len(events)
            self._publisher.submit(events)

    def _malformed(self, what: str) -> None:
        self.counts["malformed"] += 1
        self._malformed_logged += 1
        n = self._malformed_logged
        if n <= 5 or n % 1000 == 0:
            self.log(f"capture-cdp: skipped a malformed CDP message: {what}"
                     + (f" [{n} skipped so far]" if n > 5 else ""))

    async def _on_message(self, method: str, params: dict, session_id: str | None) -> None:
        self.received[method.partition(".")[0]] += 1
        try:
            events = self.mapper.map(method, params, session_id)
        except MalformedCdp as exc:
            self._malformed(str(exc))
            return
        except RecursionError:
            self._malformed(f"{method}: nested too deeply")
            return
        self._emit(events)
        if method == "Target.detachedFromTarget":
            self._following.discard(params.get("targetId"))
            self._forget_session(params.get("sessionId"))
            if self._conn is not None and isinstance(params.get("sessionId"), str):
                self._conn.abandon_session(params["sessionId"])
        elif method == "Inspector.targetCrashed" and session_id is not None:
            self._crashed.add(session_id)  # it answers no command until it is reloaded
            if self._conn is not None:
                self._conn.abandon_session(session_id)
        elif method == "Inspector.targetReloadedAfterCrash" and session_id is not None:
            self._crashed.discard(session_id)
        elif method == "Target.attachedToTarget":
            task = asyncio.create_task(self._set_up(params, session_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self._publisher.backlog() > BACKLOG_HIGH_WATER:
            await self._relieve()

    async def _relieve(self) -> None:
        """Too many events wait for the ingest socket: wait for it, or drop (counted) if it is gone."""
        while self._publisher.backlog() > BACKLOG_HIGH_WATER // 2:
            if self._publisher.connected:
                await asyncio.sleep(0.005)
                continue
            dropped = self._publisher.discard_oldest(BACKLOG_HIGH_WATER // 2)
            self.counts["dropped_backlog"] += dropped
            if not self._dropping:
                self._dropping = True
                self.log(f"capture-cdp: the ingest socket is unreachable and {BACKLOG_HIGH_WATER} events are "
                         f"waiting; dropping the oldest (counted in dropped_backlog)")
            return
        self._dropping = False

    def _forget_session(self, session_id) -> None:
        self._applied.pop(session_id, None)
        self._locks.pop(session_id, None)
        self._hook_scripts.pop(session_id, None)
        self._crashed.discard(session_id)

    async def _send_all(self, conn, commands, session_id, timeout=None) -> list:
        """Send `commands` in order on one session; their results (or exceptions), in the same order."""
        kwargs = {} if timeout is None else {"timeout": timeout}
        replies = []
        try:
            for m, p in commands:
                replies.append(await conn.request(m, p, session_id, **kwargs))
        except BaseException:
            conn.discard(replies)
            raise
        return await asyncio.gather(*replies, return_exceptions=True)

    async def _set_up(self, params: dict, parent_session: str | None) -> None:
        conn = self._conn
        session_id = params.get("sessionId")
        info = params.get("targetInfo") or {}
        followed = session_id in self.mapper.sessions
        try:
            if followed:
                self.counts["targets_attached"] += 1
                lock = self._locks.setdefault(session_id, asyncio.Lock())
                async with lock:
                    config = self.config
                    commands = setup_commands(config, console_hook=self.console_hook)
                    # Sent in order, answered in any order; all before the target is resumed.
                    results = await self._send_all(conn, commands, session_id)
                    for (m, p), r in zip(commands, results):
                        if m == "Page.addScriptToEvaluateOnNewDocument" and "worldName" not in p \
                                and isinstance(r, dict) and r.get("identifier"):
                            self._hook_scripts[session_id] = r["identifier"]
                    self._applied[session_id] = config
                failed = [(m, r) for (m, _), r in zip(commands, results) if isinstance(r, BaseException)]
                if failed and session_id in self.mapper.sessions:
                    self.counts["setup_failures"] += 1
                    method, error = failed[0]
                    n = self.counts["setup_failures"]
                    if n <= 3 or n % 100 == 0:
                        self.log(f"capture-cdp: setting up {info.get('type')} {info.get('targetId')} partly failed "
                                 f"({method}: {error}); following it anyway [{n} so far]")
            await conn.send("Runtime.runIfWaitingForDebugger", {}, session_id)
            if followed and session_id in self.mapper.sessions:
                self._following.add(info.get("targetId"))
                if self.config != self._applied.get(session_id):  # changed during the set-up
                    error = await self._reconcile(session_id)
                    if error:
                        self.log(f"capture-cdp: target {info.get('targetId')} could not apply the new config: {error}")
            if not followed:
                await conn.send("Target.detachFromTarget", {"sessionId": session_id}, parent_session)
        except (TimeoutError, CdpError, ConnectionError, OSError):
            pass  # the target went away while it was being set up
        except Exception as exc:  # noqa: BLE001 - one target must not end the capture
            import websockets

            if not isinstance(exc, websockets.ConnectionClosed):
                self.log(f"capture-cdp: setting up target {info.get('targetId')} failed: {type(exc).__name__}: {exc}")

    # -- config changes ------------------------------------------------------

    async def _reconcile(self, session_id: str) -> str | None:
        """Bring one target's domains to the current config; None when done, else why it could not."""
        lock = self._locks.get(session_id)
        if lock is None:
            return None  # not followed (any more)
        async with lock:
            old, new = self._applied.get(session_id), self.config
            if old is None or old == new:
                return None  # its set-up has not begun (it will use the new config) or it is there already
            if session_id in self._crashed:
                return "the tab crashed"
            conn = self._conn
            if conn is None:
                return "the browser connection is down"
            commands = change_commands(old, new, console_hook=self.console_hook)
            stacks = console_hook_stacks(old, new, console_hook=self.console_hook)
            target = self.mapper.sessions.get(session_id)
            if stacks is not None:
                # Documents made from now on get the hook with the new setting, those open switch theirs.
                commands.append(("Page.addScriptToEvaluateOnNewDocument", hook_script_params(new)))
                if session_id in self._hook_scripts:
                    commands.append(("Page.removeScriptToEvaluateOnNewDocument",
                                     {"identifier": self._hook_scripts[session_id]}))
                for context in sorted(target.main_worlds) if target is not None else ():
                    commands.append(("Runtime.evaluate", {"expression": hook_stacks_expression(stacks),
                                                          "contextId": context}))
            self._applied[session_id] = new
            try:
                results = await self._send_all(conn, commands, session_id, timeout=APPLY_TIMEOUT_S)
            except (ConnectionError, OSError) as exc:
                return f"the browser connection failed ({exc})"
            for (m, p), r in zip(commands, results):
                if m == "Page.addScriptToEvaluateOnNewDocument" and isinstance(r, dict) and r.get("identifier"):
                    self._hook_scripts[session_id] = r["identifier"]
            if session_id in self._crashed:
                return "the tab crashed"
            for (m, _), r in zip(commands, results):
                # A document that went away meanwhile takes its execution context with it: not a failure.
                if isinstance(r, BaseException) and m != "Runtime.evaluate":
                    return f"{m} failed ({r})"
            return None

    async def _reconcile_within(self, session_id: str) -> str | None:
        try:
            return await asyncio.wait_for(self._reconcile(session_id), APPLY_TIMEOUT_S + 1)
        except TimeoutError:
            return f"it did not answer within {APPLY_TIMEOUT_S + 1:g} s"

    async def set_config(self, new: ProducerConfig) -> dict:
        """Apply `new` now (in the capture's loop): the mapper, the event, every target. The reply dict.

        The reply has ``old``, ``new``, ``changed`` and ``failed`` (a dict per
        target that could not apply it: ``target_id``, ``url``, ``error``).
        """
        old = self.config
        reply = {"old": old.to_dict(), "new": new.to_dict(), "changed": new != old, "failed": []}
        if new == old:
            return reply
        self.config = new
        self.mapper.configure(new)
        self._emit([self.mapper.system_event("system.producer_config",
                                             {"producer": "cdp", "old": old.to_dict(), "new": new.to_dict()})])
        # A target still being set up is not waited for: the end of its set-up brings it to the new config.
        sessions = [sid for sid in self._applied if sid in self.mapper.sessions]
        results = await asyncio.gather(*(self._reconcile_within(sid) for sid in sessions), return_exceptions=True)
        for sid, result in zip(sessions, results):
            if result is None:
                continue
            target = self.mapper.sessions.get(sid)
            failure = {"target_id": target.target_id if target else "", "url": target.url if target else "",
                       "error": str(result) if not isinstance(result, BaseException)
                       else f"{type(result).__name__}: {result}"}
            reply["failed"].append(failure)
            self.log(f"capture-cdp: target {failure['target_id']} ({failure['url']}) could not apply the new config: "
                     f"{failure['error']}")
        return reply

    async def handle(self, request: dict) -> dict:
        """A request on the ring's control socket (``shmring.control``'s protocol), for a standalone capture:
        get, stats, or set (a patch, or with ``replace`` the whole config), as serve answers for its child."""
        if request["op"] == "get":
            return {"config": self.config.to_dict()}
        if request["op"] == "stats":
            return {"stats": self.stats()}
        return await self.set_config(requested_config(self.config, request))

    async def _serve_control_socket(self) -> ControlServer:
        path = control_socket_path(self.name)
        try:
            prepare_socket_path(path)
        except SocketPathError:
            raise SocketPathError(f"a producer already serves the control socket of ring {self.name!r} ({path}): "
                                  "`shmring serve --cdp` or another `shmring capture-cdp`; stop it first, or change "
                                  f"that one's config with `shmring producer {self.name} cdp`",
                                  name=self.name, path=path) from None
        server = ControlServer(self.name, self.handle)
        await server.start()
        return server

    async def _control(self, fd: int, stopping: asyncio.Event) -> None:
        """Serve's control channel: one JSON request per line (set, get, stats), one reply line each."""
        encode, decode = msgspec.json.Encoder().encode, msgspec.json.Decoder(dict).decode
        sock = socket.socket(fileno=fd)
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                request = None
                try:
                    request = decode(line)
                    if request.get("op") == "set":
                        reply = await self.set_config(ProducerConfig.from_dict(request.get("config")))
                    elif request.get("op") == "stats":
                        reply = {"stats": self.stats()}
                    else:
                        reply = {"config": self.config.to_dict()}
                except Exception as exc:  # noqa: BLE001 - a bad request gets an error reply
                    reply = {"error": f"{type(exc).__name__}: {exc}", "kind": "control"}
                if isinstance(request, dict) and "id" in request:
                    reply["id"] = request["id"]
                writer.write(encode(reply) + b"\n")
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
        if not stopping.is_set():
            self.log("capture-cdp: serve closed the control channel; stopping")
            if self._stop is not None:
                self._stop.set()

    async def _main(self, stop: threading.Event) -> None:
        from websockets.asyncio.client import connect

        stopping = asyncio.Event()

        async def watch():
            while not stop.is_set():
                await asyncio.sleep(0.05)
            stopping.set()
            conn = self._conn
            if conn is not None:
                await conn.ws.close()

        control_server = await self._serve_control_socket() if self.control_socket else None
        watcher = asyncio.create_task(watch())
        control = None if self.control_fd is None else asyncio.create_task(self._control(self.control_fd, stopping))
        loop = asyncio.get_running_loop()
        backoff = 0.1
        reported_down = False

        async def retry_later(message: str) -> None:
            """Log `message` once per outage, then wait the back-off and double it (up to max_backoff_s)."""
            nonlocal backoff, reported_down
            if not reported_down:
                reported_down = True
                self.log(message)
            await _wait(stopping, backoff)
            backoff = min(backoff * 2, self.max_backoff_s)

        try:
            while not stopping.is_set():
                try:
                    ws_url = await loop.run_in_executor(None, resolve_browser_ws, self.cdp_url, 2.0)
                    ws = await connect(ws_url, max_size=None, ping_interval=None, compression=None, proxy=None,
                                       open_timeout=5, close_timeout=1, max_queue=None)
                except Exception as exc:  # noqa: BLE001 - refused, reset, not CDP, timed out: all "no browser"
                    await retry_later(f"capture-cdp: no browser at {self.cdp_url} ({exc}); retrying with back-off "
                                      f"up to {self.max_backoff_s:g} s until one is up")
                    continue
                connections = self.counts["connections"]
                try:
                    reason = await self._follow(ws, ws_url, stopping)
                except Exception as exc:  # noqa: BLE001 - a bug must not end a long-running producer
                    reason = f"internal error {type(exc).__name__}: {exc}"
                    with contextlib.suppress(Exception):
                        await ws.close()
                if stopping.is_set():
                    break
                if self.counts["connections"] > connections:  # it was up: a new outage, from the shortest wait
                    backoff, reported_down = 0.1, False
                    await retry_later(f"capture-cdp: lost the browser at {self.cdp_url}: {reason}; retrying with "
                                      f"back-off up to {self.max_backoff_s:g} s until it is back")
                else:
                    await retry_later(f"capture-cdp: the browser at {self.cdp_url} does not answer CDP ({reason}); "
                                      f"retrying with back-off up to {self.max_backoff_s:g} s")
        finally:
            for task in (watcher, control):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if control_server is not None:
                await control_server.stop()

    async def _follow(self, ws, ws_url: str, stopping: asyncio.Event) -> str:
        conn = _Connection(ws, self._on_message, self._malformed)
        self._conn = conn
        reader = asyncio.create_task(conn.run())
        reason = "the connection closed"
        try:
            if stopping.is_set():
                return "stopping"
            try:
                version = await conn.send("Browser.getVersion")
            except (TimeoutError, CdpError, ConnectionError) as exc:
                return f"Browser.getVersion failed ({exc})"
            self.counts["connections"] += 1
            self.connected.set()
            product = version.get("product", "")
            self.log(f"capture-cdp: following {product or 'the browser'} at {ws_url}"
                     + (f" into ring {self.name}" if self.name else ""))
            self._emit([self.mapper.system_event("system.cdp_connected", {
                "browser": product, "protocol_version": version.get("protocolVersion", ""),
                "websocket_url": ws_url, "detail_level": self.mapper.detail, "config": self.config.to_dict()})])
            pages_only = {"filter": [{"type": "page", "exclude": False}]}
            auto_attach = {"autoAttach": True, "waitForDebuggerOnStart": True, "flatten": True}
            try:
                for method, params in (("Target.setDiscoverTargets", {"discover": True}),
                                       ("Target.setAutoAttach", auto_attach)):
                    try:
                        await conn.send(method, {**params, **pages_only})
                    except CdpError:  # a browser without target filters: other types are detached on attach
                        await conn.send(method, params)
            except (TimeoutError, CdpError, ConnectionError) as exc:
                if not reader.done():
                    self.log(f"capture-cdp: could not ask the browser to report targets ({exc})")
            reason = await reader
            return reason
        finally:
            if not reader.done():
                await ws.close()
                reason = await reader
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            self._conn = None
            self._following.clear()
            for session_id in list(self._locks):
                self._forget_session(session_id)
            if self.connected.is_set():
                self.connected.clear()
                self.counts["disconnects"] += 1
                self._emit([self.mapper.system_event("system.cdp_disconnected", {
                    "reason": "producer stopping" if stopping.is_set() else reason, "websocket_url": ws_url})])
            self.mapper.reset()


async def _wait(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)


def capture(cdp_url: str, socket_path: str, *, stop: threading.Event, detail_level: str = "standard",
            log=lambda msg: None, name: str | None = None, max_backoff_s: float = 3.0,
            console_hook: bool | None = None, config: ProducerConfig | None = None,
            control_fd: int | None = None, control_socket: bool = False) -> dict:
    """Capture the browser at `cdp_url` into serve's ingest socket until `stop` is set; return counts.

    `cdp_url`: ``http://127.0.0.1:PORT`` or the browser's ``ws://…/devtools/browser/…`` URL.
    Raises ConfigError for a bad URL or detail level; everything else (no
    browser yet, browser gone, ingest socket down) is retried and reported
    through `log`, one line per change of state.
    `console_hook`: console calls through the in-page hook (True) or through
    ``Runtime.consoleAPICalled`` (False); None: the hook, except at detail
    level raw. See the module docstring.
    `config`: what to capture (default: everything at `detail_level`).
    `control_fd`: a connected socket's fd on which serve sends config changes.
    `control_socket`: standalone, serve ring `name`'s control socket itself (``shmring producer NAME cdp``).
    """
    return CdpCapture(cdp_url, socket_path, detail_level=detail_level, log=log, name=name,
                      max_backoff_s=max_backoff_s, console_hook=console_hook, config=config,
                      control_fd=control_fd, control_socket=control_socket).run(stop)


def capture_command(name: str, cdp_url: str, socket_path: str, detail_level: str = "standard",
                    console_hook: bool | None = None, *, config: ProducerConfig | None = None,
                    control_fd: int | None = None) -> list[str]:
    """The argv of a ``shmring capture-cdp`` child process (for ``serve --cdp``); `config` wins over `detail_level`."""
    flag = {None: [], True: ["--console-hook"], False: ["--console-via-inspector"]}[console_hook]
    command = [sys.executable, "-m", "shmring", "capture-cdp", name, "--cdp", cdp_url, "--socket", socket_path]
    if config is None:
        return [*command, "--detail-level", detail_level, *flag]
    command += ["--detail-level", config.detail_level, "--categories", ",".join(config.categories), *flag]
    if not config.enabled:
        command.append("--disabled")
    if control_fd is not None:
        command += ["--control-fd", str(control_fd)]
    return command
