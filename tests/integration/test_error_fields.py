"""Errors raised on real shared memory carry their fields, also when they cross a process boundary.

FORBIDDEN: an error that arrives in another process without its message or fields.
"""

import os

import pytest

from shmring import CaptureSession, Reader, RegistryFull, RingBusy, RingNotFound, ShmringError
from shmring.layout import MAX_READERS
from tests.procs import TIMEOUT_S

SMALL = dict(capacity=8, data_bytes=1 << 20)


def try_to_create(name, results):
    """Child: try to take ring `name`; send back the error it raised, pickled by the queue."""
    try:
        CaptureSession.create(name, **SMALL).close()
        results.put(None)
    except ShmringError as exc:
        results.put(exc)


def test_ring_busy_reaches_another_process_with_the_ring_and_its_writer(ring_name, spawn):
    results = spawn.Queue()
    with CaptureSession.create(ring_name, **SMALL):
        child = spawn.Process(target=try_to_create, args=(ring_name, results))
        child.start()
        error = results.get(timeout=TIMEOUT_S)
        child.join(TIMEOUT_S)
    assert type(error) is RingBusy
    assert (error.name, error.pid) == (ring_name, os.getpid())
    assert str(error) == f"ring {ring_name!r} is served by a live writer (pid {os.getpid()}); stop it or choose " \
                         "another name"


def test_a_missing_ring_names_the_ring(ring_name):
    with pytest.raises(RingNotFound) as caught:
        Reader.attach(ring_name)
    assert caught.value.name == ring_name


def test_a_full_registry_is_registry_full(ring_name):
    with CaptureSession.create(ring_name, **SMALL):
        readers = []
        try:
            for _ in range(MAX_READERS):
                readers.append(Reader.attach(ring_name))
            with pytest.raises(RegistryFull, match=f"all {MAX_READERS} reader entries") as caught:
                Reader.attach(ring_name)
            assert (caught.value.name, caught.value.max_readers) == (ring_name, MAX_READERS)
        finally:
            for reader in readers:
                reader.close()
