"""Serve: run a ring's writer with its ingest socket and a supervised flusher process.

Rules:
- Shutdown order on stop: ingest stops accepting and ends its connections;
  the ring is closed, which waits until the flusher has written the last
  event; the ring is removed; the flusher process exits on its own.
- The flusher runs as ``python -m shmring.flusher`` in its own session
  (process group), so a Ctrl-C aimed at the terminal's group cannot kill it
  before it drains. It is restarted if it dies, until the ring is closed.
- Nothing here prints: progress goes to the ``log`` callback.
"""

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time

from .ingest import IngestServer, prepare_socket_path
from .session import CaptureSession

__all__ = ["FlusherSupervisor", "serve"]


class FlusherSupervisor:
    """Keeps one flusher process running for ring `name` until told to stop."""

    RESTART_DELAY_S = 0.2

    def __init__(self, name: str, directory: str, *, fsync: str = "batch", log=lambda msg: None):
        self.name = name
        self.directory = directory
        self.fsync = fsync
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="flusher-supervisor", daemon=True)

    def _spawn(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shmring.flusher", self.name, self.directory, "--fsync", self.fsync],
            start_new_session=True,
        )

    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def _watch(self) -> None:
        while True:
            code = self.proc.wait()
            if self._closing.is_set() and code == 0:
                return
            if self._closing.is_set() and not _ring_exists(self.name):
                return
            self.log(f"flusher (pid {self.proc.pid}) exited with status {code}; restarting it")
            time.sleep(self.RESTART_DELAY_S)
            self.restarts += 1
            self._spawn()

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """After the ring is closed: wait for the flusher to finish draining; return its status."""
        self._closing.set()
        self._thread.join(timeout_s)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _ring_exists(name: str) -> bool:
    return os.path.exists(f"/dev/shm/shmring.{name}")


async def _ingest_until(server: IngestServer, stop: threading.Event, ready) -> None:
    await server.start()
    ready()
    try:
        while not stop.is_set():
            await asyncio.sleep(0.05)
    finally:
        await server.stop()


def serve(name: str, *, stop: threading.Event, socket_path: str | None = None, log_dir: str | None = None,
          fsync: str = "batch", log=lambda msg: None, on_ready=lambda session: None, **create_kwargs) -> dict:
    """Run until `stop` is set; return counts. Raises ShmringError on set-up failures."""
    if socket_path is not None:
        prepare_socket_path(socket_path)  # fail before the ring exists
    session = CaptureSession.create(name, **create_kwargs)
    supervisor = None
    server = None
    try:
        if log_dir is not None:
            os.makedirs(log_dir, exist_ok=True)
            supervisor = FlusherSupervisor(name, log_dir, fsync=fsync, log=log)
            supervisor.start()
        if socket_path is not None:
            server = IngestServer(socket_path, session.publish)
            asyncio.run(_ingest_until(server, stop, lambda: on_ready(session)))
        else:
            on_ready(session)
            stop.wait()
    finally:
        session.close()
        flusher_status = supervisor.stop() if supervisor is not None else None
    return dict(
        capture_session_id=session.capture_session_id,
        published=session.last_seq,
        accepted=server.accepted if server else 0,
        rejected=server.rejected if server else 0,
        flusher_status=flusher_status,
        flusher_restarts=supervisor.restarts if supervisor else 0,
    )
