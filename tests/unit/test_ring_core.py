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


def _takers(buf):
    """take_raw_run on the pure path, and on the compiled one when it is built."""
    import msgspec

    from shmring.layout import ACCELERATOR_LAYOUT
    from shmring.reader import _python_take_raw_run
    from shmring.ring import accelerator
    from shmring.schema import Envelope, decode_envelope

    takers = {"pure": _python_take_raw_run(RingReaderCore(buf, CAPACITY, DATA_BYTES).take_ready_run)}
    hotpath = accelerator()
    if hotpath is not None:
        takers["compiled"] = hotpath.RecordTaker(
            ring=buf, capacity=CAPACITY, data_bytes=DATA_BYTES, layout=ACCELERATOR_LAYOUT, decode=decode_envelope,
            decode_error=msgspec.DecodeError, envelope_type=Envelope).take_raw_run
    return takers


def test_a_raw_run_is_the_whole_records_from_seq_with_their_category_names():
    from shmring import RawRecord

    buf, writer, _ = new_ring()
    for seq, category in enumerate(["console", "network", "network", "page", "page"], 1):
        put(writer, seq, b"record %d" % seq, category=category)
    buf[slot_offset_of(4) + 32: slot_offset_of(4) + 34] = b"\xff\xfe"  # a category field no writer makes
    for path, take in _takers(buf).items():
        names: dict[bytes, str] = {}
        run = take(2, 10, RawRecord, names)
        assert [(r.seq, r.category, bytes(r.payload)) for r in run] == [
            (2, "network", b"record 2"), (3, "network", b"record 3"), (4, "\ufffd\ufffdge", b"record 4"),
            (5, "page", b"record 5")], path
        assert names[category_field("network")] == "network"
        assert [r.seq for r in take(1, 2, RawRecord, names)] == [1, 2]
        assert take(6, 10, RawRecord, names) == [] and take(1, 0, RawRecord, names) == []


def test_a_raw_run_stops_before_a_lapped_or_half_written_slot():
    from shmring import RawRecord

    buf, writer, _ = new_ring()
    for seq in range(1, CAPACITY + 3):
        put(writer, seq, b"x%d" % seq)
    # Slot of CAPACITY + 3 stamped odd, as the first store of a publish does.
    buf[slot_offset_of(CAPACITY + 3): slot_offset_of(CAPACITY + 3) + 8] = U64.pack(2 * (CAPACITY + 3) + 1)
    for path, take in _takers(buf).items():
        assert take(1, 10, RawRecord, {}) == [], path  # seq 1's slot holds CAPACITY + 1 now
        assert [r.seq for r in take(CAPACITY, 10, RawRecord, {})] == [CAPACITY, CAPACITY + 1, CAPACITY + 2], path


def slot_offset_of(seq):
    from shmring.layout import slot_offset

    return slot_offset(CAPACITY - 1, seq)
