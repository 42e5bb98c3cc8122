"""Every ``python -m shmring…`` entry point the README documents or serve starts: it starts and stops with nothing
on stderr but its own ``shmring…:`` lines (no runpy warning, no traceback), and a bad input gets exactly one line.

The entry points: ``python -m shmring.flusher`` (the flusher's old name), ``python -m shmring doctor``, and the
children serve runs as ``python -m shmring flush / edge / forward / capture-cdp``, all watched through serve's
stderr, which they share.
"""

import re
import signal
import subprocess
import sys
import time

import pytest

from shmring import CaptureSession
from shmring.cdp.browser import find_free_port
from shmring.stats import ring_stats
from tests.integration.commands import (DEADLINE_S, SMALL, Proc, assert_one_line_error, connect, ev, flusher_of, jl,
                                        replies_until_end)
from tests.integration.sinks import held
from tests.procs import make_event

OWN_LINE = re.compile(r"^shmring[\w -]*: ")
PYTHON_M = [sys.executable, "-m"]


def assert_own_lines_only(lines: list[str]) -> None:
    for line in lines:
        assert OWN_LINE.match(line) and "Warning" not in line and "Traceback" not in line, lines


def cursor_of(name: str, role: str) -> int | None:
    for entry in ring_stats(name)["readers"]:
        if entry["role"] == role and entry["alive"]:
            return entry["cursor"]
    return None


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {DEADLINE_S} s"
        time.sleep(0.02)


@pytest.mark.parametrize("module", ["shmring.flusher", "shmring"])
def test_the_flusher_starts_and_stops_with_only_its_own_lines(module, ring_name, tmp_path):
    logs = tmp_path / "logs"
    with CaptureSession.create(ring_name, capacity=1024, data_bytes=1 << 20) as session:
        command = ["flush"] if module == "shmring" else []  # `python -m shmring.flusher` is flush's old name
        proc = Proc([*PYTHON_M, module, *command, ring_name, str(logs)])
        try:
            flusher_of(ring_name)
            for i in range(10):
                session.publish(make_event(i))
            wait_until(lambda: cursor_of(ring_name, "flusher") == 10, "the flusher took all ten")
            proc.signal(signal.SIGTERM)
            assert proc.wait() == 0, proc.err
        finally:
            proc.reap()
    assert_own_lines_only(proc.err)
    assert len((logs / "console.jsonl").read_bytes().splitlines()) == 10


def test_doctor_as_a_module_writes_nothing_to_stderr():
    result = subprocess.run([*PYTHON_M, "shmring", "doctor", "--json"], capture_output=True, timeout=DEADLINE_S,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0 and result.stderr == b"", result.stderr
    assert result.stdout.startswith(b"{")


def test_serve_and_every_child_it_starts_write_only_their_own_lines(ring_name, serve, browser, sink_server):
    """serve with a flusher, the HTTP edge, a Redis forwarder and a CDP producer: published events reach the log
    and Redis, then SIGTERM stops them all, and serve's stderr (which the children share) holds only own lines."""
    redis = sink_server("redis")
    port = find_free_port()
    srv = serve(ring_name, *SMALL, "--http", f"127.0.0.1:{port}", "--forward", redis.url, "--cdp", browser.cdp_url,
                log_dir=True)
    srv.wait_for_err("capture-cdp: following")
    flusher_of(ring_name)
    wait_until(lambda: cursor_of(ring_name, "forwarder") is not None, "the forwarder attached")
    sock = connect(srv.socket)
    sock.sendall(b"".join(jl(ev(i)) for i in range(5)))
    sock.shutdown(1)
    assert [set(reply) for reply in replies_until_end(sock)] == [{"seq"}] * 5
    sock.close()
    latest = ring_stats(ring_name)["latest_seq"]  # the CDP producer may publish more meanwhile
    wait_until(lambda: (cursor_of(ring_name, "flusher") or 0) >= latest
               and (cursor_of(ring_name, "forwarder") or 0) >= latest,
               "the flusher and the forwarder took every event")
    wait_until(lambda: len(held(redis, ring_name)) >= latest, "Redis holds every event")
    assert [entry[0] for entry in held(redis, ring_name)][:latest] == list(range(1, latest + 1))
    srv.signal(signal.SIGTERM)
    assert srv.wait() == 0, srv.err
    assert_own_lines_only(srv.err)
    assert any("closed after" in line for line in srv.err), srv.err


@pytest.mark.parametrize("argv, needle", [
    (["shmring.flusher", "{ring}", "{tmp}/logs"], "no ring"),
    (["shmring", "flush", "{ring}", "{tmp}/logs"], "no ring"),
    (["shmring", "serve", "{ring}", "--capacity", "3"], "power of two"),
    (["shmring", "edge", "{ring}", "--socket", "{tmp}/s.sock", "--http", "127.0.0.1:0"], "--http"),
    (["shmring", "forward", "{ring}", "--to", "bogus://x"], "cannot forward"),
    (["shmring", "capture-cdp", "{ring}", "--cdp", "http://127.0.0.1:1"], "--socket"),
    (["shmring", "doctor", "--bogus"], "--bogus"),
], ids=["shmring.flusher", "flush", "serve", "edge", "forward", "capture-cdp", "doctor"])
def test_a_bad_input_to_each_entry_point_is_one_line(argv, needle, ring_name, tmp_path):
    argv = [arg.format(ring=ring_name, tmp=tmp_path) for arg in argv]
    result = subprocess.run([*PYTHON_M, *argv], capture_output=True, timeout=DEADLINE_S, stdin=subprocess.DEVNULL)
    assert_one_line_error(result, needle)
