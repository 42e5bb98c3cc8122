"""A writer that dies in the middle of a publish: every read path ends, counted, whatever its timeouts.

The writer (a real process) publishes 3 events, stamps slot 4 odd as the
first store of a publish does, and is SIGKILLed by the test. FORBIDDEN: a
reader, the flusher or ``tail`` that waits for ever; the half-written slot
delivered, or skipped without being counted; anything after it invented.
"""

import subprocess
import sys
import threading
import time

import pytest

from shmring import Flusher, Reader, ReadResult, WriterGone
from shmring.flusher import GAPS_FILE
from tests.procs import TIMEOUT_S, writer

END_BOUND_S = 5.0
"""Writer death is noticed within about a second; this bound leaves room for a loaded machine."""


@pytest.fixture
def dead_mid_write(ring_name, spawn):
    ready, done = spawn.Event(), spawn.Event()
    w = spawn.Process(target=writer, args=(ring_name, 3, ready, None, done), kwargs=dict(then="half_write"))
    w.start()
    assert ready.wait(TIMEOUT_S) and done.wait(TIMEOUT_S)
    return ring_name, w


def kill(proc) -> float:
    proc.kill()
    proc.join(TIMEOUT_S)
    return time.monotonic()


@pytest.mark.parametrize("timeout", [0.0, 0.05, 0.2])
def test_polling_reader_gets_the_counted_drop_then_writer_gone(dead_mid_write, timeout):
    name, w = dead_mid_write
    with Reader.attach(name, after_seq=0) as r:
        killed_at = kill(w)
        results = []
        with pytest.raises(WriterGone):
            while time.monotonic() - killed_at < TIMEOUT_S:
                res = r.read(timeout=timeout)
                if res is not None:
                    results.append(res)
        ended_after = time.monotonic() - killed_at
        assert [res.envelope.seq for res in results[:3]] == [1, 2, 3]
        assert results[3:] == [ReadResult(dropped=1, dropped_from=4, dropped_to=4)]
        assert (r.delivered, r.dropped, r.cursor) == (3, 1, 4)
        assert ended_after < END_BOUND_S


def test_flusher_with_a_stop_event_ends_and_records_the_gap(dead_mid_write, tmp_path):
    name, w = dead_mid_write
    directory = tmp_path / "logs"
    with Flusher(name, directory) as flusher:
        killed_at = kill(w)
        stop = threading.Event()  # given, so the flusher reads with short timeouts, as under serve
        outcome = {}
        thread = threading.Thread(target=lambda: outcome.update(flusher.run(stop)))
        thread.start()
        thread.join(TIMEOUT_S)
        stop.set()
        thread.join(TIMEOUT_S)
        assert outcome.get("ending") == "writer_gone", outcome
        assert time.monotonic() - killed_at < END_BOUND_S + 1
    assert len((directory / "console.jsonl").read_bytes().splitlines()) == 3
    assert b'"from_seq":4,"to_seq":4,"dropped":1' in (directory / GAPS_FILE).read_bytes()


def test_tail_ends_with_the_drop_and_a_one_line_error(dead_mid_write):
    name, w = dead_mid_write
    tail = subprocess.Popen([sys.executable, "-m", "shmring", "tail", name, "--from-start"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with tail:
        try:
            first = tail.stdout.readline()  # attached and reading: the handshake
            assert b'"seq":1' in first
            killed_at = kill(w)
            tail.wait(TIMEOUT_S)
            out, err = tail.stdout.read(), tail.stderr.read()
        finally:
            if tail.poll() is None:
                tail.kill()
                tail.wait()
    assert time.monotonic() - killed_at < END_BOUND_S + 2
    assert tail.returncode == 1
    assert len((first + out).splitlines()) == 3
    lines = err.decode().strip().splitlines()
    assert any("dropped 1" in line for line in lines), lines
    assert "died" in lines[-1] and "Traceback" not in err.decode()
