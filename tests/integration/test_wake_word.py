"""The wake word: compiled readers sleep on one futex per ring, and no publish or close fails to wake them.

Real processes and shared memory. A lost wake-up shows as a reader that
takes an event IDLE_CHECK_S (1 s) late, so each test publishes only once the
reader is seen asleep (its flag raised) and bounds the wake well below that.
"""

import os
import time

import pytest

from shmring import CaptureSession, Reader, RingClosed
from shmring.layout import REG_WAIT_FLAGS, WAIT_FUTEX, WAIT_SEMAPHORE
from shmring.ring import hotpath
from shmring.waiting import IDLE_CHECK_S
from tests.procs import TIMEOUT_S, make_event

pytestmark = pytest.mark.skipif(hotpath is None, reason="the wake word needs the compiled accelerator")

ROUNDS = 200
LATE_S = IDLE_CHECK_S / 2
"""A wake this late means it was lost and the reader's backstop timeout found the event."""


def sleeping_reader(name, pure, ready, results):
    """Read ROUNDS events, each with a blocking read; report when each arrived, and how the stream ended."""
    if pure:
        os.environ["SHMRING_PURE_PYTHON"] = "1"
    else:
        os.environ.pop("SHMRING_PURE_PYTHON", None)
    arrived = []
    with Reader.attach(name) as reader:
        ready.put(reader._index)
        try:
            for _ in range(ROUNDS):
                result = reader.read(timeout=TIMEOUT_S)
                arrived.append((result.envelope.seq, time.monotonic()) if result else None)
            results.put(("events", arrived))
            reader.read(timeout=TIMEOUT_S)
            results.put(("end", "no end"))
        except RingClosed:
            results.put(("end", time.monotonic()))


def wait_for_flag(registry, index, expected, proc):
    deadline = time.monotonic() + TIMEOUT_S
    while (flag := registry.buf[REG_WAIT_FLAGS + index]) != expected:
        assert proc.is_alive(), "the reader died"
        assert flag in (0, expected), f"the reader sleeps with flag {flag}, not {expected}"
        assert time.monotonic() < deadline, f"the reader never slept (flag {flag}, wanted {expected})"
        time.sleep(0.0005)


@pytest.mark.parametrize("pure_writer, pure_reader, flag", [
    (False, False, WAIT_FUTEX), (False, True, WAIT_SEMAPHORE), (True, False, WAIT_SEMAPHORE)],
    ids=["compiled both: wake word", "pure reader: semaphore", "pure writer: semaphore"])
def test_every_publish_wakes_a_sleeping_reader_promptly_and_close_wakes_it_too(ring_name, spawn, monkeypatch,
                                                                               pure_writer, pure_reader, flag):
    if pure_writer:
        monkeypatch.setenv("SHMRING_PURE_PYTHON", "1")
    ready, results = spawn.Queue(), spawn.Queue()
    with CaptureSession.create(ring_name, capacity=1024) as session:
        registry = session._res.registry
        assert registry.futex_waker() is not pure_writer
        proc = spawn.Process(target=sleeping_reader, args=(ring_name, pure_reader, ready, results))
        proc.start()
        index = ready.get(timeout=TIMEOUT_S)
        published = {}
        for i in range(1, ROUNDS + 1):
            wait_for_flag(registry, index, flag, proc)
            published[i] = time.monotonic()
            session.publish(make_event(i))
        kind, arrived = results.get(timeout=TIMEOUT_S)
        assert kind == "events" and [a[0] for a in arrived if a] == list(range(1, ROUNDS + 1))
        late = {seq: round(t - published[seq], 3) for seq, t in arrived if t - published[seq] > LATE_S}
        assert not late, f"wake-ups lost (seq: seconds late): {late}"
        wait_for_flag(registry, index, flag, proc)
        closed_at = time.monotonic()
    kind, ended_at = results.get(timeout=TIMEOUT_S)
    assert kind == "end" and ended_at - closed_at < LATE_S, f"close woke the reader {ended_at - closed_at:.3f} s late"
    proc.join(TIMEOUT_S)
