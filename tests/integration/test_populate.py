"""The writer's and every reader's mapping of a ring is populated when it is made: no page fault per 4 KiB page.

A fresh ring's first lap otherwise costs a fault per page to the writer (~20 ms for a 68 MB ring here)
and to each reader (~9 ms), in the middle of the stream. Counted with the process's minor faults.
"""

import asyncio
import resource

import pytest

from shmring import AsyncReader, CaptureSession, ConfigError, Reader
from shmring.segment import create_segment, open_segment, ring_shm_name, unlink_segment
from tests.procs import make_event

PAGE = resource.getpagesize()
DATA_BYTES = 16 << 20
PAGES = DATA_BYTES // PAGE


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def touch_every_page(buf, write: bool) -> int:
    """Minor faults taken while reading (or writing) one byte of every page of `buf`."""
    before = minor_faults()
    total = 0
    for off in range(0, len(buf), PAGE):
        if write:
            buf[off] = 1
        else:
            total += buf[off]
    return minor_faults() - before


def test_a_populated_mapping_takes_no_fault_per_page_and_a_plain_one_does(ring_name):
    shm = ring_shm_name(ring_name)
    try:
        plain = create_segment(shm, DATA_BYTES)
        assert touch_every_page(plain.buf, write=True) >= PAGES // 2  # the measure can fail
        plain.close()
        unlink_segment(shm)
        made = create_segment(shm, DATA_BYTES, populate=True)
        assert touch_every_page(made.buf, write=True) < PAGES // 8
        opened = open_segment(shm, writable=False, populate=True)
        assert touch_every_page(opened.buf, write=False) < PAGES // 8
        opened.close()
        made.close()
    finally:
        unlink_segment(shm)


def test_a_fresh_rings_first_lap_costs_its_writer_and_its_reader_no_fault_per_page(ring_name):
    event = make_event(0, pad=400)
    capacity = 32768
    with CaptureSession.create(ring_name, capacity=capacity, data_bytes=DATA_BYTES) as session:
        record_bytes = len(session.publish(event).event.data) + 200  # at least: the envelope around the data
        events = DATA_BYTES // record_bytes + 1000  # more than one lap of the data area: every page written
        publish = session.publish
        before = minor_faults()
        for _ in range(events):
            last = publish(event).seq
        writer_faults = minor_faults() - before
        with Reader.attach(ring_name, after_seq=last) as reader:
            # Its mapping (a private attribute: the test looks at what the reader maps, not at what it reads,
            # since decoding allocates and faults too). A plain read-only mapping takes a fault per 16 pages.
            reader_faults = touch_every_page(reader._ring.buf, write=False)
    assert writer_faults < PAGES // 8, (writer_faults, PAGES)
    assert reader_faults < PAGES // 64, (reader_faults, PAGES)


def test_populate_false_maps_pages_as_they_are_read_for_sync_and_asyncio_readers(ring_name):
    with CaptureSession.create(ring_name, capacity=4096, data_bytes=DATA_BYTES):
        with Reader.attach(ring_name, populate=False) as reader:
            assert touch_every_page(reader._ring.buf, write=False) >= PAGES // 32  # a fault per 16 pages

        async def attach_lazily():
            lazy = await AsyncReader.attach(ring_name, populate=False)
            try:
                return touch_every_page(lazy._reader._ring.buf, write=False)
            finally:
                lazy.close()

        assert asyncio.run(attach_lazily()) >= PAGES // 32


@pytest.mark.parametrize("bad", [0, 1, "no", None])
def test_populate_must_be_a_bool(ring_name, bad):
    with CaptureSession.create(ring_name, capacity=8, data_bytes=1 << 20):
        with pytest.raises(ConfigError, match="populate must be True or False"):
            Reader.attach(ring_name, populate=bad)
