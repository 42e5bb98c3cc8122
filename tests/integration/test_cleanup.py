"""``collect_garbage`` (``shmring gc``) on real /dev/shm: dead rings and orphans go, live and nascent rings stay.

FORBIDDEN: removing a ring whose writer lives, or one still being built within the creation window.
Removing a dead ring end to end (a killed writer, through the CLI) is tested in test_cli.
"""

import os

from shmring import CaptureSession, Reader, cleanup
from shmring.layout import ring_bytes
from shmring.segment import create_segment, ring_exists, ring_shm_name
from tests.integration.prepared import make_orphan

SMALL = dict(capacity=8, data_bytes=1 << 20)


def shm_entries(name):
    return sorted(e for e in os.listdir("/dev/shm") if name in e)


def test_orphaned_registries_and_semaphores_are_removed_and_reported(ring_name):
    make_orphan(ring_name)
    assert len(shm_entries(ring_name)) == 3
    removed = cleanup.collect_garbage()
    assert ring_name in removed
    assert shm_entries(ring_name) == []
    assert ring_name not in cleanup.collect_garbage()


def test_a_live_ring_is_never_removed(ring_name):
    with CaptureSession.create(ring_name, **SMALL), Reader.attach(ring_name):
        before = shm_entries(ring_name)
        assert ring_name not in cleanup.collect_garbage()
        assert shm_entries(ring_name) == before


def test_a_ring_being_built_is_left_alone_within_the_creation_window(ring_name, monkeypatch):
    # What a writer has made before it writes the header: a zeroed segment (owner pid 0, no magic).
    create_segment(ring_shm_name(ring_name), ring_bytes(**SMALL)).close()
    assert ring_name not in cleanup.collect_garbage()
    assert ring_exists(ring_name)
    monkeypatch.setattr(cleanup, "CREATION_WINDOW_S", 0.0)  # as if it were abandoned long ago
    assert cleanup._in_use(ring_name) is False
