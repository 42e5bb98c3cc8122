"""The seqlock ring over a mapped buffer: slot writes, slot reads, no OS calls.

Memory-ordering assumption: x86-64 (TSO). There, stores become visible to
other cores in program order, loads are not reordered with other loads, and
an aligned 8-byte ``struct`` field (CPython packs ``<Q`` with one ``memcpy``)
is a single atomic load or store. Under that model this seqlock is correct
without fences:

    writer                               reader of seq S
    1. slot = (2S+1, pos, len, meta)     1. (stamp, pos, len, meta) = slot
    2. data[pos:pos+len] = payload       2. payload = data[pos:pos+len]
    3. slot.stamp = 2S                   3. low = data_low; stamp2 = slot.stamp
                                         accept iff stamp == stamp2 == 2S
                                         and pos >= low

Before the writer overwrites data-area bytes it raises ``data_low`` past
them, so a reader that copied bytes being overwritten sees the raise in
step 3. TSO does not order a store before a later load (StoreLoad); the
sleep/wake handshake needs that, and gets it from ``full_fence``.

The payload copies are ``memcpy``, and for a few KB and up the C library
uses ``rep movsb``, whose individual loads and stores TSO does *not* order
with the plain accesses around them (a torn-read stress test caught a
reader accepting stale bytes). So a ``full_fence`` also sits after the
writer's ``data_low`` raise and after its copy (before the even stamp),
and after the reader's copy (before it re-checks).

On CPUs without TSO (arm64, POWER) plain Python cannot emit the fences this
needs, so ``check_memory_model`` refuses to create or attach there.

The compiled accelerator ``_hotpath`` (built by ``pip install`` when a C
compiler is present) follows the same protocol with real fences; it supplies
``full_fence`` (an mfence) and the writer's fast path. Without it, or with
``SHMRING_PURE_PYTHON=1`` in the environment, everything below runs as is.
"""

import os
import platform
import threading

from .errors import UnsupportedPlatform
from .layout import (
    DATA_CHUNK_BYTES,
    HDR_CLOSED,
    HDR_DATA_LOW,
    HDR_HEAD,
    HEAD,
    HEADER_BYTES,
    SLOT,
    SLOT_BYTES,
    SLOT_LOCATION,
    STAMP,
    U64,
    data_offset,
    slot_offset,
)

__all__ = [
    "hotpath",
    "hotpath_missing",
    "check_memory_model",
    "full_fence",
    "RingWriterCore",
    "PyRingWriterCore",
    "accelerator",
    "new_writer_core",
    "RingReaderCore",
    "READY",
    "EMPTY",
    "WRITING",
    "LAPPED",
    "FILTERED",
]

_TSO_MACHINES = frozenset({"x86_64", "amd64"})


def check_memory_model() -> None:
    machine = platform.machine().lower()
    if machine not in _TSO_MACHINES:
        raise UnsupportedPlatform(
            f"shmring's lock-free ring relies on x86-64 store ordering (TSO); this CPU is "
            f"{machine or 'unknown'}, where readers could see torn records. Run on x86-64.", machine=machine
        )


def _load_hotpath():
    """(the accelerator module or None, why it is not in use or None)."""
    if os.environ.get("SHMRING_PURE_PYTHON"):
        return None, "turned off by SHMRING_PURE_PYTHON in the environment"
    try:
        from . import _hotpath
    except ImportError as exc:
        # A file that failed to load names itself in exc.path; a module never built is just "cannot import".
        if exc.path and os.path.basename(exc.path).startswith("_hotpath"):
            return None, f"built but not loadable ({exc}); reinstall shmring"
        return None, ("not built: `pip install` found no C compiler or Python headers, or this CPU is not "
                      "x86-64; install gcc and the Python headers (python3-dev), then reinstall shmring")
    return _hotpath, None


hotpath, hotpath_missing = _load_hotpath()
"""The compiled accelerator module, or None (pure Python); and if None, why."""

_fence_lock = threading.Lock()


def _lock_fence() -> None:
    """A full (StoreLoad) barrier.

    An uncontended lock round trip executes a ``lock``-prefixed instruction in
    the C library (sem_post / cmpxchg), which is a full barrier on x86-64.
    """
    _fence_lock.acquire()
    _fence_lock.release()


full_fence = hotpath.fence if hotpath is not None else _lock_fence


READY, EMPTY, WRITING, LAPPED, FILTERED = range(5)

HEAD_EVERY = 64
"""The writer stores head_seq once per min(64, capacity) publishes (and at
close). Slots are the truth; head_seq tells readers where to start looking,
and since it lags by less than the capacity, no slot after it is lapped."""

NO_GATE = 1 << 62

# The hot paths (write, poll, take_ready*) compute slot offsets inline, as
# layout.slot_offset does, to save a call per event; the cold ones call it.
_pack_slot = SLOT.pack_into
_unpack_location = SLOT_LOCATION.unpack_from
_unpack_slot = SLOT.unpack_from
_unpack_u64 = U64.unpack_from
_pack_u64 = U64.pack_into
_pack_head = HEAD.pack_into


class _WriterState:
    """The writer's state, in Python: the members of the compiled ``_hotpath.Writer`` (a unit test checks they agree)."""

    __slots__ = ("buf", "mask", "head_mask", "data_base", "data_bytes", "data_head", "data_low",
                 "gate_seq", "gate_low", "gate", "last_seq", "closed", "slow_depth")

    def release(self) -> None:
        """Stop the writer (the compiled one also drops its views of the buffers)."""
        self.closed = 1


class _WriterCore:
    """Writes records into a ring buffer. Single writer; the caller serialises.

    ``last_seq`` is the latest seq written. With the accelerator, ``publish``
    is the compiled fast path (see session.py); ``write`` is the reference
    write, used by the slow path.
    """

    __slots__ = ()

    def __init__(self, buf, capacity: int, data_bytes: int):
        self.buf = buf
        self.mask = capacity - 1
        self.head_mask = min(HEAD_EVERY, capacity) - 1
        self.data_base = data_offset(capacity)
        self.data_bytes = data_bytes
        self.data_head = 0
        self.data_low = 0
        self.last_seq = 0
        self.closed = 0
        self.slow_depth = 0
        # Gating: writing seq > gate_seq, or raising data_low past gate_low,
        # would overwrite what a gating reader has not taken yet; then
        # gate(seq, needed_low) is called, which waits and updates both.
        self.gate_seq = NO_GATE
        self.gate_low = NO_GATE
        self.gate = None

    def write(self, seq: int, payload: bytes, kind: int, detail: int, flags: int, ts: int, category: bytes) -> None:
        buf = self.buf
        length = len(payload)
        area = self.data_bytes
        pos = self.data_head
        off = pos % area
        if off + length > area:  # records never wrap: skip to the area's start
            pos += area - off
            off = 0
        end = pos + length
        if seq > self.gate_seq or end - area > self.gate_low:
            self.gate(seq, end - area)
        if end - area > self.data_low:
            # Raise data_low before copying over old bytes (see module doc); a
            # chunk at a time, so this store is rare.
            self.data_low = min(end - area + DATA_CHUNK_BYTES, pos, self.gate_low)
            _pack_u64(buf, HDR_DATA_LOW, self.data_low)
            full_fence()
        slot = HEADER_BYTES + (seq & self.mask) * SLOT_BYTES
        _pack_slot(buf, slot, 2 * seq + 1, pos, length, kind, detail, flags, 0, ts, category)
        start = self.data_base + off
        buf[start : start + length] = payload
        full_fence()  # the copy is visible before the even stamp
        _pack_u64(buf, slot, 2 * seq)
        self.data_head = end
        if not seq & self.head_mask:
            _pack_head(buf, HDR_HEAD, seq, end)

    def _intact(self, seq: int) -> bool:
        stamp, pos, _ = _unpack_location(self.buf, slot_offset(self.mask, seq))
        return stamp == seq << 1 and pos >= self.data_low

    def oldest_intact(self, first: int, last: int) -> int:
        """The oldest seq in [first, last] still held whole; last + 1 if none."""
        lo, hi = max(first, last - self.mask), last + 1
        while lo < hi:
            mid = (lo + hi) // 2
            if self._intact(mid):
                hi = mid
            else:
                lo = mid + 1
        return lo

    def position_of(self, seq: int) -> int:
        """Absolute data position of a seq this writer wrote and still holds."""
        return _unpack_location(self.buf, slot_offset(self.mask, seq))[1]

    def publish_head(self, seq: int) -> None:
        _pack_head(self.buf, HDR_HEAD, seq, self.data_head)

    def mark_closed(self) -> None:
        U64.pack_into(self.buf, HDR_CLOSED, 1)


class PyRingWriterCore(_WriterCore, _WriterState):
    """The writer core on the pure-Python path."""

    __slots__ = ()


RingWriterCore = type("RingWriterCore", (_WriterCore, hotpath.Writer), {"__slots__": ()}) if hotpath else PyRingWriterCore
"""The writer core on the compiled path where it is built (the same methods over the C type's members)."""


def accelerator():
    """The compiled accelerator to use now, or None: ``SHMRING_PURE_PYTHON=1`` in the environment chooses the
    pure-Python path for rings and readers made from then on (tests switch it per test)."""
    return None if os.environ.get("SHMRING_PURE_PYTHON") else hotpath


def new_writer_core(buf, capacity: int, data_bytes: int):
    return (RingWriterCore if accelerator() is not None else PyRingWriterCore)(buf, capacity, data_bytes)


class RingReaderCore:
    """Reads records out of a (read-only) ring buffer. One per reader."""

    __slots__ = ("buf", "mask", "capacity", "data_base", "data_bytes")

    def __init__(self, buf, capacity: int, data_bytes: int):
        self.buf = buf
        self.capacity = capacity
        self.mask = capacity - 1
        self.data_base = data_offset(capacity)
        self.data_bytes = data_bytes

    def poll(self, seq: int, accept=None):
        """Try to take event `seq`: (READY, payload, slot fields) or (status, None, None).

        `accept(kind, detail, category)` decides from the slot alone, without
        copying or decoding, whether the reader wants the event (FILTERED if not).
        """
        buf = self.buf
        slot = HEADER_BYTES + (seq & self.mask) * SLOT_BYTES
        fields = SLOT.unpack_from(buf, slot)
        want = seq << 1
        stamp = fields[0]
        if stamp != want:
            if stamp < want:
                return EMPTY, None, None
            return (WRITING if stamp == want + 1 else LAPPED), None, None
        if accept is not None and not accept(fields[3], fields[4], fields[8]):
            if STAMP.unpack_from(buf, slot)[0] != want:
                return LAPPED, None, None
            return FILTERED, None, fields
        pos = fields[1]
        start = self.data_base + pos % self.data_bytes
        payload = buf[start : start + fields[2]]
        full_fence()  # the copy is done before the re-check
        if U64.unpack_from(buf, HDR_DATA_LOW)[0] > pos or STAMP.unpack_from(buf, slot)[0] != want:
            return LAPPED, None, None
        return READY, payload, fields

    def take_ready(self, seq: int):
        """The fast path of poll for unfiltered readers: (payload, slot fields) if seq is whole, else None."""
        buf = self.buf
        slot = HEADER_BYTES + (seq & self.mask) * SLOT_BYTES
        fields = _unpack_slot(buf, slot)
        stamp = fields[0]
        if stamp != seq << 1:
            return None
        pos = fields[1]
        start = self.data_base + pos % self.data_bytes
        payload = buf[start : start + fields[2]]
        full_fence()  # the copy is done before the re-check
        if _unpack_u64(buf, HDR_DATA_LOW)[0] > pos or _unpack_u64(buf, slot)[0] != stamp:
            return None
        return payload, fields

    def take_ready_run(self, seq: int, limit: int) -> list[tuple[bytes, bytes]]:
        """(payload, category) of the whole events from `seq` on, up to `limit`; stops at the first that isn't."""
        buf = self.buf
        mask = self.mask
        base = self.data_base
        area = self.data_bytes
        copied = []
        while len(copied) < limit:
            slot = HEADER_BYTES + (seq & mask) * SLOT_BYTES
            fields = _unpack_slot(buf, slot)
            if fields[0] != seq << 1:
                break
            start = base + fields[1] % area
            copied.append((slot, fields, buf[start : start + fields[2]]))
            seq += 1
        if not copied:
            return []
        full_fence()  # every copy is done before the re-checks
        low = _unpack_u64(buf, HDR_DATA_LOW)[0]
        out = []
        for slot, fields, payload in copied:
            if low > fields[1] or _unpack_u64(buf, slot)[0] != fields[0]:
                break
            out.append((payload, fields[8]))
        return out

    def head(self) -> int:
        """A recent seq announced by the writer (less than capacity behind the slots)."""
        return HEAD.unpack_from(self.buf, HDR_HEAD)[0]

    def closed(self) -> bool:
        return U64.unpack_from(self.buf, HDR_CLOSED)[0] != 0

    def is_complete(self, seq: int) -> bool:
        return STAMP.unpack_from(self.buf, slot_offset(self.mask, seq))[0] == seq << 1

    def latest(self) -> int:
        """The latest fully published seq."""
        seq = self.head()
        while self.is_complete(seq + 1):
            seq += 1
        return seq

    def _retained(self, seq: int, low: int) -> bool:
        fields = SLOT.unpack_from(self.buf, slot_offset(self.mask, seq))
        return fields[0] == seq << 1 and fields[1] >= low

    def oldest_retained(self, latest: int) -> int:
        """The oldest seq still readable; latest + 1 if none is."""
        low = U64.unpack_from(self.buf, HDR_DATA_LOW)[0]
        lo, hi = max(1, latest - self.capacity + 1), latest + 1
        while lo < hi:
            mid = (lo + hi) // 2
            if self._retained(mid, low):
                hi = mid
            else:
                lo = mid + 1
        return lo
