"""The HTTP edge's settings, checked before any ring exists, and its supervision by ``serve``.

Rules:
- ``edge_config`` checks everything up front, each failure a one-line
  ``ConfigError``: ``--http [HOST:]PORT`` (HOST defaults to 127.0.0.1), a
  non-loopback HOST only with ``--http-token-file``, a token file that is
  readable and holds a token, CORS origins, the client cap, the keepalive.
- The token travels as its file's path, never on a command line.
- The edge runs as ``python -m shmring edge NAME …`` in its own session (a
  Ctrl-C aimed at the terminal cannot cut its streams before their end
  frame). ``EdgeSupervisor`` starts it once the ring and the ingest socket
  are up, waits until it listens, restarts it if it dies, and stops it after
  the ring is closed: the edge then sends every stream its ``end`` frame and
  exits on its own (or gets SIGTERM, then SIGKILL).
"""

import argparse
import ipaddress
import signal
import socket
import subprocess
import sys
import threading
import time

import msgspec

from .errors import ConfigError, ServeError

__all__ = ["EdgeConfig", "EdgeSupervisor", "add_edge_arguments", "edge_config", "edge_config_from_args"]

DEFAULT_MAX_CLIENTS = 1024
DEFAULT_KEEPALIVE_S = 15.0
DEFAULT_CONTROL_TIMEOUT_S = 10.0


class EdgeConfig(msgspec.Struct, frozen=True):
    name: str
    host: str
    port: int
    socket_path: str | None = None
    log_dir: str | None = None
    token_file: str | None = None
    token: str | None = None
    cors_origins: tuple[str, ...] = ()
    max_clients: int = DEFAULT_MAX_CLIENTS
    keepalive_s: float = DEFAULT_KEEPALIVE_S
    control_timeout_s: float = DEFAULT_CONTROL_TIMEOUT_S
    """How long ``/producers/…`` waits for the producer's control socket (then 504)."""

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _listen_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--http takes [HOST:]PORT with a port from 1 to 65535, not {text!r}")
    return host, int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def _read_token(path: str) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read(4097)
    except OSError as exc:
        raise ConfigError(f"cannot read --http-token-file {path}: {exc.strerror or exc}") from None
    token = raw.decode("utf-8", "replace").strip()
    if not token or len(raw) > 4096 or any(c.isspace() for c in token) or not token.isprintable():
        raise ConfigError(f"--http-token-file {path} must hold one token (printable, no spaces, at most 4 KiB)")
    return token


def _check_bindable(host: str, port: int, listen: str) -> None:
    """Refuse, before any ring exists, an address this machine has not or a port another server holds."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind(infos[0][4])
    except OSError as exc:
        raise ConfigError(f"the HTTP edge cannot listen on {listen}: {exc.strerror or exc}; "
                          "choose another --http address or port") from None


def edge_config(name: str, listen: str, *, socket_path: str | None = None, log_dir: str | None = None,
                token_file: str | None = None, cors_origins=(), max_clients: int = DEFAULT_MAX_CLIENTS,
                keepalive_s: float = DEFAULT_KEEPALIVE_S) -> EdgeConfig:
    host, port = _listen_address(listen)
    if not _is_loopback(host) and token_file is None:
        raise ConfigError(f"--http {listen} is not a loopback address: the edge listens beyond this machine only "
                          "with --http-token-file (clients then send Authorization: Bearer <token>)")
    token = None if token_file is None else _read_token(token_file)
    _check_bindable(host, port, listen)
    for origin in cors_origins:
        if origin != "*" and ("://" not in origin or origin.endswith("/")):
            raise ConfigError(f"--http-cors-origin takes an origin such as https://example.com, not {origin!r}")
    if type(max_clients) is not int or max_clients < 1:
        raise ConfigError(f"--http-max-clients must be at least 1, not {max_clients!r}")
    if not isinstance(keepalive_s, (int, float)) or not 0.05 <= keepalive_s <= 3600:
        raise ConfigError(f"--sse-keepalive-s must be from 0.05 to 3600 seconds, not {keepalive_s!r}")
    return EdgeConfig(name=name, host=host, port=port, socket_path=socket_path, log_dir=log_dir,
                      token_file=token_file, token=token, cors_origins=tuple(cors_origins), max_clients=max_clients,
                      keepalive_s=float(keepalive_s))


def add_edge_arguments(parser: argparse.ArgumentParser, *, required: bool) -> None:
    """The edge's options, the same on ``serve`` and ``edge``."""
    parser.add_argument("--http", metavar="[HOST:]PORT", required=required,
                        help="serve the ring over HTTP (SSE stream, publish, metrics, viewer) on this address; "
                             "HOST defaults to 127.0.0.1" + ("" if required else "; default: no HTTP edge"))
    parser.add_argument("--http-token-file", metavar="F",
                        help="require Authorization: Bearer <the token in F> (needed off loopback)")
    parser.add_argument("--http-cors-origin", metavar="ORIGIN", action="append", default=[],
                        help="send CORS headers for this origin (repeatable); default: none")
    parser.add_argument("--http-max-clients", type=int, default=DEFAULT_MAX_CLIENTS, metavar="N",
                        help="SSE streams served at once; the next gets 503")
    parser.add_argument("--sse-keepalive-s", type=float, default=DEFAULT_KEEPALIVE_S, metavar="S",
                        help="send a ':' comment after S seconds with nothing sent")


def edge_config_from_args(args, *, socket_path=None, log_dir=None) -> EdgeConfig | None:
    if args.http is None:
        return None
    return edge_config(args.name, args.http, socket_path=socket_path, log_dir=log_dir,
                       token_file=args.http_token_file, cors_origins=args.http_cors_origin,
                       max_clients=args.http_max_clients, keepalive_s=args.sse_keepalive_s)


class EdgeSupervisor:
    """Keeps one edge process running for `config` until told to stop."""

    RESTART_DELAY_S = 0.5
    READY_TIMEOUT_S = 30.0
    STOP_TIMEOUT_S = 10.0

    def __init__(self, config: EdgeConfig, log=lambda msg: None):
        if config.socket_path is None:
            raise ConfigError("the HTTP edge publishes through an ingest socket: give it one")
        self.config = config
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="edge-supervisor", daemon=True)

    def command(self) -> list[str]:
        c = self.config
        command = [sys.executable, "-m", "shmring", "edge", c.name, "--socket", c.socket_path, "--http", c.address,
                   "--http-max-clients", str(c.max_clients), "--sse-keepalive-s", repr(c.keepalive_s)]
        if c.log_dir is not None:
            command += ["--log-dir", c.log_dir]
        if c.token_file is not None:
            command += ["--http-token-file", c.token_file]
        for origin in c.cors_origins:
            command += ["--http-cors-origin", origin]
        return command

    def start(self) -> None:
        self.proc = subprocess.Popen(self.command(), start_new_session=True)
        self._thread.start()
        if not self.wait_ready():
            raise ServeError(f"the HTTP edge did not listen on {self.config.address} within "
                             f"{self.READY_TIMEOUT_S:.0f} s; see its messages above", name=self.config.name)

    def wait_ready(self, timeout_s: float | None = None) -> bool:
        deadline = time.monotonic() + (self.READY_TIMEOUT_S if timeout_s is None else timeout_s)
        first = self.proc
        while time.monotonic() < deadline and not self._closing.is_set():
            if first.poll() is not None and self.proc is first:
                return False  # it ended before it listened: its own message says why
            if self.proc.poll() is None:
                try:
                    socket.create_connection((self.config.host, self.config.port), timeout=1).close()
                    return True
                except OSError:
                    pass
            time.sleep(0.02)
        return False

    def _watch(self) -> None:
        while True:
            code = self.proc.wait()
            if self._closing.is_set():
                return
            self.log(f"HTTP edge (pid {self.proc.pid}) exited with status {code}; restarting it")
            time.sleep(self.RESTART_DELAY_S)
            if self._closing.is_set():
                return
            self.restarts += 1
            self.proc = subprocess.Popen(self.command(), start_new_session=True)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """After the ring is closed: the edge sends its streams their end frame and exits on its own;
        one that has not within `timeout_s` gets SIGTERM, and SIGKILL a few seconds later."""
        self._closing.set()
        proc = self.proc
        if proc is None:
            return
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None:
                proc.send_signal(sig)
            try:
                proc.wait(timeout_s if sig is None else 5.0)
                break
            except subprocess.TimeoutExpired:
                continue
        self._thread.join(timeout_s)
