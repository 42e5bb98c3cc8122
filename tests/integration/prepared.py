"""States made for a test without the command: a session flushed into a directory (``flush_session``) and what a
writer killed mid-cleanup leaves in /dev/shm (``make_orphan``).
"""

import threading

from shmring import CaptureSession, Flusher
from shmring.layout import REGISTRY_BYTES
from shmring.schema import encode_envelope
from shmring.segment import WakeSemaphore, create_segment, registry_shm_name
from tests.procs import TIMEOUT_S, make_event

CATEGORIES = ("console", "network", "page", "interaction")


def flush_session(name, directory, count, *, capacity=64, before=0, session_id=None, max_file_bytes=None):
    """Publish `count` events (round-robin over CATEGORIES) to a new ring with a Flusher into `directory`,
    attached after the first `before`; return (capture_session_id, {seq: (category, published bytes)})."""
    session = CaptureSession.create(name, capture_session_id=session_id, capacity=capacity, data_bytes=1 << 20)
    published = {}

    def publish(first, last):
        for i in range(first, last + 1):
            category = CATEGORIES[i % len(CATEGORIES)]
            envelope = session.publish(make_event(i, category))
            published[envelope.seq] = (category, encode_envelope(envelope))

    try:
        publish(1, before)
        flusher = Flusher(name, directory, max_file_bytes=max_file_bytes)
        stats = {}
        runner = threading.Thread(target=lambda: stats.update(flusher.run()))
        runner.start()
        publish(before + 1, count)
    finally:
        session.close()  # waits for the gating flusher to write everything
    runner.join(TIMEOUT_S)
    assert not runner.is_alive()
    flusher.close()
    assert stats["ending"] == "closed"
    return session.capture_session_id, published


def make_orphan(name: str, wake_indexes=(0, 3)) -> None:
    """What a writer killed between unlinking its ring and its registry leaves: a registry and wake semaphores."""
    create_segment(registry_shm_name(name), REGISTRY_BYTES).close()
    for index in wake_indexes:
        WakeSemaphore(name, index).close()
