"""The group table over a registry in plain memory: claims, shares, loose ranges, drops, the banks.

FORBIDDEN: a seq claimed twice while held, a loose range not taken first, a drop counted twice,
a half-written change that shows.
"""

import contextlib
import os

import pytest

from shmring.group_table import GroupTable, _merge_loose
from shmring.results import merge_ranges as _merge
from shmring.layout import GROUP_GEN_OFFSET, REGISTRY_BYTES, U64, group_offset
from shmring.liveness import current_identity
from shmring.registry import Registry


class _Memory:
    """A registry mapping in a bytearray (one process: the lock is a no-op)."""

    def __init__(self):
        self.buf = bytearray(REGISTRY_BYTES)
        self.size = REGISTRY_BYTES
        self.shm_name = "/shmring.unit"

    @contextlib.contextmanager
    def locked(self):
        yield


class _Ring:
    def __init__(self, latest, oldest=1):
        self.latest_seq, self.oldest = latest, oldest

    def latest(self):
        return self.latest_seq

    def oldest_retained(self, latest):
        return self.oldest


@pytest.fixture
def table():
    registry = Registry(_Memory())
    registry.initialise(1)
    return GroupTable(registry)


ME = current_identity()


def test_ranges_merge_only_when_adjacent_and_alike():
    assert _merge([(5, 6), (1, 2), (3, 4), (9, 9)]) == [(1, 6), (9, 9)]
    assert _merge_loose([(3, 4, True), (1, 2, True), (5, 6, False)]) == [(1, 4, True), (5, 6, False)]


def test_members_share_the_backlog_and_take_loose_ranges_first(table):
    index, a, settings = table.join("g", "", True, 10.0, 0, *ME)
    _, b, _ = table.join("g", "", True, 10.0, 0, *ME)
    assert settings == dict(gating=True, start_seq=0, claim_timeout_s=10.0)
    ring = _Ring(100)
    claimed_a, drop, position = table.sync(index, "g", a, *ME, [], (0, 0, 0), 256, False, ring)
    assert (claimed_a, drop, position) == ((1, 50, False), None, 50)  # half the backlog for two members
    claimed_b, _, _ = table.sync(index, "g", b, *ME, [], (0, 0, 0), 256, False, ring)
    assert claimed_b == (51, 75, False)
    # a leaves having acknowledged 1..10 (and been given up to 20): 11..20 given, 21..50 unread
    table.leave(index, "g", a, [(11, 20, True), (21, 50, False)], (10, 0, 0))
    first, _, _ = table.sync(index, "g", b, *ME, [], (25, 0, 0), 256, False, ring)
    second, _, _ = table.sync(index, "g", b, *ME, [first[:2]], (0, 0, 0), 256, False, ring)
    assert first == (11, 20, True) and second == (21, 50, False)
    (group,) = table.groups(100)
    assert (group["acked"], group["redelivered"], group["position"], group["pending"]) == (35, 10, 75, 40)
    gate = table._header(index)[3]
    assert table.registry.cursor(gate) == 10  # the floor: 11 is still owed


def test_a_lapped_group_drops_once_to_the_next_claimer(table):
    index, a, _ = table.join("g", "", False, None, 0, *ME)
    _, b, _ = table.join("g", "", False, None, 0, *ME)
    ring = _Ring(1000, oldest=937)
    claimed, drop, _ = table.sync(index, "g", a, *ME, [], (0, 0, 0), 16, False, ring)
    assert drop == (1, 936) and claimed == (937, 952, False)
    claimed, drop, _ = table.sync(index, "g", b, *ME, [], (0, 0, 0), 16, False, ring)
    assert drop is None and claimed == (953, 968, False)
    assert table.groups(1000)[0]["dropped"] == 936


def test_a_dead_member_s_claims_go_to_the_next_claim_marked(table):
    index, a, _ = table.join("g", "", False, None, 0, *ME)
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)
    dead = (child, ME[1] + 1.0)  # a pid that is gone
    _, b, _ = table.join("g", "", False, None, 0, *dead)
    ring = _Ring(40)
    table.sync(index, "g", b, *dead, [], (0, 0, 0), 8, False, ring)  # b claims 1..8, then dies
    claimed, _, _ = table.sync(index, "g", a, *ME, [], (0, 0, 0), 8, True, ring)
    assert claimed == (1, 8, True)
    assert [m["pid"] for m in table.groups(40)[0]["members"]] == [ME[0]]


def test_a_change_half_written_into_the_spare_bank_never_shows(table):
    index, a, _ = table.join("g", "", False, None, 0, *ME)
    table.sync(index, "g", a, *ME, [], (0, 0, 0), 8, False, _Ring(40))
    before = table.groups(40)
    gen = U64.unpack_from(table.buf, group_offset(index) + GROUP_GEN_OFFSET)[0]
    spare = table._bank(index, gen + 1)
    table.buf[spare:spare + 64] = b"\xff" * 64  # a writer killed mid-copy, before it bumped gen
    assert table.groups(40) == before
    assert table.sync(index, "g", a, *ME, [(1, 8)], (0, 0, 0), 8, False, _Ring(40))[0] == (9, 16, False)


def test_an_evicted_member_is_told(table):
    index, a, _ = table.join("g", "", False, 0.000001, 0, *ME)
    _, b, _ = table.join("g", "", False, None, 0, *ME)
    table.sync(index, "g", a, *ME, [], (0, 0, 0), 8, False, _Ring(40))
    assert table.sync(index, "g", b, *ME, [], (0, 0, 0), 8, True, _Ring(40))[0] == (1, 8, True)
    assert table.sync(index, "g", a, *ME, [(1, 8)], (0, 0, 0), 8, False, _Ring(40)) is None
