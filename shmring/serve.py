"""Serve: run a ring's writer with its ingest socket and a supervised flusher process.

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
- Nothing here prints: progress goes to the ``log`` callback.
"""

import asyncio
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import msgspec

from .edge import EdgeConfig, EdgeSupervisor
from .errors import ConfigError, RingNotFound, ServeError
from .logdir import prepare_log_directory
from .ingest import (
    DEFAULT_MAX_BUFFERED_BYTES,
    DEFAULT_MAX_CONNECTIONS,
    IngestServer,
    prepare_socket_path,
    validate_ingest_limits,
)
from .segment import ring_exists, validate_ring_name
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


class CaptureChild:
    """``shmring capture-cdp`` as a child of serve, in its own session; restarted if it dies."""

    STOP_TIMEOUT_S = 15.0

    def __init__(self, command: list[str], log):
        self.command = command
        self.log = log
        self.proc = subprocess.Popen(command, start_new_session=True)

    def keep_alive(self) -> None:
        if self.proc.poll() is not None:
            self.log(f"capture-cdp (pid {self.proc.pid}) exited with status {self.proc.returncode}; restarting it")
            self.proc = subprocess.Popen(self.command, start_new_session=True)

    def stop(self) -> None:
        """SIGTERM, then wait while it drains what it holds into the (still open) socket."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def _ingest_until(server: IngestServer, stop: threading.Event, ready, capture_command=None, log=None) -> None:
    await server.start()
    capture = CaptureChild(capture_command, log) if capture_command else None
    ready()
    try:
        while not stop.is_set():
            await asyncio.sleep(0.05)
            if capture is not None and not stop.is_set():
                capture.keep_alive()
    finally:
        if capture is not None:
            # Ingest keeps serving while the producer drains.
            await asyncio.get_running_loop().run_in_executor(None, capture.stop)
        await server.stop()


def serve(name: str, *, stop: threading.Event, socket_path: str | None = None, log_dir: str | None = None,
          fsync: str = "batch", group_readable: bool = False, log=lambda msg: None, on_ready=lambda session: None,
          cdp_url: str | None = None, cdp_detail_level: str = "standard", cdp_console_hook: bool | None = None,
          max_connections: int = DEFAULT_MAX_CONNECTIONS, max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
          http: EdgeConfig | None = None, **create_kwargs) -> dict:
    """Run until `stop` is set; return counts. Raises ShmringError on set-up failures.

    cdp_url: also run ``shmring capture-cdp`` against that browser, publishing
    through `socket_path` (required then). group_readable: the flusher's
    directory and files are created 0750/0640 instead of 0700/0600.
    max_connections, max_buffered_bytes: the ingest socket's limits (see ingest).
    http: also run the HTTP edge (see edge); without `socket_path` it gets a private ingest socket.
    """
    validate_ring_name(name)
    private_dir = None
    if http is not None and socket_path is None:
        private_dir = tempfile.mkdtemp(prefix="shmring-edge-")  # 0700: the edge's own way in
        socket_path = f"{private_dir}/ingest.sock"
    if http is not None:
        http = msgspec.structs.replace(http, socket_path=socket_path, log_dir=log_dir)
    if cdp_url is not None and socket_path is None:
        raise ConfigError("--cdp needs --socket: the CDP producer publishes through the ingest socket", name=name)
    if socket_path is not None:
        validate_ingest_limits(max_connections, max_buffered_bytes)  # fail before the ring exists
        prepare_socket_path(socket_path)
    if log_dir is not None:
        prepare_log_directory(log_dir, group_readable=group_readable)  # refuses one another user controls
    session = CaptureSession.create(name, **create_kwargs)
    supervisor = None
    edge = None
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
        if socket_path is not None:
            server = IngestServer(socket_path, session.publish, max_connections=max_connections,
                                  max_buffered_bytes=max_buffered_bytes)
            command = None
            if cdp_url is not None:
                from .cdp import capture_command

                command = capture_command(name, cdp_url, socket_path, cdp_detail_level, cdp_console_hook)
            def ready():
                nonlocal edge
                if http is not None:
                    edge = EdgeSupervisor(http, log=log)
                    edge.start()
                on_ready(session)

            asyncio.run(_ingest_until(server, stop, ready, command, log))
        else:
            on_ready(session)
            stop.wait()
    finally:
        if flusher_attached:
            supervisor.wait_attached()  # a flusher being restarted must attach before close, or it finds no ring
        complete = session.close()  # bounded: a stalled flusher's gate is retired after gate_stall_s
        if edge is not None:
            edge.stop()  # after the close: its streams have sent their end frame
        if private_dir is not None:
            shutil.rmtree(private_dir, ignore_errors=True)
        flusher_status = supervisor.stop() if supervisor is not None else None
        if supervisor is not None and (not complete or flusher_status != 0):
            log(f"the flusher did not finish (exit status {flusher_status}): events up to seq {session.last_seq} "
                f"after its last checkpoint may be missing from {log_dir}")
    return dict(
        capture_session_id=session.capture_session_id,
        published=session.last_seq,
        accepted=server.accepted if server else 0,
        rejected=server.rejected if server else 0,
        flusher_status=flusher_status,
        flusher_restarts=supervisor.restarts if supervisor else 0,
    )
