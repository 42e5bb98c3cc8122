"""CaptureSession: the writer, the one write path into a ring.

Rules:
- One process owns a ring; ``publish`` is its only write path. It validates,
  stamps, assigns the next seq (1, 2, 3, ... without gaps), applies the size
  rule, writes, then wakes sleeping readers.
- ``publish`` never waits for plain readers. It is thread-safe. It waits
  only for a gating reader (the flusher) that has not yet taken the event
  it would overwrite; for a dead one, only ``flusher_grace_s``; for a live
  one that takes nothing (stopped, on a hung disk, or a reader forging a
  gate), only ``gate_stall_s``. Either way the gate is then retired: the
  writer goes on and the gate's owner sees the loss as drops.
- ``close`` (or leaving the ``with`` block, or interpreter exit) marks the
  stream ended, wakes every reader, waits until gating readers have taken
  everything (a dead one for at most the grace period), and removes every
  name the ring made.
- ``create`` reclaims a name whose writer died; it never takes one from a
  live writer.
"""

import os
import secrets
import threading
import time
import uuid
import warnings
import weakref
from collections.abc import Callable

import msgspec

from .errors import ConfigError, RingBusy, RingClosed, RingNotFound
from .header import mark_attachable, read_owner, write_header
from .layout import (
    ACCELERATOR_LAYOUT,
    DETAIL_CODES,
    FLAG_TRUNCATED,
    KIND_CODES,
    MAX_RECORD_BYTES,
    REG_GATES_CHANGED,
    REG_SCAN_END,
    REG_WAIT_FLAGS,
    REGISTRY_BYTES,
    category_field,
    ring_bytes,
)
from .liveness import current_identity, is_alive
from .registry import Registry
from .ring import NO_GATE, RingWriterCore, check_memory_model, full_fence, hotpath, new_writer_core
from .schema import (
    NO_DATA,
    Envelope,
    Event,
    EventPreparer,
    Source,
    apply_size_rule,
    encode_data,
    encode_envelope,
    normalise_data,
    validate_capture_session_id,
)
from .segment import (
    create_segment,
    open_segment,
    WakeSemaphore,
    registry_shm_name,
    ring_shm_name,
    unlink_registry_objects,
    unlink_ring_objects,
    validate_ring_name,
)

_encode = encode_envelope
_KIND_CODES = KIND_CODES
_DETAIL_CODES = DETAIL_CODES

__all__ = ["CaptureSession", "DEFAULT_CAPACITY", "DEFAULT_DATA_BYTES", "MIN_DATA_BYTES"]

DEFAULT_CAPACITY = 65536
"""Slots: about 330 ms of history at 200k events/s, enough to ride out stalls."""
DEFAULT_DATA_BYTES = 64 * 1024 * 1024
MIN_DATA_BYTES = 1024 * 1024
"""Every envelope the size rule admits fits in the smallest data area."""
MAX_CAPACITY = 1 << 24
DEFAULT_FLUSHER_GRACE_S = 5.0
DEFAULT_GATE_STALL_S = 30.0
MAX_FIRST_SEQ = 1 << 62


def _validate_sizes(capacity: object, data_bytes: object) -> None:
    if type(capacity) is not int or capacity < 1 or capacity & (capacity - 1) or capacity > MAX_CAPACITY:
        raise ConfigError(
            f"capacity must be a power of two between 1 and {MAX_CAPACITY} (the number of events "
            f"the ring retains), not {capacity!r}; for example 65536"
        )
    if type(data_bytes) is not int or data_bytes < MIN_DATA_BYTES:
        raise ConfigError(
            f"data_bytes must be an int of at least {MIN_DATA_BYTES} (so any envelope of up to "
            f"{MAX_RECORD_BYTES} bytes fits), not {data_bytes!r}"
        )


def _reclaim_stale(name: str) -> None:
    """Remove a ring left by a dead writer; raise RingBusy if its writer lives."""
    try:
        mapping = open_segment(ring_shm_name(name), writable=False)
    except RingNotFound:
        return
    try:
        owner = read_owner(mapping)
        if owner is not None and is_alive(*owner):
            raise RingBusy(f"ring {name!r} is served by a live writer (pid {owner[0]}); stop it or choose another "
                           "name", name=name, pid=owner[0])
    finally:
        mapping.close()
    unlink_ring_objects(name)


class _Gates:
    """The writer's view of gating readers: how far it may write, and waiting for room."""

    LIVENESS_EVERY_S = 0.05
    POLL_S = 0.001
    MAX_POLL_S = 0.05

    def __init__(self, registry: Registry, core: RingWriterCore, capacity: int, grace_s: float,
                 stall_s: float | None, hurry: Callable[[int], None]):
        self.registry = registry
        self.hurry = hurry
        self.core = core
        self.capacity = capacity
        self.grace_s = grace_s
        self.stall_s = stall_s
        self.resume_slots = capacity // 4
        self.resume_bytes = core.data_bytes // 4
        self._health: dict[tuple[int, int], tuple[float, bool, float | None]] = {}
        core.gate = self.wait_for_room

    def changed(self) -> None:
        """A gating reader came or went: make the next write re-evaluate."""
        # Gate first: the compiled fast path does not take the lock, and must
        # never see the flag cleared while the old gate still stands.
        self.core.gate_seq = self.core.gate_low = 0
        self.registry.take_gates_changed()
        full_fence()  # the flag's clear is visible before we next read entries

    def _honoured(self, index: int, pid: int, start_time: float, now: float) -> bool:
        """Alive, or dead for less than the grace period. Retires it otherwise."""
        key = (index, pid, start_time)  # a group gate left ownerless again is a new death: a new grace
        checked_at, alive, dead_since = self._health.get(key, (-1.0, True, None))
        if now - checked_at >= self.LIVENESS_EVERY_S:
            alive = is_alive(pid, start_time)
            dead_since = None if alive else (dead_since or now)
            self._health[key] = (now, alive, dead_since)
        if alive or now - dead_since < self.grace_s:
            return True
        self.registry.retire_gate(index)
        return False

    def _cursors(self) -> list[tuple[int, int]]:
        """(cursor, index) of every honoured gate."""
        now = time.monotonic()
        return [(cursor, index) for index, pid, start_time, cursor in self.registry.gates()
                if self._honoured(index, pid, start_time, now)]

    def _retire_stalled(self, cursors: list[tuple[int, int]], taken: int) -> None:
        """Live gates that took nothing for stall_s: stop honouring those that hold the writer at `taken`."""
        for cursor, index in cursors:
            if cursor == taken:
                self.registry.retire_gate(index)

    def wait_for_room(self, seq: int, needed_low: int) -> None:
        """Block until writing `seq` (raising data_low to `needed_low`) loses nothing gated.

        Once it has had to wait, it waits on until a quarter of the ring is
        free again (or the gating readers have taken everything), so a writer
        outrunning its flusher pays for one wait per quarter ring, not one
        per event.
        """
        core = self.core
        waited = False
        previous = None  # (time, min cursor) at the previous poll
        while True:
            cursors = self._cursors()
            if not cursors:
                core.gate_seq = core.gate_low = NO_GATE
                return
            # The first event a gating reader still needs; if it is already
            # gone (the reader came late), the oldest one still held.
            taken = min(cursors)[0]
            needed = core.oldest_intact(taken + 1, seq - 1)
            core.gate_seq = needed - 1 + self.capacity
            core.gate_low = core.position_of(needed) if needed < seq else core.data_head
            room = seq <= core.gate_seq and needed_low <= core.gate_low
            if room and (not waited or taken >= seq - 1
                         or (seq + self.resume_slots <= core.gate_seq
                             and needed_low + self.resume_bytes <= core.gate_low)):
                return
            waited = True
            # Each poll costs the writer CPU. A flusher moves its cursor a
            # batch at a time: back off while it does not move; once there is
            # some room, sleep about as long as it needs to free the rest, at
            # the pace it has shown.
            now = time.monotonic()
            if previous is None:
                poll_s = self.POLL_S
            elif taken == previous[1]:
                poll_s = min(2 * poll_s, self.MAX_POLL_S)
            elif room:
                pace = (taken - previous[1]) / (now - previous[0])
                poll_s = min(max((seq + self.resume_slots - core.gate_seq) / pace, self.POLL_S), self.MAX_POLL_S)
            else:
                poll_s = self.POLL_S
            if previous is None or taken != previous[1]:
                if previous is None:
                    self._hurry(cursors, taken)
                previous = (now, taken)
            elif self.stall_s is not None and now - previous[0] >= self.stall_s:
                self._retire_stalled(cursors, taken)
                continue
            else:
                self._hurry(cursors, taken)  # it did not move: it may be dozing out its latency budget
            time.sleep(poll_s)

    def _hurry(self, cursors: list[tuple[int, int]], taken: int) -> None:
        """Wake the gates that hold the writer at `taken` from a doze: a full ring is worth more than their budget."""
        for cursor, index in cursors:
            if cursor == taken:
                self.hurry(index)

    def wait_until_taken(self, last_seq: int, timeout_s: float | None) -> bool:
        """At close: until every honoured gate has taken `last_seq`; False if `timeout_s` passed first.

        A live gate that takes nothing for stall_s is retired, as in wait_for_room.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        previous = None
        while True:
            cursors = self._cursors()
            behind = [c for c in cursors if c[0] < last_seq]
            if not behind:
                return True
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            taken = min(behind)[0]
            if previous is None or taken != previous[1]:
                previous = (now, taken)
            elif self.stall_s is not None and now - previous[0] >= self.stall_s:
                self._retire_stalled(behind, taken)
                continue
            time.sleep(0.001)


class _Resources:
    """What a session holds; closed by close() or by the finalizer at exit."""

    def __init__(self, name: str, owner_pid: int):
        self.name = name
        self.owner_pid = owner_pid
        self.ring = None
        self.registry = None
        self.core = None
        self.gates = None
        self.semaphores: dict[int, WakeSemaphore] = {}
        self.closed = False

    def wake(self, index: int) -> None:
        sem = self.semaphores.get(index)
        if sem is None:
            sem = self.semaphores[index] = WakeSemaphore(self.name, index)
        sem.post()

    def close(self, timeout_s: float | None = None) -> bool:
        """True if every gate took everything (see CaptureSession.close)."""
        if self.closed or os.getpid() != self.owner_pid:
            return True
        self.closed = True
        complete = True
        last_seq = 0
        if self.core is not None:
            self.core.release()  # stops the fast path; it no longer holds views of the ring
            last_seq = self.core.last_seq
            self.core.publish_head(last_seq)
            self.core.mark_closed()
        if self.registry is not None:
            # Wake every attached reader, asleep or about to sleep. The
            # closed-flag store is ordered before the flag loads by the
            # locked instruction in the wake word's add or the first
            # semaphore post.
            self.registry.wake_futex_sleepers()
            for entry in self.registry.entries():
                self.registry.set_waiting(entry["index"], False)
                self.wake(entry["index"])
            complete = self.gates.wait_until_taken(last_seq, timeout_s)
        unlink_ring_objects(self.name)
        for sem in self.semaphores.values():
            sem.close()
        self.semaphores.clear()
        if self.registry is not None:
            self.registry.mapping.close()
        if self.ring is not None:
            self.ring.close()
        return complete


class CaptureSession:
    """The writer of one ring. Create with ``CaptureSession.create(name)``."""

    def __init__(self, _resources: _Resources, capture_session_id: str, capacity: int, data_bytes: int,
                 flusher_grace_s: float):
        self._res = _resources
        self._name = _resources.name
        self._capture_session_id = capture_session_id
        self._capacity = capacity
        self._data_bytes = data_bytes
        self._flusher_grace_s = flusher_grace_s
        self._lock = threading.Lock()
        self._prepare = EventPreparer().prepare
        self._wait_flags = _resources.registry.buf
        self._core = _resources.core
        self._write = _resources.core.write
        self._category_fields: dict[str, bytes] = {}
        self._finalizer = weakref.finalize(self, _resources.close)
        if hasattr(self._core, "configure_publish"):
            self._use_compiled_publish()

    def _use_compiled_publish(self) -> None:
        """Route publish through the compiled fast path; it calls the Python
        publish (the reference) for anything it does not vouch for."""
        this = weakref.ref(self)  # no cycle: dropping the session still closes it
        name = self._name

        def slow(event):
            session = this()
            if session is None:
                raise RingClosed("this ring's CaptureSession is gone; create a new one to publish", name=name)
            return CaptureSession.publish(session, event)

        def on_flags():
            session = this()
            if session is not None:
                session._on_flags()

        res = self._res
        try:
            self._core.configure_publish(
                ring=res.ring.buf, registry=res.registry.buf, layout=ACCELERATOR_LAYOUT,
                capture_session_id=self._capture_session_id, category_fields=self._category_fields,
                kind_codes=_KIND_CODES, detail_codes=_DETAIL_CODES, standard="standard",
                event_type=Event, source_type=Source, envelope_type=Envelope, raw_type=msgspec.Raw,
                no_data=NO_DATA, slow=slow, on_flags=on_flags, normalise_data=normalise_data,
                encode_data=encode_data,
            )
        except hotpath.StructLayoutMismatch as refused:  # another msgspec: the reference path publishes
            warnings.warn(f"{refused}; this session publishes on the pure-Python path "
                          "(SHMRING_PURE_PYTHON=1 chooses it without a warning)", RuntimeWarning)
            return
        self.publish = self._core.publish
        res.registry.set_futex_waker()

    @classmethod
    def create(
        cls,
        name: str,
        *,
        capture_session_id: str | None = None,
        capacity: int = DEFAULT_CAPACITY,
        data_bytes: int = DEFAULT_DATA_BYTES,
        flusher_grace_s: float = DEFAULT_FLUSHER_GRACE_S,
        gate_stall_s: float | None = DEFAULT_GATE_STALL_S,
        first_seq: int = 1,
    ) -> "CaptureSession":
        """Create ring `name` and own it.

        capture_session_id and first_seq: a writer that continues a session
        (after a restart) passes its id and the seq after the last one any
        earlier writer assigned; readers of this ring see the seqs before
        first_seq as never held (a drop, or history from an archive).

        capacity: events the ring retains (slots), a power of two.
        data_bytes: size of the data area holding the encoded envelopes.
        flusher_grace_s: how long publish waits for a dead gating flusher.
        gate_stall_s: how long publish (and close) wait for a live gate that
        takes nothing; None waits for as long as it takes.
        """
        validate_ring_name(name)
        _validate_sizes(capacity, data_bytes)
        if capture_session_id is None:
            capture_session_id = str(uuid.uuid4())
        validate_capture_session_id(capture_session_id)
        if not isinstance(flusher_grace_s, (int, float)) or flusher_grace_s < 0:
            raise ConfigError(f"flusher_grace_s must be a number of seconds >= 0, not {flusher_grace_s!r}",
                              name=name)
        if gate_stall_s is not None and (not isinstance(gate_stall_s, (int, float)) or gate_stall_s <= 0):
            raise ConfigError(f"gate_stall_s must be None or a number of seconds > 0, not {gate_stall_s!r}",
                              name=name)
        if type(first_seq) is not int or not 1 <= first_seq < MAX_FIRST_SEQ:
            raise ConfigError(f"first_seq must be an int from 1 to {MAX_FIRST_SEQ - 1}, not {first_seq!r}", name=name)
        check_memory_model()
        pid, start_time = current_identity()
        res = _Resources(name, pid)
        total = ring_bytes(capacity, data_bytes)
        for _ in range(5):
            try:
                res.ring = create_segment(ring_shm_name(name), total, populate=True)
                break
            except FileExistsError:
                _reclaim_stale(name)
        else:
            raise RingBusy(f"could not create ring {name!r}: another process keeps creating it", name=name)
        try:
            epoch = secrets.randbits(63) | 1
            buf = res.ring.buf
            write_header(buf, capacity=capacity, data_bytes=data_bytes, pid=pid, start_time=start_time, epoch=epoch,
                         created_us=time.time_ns() // 1000, flusher_grace_s=flusher_grace_s,
                         capture_session_id=capture_session_id, first_seq=first_seq)
            unlink_registry_objects(name)
            res.registry = Registry(create_segment(registry_shm_name(name), REGISTRY_BYTES, keep_fd=True))
            res.registry.initialise(epoch)
            res.core = new_writer_core(buf, capacity, data_bytes)
            res.core.last_seq = first_seq - 1
            res.core.publish_head(first_seq - 1)
            res.gates = _Gates(res.registry, res.core, capacity, float(flusher_grace_s),
                               None if gate_stall_s is None else float(gate_stall_s), res.wake)
            mark_attachable(buf)  # last: the ring is now attachable
        except BaseException:
            res.close()
            raise
        session = cls(res, capture_session_id, capacity, data_bytes, float(flusher_grace_s))
        session._first_seq = first_seq
        return session

    # -- properties -----------------------------------------------------------
    @property
    def name(self) -> str:
        return self._name

    @property
    def capture_session_id(self) -> str:
        return self._capture_session_id

    @property
    def first_seq(self) -> int:
        """The first seq this writer assigns (1 unless it continues a session)."""
        return self._first_seq

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def data_bytes(self) -> int:
        return self._data_bytes

    @property
    def last_seq(self) -> int:
        """The seq of the latest published event (0 before the first)."""
        return self._core.last_seq

    @property
    def closed(self) -> bool:
        return self._res.closed

    # -- the write path -------------------------------------------------------
    def publish(self, event: Event) -> Envelope:
        """Validate, stamp, sequence and write `event`; return it as published.

        Raises InvalidEvent (nothing written) or RingClosed. Never waits for
        plain readers.

        This is the reference path. With the compiled accelerator, the
        session's ``publish`` is ``_hotpath.Writer.publish``, which handles
        the common case itself and calls this for everything else.
        """
        event = self._prepare(event)
        category_bytes = self._category_fields.get(event.category)
        if category_bytes is None:
            category_bytes = self._category_fields[event.category] = category_field(event.category)
        kind = _KIND_CODES[event.source.kind]
        detail = _DETAIL_CODES[event.detail_level]
        lock = self._lock
        core = self._core
        lock.acquire()  # explicit acquire/release: half the cost of `with` here
        core.slow_depth += 1  # the compiled fast path defers while this runs (it may sleep in a gate wait)
        try:
            res = self._res
            if res.closed:
                raise RingClosed(f"ring {self._name!r} is closed; create a new CaptureSession to publish",
                                 name=self._name, last_seq=core.last_seq)
            seq = core.last_seq + 1
            envelope = Envelope(self._capture_session_id, seq, event)
            payload = _encode(envelope)
            if len(payload) > MAX_RECORD_BYTES:
                envelope, payload = apply_size_rule(envelope)
            if self._wait_flags[REG_GATES_CHANGED]:  # a flusher came or went: gate this very write
                res.gates.changed()
            self._write(seq, payload, kind, detail, FLAG_TRUNCATED if envelope.event.truncated else 0, event.ts,
                        category_bytes)
            core.last_seq = seq
        finally:
            core.slow_depth -= 1
            lock.release()
        # Releasing the lock was a locked instruction: the slot stores above
        # are globally visible before these flag loads (no lost wake-up).
        if self._wait_flags.find(b"\x01", REG_WAIT_FLAGS, REG_SCAN_END) != -1:
            self._on_flags()
        self._res.registry.wake_futex_sleepers()
        return envelope

    def _on_flags(self) -> None:
        res = self._res
        if res.closed:  # close() has woken everyone already
            return
        registry = res.registry
        if registry.buf[REG_GATES_CHANGED]:
            with self._lock:
                core = self._core
                core.slow_depth += 1  # the compiled fast path stays out meanwhile
                try:
                    if not res.closed:
                        res.gates.changed()
                finally:
                    core.slow_depth -= 1
        for index in list(registry.sleepers()):
            registry.set_waiting(index, False)
            res.wake(index)

    # -- lifecycle ------------------------------------------------------------
    def close(self, timeout: float | None = None) -> bool:
        """End the stream: readers drain what remains, then see RingClosed.

        Waits until gating readers have taken everything: a dead one for at
        most ``flusher_grace_s``, a live one that takes nothing for at most
        ``gate_stall_s``, and all of them for at most `timeout` seconds if
        given. Returns False if a gate was left behind, True otherwise.
        Removes every shared-memory object and semaphore the ring made.
        Idempotent.
        """
        with self._lock:
            if self._finalizer.detach() is None:
                return True
            return self._res.close(timeout)

    def __enter__(self) -> "CaptureSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"last_seq={self.last_seq}"
        return f"<CaptureSession {self._name!r} id={self._capture_session_id} {state}>"
