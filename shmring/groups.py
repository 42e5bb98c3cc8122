"""Consumer groups: members that share one stream, each event going to one live member, in claimed batches.

Rules:
- A group's state lives in the ring's registry segment (the group area, see
  layout), so it lasts as long as the ring and goes with it; a member that
  restarts under the same name continues where the group stands.
- Every change happens under the registry's ``flock`` (the kernel releases it
  if the holder dies) and is written whole into the spare bank before one
  store of ``gen`` makes it current: a member SIGKILLed at any instruction
  leaves the group as it was before its change or after it, never between.
- A claim is a seq range, recorded in the member's entry (pid plus start
  time) before the member reads it. A member that dies, closes, or holds
  claims without calling into the group for ``claim_timeout_s`` loses what it
  has not acknowledged to the group's *loose* ranges; the next claim takes
  loose ranges first and marks those events redelivered. At-least-once.
- Accounting is exact: a seq leaves a member's ranges only in the same change
  that counts it acknowledged, filtered or dropped. A drop before the group's
  position goes, once, to whichever member claims next.
- A gating group holds a gate entry in the registry whose cursor is the
  group's floor (every seq at or below it is accounted for) and whose owner
  is one of its live members, or pid 0 when it has none: the writer then
  waits for it only the grace period, as for a dead flusher.
- The shared table and its changes are group_table.py; this module is the
  member's side: claiming, reading what it claimed, acknowledging.
"""

import bisect
import time
from collections import Counter

import msgspec

from .errors import ConfigError, ReaderClosed, RegistryFull, RingClosed, WriterGone
from .group_table import (
    _ACKED,
    _DROPPED,
    _FILTERED,
    _UNACKED,
    DEFAULT_CLAIM_TIMEOUT_S,
    MAX_RUNS,
    GroupTable,
    validate_group_name,
)
from .layout import (
    MAX_READERS,
)
from .liveness import current_identity
from .results import merge_ranges
from .ring import FILTERED, LAPPED, READY
from .schema import decode_envelope

__all__ = ["GroupMember", "DEFAULT_CLAIM_TIMEOUT_S"]

CLAIM_MAX = 1024
"""The most events one claim takes (less when the backlog is split between members)."""
REAP_EVERY_S = 0.2
"""How often a member that keeps finding work checks the others' liveness."""
ACK_SYNC_S = 0.05
"""ack(seq) records in the group at once if the member's last group call is older than this."""
STUCK_SLOT_S = 0.5


class GroupMember:
    """What a Reader becomes with ``group=``: it reads what it claims and acknowledges it.

    Mixed into Reader by reader.py (``Reader.attach(name, group=G)``): it
    replaces the sequential cursor walk with claimed ranges; decoding, waiting
    and the end of the stream stay the Reader's. ``cursor`` is the seq the
    member took last.
    """

    _results = None  # (ReadResult, RawRecord), set by reader.py

    @classmethod
    def _join(cls, name, *, after_seq, filter, max_delay_s, group, gating, claim_timeout_s, role,
              populate=True):
        validate_group_name(group)
        if type(gating) is not bool:
            raise ConfigError(f"gating must be True or False, not {gating!r}")
        if claim_timeout_s is not None and (not isinstance(claim_timeout_s, (int, float))
                                            or isinstance(claim_timeout_s, bool) or claim_timeout_s <= 0):
            raise ConfigError(f"claim_timeout_s must be None or a number of seconds > 0, not {claim_timeout_s!r}")
        try:
            reader = cls._open(name, after_seq=after_seq, filter=filter, max_delay_s=max_delay_s, role=role,
                               gating=False, populate=populate)
        except RegistryFull as full:
            raise RegistryFull(f"cannot join group {group!r}: all {MAX_READERS} reader entries of ring {name!r} are "
                               "held by live readers and group members; close one first", name=name,
                               max_readers=MAX_READERS, group=group) from full
        try:
            reader._join_group(group, gating, claim_timeout_s)
        except RegistryFull as full:
            reader.close()
            if full.group is None:  # the gate's entry
                raise RegistryFull(f"cannot create gating group {group!r}: all {MAX_READERS} reader entries of ring "
                                   f"{name!r} are held by live readers and group members; close one first",
                                   name=name, max_readers=MAX_READERS, group=group) from full
            raise
        except BaseException:
            reader.close()
            raise
        return reader

    def _join_group(self, group: str, gating: bool, claim_timeout_s: float | None) -> None:
        self._state.fast = False
        self._group_name = group
        table = GroupTable(self._registry)
        self._identity = current_identity()
        self._group_index, self._member_id, settings = table.join(
            group, repr(self._filter) if self._filter is not None else "", gating, claim_timeout_s, self._state.cursor,
            *self._identity)
        self._group_gating = settings["gating"]
        self._claim_timeout_s = settings["claim_timeout_s"]
        self._claim_max = max(1, min(CLAIM_MAX, self.capacity // 4))
        self._claim_hi = self._state.cursor  # no claim yet: nothing unread
        self._claim_redelivered = False
        self._held: dict[int, int] = {}
        self._n_unacked = 0
        self._drops_due: list[tuple[int, int]] = []  # found, not yet returned (adjacent ones merged)
        self._drop_range = (0, 0)  # the drop _take returned last
        self._runs: list[tuple[int, int]] = []  # as recorded in the group
        self._forfeited: set[int] = set()
        self._hint = self._state.cursor + 1
        self._refused = False  # the last claim was refused: too much unacknowledged (see _take)
        self._last_sync = time.monotonic()
        self._last_reap = 0.0
        self._direct = self._take_decoded if self._filter is None else None
        self._group_table = table  # last: from here on, close hands our claims back

    @property
    def group(self) -> str:
        return self._group_name

    @property
    def claim_timeout_s(self) -> float | None:
        return self._claim_timeout_s

    # -- what is recorded in the group ------------------------------------------
    def _cover(self):
        """(ranges to record, (acked, filtered, dropped) to count, seqs counted).

        The ranges hold every seq still owed: the unread rest of the current
        claim and what was delivered and not acknowledged. They never grow
        beyond what is recorded already, and seqs resolved but still inside
        them (when MAX_RUNS forces ranges together) are counted later.
        """
        held = self._held
        if self._n_unacked == 0:  # everything delivered is acknowledged (UNACKED left here: by ack())
            counts = Counter(held.values())
            runs = [(self._state.cursor + 1, self._claim_hi)] if self._state.cursor < self._claim_hi else []
            return runs, (counts[_ACKED] + counts[_UNACKED], counts[_FILTERED], counts[_DROPPED]), list(held)
        points = []  # runs of unacknowledged seqs, in delivery order (ascending within each claim)
        lo = hi = -2
        for s, kind in held.items():
            if kind:  # not _UNACKED
                continue
            if s == hi + 1:
                hi = s
            else:
                if lo >= 0:
                    points.append((lo, hi))
                lo = hi = s
        if lo >= 0:
            points.append((lo, hi))
        if self._state.cursor < self._claim_hi:
            points.append((self._state.cursor + 1, self._claim_hi))
        runs = merge_ranges(points)
        if len(runs) > MAX_RUNS - 1:  # one whole range per recorded range instead
            runs = []
            for lo, hi in self._runs:
                inside = [r for r in points if lo <= r[0] <= hi]
                if inside:
                    runs.append((min(r[0] for r in inside), max(r[1] for r in inside)))
        starts = [lo for lo, _ in runs]
        counts = [0, 0, 0, 0]
        done = []
        for s, kind in held.items():
            if kind == _UNACKED:
                continue
            i = bisect.bisect_right(starts, s) - 1
            if i < 0 or s > runs[i][1]:
                counts[kind] += 1
                done.append(s)
        return runs, (counts[_ACKED], counts[_FILTERED], counts[_DROPPED]), done

    def _sync(self, claim: int) -> bool | None:
        """Record acknowledgements (and claim if asked; a drop found is owed). True for a new claim.

        None: no claim, as this member holds MAX_RUNS ranges of unacknowledged events already.
        """
        runs, deltas, done = self._cover()
        full = claim and len(runs) >= MAX_RUNS
        if full:
            claim = 0
        now = time.monotonic()
        reap = bool(claim) and now - self._last_reap >= REAP_EVERY_S
        if reap:
            self._last_reap = now
        result = self._group_table.sync(self._group_index, self._group_name, self._member_id, *self._identity,
                                        runs, deltas, claim, reap, self._core)
        self._last_sync = now
        if result is None:  # our claims timed out and went to the others: start again as a new member
            self._forfeit()
            return False
        if len(done) == len(self._held):
            self._held.clear()
        else:
            for s in done:
                del self._held[s]
        self._runs = runs
        claimed, drop, position = result
        self._hint = position + 1
        if claimed is not None:
            self._runs = runs + [claimed[:2]]
            self._state.cursor = claimed[0] - 1
            self._claim_hi = claimed[1]
            self._claim_redelivered = claimed[2]
        elif claim and not reap:
            self._last_reap = 0.0  # nothing fresh: look at the others' liveness on the next try
        if full:
            return None
        if drop is not None:
            self._state.cursor = drop[1]
            self._state.dropped += drop[1] - drop[0] + 1
            self._owe_drop(*drop)
            self._publish_progress()
        return claimed is not None

    def _owe_drop(self, lo: int, hi: int) -> None:
        """A drop to report; one that continues the last owed one is the same drop."""
        due = self._drops_due
        if due and due[-1][1] + 1 == lo:
            due[-1] = (due[-1][0], hi)
        else:
            due.append((lo, hi))

    def _pay_drop(self) -> int:
        lo, hi = self._drop_range = self._drops_due.pop(0)
        return hi - lo + 1

    def _forfeit(self) -> None:
        if self._n_unacked:
            self._forfeited.update(s for s, kind in self._held.items() if kind == _UNACKED)
        self._held.clear()
        self._n_unacked = 0
        self._runs = []
        self._claim_hi = self._state.cursor
        self._group_index, self._member_id, _ = self._group_table.join(
            self._group_name, repr(self._filter) if self._filter is not None else "", False, None, self._state.cursor,
            *self._identity)

    # -- reading ----------------------------------------------------------------
    def read(self, timeout: float | None = None):
        ReadResult = self._results[0]
        state = self._state
        seq = state.cursor + 1
        if seq <= self._claim_hi and self._direct is not None and not self._detached:
            envelope = self._direct(seq)
            if envelope is not None and envelope is not False:
                state.cursor = seq
                state.delivered += 1
                self._held[seq] = _UNACKED
                self._n_unacked += 1
                state.unpublished += 1
                if state.unpublished >= 256:
                    self._publish_progress()
                return ReadResult(envelope, redelivered=True) if self._claim_redelivered else ReadResult(envelope)
        taken = self._take(timeout)
        if taken is None:
            return None
        if type(taken) is int:
            return ReadResult(dropped=taken, dropped_from=self._drop_range[0], dropped_to=self._drop_range[1])
        seq = taken[0]
        try:
            envelope = decode_envelope(taken[1])
        except msgspec.DecodeError:
            envelope = None
        if envelope is None or envelope.seq != seq:
            self._state.delivered -= 1
            self._state.dropped += 1
            self._held[seq] = _DROPPED
            self._n_unacked -= 1
            return ReadResult(dropped=1, dropped_from=seq, dropped_to=seq)
        return ReadResult(envelope, redelivered=self._claim_redelivered)

    def read_raw_many(self, max_events: int = 1024, timeout: float | None = None):
        from_ring = self._results[1]
        if type(max_events) is not int or max_events < 1:
            raise ConfigError(f"max_events must be a positive int, not {max_events!r}")
        records = []
        names = self._category_names
        taken = self._take(timeout)
        try:
            while taken is not None:
                if type(taken) is int:
                    lo, hi = self._drop_range
                    records.append(from_ring(hi, "", b"", taken, lo, hi))
                else:
                    seq, payload, fields = taken
                    records.append(from_ring(seq, names.get(fields[8]) or self._category_name(fields[8]), payload,
                                             redelivered=self._claim_redelivered))
                if len(records) >= max_events:
                    break
                taken = self._take(0)
        except (RingClosed, WriterGone):
            if not records:
                raise
        return records  # the end sticks: the next call raises it

    def _take(self, timeout: float | None):
        """The next step of this member's claims: (seq, payload, slot fields), a drop count, or None on timeout."""
        if self._end is not None:
            raise self._end
        if self._detached:
            raise ReaderClosed(f"this reader of ring {self.name!r} is closed; attach a new one", name=self.name)
        deadline = None if timeout is None else time.monotonic() + timeout
        core = self._core
        poll = core.poll
        accept = self._accept
        held = self._held
        if self._drops_due:
            return self._pay_drop()
        state = self._state
        while True:
            seq = state.cursor + 1
            if seq > self._claim_hi:
                got = self._sync(self._claim_max)
                self._refused = got is None
                if self._drops_due:
                    return self._pay_drop()
                if got is None:  # too much unacknowledged to claim more
                    if timeout == 0:
                        return None  # a batch (read_many) ends here; the caller acknowledges, then reads on
                    raise self._too_much_unacknowledged()
                if not got and not self._await(self._hint, deadline):
                    return None
                continue
            status, payload, fields = poll(seq, accept)
            if status == READY:
                state.cursor = seq
                state.delivered += 1
                held[seq] = _UNACKED
                self._n_unacked += 1
                state.unpublished += 1
                return seq, payload, fields
            if status == FILTERED:
                state.cursor = seq
                state.filtered += 1
                held[seq] = _FILTERED
                continue
            if status == LAPPED:  # overwritten before we read it: the rest of the claim that is gone is a drop
                oldest = core.oldest_retained(core.latest())
                last = min(self._claim_hi, max(seq, oldest - 1))
                for s in range(seq, last + 1):
                    held[s] = _DROPPED
                state.cursor = last
                state.dropped += last - seq + 1
                self._publish_progress()
                self._owe_drop(seq, last)
                if last < self._claim_hi:
                    return self._pay_drop()
                continue  # the whole rest is gone: a drop the next claim finds next to it is the same drop
            # A claimed seq was whole when claimed: the slot is being rewritten (it lapses next), or the
            # writer died while rewriting it.
            now = time.monotonic()
            if self._stuck_seq != seq:
                self._stuck_seq, self._stuck_since = seq, now
            elif now - self._stuck_since > STUCK_SLOT_S and not self._writer.alive():
                held[seq] = _DROPPED
                state.cursor = seq
                state.dropped += 1
                self._owe_drop(seq, seq)
                return self._pay_drop()
            if deadline is not None and now >= deadline:
                return None
            time.sleep(0.0002)

    def _too_much_unacknowledged(self) -> ConfigError:
        return ConfigError(f"this member of group {self._group_name!r} holds {MAX_RUNS} separate ranges of "
                           "unacknowledged events, the most it may; acknowledge them (reader.ack()) before reading "
                           "more", name=self.name)

    def _awaited(self) -> int:
        """The seq whose publishing may give this member something to read: the rest of its claim, else the
        group's next unclaimed seq (what an AsyncReader's waker looks at before it sleeps)."""
        cursor = self._state.cursor
        return cursor + 1 if cursor < self._claim_hi else self._hint

    # -- acknowledgement ------------------------------------------------------------
    def ack(self, seq: int | None = None) -> None:
        """Acknowledge `seq` (delivered to this member), or everything delivered to it so far (None).

        ``ack()`` records in the group at once; ``ack(seq)`` at the member's
        next claim (when its batch is done), or at once if its last group call
        is older than ACK_SYNC_S. Either way at close. What is not recorded
        when a member dies is redelivered.
        """
        if self._detached:
            raise ReaderClosed(f"this reader of ring {self.name!r} is closed; attach a new one", name=self.name)
        held = self._held
        if seq is None:
            self._n_unacked = 0  # the UNACKED left in held now count as acknowledged (see _cover)
            self._forfeited.clear()
            self._sync(0)
            return
        if type(seq) is not int:
            raise ConfigError(f"ack takes a seq (an int) or None, not {seq!r}", name=self.name)
        if held.get(seq) == _UNACKED and self._n_unacked:
            held[seq] = _ACKED
            self._n_unacked -= 1
        elif seq in self._forfeited:
            self._forfeited.discard(seq)  # given to us, then to another member when our claims timed out
            return
        else:
            raise ConfigError(f"seq {seq} is not an unacknowledged event delivered to this member of group "
                              f"{self._group_name!r}; ack only seqs this member read, once", name=self.name)
        if time.monotonic() - self._last_sync > ACK_SYNC_S:
            self._sync(0)

    def _handed_back(self, runs: list[tuple[int, int]]) -> list[tuple[int, int, bool]]:
        """At close: `runs` split into what was given (unacknowledged) and the claim's unread rest (not given)."""
        lo, hi = self._state.cursor + 1, self._claim_hi
        if lo > hi:
            return [(a, b, True) for a, b in runs]
        out = []
        for a, b in runs:
            if b < lo or a > hi:
                out.append((a, b, True))
                continue
            if a < lo:
                out.append((a, lo - 1, True))
            out.append((max(a, lo), min(b, hi), False))
            if b > hi:
                out.append((hi + 1, b, True))
        return out

    def _detach(self, abandon_gate: bool) -> None:
        if not self._detached and getattr(self, "_group_table", None) is not None:
            try:
                runs, deltas, _ = self._cover()
                self._group_table.leave(self._group_index, self._group_name, self._member_id,
                                        self._handed_back(runs), deltas)
            except (OSError, ValueError, TypeError):
                pass  # the registry is unmapped (the ring was removed): nothing left to hand back
        super()._detach(abandon_gate)
