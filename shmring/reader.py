"""Reader: attach to a ring by name and consume it from a seq cursor.

Rules:
- A reader never writes the ring (it is mapped read-only); its cursor and
  counters live in its own registry entry.
- Each ``read`` returns the next event, or the exact number of events the
  writer overwrote before this reader got to them (``ReadResult.dropped``).
  Loss is a counter, not an error.
- For every reader, always: delivered + dropped + filtered == cursor - start.
- Filtered events are judged from the slot alone: never copied, never
  decoded, never counted as drops.
- Blocking waits sleep on a semaphore, with a bounded timeout as a backstop;
  they never spin. The end of the stream is an error that sticks:
  ``RingClosed`` after a clean close, ``WriterGone`` if the writer died.
"""

import os
import time
from collections.abc import Iterable, Iterator

import msgspec

from .errors import ConfigError, IncompatibleRing, RingClosed, ShmringError, WriterGone
from .header import RingInfo, open_ring_info
from .layout import (
    ACCELERATOR_LAYOUT,
    CONFIG,
    DETAIL_CODES,
    DETAIL_LEVELS,
    HDR_CONFIG,
    HDR_MAGIC,
    HDR_SESSION_ID,
    HDR_VERSION,
    HEADER_BYTES,
    KIND_CODES,
    LAYOUT_VERSION,
    MAGIC,
    ROLE_READER,
    SESSION_ID,
    SOURCE_KINDS,
    U64,
    category_field,
    ring_bytes,
)
from .liveness import ProcessWatch, current_identity
from .registry import Registry
from .ring import EMPTY, FILTERED, LAPPED, READY, WRITING, RingReaderCore, check_memory_model, full_fence, hotpath
from .schema import Envelope, Event, decode_envelope, validate_category
from .segment import WakeSemaphore, open_segment, registry_shm_name, ring_shm_name, validate_ring_name

__all__ = ["Reader", "ReadResult", "Filter", "RingInfo", "open_ring_info"]

IDLE_CHECK_S = 0.2
"""Longest single sleep: bounds a lost wake-up and paces writer-liveness checks."""
STUCK_SLOT_S = 0.5
"""A slot odd for this long, with its writer dead, was left half-written."""
PROGRESS_EVERY = 256
"""Publish the cursor to the registry at least this often (and before sleeping)."""
HOT_S = 0.002
SPIN_S = 20e-6
"""A reader woken less than HOT_S ago polls for SPIN_S (yielding the CPU in
between) before it sleeps: on a busy stream the next event usually comes in
that time, which saves the writer a semaphore post and the reader a context
switch. An idle reader never spins."""


class ReadResult(msgspec.Struct, frozen=True):
    """One step of a stream: an envelope, or a count of events lost here."""

    envelope: Envelope | None = None
    dropped: int = 0


class Filter:
    """Consumer-side selection by category, detail level and source kind.

    Each argument is None (any value) or a collection of accepted values.
    Events that don't match are skipped without being decoded.
    """

    __slots__ = ("categories", "detail_levels", "source_kinds", "_category_fields", "_detail_codes", "_kind_codes")

    def __init__(
        self,
        categories: Iterable[str] | None = None,
        detail_levels: Iterable[str] | None = None,
        source_kinds: Iterable[str] | None = None,
    ):
        self.categories = _selector("categories", categories, validate_category)
        self.detail_levels = _selector("detail_levels", detail_levels, _enum_check("detail level", DETAIL_LEVELS))
        self.source_kinds = _selector("source_kinds", source_kinds, _enum_check("source kind", SOURCE_KINDS))
        self._category_fields = None if self.categories is None else frozenset(map(category_field, self.categories))
        self._detail_codes = (
            None if self.detail_levels is None else frozenset(DETAIL_CODES[d] for d in self.detail_levels)
        )
        self._kind_codes = None if self.source_kinds is None else frozenset(KIND_CODES[k] for k in self.source_kinds)

    def matches(self, event: Event) -> bool:
        return (
            (self.categories is None or event.category in self.categories)
            and (self.detail_levels is None or (event.detail_level or "standard") in self.detail_levels)
            and (self.source_kinds is None or event.source.kind in self.source_kinds)
        )

    def accepts_slot(self, kind: int, detail: int, category: bytes) -> bool:
        return (
            (self._kind_codes is None or kind in self._kind_codes)
            and (self._detail_codes is None or detail in self._detail_codes)
            and (self._category_fields is None or category in self._category_fields)
        )

    def __repr__(self) -> str:
        parts = [
            f"{k}={sorted(v)!r}"
            for k, v in (("categories", self.categories), ("detail_levels", self.detail_levels),
                         ("source_kinds", self.source_kinds))
            if v is not None
        ]
        return f"Filter({', '.join(parts)})"


def _enum_check(what: str, allowed: tuple[str, ...]):
    def check(value: object) -> str:
        if value not in allowed:
            raise ConfigError(f"invalid {what} {value!r} in filter: use one of {', '.join(allowed)}")
        return value

    return check


def _selector(name: str, values, check) -> frozenset | None:
    if values is None:
        return None
    if isinstance(values, str):
        values = (values,)
    try:
        checked = frozenset(check(v) for v in values)
    except ShmringError as exc:
        raise ConfigError(str(exc)) from None
    if not checked:
        raise ConfigError(f"Filter {name} is empty, which matches nothing; pass None to accept any")
    return checked


class Reader:
    """A cursor over one ring. Create with ``Reader.attach(name)``."""

    def __init__(self, *, _ring, _registry, _info: RingInfo, _index: int, _semaphore, _cursor: int,
                 _filter: Filter | None):
        self._ring = _ring
        self._registry = _registry
        self._info = _info
        self._index = _index
        self._semaphore = _semaphore
        self._core = RingReaderCore(_ring.buf, _info.capacity, _info.data_bytes)
        self._filter = _filter
        self._accept = None if _filter is None else _filter.accepts_slot
        if hotpath is not None:
            self._taker = hotpath.RecordTaker(
                ring=_ring.buf, capacity=_info.capacity, data_bytes=_info.data_bytes, layout=ACCELERATOR_LAYOUT,
                decode=decode_envelope, decode_error=msgspec.DecodeError, envelope_type=Envelope)
            self._take_decoded = self._taker.take_decoded
        else:
            self._taker = None
            self._take_decoded = _python_take_decoded(self._core.take_ready)
        self._fast = _filter is None  # cleared at the end of the stream
        self._start = _cursor
        self._cursor = _cursor
        self._delivered = 0
        self._dropped = 0
        self._filtered = 0
        self._unpublished = 0
        self._end: ShmringError | None = None
        self._detached = False
        # A gating reader (the flusher) publishes only what its owner has
        # committed, never what it has merely taken: the writer may overwrite
        # anything at or below the published cursor.
        self._committed: int | None = None
        self._last_wake = 0.0
        self._writer = ProcessWatch(_info.writer_pid, _info.writer_start_time)
        # The stuck-slot timer lives on the reader, not in one call: a caller
        # polling with short timeouts must reach the rule too.
        self._stuck_seq = 0
        self._stuck_since = 0.0
        self._resynced_at: int | None = None  # the cursor after the last resync (see _skip_lapped)

    @classmethod
    def attach(cls, name: str, *, after_seq: int | None = None, filter: Filter | None = None) -> "Reader":
        """Attach to ring `name`.

        after_seq=None: only events published from now on.
        after_seq=0: from the start of the stream (a drop first if it is gone).
        after_seq=N: resume right after seq N.
        """
        return cls._attach(name, after_seq=after_seq, filter=filter, role=ROLE_READER, gating=False)

    @classmethod
    def _attach(cls, name, *, after_seq, filter, role, gating) -> "Reader":
        validate_ring_name(name)
        if filter is not None and not isinstance(filter, Filter):
            raise ConfigError(f"filter must be a shmring.Filter, not {type(filter).__name__}")
        if after_seq is not None and (type(after_seq) is not int or after_seq < 0):
            raise ConfigError(f"after_seq must be None or a seq >= 0, not {after_seq!r}")
        check_memory_model()
        ring = open_segment(ring_shm_name(name), writable=False)
        registry = None
        try:
            info = open_ring_info(name, ring)
            registry = Registry(open_segment(registry_shm_name(name), writable=True, keep_fd=True))
            registry.check(info.epoch)
            latest = RingReaderCore(ring.buf, info.capacity, info.data_bytes).latest()
            if after_seq is None:
                cursor = latest
            elif after_seq > latest:
                raise ConfigError(
                    f"after_seq {after_seq} is beyond the latest published seq {latest} of ring {name!r} "
                    f"(capture session {info.capture_session_id}); resume from at most {latest}"
                )
            else:
                cursor = after_seq
            pid, start_time = current_identity()
            index = registry.claim(pid, start_time, role, gating, cursor)
            try:
                semaphore = WakeSemaphore(name, index)
            except BaseException:
                registry.release(index)
                raise
        except BaseException:
            ring.close()
            if registry is not None:
                registry.mapping.close()
            raise
        reader = cls(_ring=ring, _registry=registry, _info=info, _index=index, _semaphore=semaphore,
                     _cursor=cursor, _filter=filter)
        if gating:
            reader._committed = cursor
        return reader

    # -- properties -----------------------------------------------------------
    @property
    def name(self) -> str:
        return self._info.name

    @property
    def capture_session_id(self) -> str:
        return self._info.capture_session_id

    @property
    def capacity(self) -> int:
        return self._info.capacity

    @property
    def filter(self) -> Filter | None:
        return self._filter

    @property
    def cursor(self) -> int:
        """The seq of the last event consumed, dropped or filtered out."""
        return self._cursor

    @property
    def start_seq(self) -> int:
        """The cursor at attach."""
        return self._start

    @property
    def delivered(self) -> int:
        return self._delivered

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def filtered(self) -> int:
        return self._filtered

    # -- reading --------------------------------------------------------------
    def read(self, timeout: float | None = None) -> ReadResult | None:
        """The next ReadResult; None only if `timeout` seconds pass first.

        timeout=None waits as long as it takes; 0 only polls. Raises
        RingClosed once the closed ring is drained, WriterGone once the
        ring of a dead writer is drained.
        """
        if self._fast:
            seq = self._cursor + 1
            envelope = self._take_decoded(seq)
            if envelope is not None:
                if envelope is False:  # whole, but not seq's envelope
                    return ReadResult(dropped=self._drop_to(seq))
                self._cursor = seq
                self._delivered += 1
                self._unpublished += 1
                if self._unpublished >= PROGRESS_EVERY:
                    self._publish_progress()
                return ReadResult(envelope)
        taken = self._take(timeout)
        if taken is None:
            return None
        if type(taken) is int:
            return ReadResult(dropped=taken)
        envelope = _decode_checked(taken[1], taken[0])
        if envelope is None:
            self._delivered -= 1
            self._dropped += 1
            return ReadResult(dropped=1)
        return ReadResult(envelope)

    def _take_run(self, limit: int) -> list[tuple[bytes, bytes]]:
        """Unfiltered fast path, undecoded: (payload, category) of the next events that are whole now.

        They follow the cursor in seq order. An empty list says nothing about
        why: call ``_take`` for drops, waits and the end.
        """
        if not self._fast:
            return []
        run = self._core.take_ready_run(self._cursor + 1, limit)
        self._cursor += len(run)
        self._delivered += len(run)
        self._unpublished += len(run)
        return run

    def _take(self, timeout: float | None):
        """The next step undecoded: (seq, payload, slot fields), a drop count, or None on timeout."""
        if self._end is not None:
            self._fast = False
            raise self._end
        if self._detached:
            self._fast = False
            raise ShmringError("this reader is closed; attach a new one")
        deadline = None if timeout is None else time.monotonic() + timeout
        poll = self._core.poll
        accept = self._accept
        while True:
            seq = self._cursor + 1
            status, payload, fields = poll(seq, accept)
            if status == READY:
                self._cursor = seq
                self._delivered += 1
                self._unpublished += 1
                if self._unpublished >= PROGRESS_EVERY:
                    self._publish_progress()
                return seq, payload, fields
            if status == FILTERED:
                self._cursor = seq
                self._filtered += 1
                self._unpublished += 1
                continue
            if status == LAPPED:
                return self._skip_lapped(seq)
            if status == WRITING:
                now = time.monotonic()
                if self._stuck_seq != seq:
                    self._stuck_seq, self._stuck_since = seq, now
                elif now - self._stuck_since > STUCK_SLOT_S and not self._writer.alive():
                    # The writer died mid-write: this slot will never complete.
                    return self._drop_to(seq)
            if time.monotonic() - self._last_wake < HOT_S and self._spin(seq):
                continue
            if not self._wait(seq, deadline):
                return None

    def try_read(self) -> ReadResult | None:
        """``read(timeout=0)``: never blocks."""
        return self.read(timeout=0)

    def _drop_to(self, last_lost: int) -> int:
        lost = last_lost - self._cursor
        self._cursor = last_lost
        self._dropped += lost
        self._publish_progress()
        return lost

    def _skip_lapped(self, seq: int) -> int:
        """Drop what the writer overwrote: up to the oldest event still held.

        A reader lapped again soon after its last resync is chasing a writer
        that outruns it: resuming at the very oldest event would lap it again
        within a few reads, each costing a resync. It resumes a sixteenth of
        the ring further on instead. Either way every skipped event is counted.
        """
        core = self._core
        latest = core.latest()
        oldest = core.oldest_retained(latest)
        capacity = core.capacity
        if self._resynced_at is not None and seq - self._resynced_at < capacity // 4:
            oldest = min(oldest + capacity // 16, latest + 1)
        lost = self._drop_to(max(oldest, seq + 1) - 1)
        self._resynced_at = self._cursor
        return lost

    def _wait(self, seq: int, deadline: float | None) -> bool:
        """Sleep until `seq` may have changed; False on timeout. Raises at end of stream."""
        self._publish_progress()
        self._registry.set_waiting(self._index, True)
        # StoreLoad: our flag must be visible before we re-check the slot, or
        # the writer could miss the flag while we miss its publish.
        full_fence()
        try:
            state = self._slot_state(seq)
            if state not in (EMPTY, WRITING):
                return True
            if self._core.closed():
                if self._slot_state(seq) == EMPTY:
                    self._end = RingClosed(
                        f"ring {self.name!r} was closed by its writer and this reader has read all of it "
                        f"(last seq {self._cursor})"
                    )
                    raise self._end
                return True
            longest_s = IDLE_CHECK_S
            if not self._writer.alive():
                if self._slot_state(seq) == EMPTY and not self._core.closed():
                    self._end = WriterGone(
                        f"the writer of ring {self.name!r} (pid {self._info.writer_pid}) died without closing "
                        f"it; this reader has read all it left (last seq {self._cursor}). "
                        "Run `shmring gc`, or create the ring again"
                    )
                    raise self._end
                longest_s = STUCK_SLOT_S / 4  # a half-written slot: soon judged by the stuck-slot rule
            wait_s = longest_s if deadline is None else min(deadline - time.monotonic(), longest_s)
            if wait_s <= 0:
                return False
            if self._semaphore.wait(wait_s):
                self._last_wake = time.monotonic()
                return True
            return deadline is None or time.monotonic() < deadline
        finally:
            self._registry.set_waiting(self._index, False)

    def _spin(self, seq: int) -> bool:
        """Poll slot `seq` for SPIN_S; True as soon as it changes."""
        end = time.perf_counter() + SPIN_S
        while time.perf_counter() < end:
            if self._slot_state(seq) != EMPTY:
                return True
            os.sched_yield()
        return False

    def _slot_state(self, seq: int) -> int:
        """EMPTY, WRITING, LAPPED or FILTERED (= complete), without copying data."""
        return self._core.poll(seq, _reject_all)[0]

    def _publish_progress(self) -> None:
        self._unpublished = 0
        cursor = self._cursor if self._committed is None else self._committed
        self._registry.publish_progress(self._index, cursor, self._delivered, self._dropped, self._filtered)

    def _commit(self, cursor: int) -> None:
        """Gating readers: everything up to `cursor` is safely taken; let the writer past it."""
        self._committed = cursor
        self._publish_progress()
        if self._registry.gate_retired(self._index):
            # The writer stopped waiting for us (we stalled); we take events
            # again, so we gate again. What we missed meanwhile is a drop.
            self._registry.rearm_gate(self._index)

    # -- lifecycle ------------------------------------------------------------
    def __iter__(self) -> Iterator[ReadResult]:
        """Yield ReadResults until the ring is closed and drained."""
        while True:
            try:
                result = self.read()
            except RingClosed:
                return
            if result is not None:
                yield result

    def close(self) -> None:
        """Detach: free the registry entry and unmap. Idempotent."""
        self._close(abandon_gate=False)

    def _close(self, abandon_gate: bool) -> None:
        """Detach; a gating reader that failed (``abandon_gate``) leaves its entry for a successor."""
        if self._detached:
            return
        self._detached = True
        self._fast = False
        try:
            self._publish_progress()
            if abandon_gate and self._committed is not None:
                self._registry.abandon(self._index)
            else:
                self._registry.release(self._index)
        finally:
            if self._taker is not None:
                self._taker.release()  # before the unmap: it holds a view of the ring
            self._semaphore.close()
            self._writer.close()
            self._registry.mapping.close()
            self._ring.close()

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        if not getattr(self, "_detached", True):
            try:
                self.close()
            except Exception:
                pass

    def __repr__(self) -> str:
        return (f"<Reader {self.name!r} cursor={self._cursor} delivered={self._delivered} "
                f"dropped={self._dropped} filtered={self._filtered}>")


_decode = decode_envelope


def _decode_checked(payload: bytes, seq: int) -> Envelope | None:
    """The envelope, or None if the bytes are not seq's envelope.

    The seqlock already rejects torn copies; this end-to-end check makes any
    record that still fails to decode as its own seq a counted drop, never a
    wrong event or an exception in the reader.
    """
    try:
        envelope = _decode(payload)
    except msgspec.DecodeError:
        return None
    return envelope if envelope.seq == seq else None


def _python_take_decoded(take_ready):
    """The reader's fast path without the accelerator (``_hotpath.RecordTaker.take_decoded``)."""

    def take_decoded(seq: int) -> Envelope | None | bool:
        taken = take_ready(seq)
        if taken is None:
            return None
        envelope = _decode_checked(taken[0], seq)
        return False if envelope is None else envelope

    return take_decoded


def _reject_all(kind, detail, category) -> bool:
    return False
