"""The shmring command as real subprocesses, and a client's side of its ingest socket, for the integration tests.

``run`` runs a command to completion under a deadline; ``Proc`` is a long-running one whose output lines are
collected by threads, so every wait on it is bounded (the ``procs`` and ``serve`` fixtures in conftest.py start
them and end them by pid). The ``wait_for_*`` and ``flusher_of`` helpers poll the ring's registry with a deadline.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest

from shmring.stats import ring_stats

SHMRING = [sys.executable, "-m", "shmring"]
DEADLINE_S = 30
SMALL = ["--capacity", "1024", "--data-bytes", str(1 << 20)]


# -- events, and one command run to its end ---------------------------------------------------------------------------


def ev(i: int, category: str = "console", kind: str = "cdp", detail: str | None = None) -> dict:
    event = {"type": f"{category}.test", "category": category, "source": {"kind": kind}, "data": {"i": i}}
    if detail:
        event["detail_level"] = detail
    return event


def jl(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def shm_entries(name: str) -> list[str]:
    return sorted(e for e in os.listdir("/dev/shm") if name in e)


def run(*args, input: bytes | None = None, cwd=None, **kwargs) -> subprocess.CompletedProcess:
    """Run the shmring command to completion (killed by subprocess.run if past the deadline)."""
    return subprocess.run([*SHMRING, *args], input=input, capture_output=True, timeout=DEADLINE_S, cwd=cwd,
                          stdin=None if input is not None else subprocess.DEVNULL, **kwargs)


def envelopes(stdout: bytes | list[str]) -> list[dict]:
    lines = stdout.decode().splitlines() if isinstance(stdout, bytes) else stdout
    return [json.loads(line) for line in lines]


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    assert result.returncode != 0, (result.args, result.stderr)
    return assert_one_stderr_line(result, *needles)


def assert_one_stderr_line(result: subprocess.CompletedProcess, *needles: str) -> str:
    err = result.stderr.decode()
    assert "Traceback" not in err and "Exception ignored" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("shmring"), (result.args, err)
    for needle in needles:
        assert needle.lower() in lines[0].lower(), (needle, lines[0])
    return lines[0]


# -- the ingest socket, as a client -----------------------------------------------------------------------------------


def connect(path: str) -> socket.socket:
    """Connect as a well-behaved client: while the accept backlog is full (EAGAIN), retry until the deadline."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(DEADLINE_S)
        try:
            sock.connect(path)
            return sock
        except BlockingIOError:
            sock.close()
            assert time.monotonic() < deadline, f"{path} accepted no connection within {DEADLINE_S} s"
            time.sleep(0.002)


def replies_until_end(sock: socket.socket) -> list[dict]:
    """Every reply line until the server ends the connection (EOF, or a reset if input was left unread)."""
    buffer = bytearray()
    while True:
        try:
            chunk = sock.recv(1 << 16)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            break
        buffer += chunk
    assert buffer.endswith(b"\n") or not buffer, buffer[-200:]
    return [json.loads(raw) for raw in buffer.splitlines()]


# -- long-running commands, and the registry's view of them -----------------------------------------------------------


class Proc:
    """A real subprocess whose stdout and stderr lines are collected by threads, so no wait is unbounded."""

    def __init__(self, args, *, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, new_session=False, **kwargs):
        self.popen = subprocess.Popen(args, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE,
                                      start_new_session=new_session, **kwargs)
        self.pid = self.popen.pid
        self.out: list[str] = []
        self.err: list[str] = []
        self._cond = threading.Condition()
        self._open = 0
        for stream, sink in ((self.popen.stdout, self.out), (self.popen.stderr, self.err)):
            if stream is not None:
                self._open += 1
                threading.Thread(target=self._pump, args=(stream, sink), daemon=True).start()

    def _pump(self, stream, sink) -> None:
        try:
            for raw in stream:
                with self._cond:
                    sink.append(raw.decode(errors="replace").rstrip("\n"))
                    self._cond.notify_all()
        finally:
            stream.close()
            with self._cond:
                self._open -= 1
                self._cond.notify_all()

    def wait_until(self, predicate, what: str, timeout: float = DEADLINE_S) -> None:
        with self._cond:
            self._cond.wait_for(lambda: predicate() or self._open == 0, timeout)
            if not predicate():
                pytest.fail(f"{what}: not seen within {timeout} s (ended: {self._open == 0}); "
                            f"stdout tail {self.out[-3:]}, stderr {self.err}")

    def wait_for_err(self, text: str, timeout: float = DEADLINE_S) -> str:
        self.wait_until(lambda: any(text in line for line in self.err), f"{text!r} on stderr", timeout)
        return next(line for line in self.err if text in line)

    def wait(self, timeout: float = DEADLINE_S) -> int:
        code = self.popen.wait(timeout)
        with self._cond:
            self._cond.wait_for(lambda: self._open == 0, timeout)
        return code

    def signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def reap(self) -> None:
        """Teardown: end the process (and any children it left) by pid."""
        if self.popen.poll() is not None:
            return  # ended and reaped: its pid may belong to someone else by now
        try:
            children = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        for child in children:  # psutil refuses to signal a pid that was reused meanwhile
            try:
                child.kill()
                child.wait(10)
            except psutil.NoSuchProcess:
                pass


def flusher_of(name: str, timeout: float = DEADLINE_S, not_pid: int | None = None) -> dict:
    """The attached, live flusher entry of ring `name` (waits for one; not `not_pid`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in ring_stats(name)["readers"]:
            if entry["role"] == "flusher" and entry["alive"] and entry["pid"] != not_pid:
                return entry
        time.sleep(0.02)
    pytest.fail(f"no flusher attached to {name} within {timeout} s")


def wait_for_reader(name: str, pid: int, cursor: int | None = None) -> dict:
    """Until process `pid` is attached to ring `name` (and its cursor is `cursor`, if given)."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        for entry in ring_stats(name)["readers"]:
            if entry["pid"] == pid and (cursor is None or entry["cursor"] == cursor):
                return entry
        time.sleep(0.02)
    pytest.fail(f"pid {pid} not attached to {name} (cursor {cursor}) within {DEADLINE_S} s")
