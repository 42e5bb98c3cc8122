"""A consumer group's shared state: the table in the ring's registry segment, and every change to it.

Rules:
- A group's state lives in the ring's registry segment (the group area, see
  layout), so it lasts as long as the ring and goes with it.
- Every change happens under the registry's ``flock`` (the kernel releases it
  if the holder dies) and is written whole into the spare bank before one
  store of ``gen`` makes it current: a process SIGKILLed at any instruction
  leaves the group as it was before its change or after it, never between.
- Accounting is exact: a seq leaves a member's ranges only in the same change
  that counts it acknowledged, filtered or dropped.
- No I/O beyond the registry mapping and its lock; the member's side (claims,
  reads, acks) is groups.py.
"""

import re
import secrets
import time

import msgspec

from .errors import ConfigError, IncompatibleRing, RegistryFull
from .layout import (
    GROUP_BANK_BYTES,
    GROUP_FILTER_MAX_BYTES,
    GROUP_FILTER_OFFSET,
    GROUP_GEN_OFFSET,
    GROUP_HEADER,
    GROUP_HEADER_BYTES,
    GROUP_NAME_OFFSET,
    MAX_GROUPS,
    MAX_READERS,
    REGISTRY_BYTES,
    ROLE_GROUP,
    U64,
    group_offset,
)
from .liveness import is_alive

__all__ = ["GroupTable", "validate_group_name", "DEFAULT_CLAIM_TIMEOUT_S"]

DEFAULT_CLAIM_TIMEOUT_S = 10.0
"""A live member that holds claims and makes no group call (read, ack) for this long loses them."""
MAX_RUNS = 16
"""Separate seq ranges one member may hold claimed and unacknowledged at once."""

_GROUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_UNACKED, _ACKED, _FILTERED, _DROPPED = 0, 1, 2, 3
_NO_GATE = (1 << 64) - 1
_STATE_FREE, _STATE_ACTIVE = 0, 1


class _Member(msgspec.Struct, array_like=True):
    id: int
    pid: int
    start_time: float
    active_us: int
    ranges: list[tuple[int, int]]


class _State(msgspec.Struct, array_like=True):
    position: int
    acked: int = 0
    dropped: int = 0
    filtered: int = 0
    redelivered: int = 0
    members: list[_Member] = []
    loose: list[tuple[int, int, bool]] = []
    """Ranges nobody holds: (lo, hi, given), given if a member had been given them (they are redelivered)."""


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(_State).decode


def validate_group_name(group: object) -> str:
    if not isinstance(group, str) or not _GROUP_NAME.fullmatch(group):
        raise ConfigError(f"invalid group name {group!r}: use 1-64 characters from letters, digits, '_', '-' and '.', "
                          "starting with a letter or digit")
    return group


def _now_us() -> int:
    return time.time_ns() // 1000


def _merge_loose(ranges: list[tuple[int, int, bool]]) -> list[tuple[int, int, bool]]:
    out: list[tuple[int, int, bool]] = []
    for lo, hi, given in sorted(ranges):
        if out and lo == out[-1][1] + 1 and given == out[-1][2]:
            out[-1] = (out[-1][0], hi, given)
        else:
            out.append((lo, hi, given))
    return out


def _count(ranges) -> int:
    return sum(r[1] - r[0] + 1 for r in ranges)


class GroupTable:
    """The group area of one mapped registry: join, claim and acknowledge, leave; read-only views for stat."""

    def __init__(self, registry):
        self.registry = registry
        self.buf = registry.buf
        if registry.mapping.size < REGISTRY_BYTES:
            raise IncompatibleRing("this ring's registry has no room for consumer groups (an older shmring made it); "
                                   "create the ring again with this version", name=registry._ring_name())

    # -- the banks ------------------------------------------------------------
    def _header(self, index: int):
        return GROUP_HEADER.unpack_from(self.buf, group_offset(index))

    def _text(self, index: int, offset: int) -> bytes:
        at = group_offset(index) + offset
        length = int.from_bytes(self.buf[at:at + 4], "little")
        return bytes(self.buf[at + 4:at + 4 + length])

    def _put_text(self, index: int, offset: int, data: bytes) -> None:
        at = group_offset(index) + offset
        self.buf[at:at + 4 + len(data)] = len(data).to_bytes(4, "little") + data

    def _bank(self, index: int, gen: int) -> int:
        return group_offset(index) + GROUP_HEADER_BYTES + (gen & 1) * GROUP_BANK_BYTES

    def _read_bank(self, index: int, gen: int) -> _State:
        at = self._bank(index, gen)
        length = int.from_bytes(self.buf[at:at + 4], "little")
        return _decode(self.buf[at + 4:at + 4 + length])

    def _load(self, index: int) -> _State:
        return self._read_bank(index, U64.unpack_from(self.buf, group_offset(index) + GROUP_GEN_OFFSET)[0])

    def _store(self, index: int, state: _State, name: str) -> None:
        data = _encode(state)
        if len(data) + 4 > GROUP_BANK_BYTES:
            raise RegistryFull(f"group {name!r} holds too many claimed ranges to record another change; "
                               "acknowledge what its members have read", name=self.registry._ring_name(),
                               max_readers=MAX_READERS, group=name)
        gen = U64.unpack_from(self.buf, group_offset(index) + GROUP_GEN_OFFSET)[0]
        at = self._bank(index, gen + 1)
        self.buf[at:at + 4 + len(data)] = len(data).to_bytes(4, "little") + data
        # The spare bank is whole before this one store makes it current.
        U64.pack_into(self.buf, group_offset(index) + GROUP_GEN_OFFSET, gen + 1)

    def find(self, group: str) -> int | None:
        wanted = group.encode()
        for index in range(MAX_GROUPS):
            if self._header(index)[0] == _STATE_ACTIVE and self._text(index, GROUP_NAME_OFFSET) == wanted:
                return index
        return None

    # -- members ----------------------------------------------------------------
    def join(self, group: str, spec: str, gating: bool, claim_timeout_s: float | None, cursor: int,
             pid: int, start_time: float) -> tuple[int, int, dict]:
        """Join (creating the group if new); returns (group index, member id, the group's settings)."""
        spec_bytes = spec.encode()
        if len(spec_bytes) > GROUP_FILTER_MAX_BYTES:
            raise ConfigError(f"the filter of group {group!r} is too long to record ({len(spec_bytes)} bytes, at most "
                              f"{GROUP_FILTER_MAX_BYTES}); select fewer values")
        ring = self.registry._ring_name()
        with self.registry.mapping.locked():
            index = self.find(group)
            if index is None:
                index = next((i for i in range(MAX_GROUPS) if self._header(i)[0] != _STATE_ACTIVE), None)
                if index is None:
                    raise RegistryFull(f"ring {ring!r} already has {MAX_GROUPS} consumer groups, the most it can hold; "
                                       "use one of them, or another ring", name=ring, max_readers=MAX_READERS,
                                       group=group)
                gate = _NO_GATE
                if gating:
                    gate = self.registry.claim_locked(pid, start_time, ROLE_GROUP, True, cursor)
                off = group_offset(index)
                timeout_us = 0 if claim_timeout_s is None else max(1, int(claim_timeout_s * 1e6))
                GROUP_HEADER.pack_into(self.buf, off, _STATE_FREE, 0, int(gating), gate, timeout_us, cursor)
                self._put_text(index, GROUP_NAME_OFFSET, group.encode())
                self._put_text(index, GROUP_FILTER_OFFSET, spec_bytes)
                data = _encode(_State(position=cursor))
                at = self._bank(index, 0)
                self.buf[at:at + 4 + len(data)] = len(data).to_bytes(4, "little") + data
                U64.pack_into(self.buf, off, _STATE_ACTIVE)  # last: the group now exists
            else:
                if self._text(index, GROUP_FILTER_OFFSET) != spec_bytes:
                    theirs = self._text(index, GROUP_FILTER_OFFSET).decode() or "no filter"
                    raise ConfigError(f"group {group!r} of ring {ring!r} has {theirs}, not {spec or 'no filter'}: "
                                      "every member of a group passes the filter its first member gave", name=ring)
                if gating and not self._header(index)[2]:
                    raise ConfigError(f"group {group!r} of ring {ring!r} is not gating (its first member said so); "
                                      "join it without gating=True, or use another group name", name=ring)
            state = self._load(index)
            if len(state.members) >= MAX_READERS:
                raise RegistryFull(f"group {group!r} of ring {ring!r} has {MAX_READERS} members, the most it can hold",
                                   name=ring, max_readers=MAX_READERS, group=group)
            self._reap(state, index, None)
            member_id = secrets.randbits(62)
            state.members.append(_Member(member_id, pid, start_time, _now_us(), []))
            self._store(index, state, group)
            self._update_gate(index, state, pid, start_time)
            _, _, gating_now, _, timeout_us, start_seq = self._header(index)
        return index, member_id, dict(gating=bool(gating_now), start_seq=start_seq,
                                      claim_timeout_s=None if timeout_us == 0 else timeout_us / 1e6)

    def sync(self, index: int, group: str, member_id: int, pid: int, start_time: float,
             ranges: list[tuple[int, int]], deltas: tuple[int, int, int], claim: int, reap: bool, core):
        """Record this member's ranges and counts; then claim up to `claim` events if asked.

        Returns None if the member is no longer in the group (its claims timed
        out), else (claimed (lo, hi, redelivered) or None, drop (lo, hi) or None,
        the group's position).
        """
        with self.registry.mapping.locked():
            state = self._load(index)
            me = next((m for m in state.members if m.id == member_id), None)
            if me is None:
                return None
            me.ranges = list(ranges)
            state.acked += deltas[0]
            state.filtered += deltas[1]
            state.dropped += deltas[2]
            me.active_us = _now_us()
            if reap:
                self._reap(state, index, member_id)
            claimed = drop = None
            if claim and len(me.ranges) < MAX_RUNS:
                if state.loose:
                    lo, hi, given = state.loose[0]
                    take = min(hi, lo + claim - 1)
                    state.loose[0:1] = [] if take == hi else [(take + 1, hi, given)]
                    if given:
                        state.redelivered += take - lo + 1
                    claimed = (lo, take, given)
                else:
                    latest = core.latest()
                    if latest > state.position:
                        oldest = core.oldest_retained(latest)
                        if state.position + 1 < oldest:
                            drop = (state.position + 1, oldest - 1)
                            state.dropped += oldest - 1 - state.position
                            state.position = oldest - 1
                    if latest > state.position:
                        share = -(-(latest - state.position) // max(1, len(state.members)))
                        take = state.position + min(claim, share)
                        claimed = (state.position + 1, take, False)
                        state.position = take
                if claimed is not None:
                    me.ranges.append(claimed[:2])
            self._store(index, state, group)
            self._update_gate(index, state, pid, start_time)
            return claimed, drop, state.position

    def leave(self, index: int, group: str, member_id: int, ranges: list[tuple[int, int, bool]],
              deltas: tuple[int, int, int]) -> None:
        """A member closes: what it holds becomes loose, for the others (redelivered if it had been given)."""
        with self.registry.mapping.locked():
            state = self._load(index)
            me = next((m for m in state.members if m.id == member_id), None)
            if me is None:
                return  # timed out meanwhile: its claims are loose already
            state.members.remove(me)
            state.loose = _merge_loose(state.loose + list(ranges))
            state.acked += deltas[0]
            state.filtered += deltas[1]
            state.dropped += deltas[2]
            self._store(index, state, group)
            self._update_gate(index, state, 0, 0.0)

    def _reap(self, state: _State, index: int, caller: int | None) -> None:
        """Members dead, or holding claims silently for longer than the claim timeout: their claims go loose."""
        timeout_us = self._header(index)[4]
        now = _now_us()
        keep = []
        for m in state.members:
            if m.id != caller and (not is_alive(m.pid, m.start_time)
                                   or (timeout_us and m.ranges and now - m.active_us > timeout_us)):
                state.loose.extend((lo, hi, True) for lo, hi in m.ranges)  # dead: anything may have been given
            else:
                keep.append(m)
        if len(keep) != len(state.members):
            state.members = keep
            state.loose = _merge_loose(state.loose)

    def _update_gate(self, index: int, state: _State, pid: int, start_time: float) -> None:
        """A gating group: its gate's cursor is the floor; its owner a live member (or nobody)."""
        _, _, gating, gate, _, _ = self._header(index)
        if not gating or gate == _NO_GATE:
            return
        registry = self.registry
        held = [lo for m in state.members for lo, _ in m.ranges] + [r[0] for r in state.loose]
        floor = min([state.position] + [lo - 1 for lo in held])
        registry.publish_progress(gate, floor, state.acked, state.dropped, state.filtered)
        owner = registry.entry_owner(gate)
        members = {(m.pid, m.start_time) for m in state.members}
        if owner not in members:
            if (pid, start_time) in members:
                registry.set_owner(gate, pid, start_time)
            elif state.members:
                registry.set_owner(gate, state.members[0].pid, state.members[0].start_time)
            else:
                # Nobody: the writer waits the grace period, then goes on. The start time makes each
                # emptying a death of its own, so each one gets the whole grace period.
                registry.set_owner(gate, 0, time.time())
        if state.members and registry.gate_retired(gate):
            registry.rearm_gate(gate)  # members again: the writer honours the group again

    # -- inspection ---------------------------------------------------------------
    def groups(self, latest: int) -> list[dict]:
        """Each group as stat shows it, read without the lock (a state changed meanwhile is read again)."""
        out = []
        for index in range(MAX_GROUPS):
            header = self._header(index)
            if header[0] != _STATE_ACTIVE:
                continue
            for _ in range(100):
                gen = U64.unpack_from(self.buf, group_offset(index) + GROUP_GEN_OFFSET)[0]
                try:
                    state = self._read_bank(index, gen)
                except msgspec.DecodeError:
                    continue
                if U64.unpack_from(self.buf, group_offset(index) + GROUP_GEN_OFFSET)[0] == gen:
                    break
            else:
                continue
            pending = sum(_count(m.ranges) for m in state.members) + _count(state.loose)
            out.append(dict(
                name=self._text(index, GROUP_NAME_OFFSET).decode(), gating=bool(header[2]),
                filter=self._text(index, GROUP_FILTER_OFFSET).decode() or None, start_seq=header[5],
                claim_timeout_s=None if header[4] == 0 else header[4] / 1e6,
                members=[dict(pid=m.pid, alive=is_alive(m.pid, m.start_time), pending=_count(m.ranges))
                         for m in state.members],
                position=state.position, pending=pending, loose=_count(state.loose),
                lag=max(0, latest - state.position) + pending, acked=state.acked, dropped=state.dropped,
                filtered=state.filtered, redelivered=state.redelivered))
        return out
