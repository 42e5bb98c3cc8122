"""Byte layout of a ring and of its reader registry: offsets, formats, no behaviour.

Glossary
- segment: a named POSIX shared-memory object. A ring has two: the *ring*
  segment (written only by the writer, mapped read-only by readers) and the
  *registry* segment (one entry per attached reader; each reader writes only
  its own entry).
- slot: a fixed 64-byte index record in the ring. Slot ``seq & (capacity-1)``
  describes event ``seq``; its bytes live in the data area.
- seq: the position of an event in the stream, 1, 2, 3, ... without gaps.
- stamp: a slot's seqlock word: ``2*seq`` when the slot holds ``seq`` whole,
  ``2*seq + 1`` while the writer is writing it, 0 when never written.
- cursor: the seq of the last event a reader consumed, dropped or filtered.
- drop: an event overwritten before a reader got to it; counted, never faked.
- owner: the writer process, identified by pid plus start time.
- gating: a reader whose cursor the writer must not overtake (the flusher).

Ring segment ``/shmring.NAME``::

    0      +---------------------------------------------------------+
           | magic | version | capacity | data_bytes | writer pid    |
           | writer start time | epoch | created_us | grace_us       |
    | first_seq                                               |
    128    | capture_session_id (u32 length + up to 124 bytes)       |
    256    | head_seq | data_head      (writer, every publish)       |
    320    | data_low                  (writer, once per data chunk) |
    384    | closed                    (writer, at close)            |
    4096   +---------------------------------------------------------+
           | slot 0 | slot 1 | ... | slot capacity-1   (64 B each)   |
           +---------------------------------------------------------+
           | data area: envelopes as compact JSON, data_bytes long   |
           +---------------------------------------------------------+

Slot (64 B): stamp u64 | data_pos u64 | length u32 | kind u8 | detail u8 |
flags u8 | pad u8 | ts u64 | category 32 B (ASCII, NUL padded).

``data_pos`` is absolute: it only grows, and the bytes sit at
``data_pos % data_bytes``. A record never wraps; the writer skips to the start
of the area instead. Absolute positions below ``data_low`` may be overwritten
at any moment.

Registry segment ``/shmring.NAME+readers``::

    0      | magic | version | max_readers | epoch                    |
    64     | wait flags: one byte per entry (1 = asleep on its sem,   |
           |   2 = asleep on the wake word)                           |
    128    | gates-changed flag (1 = a gating entry came or went)     |
    136    | wake word (u32 futex: the compiled sleepers' eventcount) |
    144    | futex waker (1 = this ring's writer wakes the wake word) |
    192    | entry 0 | entry 1 | ... (128 B each)                     |
    8384   | group 0 | group 1 | ... (consumer groups, see below)    |

The writer scans the wait flags and the gates-changed flag once per
publish, so noticing a new flusher costs nothing extra. It clears a flag of
1 and posts that entry's semaphore; for flags of 2 it moves the wake word and
wakes all its sleepers with one FUTEX_WAKE, and each sleeper clears its own
flag (csrc/eventcount.c gives the handshake). Readers sleep on the wake word
only with the accelerator and a futex waker byte of 1, which a writer sets
when its publishes run compiled; otherwise on their semaphores.

Entry: state | pid | start time | role | gating | cursor | delivered |
dropped | filtered | start_seq | attached_us.

Group (``GROUP_BYTES`` each): state | gen | gating | gate entry | claim
timeout µs | start_seq, then the name (u32 length + bytes) at 64 and the
filter (u32 length + its repr) at 160; then two banks of ``GROUP_BANK_BYTES``
(u32 length + msgpack of the dynamic state: position, counters, members with
their claimed ranges, loose ranges). Bank ``gen & 1`` is current: a change is
written whole into the other bank, then ``gen`` is bumped (one store), so a
process killed mid-change leaves the old state intact.

The magic of each segment is written last at creation, so nobody attaches to
a half-built segment. All multi-byte fields are little-endian and 8-byte
aligned, so each ``struct`` field access is one machine load or store.

Every record below is declared the same way: its offset, its ``struct``
format and a docstring naming the fields in order. Runs of those lines look
alike (the ring header's and a registry entry's, say), but they describe
different bytes; the likeness is the descriptor's form, not code to share.
"""

import struct

MAGIC = int.from_bytes(b"SHMRING1", "little")
REGISTRY_MAGIC = int.from_bytes(b"SHMREGS1", "little")
LAYOUT_VERSION = 1

MAX_RECORD_BYTES = 1_000_000
"""The size rule: an encoded envelope is at most this many bytes."""

# -- ring header ------------------------------------------------------------
HEADER_BYTES = 4096
HDR_MAGIC = 0
HDR_VERSION = 8
HDR_CONFIG = 16
CONFIG = struct.Struct("<QQQdQQQ")
"""capacity, data_bytes, writer_pid, writer_start_time, epoch, created_us, flusher_grace_us"""
HDR_FIRST_SEQ = HDR_CONFIG + CONFIG.size
"""The first seq this writer assigns (a continued session starts past 1); 0 in older rings means 1."""
HDR_SESSION_ID = 128
SESSION_ID_MAX_BYTES = 124
SESSION_ID = struct.Struct(f"<I{SESSION_ID_MAX_BYTES}s")
HDR_HEAD = 256
HEAD = struct.Struct("<QQ")
"""head_seq (latest published seq), data_head (absolute end of the latest record)"""
HDR_DATA_LOW = 320
HDR_CLOSED = 384

U64 = struct.Struct("<Q")

# -- slots ------------------------------------------------------------------
SLOT_BYTES = 64
SLOT = struct.Struct("<QQIBBBBQ32s")
"""stamp, data_pos, length, kind, detail, flags, pad, ts, category"""
SLOT_LOCATION = struct.Struct("<QQI")
"""stamp, data_pos, length: the part of a slot an unfiltered reader needs"""
STAMP = U64
CATEGORY_FIELD_BYTES = 32
FLAG_TRUNCATED = 1

DATA_CHUNK_BYTES = 64 * 1024
"""The writer advances data_low a chunk at a time, not on every publish."""

# -- registry ---------------------------------------------------------------
MAX_READERS = 64
REG_MAGIC = 0
REG_VERSION = 8
REG_CONFIG = 16
REG_CONFIG_FMT = struct.Struct("<QQ")
"""max_readers, epoch"""
REG_WAIT_FLAGS = 64
REG_GATES_CHANGED = REG_WAIT_FLAGS + MAX_READERS
REG_SCAN_END = REG_GATES_CHANGED + 1
"""The writer's per-publish scan covers [REG_WAIT_FLAGS, REG_SCAN_END)."""
REG_WAKE_WORD = 136
REG_FUTEX_WAKER = 144
WAIT_SEMAPHORE = 1
WAIT_FUTEX = 2
REG_ENTRIES = 192
ENTRY_BYTES = 128
REG_GROUPS = REG_ENTRIES + MAX_READERS * ENTRY_BYTES
MAX_GROUPS = 8
GROUP_HEADER = struct.Struct("<QQQQQQ")
"""state, gen, gating, gate entry index, claim_timeout_us (0: none), start_seq"""
GROUP_STATE_OFFSET = 0
GROUP_GEN_OFFSET = 8
GROUP_NAME_OFFSET = 64
GROUP_NAME_MAX_BYTES = 64
GROUP_FILTER_OFFSET = 160
GROUP_FILTER_MAX_BYTES = 860
GROUP_HEADER_BYTES = 1024
GROUP_BANK_BYTES = 24 * 1024
GROUP_BYTES = GROUP_HEADER_BYTES + 2 * GROUP_BANK_BYTES
REGISTRY_BYTES = REG_GROUPS + MAX_GROUPS * GROUP_BYTES

ENTRY_IDENTITY = struct.Struct("<QQdQQ")
"""state, pid, start_time, role, gating"""
ENTRY_GATING_OFFSET = 32
ENTRY_PROGRESS_OFFSET = 40
ENTRY_PROGRESS = struct.Struct("<QQQQ")
"""cursor, delivered, dropped, filtered"""
ENTRY_START_OFFSET = 72
ENTRY_START = struct.Struct("<QQ")
"""start_seq, attached_us"""

ENTRY_FREE = 0
ENTRY_ACTIVE = 1
ROLE_READER = 1
ROLE_FLUSHER = 2
ROLE_FORWARDER = 3
ROLE_MEMBER = 4
"""A consumer group's member (never gating itself)."""
ROLE_GROUP = 5
"""A gating group's gate: its cursor is the group's acknowledged floor, its pid a live member's (0: none)."""
ROLE_NAMES = {ROLE_READER: "reader", ROLE_FLUSHER: "flusher", ROLE_FORWARDER: "forwarder", ROLE_MEMBER: "member",
              ROLE_GROUP: "group"}

# -- enum codes stored in slots --------------------------------------------
SOURCE_KINDS = ("cdp", "kernel_api", "extension", "local_process")
DETAIL_LEVELS = ("minimal", "standard", "verbose", "raw")
KIND_CODES = {name: i + 1 for i, name in enumerate(SOURCE_KINDS)}
DETAIL_CODES = {name: i + 1 for i, name in enumerate(DETAIL_LEVELS)}


ACCELERATOR_LAYOUT = {
    "slot_format": SLOT.format,
    "header_bytes": HEADER_BYTES,
    "slot_bytes": SLOT_BYTES,
    "hdr_head": HDR_HEAD,
    "hdr_data_low": HDR_DATA_LOW,
    "reg_wait_flags": REG_WAIT_FLAGS,
    "reg_scan_end": REG_SCAN_END,
    "reg_gates_changed": REG_GATES_CHANGED,
    "reg_wake_word": REG_WAKE_WORD,
    "chunk_bytes": DATA_CHUNK_BYTES,
    "max_record_bytes": MAX_RECORD_BYTES,
}
"""What the compiled accelerator (csrc/, built as shmring._hotpath) takes from this module; it checks the slot format."""


def ring_bytes(capacity: int, data_bytes: int) -> int:
    return HEADER_BYTES + capacity * SLOT_BYTES + data_bytes


def slot_offset(capacity_mask: int, seq: int) -> int:
    return HEADER_BYTES + (seq & capacity_mask) * SLOT_BYTES


def data_offset(capacity: int) -> int:
    return HEADER_BYTES + capacity * SLOT_BYTES


def entry_offset(index: int) -> int:
    return REG_ENTRIES + index * ENTRY_BYTES


def group_offset(index: int) -> int:
    return REG_GROUPS + index * GROUP_BYTES


def category_field(category: str) -> bytes:
    """The NUL-padded 32-byte form a slot stores (category is validated ASCII)."""
    return category.encode("ascii").ljust(CATEGORY_FIELD_BYTES, b"\0")
