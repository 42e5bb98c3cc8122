"""Serve: run a ring's writer with its ingest socket, a supervised flusher process and forwarders.

Rules:
- With a log directory, nothing is accepted until the flusher has attached
  (so the ring's close waits for it): an event acknowledged with a seq is
  always flushed, however soon the server is stopped.
- Shutdown order on stop: ingest stops accepting and ends its connections;
  a flusher being restarted is given time to attach; the ring is closed,
  which waits until the flusher has written the last event; the ring is
  removed; the flusher process exits on its own.
- The flusher runs as ``python -m shmring flush`` in its own session
  (process group), so a Ctrl-C aimed at the terminal's group cannot kill it
  before it drains. It is restarted if it dies, until the ring is closed.
- With ``resume``, the newest capture session in the log directory is
  continued (see resume.py): a dead writer's ring of it is drained into the
  directory before the new ring replaces it, and seqs go on after the last
  one any earlier writer assigned. With no session there, a new one starts.
- With ``--cdp``, serve owns the producer's config and the ring's control
  socket (``shmring.control``); the producer child gets changes over a
  private socket pair and is restarted with the config last applied.
- With ``http``, the HTTP edge (edge.py) starts once ingest listens and
  before serve reports ready; it stops last, after the ring's close and the
  flusher's end, so its streams send their ``end`` frame first.
- Nothing here prints: progress goes to the ``log`` callback.
"""

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time

import msgspec

from .edge import EdgeConfig, EdgeSupervisor
from .control import ControlServer, requested_config
from .errors import ConfigError, ControlError, ControlTimeout, ProducerNotRunning, RingNotFound, ServeError
from .forward import REPLAY_MERGE, open_sink
from .logdir import prepare_log_directory
from .ingest import (
    DEFAULT_MAX_BUFFERED_BYTES,
    DEFAULT_MAX_CONNECTIONS,
    IngestServer,
    prepare_socket_path,
    validate_ingest_limits,
)
from .producer_config import CATEGORIES, ProducerConfig
from .resume import prepare_resume, resuming
from .segment import control_socket_path, default_ingest_socket_path, ring_exists, validate_ring_name
from .session import CaptureSession
from .stats import ring_stats

__all__ = ["FlusherSupervisor", "serve"]


class FlusherSupervisor:
    """Keeps one flusher process running for ring `name` until told to stop."""

    RESTART_DELAY_S = 0.2
    ATTACH_TIMEOUT_S = 30.0

    def __init__(self, name: str, directory: str, *, fsync: str = "batch", group_readable: bool = False,
                 log=lambda msg: None):
        self.name = name
        self.directory = directory
        self.fsync = fsync
        self.group_readable = group_readable
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="flusher-supervisor", daemon=True)

    def _spawn(self) -> None:
        command = [sys.executable, "-m", "shmring", "flush", self.name, self.directory, "--fsync", self.fsync]
        if self.group_readable:
            command.append("--group-readable")
        self.proc = subprocess.Popen(command, start_new_session=True)

    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def _watch(self) -> None:
        while True:
            code = self.proc.wait()
            if self._closing.is_set() and code == 0:
                return
            if self._closing.is_set() and not ring_exists(self.name):
                return
            self.log(f"flusher (pid {self.proc.pid}) exited with status {code}; restarting it")
            time.sleep(self.RESTART_DELAY_S)
            self.restarts += 1
            self._spawn()

    def wait_attached(self, timeout_s: float | None = None) -> bool:
        """Until the current flusher process is attached to the ring as a gating reader; False on timeout."""
        deadline = time.monotonic() + (self.ATTACH_TIMEOUT_S if timeout_s is None else timeout_s)
        while time.monotonic() < deadline:
            proc = self.proc
            if proc.poll() is None and self._attached(proc.pid):
                return True
            time.sleep(0.01)
        return False

    def _attached(self, pid: int) -> bool:
        try:
            readers = ring_stats(self.name)["readers"]
        except RingNotFound:
            return False
        return any(r["pid"] == pid and r["role"] == "flusher" for r in readers)  # gating or retired as stalled

    def closing(self) -> None:
        """Right before the ring's close: a flusher that exits 0 from now on has drained it, and is not restarted
        (close wakes it, so it may end before close returns). One that fails is still restarted while the ring
        exists."""
        self._closing.set()

    STOP_TIMEOUT_S = 10.0
    """After the ring is closed, how long the flusher may take to finish (then SIGTERM and SIGCONT, then SIGKILL)."""

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """After the ring is closed: wait for the flusher to finish draining; return its status.

        Bounded whatever the flusher does: one that is stopped (SIGSTOP) or
        stuck gets SIGTERM plus SIGCONT, and SIGKILL a few seconds later.
        """
        self._closing.set()
        proc = self.proc
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.log(f"flusher (pid {proc.pid}) did not finish within {timeout_s:.0f} s of the ring's close; "
                     "stopping it")
            proc.send_signal(signal.SIGTERM)
            proc.send_signal(signal.SIGCONT)
            try:
                proc.wait(self.RESTART_DELAY_S * 25)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._thread.join(timeout_s)
        return self.proc.returncode


class ForwarderChild:
    """``shmring forward NAME --to URL`` as a child of serve, in its own session; restarted (with capped back-off)
    if it dies, until the ring is closed. A plain reader: nothing waits for it to attach."""

    STOP_TIMEOUT_S = 10.0

    def __init__(self, name: str, url: str, archive: str | None, log):
        self.name = name
        self.command = [sys.executable, "-m", "shmring", "forward", name, "--to", url]
        if archive is not None and REPLAY_MERGE:
            self.command += ["--archive", archive]
        self.log = log
        self.restarts = 0
        self._closing = threading.Event()
        self.proc = subprocess.Popen(self.command, start_new_session=True)
        self._thread = threading.Thread(target=self._watch, name="forwarder-supervisor", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        delay = FlusherSupervisor.RESTART_DELAY_S
        while True:
            started = time.monotonic()
            code = self.proc.wait()
            if self._closing.is_set():
                return
            self.log(f"forwarder (pid {self.proc.pid}) exited with status {code}; restarting it")
            delay = FlusherSupervisor.RESTART_DELAY_S if time.monotonic() - started > 30 else min(delay * 2, 5.0)
            if self._closing.wait(delay):
                return
            self.restarts += 1
            self.proc = subprocess.Popen(self.command, start_new_session=True)

    ATTACH_TIMEOUT_S = 10.0

    def closing(self) -> None:
        """Before the ring's close: let the current forwarder attach (bounded), so it still gets the ring's events;
        from now on it is not restarted."""
        deadline = time.monotonic() + self.ATTACH_TIMEOUT_S
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                readers = ring_stats(self.name)["readers"]
                if any(r["pid"] == self.proc.pid and r["role"] == "forwarder" for r in readers):
                    break
            except RingNotFound:
                break
            time.sleep(0.01)
        self._closing.set()

    def stop(self) -> int | None:
        """After the ring is closed: let it forward the rest, then SIGTERM (it writes its batch), then SIGKILL."""
        self._closing.set()
        proc = self.proc
        try:
            proc.wait(self.STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            proc.send_signal(signal.SIGCONT)
            try:
                proc.wait(self.STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._thread.join(self.STOP_TIMEOUT_S)
        return proc.returncode


class CaptureChild:
    """``shmring capture-cdp`` as a child of serve, in its own session; restarted if it dies.

    serve keeps the producer's config (``config``): a change requested on the
    control socket is validated here, sent to the child over a private socket
    pair, and recorded once the child has applied it; a restarted child starts
    with the config last applied.
    """

    STOP_TIMEOUT_S = 15.0
    REPLY_TIMEOUT_S = 8.0
    """How long the child may take to apply a change to every target (each has ``APPLY_TIMEOUT_S``)."""

    def __init__(self, command_for, config: ProducerConfig, log, name: str):
        self.command_for = command_for  # config, control fd -> argv
        self.config = config
        self.log = log
        self.name = name
        self._lock = asyncio.Lock()
        self._link: socket.socket | None = None
        self._streams = None
        self._next_id = 0
        self._spawn()

    def _spawn(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
        elif self._link is not None:
            self._link.close()
        self._streams = None
        self._link, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.proc = subprocess.Popen(self.command_for(self.config, child_end.fileno()), start_new_session=True,
                                         pass_fds=(child_end.fileno(),))
        finally:
            child_end.close()

    def keep_alive(self) -> None:
        if self.proc.poll() is not None:
            self.log(f"capture-cdp (pid {self.proc.pid}) exited with status {self.proc.returncode}; restarting it")
            self._spawn()

    def stop(self) -> None:
        """SIGTERM, then wait while it drains what it holds into the (still open) socket."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def close_link(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
        elif self._link is not None:
            self._link.close()

    async def _ask(self, request: dict) -> dict:
        """One request to the running child, one reply (ProducerNotRunning if it is not running)."""
        if self.proc.poll() is not None:
            raise ProducerNotRunning(f"the CDP producer of ring {self.name!r} is not running just now (serve is "
                                     "restarting it); try again in a second", name=self.name, producer="cdp")
        if self._streams is None:
            self._streams = await asyncio.open_unix_connection(sock=self._link)
        reader, writer = self._streams
        self._next_id += 1
        request = dict(request, id=self._next_id)
        try:
            writer.write(msgspec.json.encode(request) + b"\n")
            await writer.drain()
            async with asyncio.timeout(self.REPLY_TIMEOUT_S):
                while True:  # a late answer to a request that timed out is skipped
                    line = await reader.readline()
                    if not line or msgspec.json.decode(line, type=dict).get("id") == request["id"]:
                        break
        except TimeoutError:
            raise ControlTimeout(f"the CDP producer of ring {self.name!r} did not answer within "
                               f"{self.REPLY_TIMEOUT_S:g} s", name=self.name) from None
        except (ConnectionError, OSError):
            line = b""
        if not line:
            raise ProducerNotRunning(f"the CDP producer of ring {self.name!r} stopped while it was asked; serve "
                                     "restarts it: try again in a second", name=self.name, producer="cdp")
        reply = msgspec.json.decode(line, type=dict)
        if "error" in reply:
            raise ControlError(str(reply["error"]), name=self.name)
        return reply

    async def handle(self, request: dict) -> dict:
        """A control-socket request (see ``shmring.control``) for the cdp producer."""
        async with self._lock:  # one change at a time, in arrival order
            if request["op"] == "get":
                return {"config": self.config.to_dict()}
            if request["op"] == "stats":
                return await self._ask({"op": "stats"})
            new = requested_config(self.config, request)
            reply = await self._ask({"op": "set", "config": new.to_dict()})
            self.config = ProducerConfig.from_dict(reply["new"])
            return reply


async def _ingest_until(server: IngestServer, stop: threading.Event, ready, capture_factory=None, name=None) -> None:
    await server.start()
    capture = control = None
    try:
        if capture_factory is not None:
            capture = capture_factory()
            prepare_socket_path(control_socket_path(name))
            control = ControlServer(name, capture.handle)
            await control.start()
        ready()
        while not stop.is_set():
            await asyncio.sleep(0.05)
            if capture is not None and not stop.is_set():
                capture.keep_alive()
    finally:
        if control is not None:
            await control.stop()
        if capture is not None:
            # Ingest keeps serving while the producer drains.
            await asyncio.get_running_loop().run_in_executor(None, capture.stop)
            capture.close_link()
        await server.stop()


def serve(name: str, *, stop: threading.Event, socket_path: str | None = None, log_dir: str | None = None,
          fsync: str = "batch", group_readable: bool = False, log=lambda msg: None, on_ready=lambda session: None,
          cdp_url: str | None = None, cdp_detail_level: str = "standard", cdp_console_hook: bool | None = None,
          cdp_categories=None, cdp_enabled: bool = True, max_connections: int = DEFAULT_MAX_CONNECTIONS,
          max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES, resume: bool = False,
          forward: list[str] | None = None, http: EdgeConfig | None = None, **create_kwargs) -> dict:
    """Run until `stop` is set; return counts. Raises ShmringError on set-up failures.

    cdp_url: also run ``shmring capture-cdp`` against that browser, publishing
    through `socket_path` (without one, a private socket next to the ring), with the initial config
    `cdp_enabled`, `cdp_categories` (default: all) and `cdp_detail_level`;
    ``shmring.control`` changes it at run time through the ring's control
    socket. group_readable: the flusher's
    directory and files are created 0750/0640 instead of 0700/0600.
    max_connections, max_buffered_bytes: the ingest socket's limits (see ingest).
    http: also run the HTTP edge (see edge), publishing through `socket_path` (without one, the private
    socket next to the ring).
    resume: continue the newest capture session in `log_dir` (required then)
    instead of starting a new one; see the module rules.
    forward: sink URLs, each forwarded to by a supervised ``shmring forward`` (reading `log_dir` as its archive).
    """
    validate_ring_name(name)
    if resume and log_dir is None:
        raise ConfigError("--resume needs --log-dir: it continues the newest capture session in that directory",
                          name=name)
    if resume and (create_kwargs.get("capture_session_id") is not None or "first_seq" in create_kwargs):
        raise ConfigError("--resume continues the log directory's capture session; do not give a session id "
                          "with it", name=name)
    cdp_config = ProducerConfig(cdp_enabled, CATEGORIES if cdp_categories is None else cdp_categories,
                                cdp_detail_level)
    if cdp_url is None and (cdp_categories is not None or not cdp_enabled):
        raise ConfigError("--cdp-categories and --cdp-disabled configure the --cdp producer: give --cdp URL too",
                          name=name)
    if http is not None:
        socket_path = socket_path or default_ingest_socket_path(name)
        http = msgspec.structs.replace(http, socket_path=socket_path, log_dir=log_dir)
    if cdp_url is not None and socket_path is None:
        socket_path = default_ingest_socket_path(name)  # the producer publishes through an ingest socket
    if socket_path is not None:
        validate_ingest_limits(max_connections, max_buffered_bytes)  # fail before the ring exists
        prepare_socket_path(socket_path)
    if log_dir is not None:
        prepare_log_directory(log_dir, group_readable=group_readable)  # refuses one another user controls
    for url in forward or ():
        open_sink(name, url)  # a bad URL fails before the ring exists
    with resuming(log_dir) if resume else contextlib.nullcontext():  # until the new ring exists
        if resume:
            plan = prepare_resume(name, log_dir, fsync=fsync, group_readable=group_readable, log=log)
            if plan is None:
                log(f"no capture session in {log_dir} to resume; starting a new one")
            else:
                create_kwargs.update(capture_session_id=plan.capture_session_id, first_seq=plan.first_seq)
                log(f"resuming capture session {plan.capture_session_id} of {log_dir} at seq {plan.first_seq}")
        session = CaptureSession.create(name, **create_kwargs)
    supervisor = None
    edge = None
    forwarders = []
    server = None
    flusher_attached = False
    try:
        if log_dir is not None:
            supervisor = FlusherSupervisor(name, log_dir, fsync=fsync, group_readable=group_readable, log=log)
            supervisor.start()
            if not supervisor.wait_attached():
                raise ServeError(f"the flusher into {log_dir} did not attach to ring {name!r} within "
                                 f"{supervisor.ATTACH_TIMEOUT_S:.0f} s; see its messages above",
                                 name=name, path=log_dir)
            flusher_attached = True
        forwarders = [ForwarderChild(name, url, log_dir, log) for url in forward or ()]
        if socket_path is not None:
            server = IngestServer(socket_path, session.publish, max_connections=max_connections,
                                  max_buffered_bytes=max_buffered_bytes)
            factory = None
            if cdp_url is not None:
                from .cdp import capture_command

                def command_for(config, fd):
                    return capture_command(name, cdp_url, socket_path, console_hook=cdp_console_hook, config=config,
                                           control_fd=fd)

                def factory():
                    return CaptureChild(command_for, cdp_config, log, name)

            def ready():
                nonlocal edge
                if http is not None:
                    edge = EdgeSupervisor(http, log=log)
                    edge.start()
                on_ready(session)

            asyncio.run(_ingest_until(server, stop, ready, factory, name))
        else:
            on_ready(session)
            stop.wait()
    finally:
        if flusher_attached:
            supervisor.wait_attached()  # a flusher being restarted must attach before close, or it finds no ring
        if supervisor is not None:
            supervisor.closing()  # from now on a flusher that ends cleanly has drained the closed ring
        for forwarder in forwarders:
            forwarder.closing()
        complete = session.close()  # bounded: a stalled flusher's gate is retired after gate_stall_s
        flusher_status = supervisor.stop() if supervisor is not None else None
        for forwarder in forwarders:
            forwarder.stop()
        if edge is not None:
            edge.stop()  # after the close (its streams send their end frame) and the flusher's end
        if supervisor is not None and (not complete or flusher_status != 0):
            log(f"the flusher did not finish (exit status {flusher_status}): events up to seq {session.last_seq} "
                f"after its last checkpoint may be missing from {log_dir}")
    return dict(
        capture_session_id=session.capture_session_id,
        published=session.last_seq - session.first_seq + 1,
        last_seq=session.last_seq,
        accepted=server.accepted if server else 0,
        rejected=server.rejected if server else 0,
        flusher_status=flusher_status,
        flusher_restarts=supervisor.restarts if supervisor else 0,
    )
