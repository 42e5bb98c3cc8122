"""Flusher children (``python -m shmring flush NAME DIR``) as the flusher tests watch them, and the events they flush.

The ``flushers`` fixture in conftest.py starts them (stderr to a file, read by ``stderr_of``) and kills them by pid
at teardown. A flusher is attached, or has written up to a seq, when the ring's registry says so: the waits poll
it with a deadline.
"""

import sys
import time
from pathlib import Path

from tests.procs import TIMEOUT_S, make_event

REPO = Path(__file__).resolve().parents[2]
CATEGORIES = ("console", "network", "page", "interaction")
FLUSH = [sys.executable, "-m", "shmring", "flush"]


def stderr_of(proc) -> str:
    return Path(proc.err_path).read_text()


def finish(proc, expect_rc=0) -> str:
    """Wait for a flusher process to end by itself; return its stderr (never a traceback, never a warning)."""
    assert proc.wait(TIMEOUT_S) == expect_rc, stderr_of(proc)
    err = stderr_of(proc)
    assert "Traceback" not in err and "Warning" not in err, err
    return err


def poll_until(condition, what, timeout=TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def flusher_entry(session, pid):
    for entry in session._res.registry.entries():
        if entry["pid"] == pid and entry["role"] == "flusher" and entry["gating"]:
            return entry
    return None


def wait_attached(session, proc) -> None:
    poll_until(lambda: flusher_entry(session, proc.pid) is not None or proc.poll() is not None, "a flusher to attach")
    assert proc.poll() is None, stderr_of(proc)


def wait_written(session, pid, seq) -> None:
    """Until the flusher `pid` has written (committed) everything up to `seq`."""
    def done():
        entry = flusher_entry(session, pid)
        return entry is not None and entry["cursor"] >= seq

    poll_until(done, f"flusher {pid} to write seq {seq}")


def publish(session, first, last, categories=CATEGORIES, rng=None):
    """Publish events first..last (their data.i is the seq they get); return {seq: category}."""
    out = {}
    for i in range(first, last + 1):
        category = rng.choice(categories) if rng else categories[i % len(categories)]
        env = session.publish(make_event(i, category))
        assert env.seq == i
        out[i] = category
    return out
