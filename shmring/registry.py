"""The reader registry: who is attached, where their cursors are, who sleeps.

Rules:
- Lives in its own segment, apart from the ring, so a reader can never
  corrupt the ring. Each reader writes only its own entry and wait flag.
- Entries are claimed and released under ``flock`` on the segment, which the
  kernel releases if the holder dies. An entry whose owner is dead is free.
- The writer only reads entries, and clears semaphore wait flags before
  posting a wake. A reader asleep on the wake word clears its own flag
  (csrc/eventcount.c says why).
"""

import time

from .layout import (
    ENTRY_ACTIVE,
    ENTRY_FREE,
    ENTRY_GATING_OFFSET,
    ENTRY_IDENTITY,
    ENTRY_PROGRESS,
    ENTRY_PROGRESS_OFFSET,
    ENTRY_START,
    ENTRY_START_OFFSET,
    MAX_READERS,
    REG_CONFIG,
    REG_CONFIG_FMT,
    REG_FUTEX_WAKER,
    REG_GATES_CHANGED,
    REG_MAGIC,
    REG_VERSION,
    REG_WAIT_FLAGS,
    REG_WAKE_WORD,
    REGISTRY_MAGIC,
    ROLE_GROUP,
    LAYOUT_VERSION,
    ROLE_FLUSHER,
    ROLE_NAMES,
    U64,
    WAIT_FUTEX,
    entry_offset,
)
from .errors import IncompatibleRing, RegistryFull
from .liveness import is_alive
from .ring import hotpath
from .segment import ring_name_of

__all__ = ["Registry", "RegistryEntry"]


class RegistryEntry(dict):
    """One attached reader as seen in the registry (a plain dict with keys)."""


class Registry:
    """Access to a mapped registry segment (see layout for the byte map)."""

    __slots__ = ("mapping", "buf")

    def __init__(self, mapping):
        self.mapping = mapping
        self.buf = mapping.buf

    def _ring_name(self) -> str | None:
        shm_name = getattr(self.mapping, "shm_name", None)
        return None if shm_name is None else ring_name_of(shm_name)

    # -- set-up ---------------------------------------------------------------
    def initialise(self, epoch: int) -> None:
        self.buf[REG_FUTEX_WAKER] = 0
        REG_CONFIG_FMT.pack_into(self.buf, REG_CONFIG, MAX_READERS, epoch)
        U64.pack_into(self.buf, REG_VERSION, LAYOUT_VERSION)
        U64.pack_into(self.buf, REG_MAGIC, REGISTRY_MAGIC)

    def check(self, epoch: int) -> None:
        if (
            U64.unpack_from(self.buf, REG_MAGIC)[0] != REGISTRY_MAGIC
            or U64.unpack_from(self.buf, REG_VERSION)[0] != LAYOUT_VERSION
            or REG_CONFIG_FMT.unpack_from(self.buf, REG_CONFIG)[1] != epoch
        ):
            raise IncompatibleRing("the ring's reader registry does not match the ring; the ring is being replaced",
                                   name=self._ring_name())

    # -- entries --------------------------------------------------------------
    def claim(self, pid: int, start_time: float, role: int, gating: bool, cursor: int) -> int:
        """Take a free entry (or one whose owner died) and return its index.

        A gating flusher's claim also retires every dead flusher's gate (the
        newcomer takes over its duty) and raises the gates-changed flag for the
        writer. A group's gate entry is never taken: it lasts as long as the ring.
        """
        with self.mapping.locked():
            return self.claim_locked(pid, start_time, role, gating, cursor)

    def claim_locked(self, pid: int, start_time: float, role: int, gating: bool, cursor: int) -> int:
        """``claim`` for a caller that holds the registry lock."""
        buf = self.buf
        chosen = None
        dead_gates = []
        for index in range(MAX_READERS):
            off = entry_offset(index)
            state, owner, owner_start, owner_role, owner_gating = ENTRY_IDENTITY.unpack_from(buf, off)
            if state == ENTRY_ACTIVE and owner_role == ROLE_GROUP:
                continue
            alive = state == ENTRY_ACTIVE and is_alive(owner, owner_start)
            if state == ENTRY_ACTIVE and not alive and owner_gating:
                if gating and role == ROLE_FLUSHER == owner_role:
                    dead_gates.append(index)
                continue  # nobody else takes the entry of a dead gate the writer still honours
            if chosen is None and not alive:
                chosen = index
        if chosen is None and dead_gates:
            chosen = dead_gates.pop(0)  # taken over in place: it stays an active gate throughout
        if chosen is None:
            raise RegistryFull(
                f"all {MAX_READERS} reader entries of this ring are held by live processes; "
                "close a reader before attaching another", name=self._ring_name(), max_readers=MAX_READERS
            )
        off = entry_offset(chosen)
        ENTRY_PROGRESS.pack_into(buf, off + ENTRY_PROGRESS_OFFSET, cursor, 0, 0, 0)
        ENTRY_START.pack_into(buf, off + ENTRY_START_OFFSET, cursor, time.time_ns() // 1000)
        buf[REG_WAIT_FLAGS + chosen] = 0
        ENTRY_IDENTITY.pack_into(buf, off, ENTRY_ACTIVE, pid, start_time, role, int(gating))
        for index in dead_gates:  # only now: the writer always sees a gate
            U64.pack_into(buf, entry_offset(index), ENTRY_FREE)
        if gating:
            buf[REG_GATES_CHANGED] = 1  # after the entry: the writer sees both
        return chosen

    def entry_owner(self, index: int) -> tuple[int, float]:
        """(pid, start_time) of entry `index`."""
        return ENTRY_IDENTITY.unpack_from(self.buf, entry_offset(index))[1:3]

    def set_owner(self, index: int, pid: int, start_time: float) -> None:
        """A group's gate changes hands: the writer judges the new owner's liveness (pid 0: nobody, so dead)."""
        off = entry_offset(index)
        state, _, _, role, gating = ENTRY_IDENTITY.unpack_from(self.buf, off)
        ENTRY_IDENTITY.pack_into(self.buf, off, state, pid, start_time, role, gating)

    def release(self, index: int) -> None:
        with self.mapping.locked():
            self.buf[REG_WAIT_FLAGS + index] = 0
            gating = U64.unpack_from(self.buf, entry_offset(index) + ENTRY_GATING_OFFSET)[0]
            U64.pack_into(self.buf, entry_offset(index), ENTRY_FREE)
            if gating:
                self.buf[REG_GATES_CHANGED] = 1

    def abandon(self, index: int) -> None:
        """A gating reader that stopped on an error: leave its entry as a dead owner's.

        The writer then keeps honouring the cursor for its grace period, so a
        flusher restarted within it takes the entry over and loses nothing.
        """
        with self.mapping.locked():
            self.buf[REG_WAIT_FLAGS + index] = 0
            off = entry_offset(index)
            state, _, _, role, gating = ENTRY_IDENTITY.unpack_from(self.buf, off)
            ENTRY_IDENTITY.pack_into(self.buf, off, state, 0, 0.0, role, gating)  # pid 0: never alive

    def retire_gate(self, index: int) -> None:
        """Writer side: stop honouring a dead flusher's cursor."""
        U64.pack_into(self.buf, entry_offset(index) + ENTRY_GATING_OFFSET, 0)

    def gate_retired(self, index: int) -> bool:
        """Reader side: has the writer stopped honouring this gating entry (dead or stalled too long)?"""
        return U64.unpack_from(self.buf, entry_offset(index) + ENTRY_GATING_OFFSET)[0] == 0

    def rearm_gate(self, index: int) -> None:
        """Reader side: a retired gate that is taking events again asks to be honoured again."""
        U64.pack_into(self.buf, entry_offset(index) + ENTRY_GATING_OFFSET, 1)
        self.buf[REG_GATES_CHANGED] = 1  # after the entry: the writer sees both

    def take_gates_changed(self) -> bool:
        """Writer side: test and clear the gates-changed flag."""
        if self.buf[REG_GATES_CHANGED]:
            self.buf[REG_GATES_CHANGED] = 0
            return True
        return False

    def gates(self) -> list[tuple[int, int, float, int]]:
        """Writer side: (index, pid, start_time, cursor) of every active gating entry."""
        out = []
        buf = self.buf
        for index in range(MAX_READERS):
            off = entry_offset(index)
            state, pid, start_time, _, gating = ENTRY_IDENTITY.unpack_from(buf, off)
            if state == ENTRY_ACTIVE and gating:
                out.append((index, pid, start_time, U64.unpack_from(buf, off + ENTRY_PROGRESS_OFFSET)[0]))
        return out

    def flushers(self) -> list[tuple[int, float, int]]:
        """(pid, start_time, cursor) of every active flusher-role entry, gating or retired (liveness unchecked)."""
        out = []
        buf = self.buf
        for index in range(MAX_READERS):
            off = entry_offset(index)
            state, pid, start_time, role, _ = ENTRY_IDENTITY.unpack_from(buf, off)
            if state == ENTRY_ACTIVE and role == ROLE_FLUSHER:
                out.append((pid, start_time, U64.unpack_from(buf, off + ENTRY_PROGRESS_OFFSET)[0]))
        return out

    def publish_progress(self, index: int, cursor: int, delivered: int, dropped: int, filtered: int) -> None:
        offset = entry_offset(index) + ENTRY_PROGRESS_OFFSET
        ENTRY_PROGRESS.pack_into(self.buf, offset, cursor, delivered, dropped, filtered)

    def cursor(self, index: int) -> int:
        return U64.unpack_from(self.buf, entry_offset(index) + ENTRY_PROGRESS_OFFSET)[0]

    def set_waiting(self, index: int, waiting: bool) -> None:
        self.buf[REG_WAIT_FLAGS + index] = 1 if waiting else 0

    # -- the wake word (csrc/eventcount.c) ------------------------------------
    def set_futex_waker(self) -> None:
        """Writer side: this ring's publishes wake the wake word, so compiled readers may sleep on it."""
        self.buf[REG_FUTEX_WAKER] = 1

    def futex_waker(self) -> bool:
        """Reader side: whether this ring's writer wakes the wake word (then a compiled reader sleeps on it)."""
        return self.buf[REG_FUTEX_WAKER] == 1

    def arm_futex(self, index: int) -> int:
        """Raise `index`'s flag as a wake-word sleeper, fence; the word to pass to ``wait_futex``."""
        return hotpath.wake_arm(self.buf, REG_WAIT_FLAGS + index, REG_WAKE_WORD, WAIT_FUTEX)

    def wait_futex(self, seen: int, timeout_s: float) -> bool:
        """Sleep while the wake word is `seen`, at most `timeout_s`; False on timeout."""
        return hotpath.wake_wait(self.buf, REG_WAKE_WORD, seen, timeout_s)

    def wake_futex_sleepers(self) -> None:
        """Writer side: wake every reader asleep on the wake word, if any raised its flag (a full barrier)."""
        if hotpath is not None and self.buf.find(b"\x02", REG_WAIT_FLAGS, REG_WAIT_FLAGS + MAX_READERS) != -1:
            hotpath.wake_all(self.buf, REG_WAKE_WORD)

    def sleepers(self):
        """Indices whose flag says they sleep on their semaphore (writer side)."""
        buf = self.buf
        end = REG_WAIT_FLAGS + MAX_READERS
        i = buf.find(b"\x01", REG_WAIT_FLAGS, end)
        while i != -1:
            yield i - REG_WAIT_FLAGS
            i = buf.find(b"\x01", i + 1, end)

    def entries(self) -> list[RegistryEntry]:
        """Every active entry, with liveness checked."""
        out = []
        buf = self.buf
        for index in range(MAX_READERS):
            off = entry_offset(index)
            state, pid, start_time, role, gating = ENTRY_IDENTITY.unpack_from(buf, off)
            if state != ENTRY_ACTIVE:
                continue
            cursor, delivered, dropped, filtered = ENTRY_PROGRESS.unpack_from(buf, off + ENTRY_PROGRESS_OFFSET)
            start_seq, attached_us = ENTRY_START.unpack_from(buf, off + ENTRY_START_OFFSET)
            out.append(
                RegistryEntry(
                    index=index,
                    pid=pid,
                    alive=is_alive(pid, start_time),
                    start_time=start_time,
                    role=ROLE_NAMES.get(role, "unknown"),
                    gating=bool(gating),
                    cursor=cursor,
                    delivered=delivered,
                    dropped=dropped,
                    filtered=filtered,
                    start_seq=start_seq,
                    attached_us=attached_us,
                    waiting=bool(buf[REG_WAIT_FLAGS + index]),
                )
            )
        return out
