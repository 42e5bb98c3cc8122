"""A read whose wait outlasted its deadline looks at the ring once more before it gives up."""

import time

from shmring import CaptureSession, Reader
from shmring.registry import Registry
from shmring.segment import WakeSemaphore
from tests.procs import make_event


def test_a_read_whose_wait_outlasted_its_deadline_looks_once_more(ring_name, monkeypatch):
    """A SIGSTOP or a long stall during the wait: the event that came meanwhile is returned, not None."""
    stalls = []
    with CaptureSession.create(ring_name, capacity=64, data_bytes=1 << 20) as session, \
            Reader.attach(ring_name) as reader:
        def stall(timeout_s):
            stalls.append(timeout_s)
            session.publish(make_event(1))  # published while we "sleep"; its wake-up is lost to the stall
            time.sleep(timeout_s + 0.1)
            return False

        # The reader sleeps on its semaphore or, compiled, on the wake word: stall whichever it uses.
        monkeypatch.setattr(WakeSemaphore, "wait", lambda self, timeout_s: stall(timeout_s))
        monkeypatch.setattr(Registry, "wait_futex", lambda self, seen, timeout_s: stall(timeout_s))
        result = reader.read(timeout=0.1)
        assert len(stalls) == 1
        assert result is not None and result.envelope.seq == 1
