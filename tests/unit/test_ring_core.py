"""The seqlock ring core over a plain bytearray: no shared memory, no OS calls, no processes.

ring.py's writer and reader cores only see a buffer; this drives them over a
``bytearray`` the way the writer and a reader drive a mapped segment.
FORBIDDEN: a record read back different from what was written; a slot of
another seq accepted; an overwritten record reported READY.
"""

import pytest

from shmring.layout import (
    CATEGORY_FIELD_BYTES,
    DATA_CHUNK_BYTES,
    HDR_DATA_LOW,
    U64,
    category_field,
    ring_bytes,
)
from shmring.ring import EMPTY, FILTERED, LAPPED, READY, WRITING, RingReaderCore, RingWriterCore

CAPACITY = 8
DATA_BYTES = 4 * DATA_CHUNK_BYTES


def new_ring(capacity=CAPACITY, data_bytes=DATA_BYTES):
    buf = bytearray(ring_bytes(capacity, data_bytes))
    return buf, RingWriterCore(buf, capacity, data_bytes), RingReaderCore(buf, capacity, data_bytes)


def put(writer, seq, payload, category="console", kind=1, detail=2):
    writer.write(seq, payload, kind, detail, 0, seq * 10, category_field(category))
    writer.last_seq = seq


def test_records_read_back_exactly_with_their_slot_fields():
    _, writer, reader = new_ring()
    for seq in range(1, 6):
        put(writer, seq, b"record %d" % seq, category="network", kind=3, detail=4)
    for seq in range(1, 6):
        status, payload, fields = reader.poll(seq)
        assert status == READY and payload == b"record %d" % seq
        assert fields[3:6] == (3, 4, 0) and fields[7] == seq * 10
        assert fields[8] == category_field("network") and len(fields[8]) == CATEGORY_FIELD_BYTES
    assert reader.poll(6)[0] == EMPTY
    assert reader.latest() == 5 and reader.oldest_retained(5) == 1


def test_a_lapped_slot_is_never_ready():
    _, writer, reader = new_ring()
    for seq in range(1, CAPACITY + 4):
        put(writer, seq, b"x%d" % seq)
    assert reader.poll(1)[0] == LAPPED  # its slot now holds seq CAPACITY + 1
    assert reader.poll(4)[0] == READY
    assert reader.oldest_retained(CAPACITY + 3) == 4


def test_a_half_written_slot_reads_as_writing():
    buf, writer, reader = new_ring()
    put(writer, 1, b"one")
    from shmring.layout import slot_offset

    U64.pack_into(buf, slot_offset(CAPACITY - 1, 2), 2 * 2 + 1)  # the writer's first store for seq 2
    assert reader.poll(2)[0] == WRITING
    assert reader.take_ready(2) is None


def test_bytes_below_data_low_are_never_accepted():
    buf, writer, reader = new_ring(capacity=64)
    big = b"y" * (DATA_CHUNK_BYTES // 2)
    put(writer, 1, big)
    first_pos = reader.poll(1)[2][1]
    for seq in range(2, 21):  # 20 records of half a chunk: the 4-chunk data area wraps past seq 1's bytes
        put(writer, seq, big)
    assert U64.unpack_from(buf, HDR_DATA_LOW)[0] > first_pos
    assert reader.is_complete(1)  # its slot still says seq 1 ...
    assert reader.poll(1)[0] == LAPPED  # ... but its bytes may be overwritten: never READY
    assert reader.poll(20)[:2] == (READY, big)


def test_filtered_events_are_judged_from_the_slot():
    _, writer, reader = new_ring()
    put(writer, 1, b"a", category="console")
    put(writer, 2, b"b", category="page")
    wants_page = lambda kind, detail, category: category == category_field("page")  # noqa: E731
    assert reader.poll(1, wants_page)[0] == FILTERED
    assert reader.poll(2, wants_page)[:2] == (READY, b"b")


def test_a_run_of_ready_records_stops_at_the_first_that_is_not():
    _, writer, reader = new_ring()
    for seq in range(1, 5):
        put(writer, seq, b"r%d" % seq, category="page")
    run = reader.take_ready_run(2, 10)
    assert run == [(b"r2", category_field("page")), (b"r3", category_field("page")), (b"r4", category_field("page"))]
    assert reader.take_ready_run(2, 2) == run[:2]
    assert reader.take_ready_run(5, 10) == []


@pytest.mark.parametrize("size", [1, 100, DATA_CHUNK_BYTES - 1, DATA_CHUNK_BYTES + 7])
def test_records_never_wrap_the_data_area(size):
    _, writer, reader = new_ring(capacity=256)
    payloads = {}
    for seq in range(1, 200):
        payloads[seq] = bytes([seq % 251]) * size
        put(writer, seq, payloads[seq])
        status, payload, fields = reader.poll(seq)
        assert status == READY and payload == payloads[seq]
        assert fields[1] % DATA_BYTES + size <= DATA_BYTES  # a record sits in one piece
