"""The ring header over a plain bytearray: written, checked and read back by shmring.header alone."""

import pytest

from shmring import IncompatibleRing
from shmring.header import RingInfo, mark_attachable, open_ring_info, read_owner, write_header
from shmring.layout import HDR_VERSION, HEADER_BYTES, LAYOUT_VERSION, U64, ring_bytes

CAPACITY, DATA_BYTES = 8, 1 << 20


class FakeMapping:
    """What the header functions need of a segment.Mapping: its buffer, size and name."""

    def __init__(self, size: int):
        self.buf = bytearray(size)
        self.size = size
        self.shm_name = "/shmring.r"


def built(**overrides) -> FakeMapping:
    mapping = FakeMapping(ring_bytes(CAPACITY, DATA_BYTES))
    fields = dict(capacity=CAPACITY, data_bytes=DATA_BYTES, pid=4321, start_time=1234.5, epoch=77, created_us=99,
                  flusher_grace_s=2.5, capture_session_id="session-é")
    write_header(mapping.buf, **{**fields, **overrides})
    return mapping


def test_what_is_written_reads_back():
    mapping = built()
    mark_attachable(mapping.buf)
    assert open_ring_info("r", mapping) == RingInfo(
        name="r", capture_session_id="session-é", capacity=CAPACITY, data_bytes=DATA_BYTES, writer_pid=4321,
        writer_start_time=1234.5, epoch=77, created_us=99, flusher_grace_s=2.5)
    assert read_owner(mapping) == (4321, 1234.5)


def test_a_half_built_ring_is_refused_but_its_owner_is_readable():
    mapping = built()  # header filled, not yet marked attachable
    with pytest.raises(IncompatibleRing, match=r"^/shmring\.r is not a shmring ring \(or is still being created\)$"):
        open_ring_info("r", mapping)
    assert read_owner(mapping) == (4321, 1234.5)
    assert read_owner(FakeMapping(ring_bytes(CAPACITY, DATA_BYTES))) == (0, 0.0)  # nothing written yet


def test_a_segment_shorter_than_a_header_has_no_owner():
    short = FakeMapping(HEADER_BYTES - 1)
    assert read_owner(short) is None
    with pytest.raises(IncompatibleRing):
        open_ring_info("r", short)


def test_another_layout_version_is_refused():
    mapping = built()
    mark_attachable(mapping.buf)
    U64.pack_into(mapping.buf, HDR_VERSION, LAYOUT_VERSION + 1)
    with pytest.raises(IncompatibleRing, match=f"layout version {LAYOUT_VERSION + 1}"):
        open_ring_info("r", mapping)


def test_a_segment_shorter_than_its_header_says_is_damaged():
    mapping = built(capacity=CAPACITY * 2)
    mark_attachable(mapping.buf)
    with pytest.raises(IncompatibleRing, match="damaged"):
        open_ring_info("r", mapping)
