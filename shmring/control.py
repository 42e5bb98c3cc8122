"""Producer control: read and change a running native producer's config, by ring name.

Rules:
- ``serve NAME --cdp``, or a standalone ``capture-cdp NAME``, listens on
  ``control_socket_path(NAME)`` (mode 0600, next to the ring in /dev/shm);
  one producer per ring serves it. Only processes of the same user are served,
  and a client talks only to a server of its own user (SO_PEERCRED, both ways).
- The protocol: one JSON object per line, one reply line per request, in
  order. Requests: ``{"op": "get", "producer": "cdp"}``, ``{"op": "stats",
  "producer": "cdp"}`` and ``{"op": "set", "producer": "cdp", "config":
  {...}, "replace": bool}`` (replace: the whole config, as HTTP ``PUT``;
  else a patch of some fields, as ``PATCH``). Replies: ``{"config": {...}}``,
  ``{"stats": {...}}``, ``{"old": ..., "new": ..., "changed": bool,
  "failed": [{"target_id", "url", "error"}]}``, or ``{"error": "...",
  "kind": "config" | "not_running" | "timeout" | "control"}``.
- A change is validated here before anything is sent, and again by the
  server; a bad field, category or level is a one-line ``ConfigError``.
- No server at the path (no producer, or a serve without ``--cdp``): the client
  raises ``ProducerNotRunning``. A server (or the producer behind it) that
  does not answer within the timeout: ``ControlTimeout``; any other failure
  of the channel: ``ControlError``.
- This is the producer's control surface only. Nothing a reader, ``tail``,
  a consumer group or an SSE client asks goes through it.

For the HTTP edge: ``get_config(name)`` for ``GET /producers/cdp``,
``set_config(name, body, replace=True)`` for ``PUT`` and
``set_config(name, body)`` for ``PATCH``; it maps ``ConfigError`` to 400,
``ProducerNotRunning`` to 503, ``ControlTimeout`` to 504 and any other
``ControlError`` to 502.
"""

import asyncio
import contextlib
import os
import socket
import struct
from typing import NamedTuple

import msgspec

from .errors import ConfigError, ControlError, ControlTimeout, ProducerNotRunning
from .producer_config import ProducerConfig
from .segment import control_socket_path, validate_ring_name
from .unix_socket import listen_private

__all__ = ["ConfigChange", "ControlServer", "get_config", "producer_stats", "set_config"]

PRODUCERS = ("cdp",)
MAX_REQUEST_BYTES = 64 * 1024
DEFAULT_TIMEOUT_S = 10.0

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(dict).decode
_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class ConfigChange(NamedTuple):
    """What a change did: the config before and after, and the targets that could not apply it."""

    old: ProducerConfig
    new: ProducerConfig
    changed: bool
    failed: list
    """One dict per target the change could not reach: ``target_id``, ``url``, ``error``."""


def _peer_uid(sock: socket.socket) -> int:
    return _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))[1]


def _check_producer(producer: str) -> None:
    if producer not in PRODUCERS:
        raise ConfigError(f"unknown producer {producer!r}: the producers are {', '.join(PRODUCERS)}")


def _not_running(name: str, producer: str) -> ProducerNotRunning:
    return ProducerNotRunning(f"no {producer.upper()} producer is running for ring {name!r}: start one with "
                              f"`shmring serve {name} --socket PATH --cdp URL`, or `shmring capture-cdp {name} "
                              "--cdp URL --socket PATH` beside a running serve", name=name, producer=producer)


def _request(name: str, request: dict, timeout_s: float) -> dict:
    validate_ring_name(name)
    _check_producer(request["producer"])
    path = control_socket_path(name)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise _not_running(name, request["producer"]) from None
        except OSError as exc:
            raise ControlError(f"cannot reach the control socket of ring {name!r} at {path}: "
                               f"{exc.strerror or exc}", name=name, path=path) from None
        if _peer_uid(sock) != os.geteuid():
            raise ControlError(f"the control socket {path} belongs to another user's process; refusing to use it",
                               name=name, path=path)
        try:
            sock.sendall(_encode(request) + b"\n")
            reply = sock.makefile("rb").readline(MAX_REQUEST_BYTES * 16)
        except TimeoutError:
            raise ControlTimeout(f"the producer of ring {name!r} did not answer within {timeout_s:g} s",
                               name=name, path=path) from None
        except OSError as exc:
            raise ControlError(f"the control connection of ring {name!r} failed: {exc.strerror or exc}",
                               name=name, path=path) from None
    finally:
        sock.close()
    try:
        reply = _decode(reply)
    except msgspec.DecodeError:
        raise ControlError(f"the control socket of ring {name!r} answered something that is not the protocol",
                           name=name, path=path) from None
    if "error" in reply:
        kind = reply.get("kind")
        if kind == "config":
            raise ConfigError(str(reply["error"]), name=name)
        if kind == "not_running":
            raise ProducerNotRunning(str(reply["error"]), name=name, producer=request["producer"])
        if kind == "timeout":
            raise ControlTimeout(str(reply["error"]), name=name, path=path)
        raise ControlError(str(reply["error"]), name=name, path=path)
    return reply


def get_config(name: str, producer: str = "cdp", *, timeout_s: float = DEFAULT_TIMEOUT_S) -> ProducerConfig:
    """The config of ring `name`'s producer (``serve NAME --cdp``, or a standalone ``capture-cdp NAME``)."""
    return ProducerConfig.from_dict(_request(name, {"op": "get", "producer": producer}, timeout_s)["config"])


def set_config(name: str, config: dict | ProducerConfig, producer: str = "cdp", *, replace: bool = False,
               timeout_s: float = DEFAULT_TIMEOUT_S) -> ConfigChange:
    """Change the config of ring `name`'s producer (``serve NAME --cdp``, or ``capture-cdp NAME``); return what changed.

    `config`: a patch of some fields (``{"categories": ["console"]}``), or with
    ``replace=True`` the whole config. The producer applies it to every target
    before this returns; ``failed`` names the targets that could not apply it.
    """
    if isinstance(config, ProducerConfig):
        config, replace = config.to_dict(), True
    if replace:
        ProducerConfig.from_dict(config)  # a bad config fails here, before anything is sent
    else:
        ProducerConfig().patched(config)
    reply = _request(name, {"op": "set", "producer": producer, "config": config, "replace": replace}, timeout_s)
    return ConfigChange(ProducerConfig.from_dict(reply["old"]), ProducerConfig.from_dict(reply["new"]),
                        bool(reply["changed"]), list(reply["failed"]))


def producer_stats(name: str, producer: str = "cdp", *, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict:
    """The running producer's own counters (``CdpCapture.stats()``: events, CDP messages received per domain…)."""
    return _request(name, {"op": "stats", "producer": producer}, timeout_s)["stats"]


def requested_config(current: ProducerConfig, request: dict) -> ProducerConfig:
    """The config a "set" request asks for: its whole ``config`` with ``replace``, else `current` patched by it."""
    config = request.get("config")
    return ProducerConfig.from_dict(config) if request.get("replace") else current.patched(config)


def error_reply(exc: Exception) -> dict:
    """The reply line for an error a request handler raised."""
    kind = {ConfigError: "config", ProducerNotRunning: "not_running", ControlTimeout: "timeout"}
    for cls, name in kind.items():
        if isinstance(exc, cls):
            return {"error": str(exc), "kind": name}
    return {"error": str(exc), "kind": "control"}


class ControlServer:
    """Serves ring `name`'s control socket in the running asyncio loop; `handle(request) -> reply` answers.

    `handle` is an async callable taking a request dict (already checked for
    its ``op`` and ``producer``) and returning the reply dict; the errors it
    raises become error replies.
    """

    def __init__(self, name: str, handle):
        self.name = name
        self.path = control_socket_path(name)
        self._handle = handle
        self._server = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        """Listen (the caller has removed a stale socket file: ``unix_socket.prepare_socket_path``)."""
        try:
            self._server = await listen_private(self._serve, self.path, limit=MAX_REQUEST_BYTES)
        except OSError as exc:
            raise ControlError(f"cannot listen on the control socket {self.path}: {exc.strerror or exc}",
                               name=self.name, path=self.path) from None

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await asyncio.sleep(0)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            sock = writer.get_extra_info("socket")
            if sock is None or _peer_uid(sock) != os.geteuid():
                return  # another user: nothing to say
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    writer.write(_encode({"error": f"a control request is at most {MAX_REQUEST_BYTES} bytes",
                                          "kind": "control"}) + b"\n")
                    return
                if not line:
                    return
                if not line.strip():
                    continue
                writer.write(_encode(await self._answer(line)) + b"\n")
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _answer(self, line: bytes) -> dict:
        try:
            try:
                request = _decode(line)
            except msgspec.DecodeError:
                raise ControlError("a control request is one JSON object per line") from None
            if request.get("op") not in ("get", "set", "stats"):
                raise ControlError(f"unknown control op {request.get('op')!r}: use get, set or stats")
            _check_producer(request.get("producer"))
            return await self._handle(request)
        except Exception as exc:  # noqa: BLE001 - every failure is a reply, never the end of serve
            return error_reply(exc)
