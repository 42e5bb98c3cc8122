"""Consumer groups and gating readers, with real processes on small rings.

Members record each event they get (seq, redelivered) in their own file with
one unbuffered write *before* they acknowledge it, so a SIGKILL at any point
leaves a record of everything the member may have acknowledged.
FORBIDDEN: a seq no member got, a seq two members got fresh (a duplicate not
marked redelivered), a drop where the group gates, a writer held past the
grace period by a dead gating reader, a hostile name accepted.
"""

import multiprocessing
import os
import random
import signal
import time

import pytest

from shmring import CaptureSession, ConfigError, Event, Filter, Reader, RegistryFull, RingClosed, Source
from shmring.layout import MAX_GROUPS, MAX_READERS
from shmring.stats import ring_stats

TIMEOUT_S = 60


def _event(i: int, category: str = "console") -> Event:
    return Event(type=f"{category}.test", category=category, source=Source(kind="local_process"), data={"i": i})


def writer(name, count, ready, go, kwargs):
    session = CaptureSession.create(name, **kwargs)
    ready.set()
    if not go.wait(TIMEOUT_S):
        session.close()
        return
    for i in range(1, count + 1):
        session.publish(_event(i))
    session.close(timeout=TIMEOUT_S)  # waits until a gating group has acknowledged everything


def member(name, group, path, ready, gating=True, after_seq=0, per_event_s=0.0):
    """Join `group`, record each event (then ack it) until the ring closes."""
    reader = Reader.attach(name, group=group, gating=gating, after_seq=after_seq)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    ready.set()
    try:
        while True:
            for result in reader.read_many(64, timeout=TIMEOUT_S):
                if result.dropped:
                    os.write(fd, f"D {result.dropped_from} {result.dropped_to}\n".encode())
                    continue
                seq = result.envelope.seq
                os.write(fd, f"{seq} {int(result.redelivered)}\n".encode())
                if per_event_s:
                    end = time.perf_counter() + per_event_s
                    while time.perf_counter() < end:
                        pass
                reader.ack(seq)
    except RingClosed:
        pass
    reader.close()
    os._exit(0)


def records(paths):
    """[(seq, redelivered)] and [(from, to)] drops, over the members' files."""
    got, drops = [], []
    for path in paths:
        if not os.path.exists(path):
            continue
        with open(path) as f:
            for line in f:
                parts = line.split()
                if parts[0] == "D":
                    drops.append((int(parts[1]), int(parts[2])))
                else:
                    got.append((int(parts[0]), parts[1] == "1"))
    return got, drops


def _start_writer(ctx, name, count, **kwargs):
    ready, go = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=writer, args=(name, count, ready, go, kwargs))
    proc.start()
    assert ready.wait(TIMEOUT_S)
    return proc, go


@pytest.mark.alone  # each member's share follows scheduling
def test_two_members_split_the_stream_without_overlap_or_gap(ring_name, spawn, tmp_path, ring_path):
    count = 20_000
    proc, go = _start_writer(spawn, ring_name, count, capacity=4096)
    paths = [str(tmp_path / f"m{i}") for i in range(2)]
    members = []
    for path in paths:
        ready = spawn.Event()
        members.append(spawn.Process(target=member, args=(ring_name, "split", path, ready)))
        members[-1].start()
        assert ready.wait(TIMEOUT_S)
    go.set()
    proc.join(TIMEOUT_S)
    assert proc.exitcode == 0
    for m in members:
        m.join(TIMEOUT_S)
        assert m.exitcode == 0
    per_member = [records([p])[0] for p in paths]
    seqs = sorted(s for got in per_member for s, _ in got)
    assert seqs == list(range(1, count + 1))  # all of them, each once
    assert not any(r for got in per_member for _, r in got)
    for got in per_member:
        assert len(got) >= count // 10, [len(g) for g in per_member]  # each takes a real share (the split follows scheduling)


def test_killed_members_lose_nothing_and_mark_every_duplicate(ring_name, tmp_path):
    count, kills = 100_000, 20
    ctx = multiprocessing.get_context("fork")  # replacements start in milliseconds
    children = []

    def start(target, *args):
        proc = ctx.Process(target=target, args=args, daemon=True)
        proc.start()
        children.append(proc)
        return proc

    try:
        ready, go = ctx.Event(), ctx.Event()
        writer_proc = start(writer, ring_name, count, ready, go, dict(capacity=1024, flusher_grace_s=30.0))
        assert ready.wait(TIMEOUT_S)
        paths, live = [], []

        def add_member():
            path = str(tmp_path / f"m{len(paths)}")
            paths.append(path)
            joined = ctx.Event()
            live.append(start(member, ring_name, "workers", path, joined, True, 0, 40e-6))
            assert joined.wait(TIMEOUT_S)

        for _ in range(3):
            add_member()
        go.set()
        rng = random.Random(14)
        killed = 0
        deadline = time.monotonic() + TIMEOUT_S
        while killed < kills and time.monotonic() < deadline:
            time.sleep(rng.uniform(0.01, 0.06))
            victim = live.pop(rng.randrange(len(live)))
            os.kill(victim.pid, signal.SIGKILL)
            victim.join(10)
            killed += 1
            add_member()
        published_during_kills = ring_stats(ring_name)["latest_seq"]
        writer_proc.join(TIMEOUT_S)
        assert writer_proc.exitcode == 0
        for proc in live:
            proc.join(TIMEOUT_S)
            assert proc.exitcode == 0
    finally:
        for proc in children:
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGKILL)
                proc.join(10)
    assert killed >= kills and published_during_kills < count  # the kills happened while events flowed
    got, drops = records(paths)
    assert drops == []
    seen = {s for s, _ in got}
    assert seen == set(range(1, count + 1))
    fresh = {}
    for seq, redelivered in got:
        if not redelivered:
            fresh[seq] = fresh.get(seq, 0) + 1
    assert max(fresh.values()) == 1  # every duplicate is a redelivery, marked
    assert len(got) > count  # some members died holding unacknowledged events


def test_a_new_member_resumes_where_the_group_stands(ring_name, spawn, tmp_path):
    with CaptureSession.create(ring_name, capacity=1024) as session:
        first = Reader.attach(ring_name, group="durable", after_seq=0)
        for i in range(1, 101):
            session.publish(_event(i))
        taken = []
        while len(taken) < 100:
            taken += [r.envelope.seq for r in first.read_many(100, timeout=5)]
        first.ack()
        for i in range(101, 111):
            session.publish(_event(i))
        given = [r.envelope.seq for r in first.read_many(5, timeout=5)]  # given, never acknowledged
        first.close()
        for i in range(111, 201):
            session.publish(_event(i))
        path = str(tmp_path / "next")
        ready = spawn.Event()
        proc = spawn.Process(target=member, args=(ring_name, "durable", path, ready, False, None))
        proc.start()
        assert ready.wait(TIMEOUT_S)
        deadline = time.monotonic() + TIMEOUT_S
        while len(records([path])[0]) < 100 and time.monotonic() < deadline:
            time.sleep(0.02)
    proc.join(TIMEOUT_S)
    assert taken == list(range(1, 101)) and given == list(range(101, 106))
    got, drops = records([path])
    assert drops == []
    assert [s for s, _ in got] == list(range(101, 201))  # after_seq=None is ignored: the group's position counts
    assert [s for s, r in got if r] == given  # the ones the closed member was given come back marked


def test_a_lapped_group_reports_the_exact_drop_once(ring_name, spawn):
    proc, go = _start_writer(spawn, ring_name, 1000, capacity=64)
    try:
        a = Reader.attach(ring_name, group="slow", after_seq=0)
        b = Reader.attach(ring_name, group="slow")
        go.set()
        proc.join(TIMEOUT_S)
        results = []
        for reader in (a, b, a, b):
            try:
                results += reader.read_many(1000, timeout=0.5)
            except RingClosed:
                pass
            reader.ack()
        drops = [(r.dropped_from, r.dropped_to) for r in results if r.dropped]
        seqs = sorted(r.envelope.seq for r in results if r.envelope)
        assert drops == [(1, 1000 - len(seqs))]
        assert seqs == list(range(1000 - len(seqs) + 1, 1001)) and len(seqs) >= 32
    finally:
        a.close()
        b.close()


def slow_gating_reader(name, path, ready):
    reader = Reader.attach(name, gating=True, after_seq=0)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    ready.set()
    try:
        for result in reader:
            os.write(fd, (f"D {result.dropped_from} {result.dropped_to}\n" if result.dropped
                          else f"{result.envelope.seq} 0\n").encode())
            time.sleep(0.0002)
    finally:
        reader.close()


def test_a_slow_gating_reader_gets_every_event(ring_name, spawn, tmp_path):
    path = str(tmp_path / "gating")
    proc, go = _start_writer(spawn, ring_name, 5000, capacity=64, gate_stall_s=30.0)
    ready = spawn.Event()
    reader = spawn.Process(target=slow_gating_reader, args=(ring_name, path, ready))
    reader.start()
    assert ready.wait(TIMEOUT_S)
    go.set()
    proc.join(TIMEOUT_S)
    reader.join(TIMEOUT_S)
    assert proc.exitcode == 0 and reader.exitcode == 0
    got, drops = records([path])
    assert drops == [] and [s for s, _ in got] == list(range(1, 5001))


def test_a_killed_gating_reader_holds_the_writer_only_for_the_grace_period(ring_name, spawn, tmp_path):
    grace = 1.0
    ready = spawn.Event()
    with CaptureSession.create(ring_name, capacity=64, flusher_grace_s=grace) as session:
        reader = spawn.Process(target=slow_gating_reader, args=(ring_name, str(tmp_path / "g"), ready))
        reader.start()
        assert ready.wait(TIMEOUT_S)
        os.kill(reader.pid, signal.SIGKILL)
        reader.join(10)
        started = time.monotonic()
        for i in range(200):  # three rings' worth: the writer must get past the dead gate
            session.publish(_event(i))
        held = time.monotonic() - started
    assert 0.8 * grace <= held < grace + 5.0  # it was honoured, then given up


def test_an_empty_gating_group_holds_the_writer_only_for_the_grace_period(ring_name):
    grace = 1.0
    with CaptureSession.create(ring_name, capacity=64, flusher_grace_s=grace) as session:
        Reader.attach(ring_name, group="gone", gating=True, after_seq=0).close()
        started = time.monotonic()
        for i in range(200):
            session.publish(_event(i))
        held = time.monotonic() - started
        assert 0.8 * grace <= held < grace + 5.0
        with Reader.attach(ring_name, group="gone") as back:
            first = back.read(timeout=5)
            assert (first.dropped_from, first.dropped_to) == (1, 200 - 64)  # its loss, as a drop, once
        started = time.monotonic()  # empty again: a new wait of the whole grace period
        for i in range(200):
            session.publish(_event(i))
        assert 0.8 * grace <= time.monotonic() - started < grace + 5.0


@pytest.mark.parametrize("bad", ["", "a" * 65, "bad name", "x+y", "-lead", "caf\u00e9", 5, b"bytes"])
def test_hostile_group_names_get_clear_errors(ring_name, bad):
    with CaptureSession.create(ring_name, capacity=64):
        with pytest.raises(ConfigError, match="invalid group name .*1-64 characters"):
            Reader.attach(ring_name, group=bad)
        assert ring_stats(ring_name)["readers"] == []  # nothing was left claimed


def test_misuse_of_groups_gets_clear_errors(ring_name):
    with CaptureSession.create(ring_name, capacity=64) as session:
        with Reader.attach(ring_name, group="g", filter=Filter(categories=["console"])) as first:
            with pytest.raises(ConfigError, match="passes the filter its first member gave"):
                Reader.attach(ring_name, group="g")
            with pytest.raises(ConfigError, match="is not gating"):
                Reader.attach(ring_name, group="g", filter=Filter(categories=["console"]), gating=True)
            session.publish(_event(1))
            assert first.read(timeout=5).envelope.seq == 1
            with pytest.raises(ConfigError, match="seq 7 is not an unacknowledged event delivered to this member"):
                first.ack(7)
            first.ack(1)
            with pytest.raises(ConfigError, match="seq 1 is not an unacknowledged"):
                first.ack(1)
        with Reader.attach(ring_name) as plain, pytest.raises(ConfigError, match="in no consumer group"):
            plain.ack()
        with pytest.raises(ConfigError, match="gating must be True or False"):
            Reader.attach(ring_name, gating="yes")
        with pytest.raises(ConfigError, match="claim_timeout_s must be None or a number"):
            Reader.attach(ring_name, group="h", claim_timeout_s=-1)


def test_a_full_registry_and_a_full_group_table_get_their_own_error(ring_name):
    with CaptureSession.create(ring_name, capacity=64):
        readers = [Reader.attach(ring_name) for _ in range(MAX_READERS)]
        try:
            with pytest.raises(RegistryFull, match="cannot join group 'late': all 64 reader entries") as caught:
                Reader.attach(ring_name, group="late")
            assert (caught.value.name, caught.value.group) == (ring_name, "late")
            readers.pop().close()
            with pytest.raises(RegistryFull, match="cannot create gating group 'gate'"):
                Reader.attach(ring_name, group="gate", gating=True)  # its member's entry, then none for its gate
        finally:
            for reader in readers:
                reader.close()
        groups = [Reader.attach(ring_name, group=f"g{i}") for i in range(MAX_GROUPS)]
        try:
            with pytest.raises(RegistryFull, match=f"already has {MAX_GROUPS} consumer groups"):
                Reader.attach(ring_name, group="onemore")
        finally:
            for reader in groups:
                reader.close()


def test_stat_shows_each_group(ring_name):
    with CaptureSession.create(ring_name, capacity=64, flusher_grace_s=0.2) as session:
        with Reader.attach(ring_name, group="idx", gating=True, after_seq=0) as m:
            for i in range(10):
                session.publish(_event(i))
            got = m.read_many(4, timeout=5)
            m.ack(got[0].envelope.seq)
            m.ack()
            m.read_many(2, timeout=5)
            stats = ring_stats(ring_name)
            (group,) = stats["groups"]
            assert group["name"] == "idx" and group["gating"] is True
            assert group["members"] == [dict(pid=os.getpid(), alive=True, pending=6)]
            assert (group["acked"], group["position"], group["pending"]) == (4, 10, 6)
            assert all(r["role"] != "group" for r in stats["readers"])


def stopping_member(name, path, ready, holding):
    """Join with a short claim timeout, take 5 events without acking, say so; ack them once continued."""
    reader = Reader.attach(name, group="stoppable", after_seq=0, claim_timeout_s=0.5)
    ready.set()
    seqs = [r.envelope.seq for r in reader.read_many(5, timeout=TIMEOUT_S)]
    with open(path, "w") as f:
        f.write(" ".join(map(str, seqs)))
    holding.set()
    os.kill(os.getpid(), signal.SIGSTOP)  # the parent continues us once another member has our events
    for seq in seqs:
        reader.ack(seq)  # ours no more: accepted, and changes nothing
    reader.ack()
    with open(path, "a") as f:
        f.write(" acked")
    reader.close()


def test_a_stopped_member_loses_its_claims_after_the_claim_timeout(ring_name, spawn, tmp_path):
    path = str(tmp_path / "stopped")
    with CaptureSession.create(ring_name, capacity=64) as session:
        for i in range(1, 11):
            session.publish(_event(i))
        ready, holding = spawn.Event(), spawn.Event()
        proc = spawn.Process(target=stopping_member, args=(ring_name, path, ready, holding))
        proc.start()
        assert ready.wait(TIMEOUT_S) and holding.wait(TIMEOUT_S)
        with Reader.attach(ring_name, group="stoppable") as other:
            fresh = [r.envelope.seq for r in other.read_many(100, timeout=0.2)]
            other.ack()
            started = time.monotonic()
            back = []
            while len(back) < 10 and time.monotonic() - started < TIMEOUT_S:
                back += [(r.envelope.seq, r.redelivered) for r in other.read_many(100, timeout=0.2)]
            waited = time.monotonic() - started
            other.ack()
            os.kill(proc.pid, signal.SIGCONT)
            proc.join(TIMEOUT_S)
            assert proc.exitcode == 0
            stats = ring_stats(ring_name)["groups"][0]
    with open(path) as f:
        written = f.read()
    taken = [int(s) for s in written.split()[:5]]
    assert written.endswith(" acked")
    assert taken == [1, 2, 3, 4, 5] and fresh == []  # alone when it claimed, it claimed all ten
    # after the timeout, not before, the whole claim (what it had read or not: it cannot say) comes back, marked
    assert back == [(s, True) for s in range(1, 11)] and waited >= 0.3
    assert (stats["acked"], stats["redelivered"], stats["pending"]) == (10, 10, 0)


def test_acks_out_of_order_keep_the_accounting_exact(ring_name):
    """Half of the events filtered out, every other one acknowledged out of order: few ranges, exact counts."""
    with CaptureSession.create(ring_name, capacity=1024, flusher_grace_s=0.2) as session:
        with Reader.attach(ring_name, group="odd", after_seq=0, filter=Filter(categories=["console"])) as m:
            for i in range(1, 601):
                session.publish(_event(i, "console" if i % 2 else "network"))
            kept = []
            while len(kept) < 150:
                batch = [r.envelope.seq for r in m.read_many(50, timeout=5)]
                for seq in reversed(batch[::2]):  # out of order, every other one
                    m.ack(seq)
                kept += batch[1::2]
                assert len(m._runs) < 16
            m.ack()
            with pytest.raises(ConfigError):
                m.ack(kept[0])
            rest = m.read_many(1000, timeout=0.5)
            m.ack()
            group = ring_stats(ring_name)["groups"][0]
    assert all(s % 2 for s in kept) and not any(r.redelivered for r in rest)
    assert (group["acked"], group["filtered"], group["dropped"], group["pending"]) == (300, 300, 0, 0)


def test_tail_group_acknowledges_what_it_prints_and_stat_shows_the_group(ring_name):
    import json
    import subprocess
    import sys

    def shmring(*args):
        return subprocess.run([sys.executable, "-m", "shmring", *args], capture_output=True, text=True,
                              timeout=TIMEOUT_S)

    with CaptureSession.create(ring_name, capacity=64) as session:
        for i in range(1, 21):
            session.publish(_event(i))
        first = shmring("tail", ring_name, "--group", "printers", "--from-start", "--no-follow", "--format", "{seq}")
        for i in range(21, 26):
            session.publish(_event(i))
        second = shmring("tail", ring_name, "--group", "printers", "--no-follow", "--format", "{seq}")
        refused = shmring("tail", ring_name, "--group", "printers", "-n", "3")
        table = shmring("stat", ring_name).stdout
        (group,) = json.loads(shmring("stat", ring_name, "--json").stdout)["groups"]
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert first.stdout.split() == [str(i) for i in range(1, 21)]
    assert second.stdout.split() == [str(i) for i in range(21, 26)]  # the group's position, not "from now on"
    assert refused.returncode == 1 and "-n does not apply" in refused.stderr
    assert "printers" in table and "redelivered" in table
    assert (group["name"], group["acked"], group["pending"], group["members"]) == ("printers", 25, 0, [])


def test_a_claim_lapped_whole_and_the_loss_after_it_are_one_drop(ring_name):
    with CaptureSession.create(ring_name, capacity=64) as session:
        with Reader.attach(ring_name, group="behind", after_seq=0) as member:
            for i in range(1, 11):
                session.publish(_event(i))
            first = member.read(timeout=5)  # claims 1-10, takes 1
            for i in range(11, 1001):
                session.publish(_event(i))  # laps the rest of the claim, and more
            results = member.read_many(1000, timeout=0.5)
            member.ack()
    drops = [(r.dropped_from, r.dropped_to) for r in results if r.dropped]
    seqs = [r.envelope.seq for r in results if r.envelope]
    assert first.envelope.seq == 1 and results[0].dropped
    assert drops == [(2, seqs[0] - 1)] and seqs == list(range(seqs[0], 1001))  # one drop: its claim and beyond


def test_a_member_holding_too_many_unacknowledged_ranges_must_ack_first(ring_name):
    with CaptureSession.create(ring_name, capacity=1024) as session:
        with Reader.attach(ring_name, group="pair", after_seq=0) as a, Reader.attach(ring_name, group="pair") as b:
            taken = []
            for i in range(16):  # the two alternate, so each of a's events is a range of its own
                session.publish(_event(2 * i + 1))
                session.publish(_event(2 * i + 2))
                taken.append(a.read(timeout=1).envelope.seq)
                b.read(timeout=1)
                b.ack()
            session.publish(_event(33))
            with pytest.raises(ConfigError, match="holds 16 separate ranges of unacknowledged events"):
                a.read(timeout=1)
            assert a.read_many(10, timeout=0) == []  # nor does a batch start
            a.ack()
            more = [r.envelope.seq for r in a.read_many(100, timeout=1)]
            a.ack()
    assert taken == list(range(1, 33, 2)) and more == [33]
