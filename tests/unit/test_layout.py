"""layout.py's byte map: fields are aligned, inside their areas, and never overlap."""

from shmring import layout as L


def spans(*fields):
    return sorted((offset, offset + size, name) for name, offset, size in fields)


def assert_disjoint_and_aligned(fields, end):
    previous_end, previous = 0, None
    for start, stop, name in spans(*fields):
        assert start % 8 == 0, f"{name} at {start} is not 8-byte aligned"
        assert start >= previous_end, f"{name} overlaps {previous}"
        assert stop <= end, f"{name} runs past the end ({stop} > {end})"
        previous_end, previous = stop, name


def test_ring_header_fields():
    assert_disjoint_and_aligned([
        ("magic", L.HDR_MAGIC, 8), ("version", L.HDR_VERSION, 8), ("config", L.HDR_CONFIG, L.CONFIG.size),
        ("first seq", L.HDR_FIRST_SEQ, 8), ("session id", L.HDR_SESSION_ID, L.SESSION_ID.size), ("head", L.HDR_HEAD, L.HEAD.size),
        ("data_low", L.HDR_DATA_LOW, 8), ("closed", L.HDR_CLOSED, 8),
    ], L.HEADER_BYTES)
    # the fields the writer stores on every publish sit on their own cache lines
    assert L.HDR_HEAD % 64 == 0 and L.HDR_DATA_LOW % 64 == 0 and L.HDR_CLOSED % 64 == 0
    assert L.SESSION_ID.size == 4 + L.SESSION_ID_MAX_BYTES


def test_slot_is_exactly_its_size():
    assert L.SLOT.size == L.SLOT_BYTES == 64
    assert L.SLOT_LOCATION.size <= L.SLOT.size and L.SLOT.format.startswith(L.SLOT_LOCATION.format.rstrip("I"))
    assert L.SLOT.size - L.CATEGORY_FIELD_BYTES == 32  # the category is the last 32 bytes


def test_ring_areas_follow_each_other():
    capacity, data_bytes = 1024, 1 << 20
    assert L.data_offset(capacity) == L.HEADER_BYTES + capacity * L.SLOT_BYTES
    assert L.ring_bytes(capacity, data_bytes) == L.data_offset(capacity) + data_bytes
    assert L.slot_offset(capacity - 1, capacity) == L.HEADER_BYTES  # seq `capacity` reuses slot 0
    assert L.slot_offset(capacity - 1, capacity - 1) + L.SLOT_BYTES == L.data_offset(capacity)


def test_registry_fields():
    assert_disjoint_and_aligned([
        ("magic", L.REG_MAGIC, 8), ("version", L.REG_VERSION, 8), ("config", L.REG_CONFIG, L.REG_CONFIG_FMT.size),
        ("wait flags and gates-changed (one byte each)", L.REG_WAIT_FLAGS, L.REG_SCAN_END - L.REG_WAIT_FLAGS),
        ("wake word", L.REG_WAKE_WORD, 4), ("futex waker", L.REG_FUTEX_WAKER, 1),
        ("entries", L.REG_ENTRIES, L.MAX_READERS * L.ENTRY_BYTES),
        ("groups", L.REG_GROUPS, L.MAX_GROUPS * L.GROUP_BYTES),
    ], L.REGISTRY_BYTES)
    # the wait flags and the gates-changed flag are one contiguous scan, before the entries
    assert L.REG_CONFIG + L.REG_CONFIG_FMT.size <= L.REG_WAIT_FLAGS
    assert L.REG_GATES_CHANGED == L.REG_WAIT_FLAGS + L.MAX_READERS and L.REG_SCAN_END == L.REG_GATES_CHANGED + 1
    assert L.REG_SCAN_END <= L.REG_ENTRIES and L.REG_ENTRIES % 64 == 0
    assert L.REG_WAKE_WORD % 8 == 0 and L.REG_FUTEX_WAKER < L.REG_ENTRIES  # a futex word must be aligned
    assert L.entry_offset(L.MAX_READERS - 1) + L.ENTRY_BYTES == L.REG_GROUPS
    assert L.group_offset(L.MAX_GROUPS - 1) + L.GROUP_BYTES == L.REGISTRY_BYTES and L.GROUP_BYTES % 64 == 0


def test_group_fields():
    header = L.GROUP_HEADER.size
    assert_disjoint_and_aligned([
        ("header", 0, header), ("name", L.GROUP_NAME_OFFSET, 4 + L.GROUP_NAME_MAX_BYTES),
        ("filter", L.GROUP_FILTER_OFFSET, 4 + L.GROUP_FILTER_MAX_BYTES),
        ("banks", L.GROUP_HEADER_BYTES, 2 * L.GROUP_BANK_BYTES),
    ], L.GROUP_BYTES)
    assert L.GROUP_GEN_OFFSET == 8 and L.GROUP_STATE_OFFSET == 0


def test_entry_fields():
    assert_disjoint_and_aligned([
        ("identity", 0, L.ENTRY_IDENTITY.size), ("progress", L.ENTRY_PROGRESS_OFFSET, L.ENTRY_PROGRESS.size),
        ("start", L.ENTRY_START_OFFSET, L.ENTRY_START.size),
    ], L.ENTRY_BYTES)
    assert L.ENTRY_GATING_OFFSET == L.ENTRY_IDENTITY.size - 8  # gating is the identity's last field
    assert L.ENTRY_BYTES % 64 == 0
