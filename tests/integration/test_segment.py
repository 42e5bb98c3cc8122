"""Segment names on real /dev/shm: existence, age and orphans are answered by shmring.segment alone.

FORBIDDEN: an orphan sweep that touches the registry or semaphores of a ring that exists.
"""

import os

import pytest

from shmring import CaptureSession, Reader, RingNotFound
from shmring.segment import orphaned_ring_names, ring_age_s, ring_exists, unlink_orphan
from tests.integration.prepared import make_orphan

SMALL = dict(capacity=8, data_bytes=1 << 20)


def shm_entries(name):
    return sorted(e for e in os.listdir("/dev/shm") if name in e)


def test_ring_exists_and_its_age(ring_name):
    assert not ring_exists(ring_name)
    with pytest.raises(RingNotFound):
        ring_age_s(ring_name)
    with CaptureSession.create(ring_name, **SMALL):
        assert ring_exists(ring_name)
        assert 0 <= ring_age_s(ring_name) < 60
    assert not ring_exists(ring_name)


def test_an_orphaned_registry_and_its_semaphores_are_found_and_removed(ring_name):
    make_orphan(ring_name)
    assert len(shm_entries(ring_name)) == 3  # the registry and two sem.* entries
    assert ring_name in orphaned_ring_names()
    assert unlink_orphan(ring_name) is True
    assert shm_entries(ring_name) == []
    assert ring_name not in orphaned_ring_names()
    assert unlink_orphan(ring_name) is False  # nothing left to remove


def test_a_ring_that_exists_is_never_an_orphan(ring_name):
    with CaptureSession.create(ring_name, **SMALL):
        with Reader.attach(ring_name):  # the ring now has a registry entry and a wake semaphore
            before = shm_entries(ring_name)
            assert any(e.startswith("sem.") for e in before)
            assert ring_name not in orphaned_ring_names()
            assert unlink_orphan(ring_name) is False
            assert shm_entries(ring_name) == before

