"""A read whose wait outlasted its deadline looks at the ring once more before it gives up."""

import time

from shmring import CaptureSession, Reader
from tests.procs import make_event


def test_a_read_whose_wait_outlasted_its_deadline_looks_once_more(ring_name, monkeypatch):
    """A SIGSTOP or a long stall during the wait: the event that came meanwhile is returned, not None."""
    from shmring.segment import WakeSemaphore

    with CaptureSession.create(ring_name, capacity=64, data_bytes=1 << 20) as session, \
            Reader.attach(ring_name) as reader:
        def stalled_wait(self, timeout_s):
            session.publish(make_event(1))  # published while we "sleep"; its wake-up is lost to the stall
            time.sleep(timeout_s + 0.1)
            return False

        monkeypatch.setattr(WakeSemaphore, "wait", stalled_wait)
        result = reader.read(timeout=0.1)
        assert result is not None and result.envelope.seq == 1
