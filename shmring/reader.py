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
- How a reader waits is its wait strategy (see waiting.py): with
  ``max_delay_s=0`` it wakes for every event, with ``max_delay_s=D`` it lets
  events collect for up to D and takes them in one go. Either way an idle
  reader sleeps on its semaphore, and the writer posts only to readers that
  sleep there. The end of the stream is an error that sticks:
  ``RingClosed`` after a clean close, ``WriterGone`` if the writer died.
- Batches (``read_many``, ``read_raw_many``) keep the same order, drops and
  accounting as ``read``; raw records are the writer's bytes, undecoded.
- With ``archive=DIR``, a seq the ring no longer holds is read from the
  flusher's files (history.py has the rules), then the reader goes on in the
  ring at exactly the next seq. Only the ring's lapped and first_seq branches
  lead there: the ring path has no per-event check for it.
- Sinks use only this public API; a gating sink (the flusher) uses
  ``GatingReader``, which lets the writer past only what it committed.
  ``gating=True`` makes a plain reader one the writer never overtakes.
- ``group=G`` makes the reader a member of consumer group G (groups.py):
  it reads the batches it claims and acknowledges them.
- Size: about 670 lines, over the project's ~600, for one concept: the
  reader's side of the seqlock. Taking the next seq (one, a batch, raw),
  waiting for it (wait flag, fence, re-check against the writer's post) and
  judging the end of the stream (closed, writer gone, a stuck slot) move one
  cursor and one set of counters under the invariant above, and are read
  together. What stands apart has left: replay-merge (history.py), results
  and the checked decode (results.py), group membership (groups.py), the wait
  decisions (waiting.py). ``GatingReader`` stays: ``shmring.reader`` is its
  public home, and a module of its own (importing this one for its base)
  could not be re-exported from here without an import cycle.
"""

import os
import time
import warnings
from collections.abc import Iterator

import msgspec

from .errors import ConfigError, ReaderClosed, RingClosed, ShmringError, WriterGone
from .header import RingInfo, open_ring_info
from .layout import (
    ACCELERATOR_LAYOUT,
    ROLE_FLUSHER,
    ROLE_MEMBER,
    ROLE_READER,
)
from .liveness import ProcessWatch, current_identity
from .groups import DEFAULT_CLAIM_TIMEOUT_S, GroupMember
from .registry import Registry
from .ring import (EMPTY, FILTERED, LAPPED, READY, WRITING, RingReaderCore, accelerator, check_memory_model,
                   full_fence, hotpath)
from .filters import Filter
from .history import History, ReplayMerge
from .results import RawRecord, ReadResult, check_max_events, decode_checked
from .schema import Envelope, decode_envelope
from .segment import Mapping, WakeSemaphore, open_segment, registry_shm_name, ring_shm_name, validate_ring_name
from .waiting import DOZE, wait_strategy
from .accounting import ReaderState

__all__ = ["Reader", "GatingReader", "ReadResult", "RawRecord", "Filter", "RingInfo", "open_ring_info"]

STUCK_SLOT_S = 0.5
"""A slot odd for this long, with its writer dead, was left half-written."""
WRITER_LOOK_S = 0.1
"""A reader about to sleep on an empty slot asks whether its writer lives at most this often (a block lasts at most
IDLE_CHECK_S, so a death is seen within IDLE_CHECK_S + WRITER_LOOK_S), not once per event: on this VM that look,
a syscall, was a tenth of a plain reader's CPU per event at 10k events/s."""
PROGRESS_EVERY = 256
"""Publish the cursor to the registry at least this often (and before sleeping)."""
MAX_DELAY_S_LIMIT = 10.0

_compiled_read = hotpath.ReadMethod if hotpath is not None else (lambda read: read)
"""Reader.read with its per-event fast path in C, for readers whose ``_state`` is a RecordTaker."""


class Reader(ReplayMerge):
    """A cursor over one ring. Create with ``Reader.attach(name)``."""

    _ROLE = ROLE_READER
    """The role its registry entry shows (a subclass for one kind of sink may name its own)."""

    def __init__(self, *, _ring: Mapping, _registry: Registry, _info: RingInfo, _index: int,
                 _semaphore: WakeSemaphore, _cursor: int,
                 _filter: Filter | None, _max_delay_s: float = 0.0):
        self._ring = _ring
        self._registry = _registry
        self._info = _info
        self._index = _index
        self._semaphore = _semaphore
        self._core = RingReaderCore(_ring.buf, _info.capacity, _info.data_bytes)
        self._filter = _filter
        self._accept = None if _filter is None else _filter.accepts_slot
        self._taker = None
        hotpath = accelerator()
        if hotpath is not None:
            try:
                self._taker = hotpath.RecordTaker(
                    ring=_ring.buf, capacity=_info.capacity, data_bytes=_info.data_bytes, layout=ACCELERATOR_LAYOUT,
                    decode=decode_envelope, decode_error=msgspec.DecodeError, envelope_type=Envelope)
            except hotpath.StructLayoutMismatch as refused:  # another msgspec: the reference path decodes
                warnings.warn(f"{refused}; this reader decodes on the pure-Python path "
                              "(SHMRING_PURE_PYTHON=1 chooses it without a warning)", RuntimeWarning)
        cls = type(self)
        if self._taker is not None:
            self._take_decoded = self._taker.take_decoded
            self._take_raw_run = self._taker.take_raw_run
            # The taker holds the cursor and counters, so that its read and iteration take events in C,
            # and applies the filter there too.
            self._state = self._taker
            self._taker.connect(result_type=ReadResult, on_progress=cls._publish_progress,
                                read_slow=cls._read_slow, next_slow=cls._next_slow)
            if _filter is not None:
                self._taker.set_filter(kind_codes=_filter.kind_codes, detail_codes=_filter.detail_codes,
                                       category_fields=_filter.category_fields)
        else:
            self._take_decoded = _python_take_decoded(self._core.take_ready)
            self._take_raw_run = _python_take_raw_run(self._core.take_ready_run)
            self._state = ReaderState()
        self._start = _cursor
        self._state.cursor = _cursor
        self._state.progress_every = PROGRESS_EVERY
        self._state.fast = True  # cleared at the end of the stream
        self._end: ShmringError | None = None
        self._detached = False
        # A gating reader (the flusher) publishes only what its owner has
        # committed, never what it has merely taken: the writer may overwrite
        # anything at or below the published cursor.
        self._committed: int | None = None
        self._rearm = False  # a plain gating reader: re-arms its gate if the writer retired it
        self._first_seq = _info.first_seq
        self._strategy = wait_strategy(_max_delay_s)
        self._max_delay_s = _max_delay_s
        self._cursor_at_wait = _cursor
        self._category_names: dict[bytes, str] = {}
        self._writer = ProcessWatch(_info.writer_pid, _info.writer_start_time)
        # The stuck-slot timer lives on the reader, not in one call: a caller
        # polling with short timeouts must reach the rule too.
        self._stuck_seq = 0
        self._stuck_since = 0.0
        self._resynced_at: int | None = None  # the cursor after the last resync (see _skip_lapped)
        self._history: History | None = None  # archive=DIR: where seqs the ring no longer holds are read
        self._replaying = False
        self._replay_walk = None  # the files' steps being read, up to _replay_until (history.py)
        self._replay_until: int | None = None

    @classmethod
    def attach(cls, name: str, *, after_seq: int | None = None, filter: Filter | None = None,
               archive: str | os.PathLike | None = None, max_delay_s: float = 0.0, group: str | None = None,
               gating: bool = False, claim_timeout_s: float | None = DEFAULT_CLAIM_TIMEOUT_S,
               populate: bool = True) -> "Reader":
        """Attach to ring `name`.

        after_seq=None: only events published from now on.
        after_seq=0: from the start of the stream (a drop first if it is gone).
        after_seq=N: resume right after seq N.
        archive: the ring's flusher directory. Whenever the next seq is no
        longer in the ring, it is read from the files there, then the reader
        goes on in the ring at exactly the next seq (replay-merge; drops only
        for what neither holds; see history.py).
        max_delay_s: the latency budget. 0 wakes for every event; D > 0 lets
        events collect for up to D seconds and takes them in one go, which
        costs far less CPU per event at steady rates.
        gating=True: the writer never overwrites what this reader (or group) has not read (acknowledged).
        group=G: join consumer group G (see groups.py; the first member sets its start, filter,
        gating and claim_timeout_s).
        populate=False: map the ring's pages as they are first read, not all now. Attaching to
        a 68 MB ring then takes ~0.3 ms instead of ~8 ms, and its first lap a page fault per 16
        pages; for many short-lived readers in one process (the HTTP edge's streams).
        """
        if type(populate) is not bool:
            raise ConfigError(f"populate must be True or False, not {populate!r}")
        if group is not None:
            if archive is not None:
                raise ConfigError("a group member reads only the ring (its group's claims); attach it without "
                                  "archive=, or read the history with a reader of its own")
            return _GroupReader._join(name, after_seq=after_seq, filter=filter, max_delay_s=max_delay_s, group=group,
                                      gating=gating, claim_timeout_s=claim_timeout_s, role=ROLE_MEMBER,
                                      populate=populate)
        if type(gating) is not bool:
            raise ConfigError(f"gating must be True or False, not {gating!r}")
        return cls._open(name, after_seq=after_seq, filter=filter, max_delay_s=max_delay_s, role=cls._ROLE,
                         gating=gating, archive=archive, populate=populate)

    @classmethod
    def _open(cls, name, *, after_seq, filter, max_delay_s, role, gating, archive=None,
              populate=True) -> "Reader":
        validate_ring_name(name)
        if (not isinstance(max_delay_s, (int, float)) or isinstance(max_delay_s, bool)
                or not 0 <= max_delay_s <= MAX_DELAY_S_LIMIT):
            raise ConfigError(f"max_delay_s must be a number of seconds from 0 to {MAX_DELAY_S_LIMIT:g}, "
                              f"not {max_delay_s!r}; 0 wakes for every event")
        if filter is not None and not isinstance(filter, Filter):
            raise ConfigError(f"filter must be a shmring.Filter, not {type(filter).__name__}")
        if after_seq is not None and (type(after_seq) is not int or after_seq < 0):
            raise ConfigError(f"after_seq must be None or a seq >= 0, not {after_seq!r}")
        check_memory_model()
        ring = open_segment(ring_shm_name(name), writable=False, populate=populate)
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
                     _cursor=cursor, _filter=filter, _max_delay_s=float(max_delay_s))
        if gating and role == ROLE_FLUSHER:
            reader._committed = cursor
        reader._rearm = gating and role != ROLE_FLUSHER
        # Nobody hurries a plain reader out of a doze, so it dozes on a timer: here
        # a timed sleep costs about half a timed wait on a (shared) semaphore.
        reader._doze = time.sleep if role == ROLE_READER and not gating else reader._semaphore.wait
        if reader._rearm:  # the writer waits on this cursor: show it often enough to keep the ring flowing
            reader._progress_every = max(1, min(PROGRESS_EVERY, info.capacity // 8))
        if archive is not None:
            try:
                reader._history = History(archive, info.capture_session_id, filter, registry.flushers)
            except BaseException:
                reader.close()
                raise
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
    def first_seq(self) -> int:
        """The first seq this ring's writer assigned; earlier seqs were never in this ring."""
        return self._first_seq

    @property
    def filter(self) -> Filter | None:
        return self._filter

    @property
    def max_delay_s(self) -> float:
        return self._max_delay_s

    @property
    def cursor(self) -> int:
        """The seq of the last event consumed, dropped or filtered out."""
        return self._state.cursor

    @property
    def start_seq(self) -> int:
        """The cursor at attach."""
        return self._start

    @property
    def delivered(self) -> int:
        return self._state.delivered

    @property
    def dropped(self) -> int:
        return self._state.dropped

    @property
    def filtered(self) -> int:
        return self._state.filtered

    # -- reading --------------------------------------------------------------
    @_compiled_read
    def read(self, timeout: float | None = None) -> ReadResult | None:
        """The next ReadResult; None only if `timeout` seconds pass first.

        timeout=None waits as long as it takes; 0 only polls. Raises
        RingClosed once the closed ring is drained, WriterGone once the
        ring of a dead writer is drained.
        """
        # The per-event fast path; with the accelerator it runs in C (_compiled_read), step for step, and
        # applies the filter as _take does (here a filtered reader takes that path).
        state = self._state
        if state.fast and self._accept is None:
            seq = state.cursor + 1
            envelope = self._take_decoded(seq)
            if envelope is not None and envelope is not False:  # False: whole, but not seq's envelope
                if state.took(seq):
                    self._publish_progress()
                return ReadResult(envelope)
        return self._read_slow(timeout)

    def _read_slow(self, timeout: float | None = None) -> ReadResult | None:
        """``read`` for whatever its fast path does not take: a wait, a drop, a filter, the end, a replay."""
        taken = self._take(timeout)
        if taken is None:
            return None
        state = self._state
        if type(taken) is int:
            if not taken:  # the files hold the next seq: the replay's read took over
                return self.read(timeout)
            return ReadResult(dropped=taken, dropped_from=state.cursor - taken + 1, dropped_to=state.cursor)
        envelope = decode_checked(taken[1], taken[0])
        if envelope is None:
            state.delivered -= 1
            state.dropped += 1
            return ReadResult(dropped=1, dropped_from=taken[0], dropped_to=taken[0])
        return ReadResult(envelope)

    def read_many(self, max_events: int = 1024, timeout: float | None = None) -> list[ReadResult]:
        """The next results in order, drops in place: at least one, at most `max_events`.

        Blocks like ``read`` until one is available; ``[]`` only on timeout.
        Then takes what else is ready without waiting.
        """
        check_max_events(max_events)
        if self._replaying:  # the replay's read_many, for a caller holding this bound method
            return self.read_many(max_events, timeout)
        first = self.read(timeout)
        if first is None:
            return []
        results = [first]
        if self._replaying:  # that read began a replay: the rest in one go
            if max_events > 1:
                try:
                    results += self.read_many(max_events - 1, 0)
                except (RingClosed, WriterGone):
                    pass  # the end sticks: the next call raises it
            return results
        read = self.read
        try:
            while len(results) < max_events and (result := read(0)) is not None:
                results.append(result)
        except (RingClosed, WriterGone):
            pass  # the end sticks: the next call raises it
        return results

    def read_raw_many(self, max_events: int = 1024, timeout: float | None = None) -> list["RawRecord"]:
        """``read_many`` undecoded: each event's envelope JSON exactly as the writer encoded it.

        A drop is ``RawRecord(seq=<last lost seq>, category="", payload=b"", dropped=N)``.
        The seqlock guarantees the bytes are whole; they are not decoded, so a
        record the writer itself mangled is not caught here as ``read`` does.
        """
        check_max_events(max_events)
        taken = self._take(timeout)
        if taken is None:
            return []
        if taken == 0 and type(taken) is int:  # the files hold the next seq: the replay's read takes over
            return self.read_raw_many(max_events, timeout)
        records = []
        state = self._state
        names = self._category_names
        try:
            while True:
                if type(taken) is int:
                    if not taken:  # the files hold the next seq
                        records += self.read_raw_many(max_events - len(records), 0)
                        break
                    cursor = state.cursor
                    records.append(RawRecord(cursor, "", b"", taken, cursor - taken + 1, cursor))
                else:
                    seq, payload, fields = taken
                    records.append(RawRecord(seq, names.get(fields[8]) or self._category_name(fields[8]), payload))
                    if state.fast and self._accept is None and len(records) < max_events:
                        run = self._take_raw_run(seq + 1, max_events - len(records), RawRecord, names)
                        if run:
                            records += run
                            state.cursor = seq + len(run)
                            state.delivered += len(run)
                            state.unpublished += len(run)
                if len(records) >= max_events or (taken := self._take(0)) is None:
                    break
        except (RingClosed, WriterGone):
            pass  # the end sticks: the next call raises it
        if state.unpublished >= state.progress_every:
            self._publish_progress()
        return records

    def _category_name(self, field: bytes) -> str:
        name = self._category_names[field] = field.rstrip(b"\0").decode("ascii", "replace")
        return name

    def _take(self, timeout: float | None):
        """The next step undecoded: (seq, payload, slot fields), a drop count, or None on timeout."""
        if self._end is not None:
            self._state.fast = False
            raise self._end
        if self._detached:
            self._state.fast = False
            raise ReaderClosed(f"this reader of ring {self.name!r} is closed; attach a new one", name=self.name)
        deadline = None if timeout is None else time.monotonic() + timeout
        poll = self._core.poll
        accept = self._accept
        state = self._state
        while True:
            seq = state.cursor + 1
            if seq < self._first_seq:  # never in this ring: the writer continued a session from first_seq
                if self._history is not None:
                    return self._begin_replay()
                return self._drop_to(self._first_seq - 1)
            status, payload, fields = poll(seq, accept)
            if status == READY:
                if state.took(seq):
                    self._publish_progress()
                return seq, payload, fields
            if status == FILTERED:
                state.passed(seq)
                continue
            if status == LAPPED:
                if self._history is not None:
                    return self._begin_replay()
                return self._skip_lapped(seq)
            if status == WRITING:
                now = time.monotonic()
                if self._stuck_seq != seq:
                    self._stuck_seq, self._stuck_since = seq, now
                elif now - self._stuck_since > STUCK_SLOT_S and not self._writer.alive():
                    # The writer died mid-write: this slot will never complete.
                    return self._drop_to(seq)
            if not self._await(seq, deadline):
                return None

    def try_read(self) -> ReadResult | None:
        """``read(timeout=0)``: never blocks."""
        return self.read(timeout=0)

    def _drop_to(self, last_lost: int) -> int:
        lost = last_lost - self._state.cursor
        self._state.cursor = last_lost
        self._state.dropped += lost
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
        self._resynced_at = self._state.cursor
        return lost

    def _await(self, seq: int, deadline: float | None) -> bool:
        """Nothing is ready at `seq`: wait as the strategy says. False only if the deadline had passed.

        After any wait it returns True, so the caller looks at the slot once
        more before giving up, however late the wait ended (a SIGSTOP, a
        scheduling stall).
        """
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            if self._slot_state(seq) == EMPTY:
                self._check_end(seq)
            return False
        strategy = self._strategy
        if self._state.cursor != self._cursor_at_wait:
            strategy.taken(now, self._state.cursor - self._cursor_at_wait)
            self._cursor_at_wait = self._state.cursor
        action, wait_s = strategy.next_wait(now)
        if deadline is not None:
            wait_s = min(wait_s, deadline - now)
        if action == DOZE:
            self._publish_progress()
            # No wait flag raised: publishes post nothing. A gating reader dozes on its
            # semaphore, which a writer it holds back posts to hurry it.
            if strategy.yield_first:
                os.sched_yield()
            self._doze(wait_s)
            strategy.dozed(now + wait_s, time.monotonic())
        else:
            self._block(seq, wait_s)
        return True

    def _block(self, seq: int, wait_s: float) -> None:
        """Sleep on the semaphore until `seq` may have changed, at most `wait_s`. Raises at end of stream."""
        self._publish_progress()
        registry = self._registry
        # Our flag must be visible before we re-check the slot (StoreLoad), or
        # the writer could miss the flag while we miss its publish: arm_futex
        # fences, and reads the wake word before the re-check.
        futex = self._taker is not None and registry.futex_waker()
        if futex:
            seen = registry.arm_futex(self._index)
        else:
            registry.set_waiting(self._index, True)
            full_fence()
        try:
            state = self._slot_state(seq)
            if state not in (EMPTY, WRITING):
                return
            if state == EMPTY:
                self._check_end(seq)
            if self._core.closed():
                return  # closed with seq half-written: it completes (close waits for the lock) or lapses
            if state == WRITING and not self._writer.alive():  # EMPTY with a dead writer: _check_end raised
                wait_s = min(wait_s, STUCK_SLOT_S / 4)  # a half-written slot: soon judged by the stuck-slot rule
            if futex:
                registry.wait_futex(seen, wait_s)
            else:
                self._semaphore.wait(wait_s)
        finally:
            registry.set_waiting(self._index, False)

    def _check_end(self, seq: int) -> None:
        """Slot `seq` was seen EMPTY: raise (for good) if nothing will ever fill it."""
        if self._core.closed():
            if self._slot_state(seq) == EMPTY:
                self._end = RingClosed(
                    f"ring {self.name!r} was closed by its writer and this reader has read all of it "
                    f"(last seq {self._state.cursor})"
                )
                raise self._end
        elif (not self._writer.alive(WRITER_LOOK_S) and self._slot_state(seq) == EMPTY
              and not self._core.closed()):
            self._end = WriterGone(
                f"the writer of ring {self.name!r} (pid {self._info.writer_pid}) died without closing "
                f"it; this reader has read all it left (last seq {self._state.cursor}). "
                "Run `shmring gc`, or create the ring again"
            )
            raise self._end

    def _awaited(self) -> int:
        """The seq whose publishing gives this reader something to read (a group member's differs)."""
        return self._state.cursor + 1

    def _slot_state(self, seq: int) -> int:
        """EMPTY, WRITING, LAPPED or FILTERED (= complete), without copying data."""
        return self._core.poll(seq, _reject_all)[0]

    def _publish_progress(self) -> None:
        state = self._state
        state.unpublished = 0
        cursor = state.cursor if self._committed is None else self._committed
        self._registry.publish_progress(self._index, cursor, state.delivered, state.dropped, state.filtered)
        if self._rearm and self._registry.gate_retired(self._index):
            self._registry.rearm_gate(self._index)  # it stalled and the writer went on; it takes events again

    def ack(self, seq: int | None = None) -> None:
        """Acknowledge an event: for members of a consumer group (``Reader.attach(name, group=G)``)."""
        raise ConfigError(f"this reader of ring {self.name!r} is in no consumer group, so it has nothing to "
                          "acknowledge; attach with group=NAME to share a stream", name=self.name)

    # -- lifecycle ------------------------------------------------------------
    def __iter__(self) -> Iterator[ReadResult]:
        """Yield ReadResults until the ring is closed and drained."""
        state = self._state
        if type(state) is not ReaderState:  # the compiled taker: its iterator takes events in C
            return state.iterate(self)
        return self._iterate()

    def _iterate(self) -> Iterator[ReadResult]:
        while True:
            try:
                result = self.read()
            except RingClosed:
                return
            if result is not None:
                yield result

    def _next_slow(self) -> ReadResult:
        """The compiled iterator's next result when its fast path takes none; StopIteration at the end."""
        while True:
            try:
                result = self.read()
            except RingClosed:
                raise StopIteration from None
            if result is not None:
                return result

    def close(self) -> None:
        """Detach: free the registry entry and unmap. Idempotent."""
        self._detach(abandon_gate=False)

    def _detach(self, abandon_gate: bool) -> None:
        if self._detached:
            return
        self._detached = True
        self._state.fast = False
        if self._replay_walk is not None:
            self._stop_walk()
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

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self):
        if not getattr(self, "_detached", True):
            try:
                self.close()
            except Exception:
                pass

    def __repr__(self) -> str:
        return (f"<Reader {self.name!r} cursor={self._state.cursor} delivered={self._state.delivered} "
                f"dropped={self._state.dropped} filtered={self._state.filtered}>")


class GatingReader(Reader):
    """A reader the writer must not overtake (the flusher): for sinks that must lose nothing.

    The writer may overwrite only what the gate has *committed*, never what it
    has merely read: a sink commits once the events are safe (written to its
    files). A dead gate is honoured for the ring's grace period, a live one
    that commits nothing for its stall bound; then the writer goes on, and the
    gate sees the loss as drops. A gate that commits again after that re-arms.
    """

    @classmethod
    def attach(cls, name: str, *, after_seq: int, max_delay_s: float = 0.0) -> "GatingReader":
        """Attach as the ring's flusher-role gate, resuming right after `after_seq`."""
        if after_seq is None:
            raise ConfigError("a gating reader resumes from a seq: pass after_seq (0 for the start)")
        reader = cls._open(name, after_seq=after_seq, filter=None, max_delay_s=max_delay_s, role=ROLE_FLUSHER,
                           gating=True)
        return reader

    @property
    def committed(self) -> int:
        """The seq up to which the writer may overwrite."""
        return self._committed

    def commit(self, seq: int | None = None) -> None:
        """Everything up to `seq` (default: all read so far) is safe; let the writer past it."""
        seq = self._state.cursor if seq is None else seq
        if not self._committed <= seq <= self._state.cursor:
            raise ConfigError(f"commit {seq} is outside [{self._committed}, {self._state.cursor}]: "
                              "commit only what was read")
        if seq == self._committed:
            return
        self._committed = seq
        self._publish_progress()
        if self._registry.gate_retired(self._index):
            # The writer stopped waiting for us (we stalled); we take events
            # again, so we gate again. What we missed meanwhile is a drop.
            self._registry.rearm_gate(self._index)

    def abandon(self) -> None:
        """Detach after a failure, leaving the gate as a dead owner's: for its grace period the writer
        keeps everything after ``committed``, so a successor that attaches in time loses nothing."""
        self._detach(abandon_gate=True)


class _GroupReader(GroupMember, Reader):
    """A consumer group's member (``Reader.attach(name, group=G)``)."""

    _results = (ReadResult, RawRecord)


def _python_take_decoded(take_ready):
    """The reader's fast path without the accelerator (``_hotpath.RecordTaker.take_decoded``)."""

    def take_decoded(seq: int) -> Envelope | None | bool:
        taken = take_ready(seq)
        if taken is None:
            return None
        envelope = decode_checked(taken[0], seq)
        return False if envelope is None else envelope

    return take_decoded


def _python_take_raw_run(take_ready_run):
    """``_hotpath.RecordTaker.take_raw_run`` without the accelerator: RawRecords of a run of whole events."""

    def take_raw_run(seq: int, limit: int, record_type, names: dict[bytes, str]) -> list:
        records = []
        for payload, field in take_ready_run(seq, limit):
            name = names.get(field)
            if name is None:
                name = names[field] = field.rstrip(b"\0").decode("ascii", "replace")
            records.append(record_type(seq, name, payload))
            seq += 1
        return records

    return take_raw_run


def _reject_all(kind, detail, category) -> bool:
    return False
