"""AsyncReader: the same order, drop and end-of-stream semantics as Reader, and one wake source per process.

Writers run in their own processes (real shared memory); every wait is bounded.
"""

import asyncio
import json
import multiprocessing
import os
import signal
import threading
import time

import pytest

from shmring import AsyncReader, CaptureSession, Filter, Reader, RingClosed, WriterGone
from shmring.errors import ConfigError
from shmring.stats import ring_stats
from tests.procs import TIMEOUT_S, make_event, writer

CTX = multiprocessing.get_context("spawn")


def run(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def check_accounting(results, start: int, end: int) -> list[int]:
    """Each seq start+1..end exactly once: delivered (in order) or inside a drop's exact range."""
    covered = start
    delivered = []
    for r in results:
        if r.dropped:
            assert r.dropped_from == covered + 1 and r.dropped == r.dropped_to - r.dropped_from + 1, r
            covered = r.dropped_to
        else:
            seq = r.envelope.seq if hasattr(r, "envelope") else r.seq
            assert seq > covered, (seq, covered)
            covered = seq
            delivered.append(seq)
    assert covered == end
    return delivered


def test_in_order_then_the_end_sticks(ring_name):
    async def main():
        with CaptureSession.create(ring_name, capacity=1024) as session:
            async with await AsyncReader.attach(ring_name, after_seq=0) as reader:
                for i in range(1, 11):
                    session.publish(make_event(i))
                got = [r.envelope.seq async for r in _take(reader, 10)]
                assert got == list(range(1, 11))
                assert await reader.read(timeout=0.05) is None  # nothing: None on timeout
                session.close()
                with pytest.raises(RingClosed):
                    await reader.read(timeout=5)
                with pytest.raises(RingClosed):  # it sticks
                    await reader.read_many(timeout=5)
                assert reader.delivered == 10 and reader.cursor == 10

    run(main())


async def _take(reader, n):
    for _ in range(n):
        yield await reader.read(timeout=5)


def test_async_for_stops_at_the_close_and_async_with_detaches(ring_name):
    async def main():
        with CaptureSession.create(ring_name, capacity=1024) as session:
            reader = await AsyncReader.attach(ring_name, filter=Filter(categories=["network"]))
            for i in range(1, 21):
                session.publish(make_event(i, "network" if i % 2 else "console"))
            loop = asyncio.get_running_loop()
            loop.call_later(0.2, session.close)
            seqs = [r.envelope.seq async for r in reader]
            assert seqs == list(range(1, 21, 2))
            assert (reader.delivered, reader.filtered, reader.dropped) == (10, 10, 0)
            reader.close()
            reader.close()  # idempotent

    run(main())


def test_a_reader_waiting_is_woken_by_a_publish_from_another_process(ring_name):
    ready, go, done = CTX.Event(), CTX.Event(), CTX.Event()
    proc = CTX.Process(target=writer, args=(ring_name, 500, ready, go, done), kwargs=dict(kwargs={"capacity": 1024}))
    proc.start()
    try:
        assert ready.wait(TIMEOUT_S)

        async def main():
            readers = [await AsyncReader.attach(ring_name) for _ in range(3)]
            waits = [asyncio.ensure_future(r.read_many(timeout=20)) for r in readers]
            await asyncio.sleep(0.1)
            assert not any(w.done() for w in waits)  # they wait, nothing is there
            go.set()
            firsts = await asyncio.gather(*waits)
            assert all(batch and batch[0].envelope.seq == 1 for batch in firsts)
            for r, first in zip(readers, firsts):
                results = list(first)
                while True:
                    try:
                        results += await r.read_many(timeout=20)
                    except RingClosed:
                        break
                assert check_accounting(results, 0, 500) == list(range(1, 501))
                r.close()

        run(main())
    finally:
        proc.join(TIMEOUT_S)


@pytest.mark.parametrize("raw", [False, True], ids=["read_many", "read_raw_many"])
def test_under_overwrite_the_same_semantics_as_reader(ring_name, raw):
    """A small ring lapped by a fast writer: every seq is delivered once, in order, or in an exact drop range."""
    count = 60_000
    ready, go, done = CTX.Event(), CTX.Event(), CTX.Event()
    proc = CTX.Process(target=writer, args=(ring_name, count, ready, go, done),
                       kwargs=dict(kwargs={"capacity": 256, "data_bytes": 1 << 20}))
    proc.start()
    try:
        assert ready.wait(TIMEOUT_S)
        sync_results = []
        sync_reader = Reader.attach(ring_name, after_seq=0)

        def read_sync():
            try:
                while True:
                    sync_results.extend(sync_reader.read_many(timeout=TIMEOUT_S))
            except RingClosed:
                pass

        thread = threading.Thread(target=read_sync)

        async def main():
            readers = [await AsyncReader.attach(ring_name, after_seq=0, max_delay_s=d) for d in (0.0, 0.0, 0.002)]
            thread.start()
            go.set()

            async def consume(reader):
                results = []
                while True:
                    try:
                        batch = await (reader.read_raw_many(64) if raw else reader.read_many(64))
                    except RingClosed:
                        return results
                    results += batch
                    if len(results) % 7 == 0:
                        await asyncio.sleep(0)  # the readers share the loop: each gets lapped now and then

            outs = await asyncio.gather(*(consume(r) for r in readers))
            for reader, results in zip(readers, outs):
                delivered = check_accounting(results, 0, count)
                assert reader.delivered == len(delivered)
                assert reader.delivered + reader.dropped + reader.filtered == reader.cursor - reader.start_seq == count
                if not raw:
                    assert all(json.loads(bytes(r.envelope.event.data))["i"] == r.envelope.seq
                               for r in results if not r.dropped)
                reader.close()
            return outs

        outs = run(main())
        thread.join(TIMEOUT_S)
        check_accounting(sync_results, 0, count)
        sync_reader.close()
        assert any(r.dropped for out in outs for r in out), "the ring was never lapped: the test proves nothing"
    finally:
        proc.join(TIMEOUT_S)


def test_writer_death_ends_with_writer_gone(ring_name):
    ready, go, done = CTX.Event(), CTX.Event(), CTX.Event()
    proc = CTX.Process(target=writer, args=(ring_name, 50, ready, go, done),
                       kwargs=dict(kwargs={"capacity": 1024}, then="hold"))
    proc.start()
    try:
        assert ready.wait(TIMEOUT_S)

        async def main():
            reader = await AsyncReader.attach(ring_name, after_seq=0)
            go.set()
            assert done.wait(TIMEOUT_S)
            seqs = []
            while len(seqs) < 50:
                seqs += [r.envelope.seq for r in await reader.read_many(timeout=10)]
            assert seqs == list(range(1, 51))
            waiting = asyncio.ensure_future(reader.read(timeout=20))
            await asyncio.sleep(0.1)
            proc.kill()
            with pytest.raises(WriterGone):
                await waiting
            reader.close()

        run(main())
    finally:
        proc.join(TIMEOUT_S)


def test_many_async_readers_share_one_registry_entry_and_one_thread(ring_name):
    """More async readers than the registry has entries (64): one waker entry and one helper thread for all."""

    async def main():
        with CaptureSession.create(ring_name, capacity=1024) as session:
            threads_before = threading.active_count()
            readers = [await AsyncReader.attach(ring_name) for _ in range(200)]
            assert threading.active_count() == threads_before + 1
            entries = ring_stats(ring_name)["readers"]
            assert len(entries) == 1 and entries[0]["role"] == "reader"
            waits = [asyncio.ensure_future(r.read(timeout=20)) for r in readers]
            await asyncio.sleep(0.05)
            session.publish(make_event(1))
            results = await asyncio.gather(*waits)
            assert [r.envelope.seq for r in results] == [1] * 200
            for r in readers:
                r.close()
            for _ in range(200):  # the waker leaves with its last reader (its thread takes a moment to exit)
                if not ring_stats(ring_name)["readers"]:
                    break
                await asyncio.sleep(0.01)
            assert ring_stats(ring_name)["readers"] == []

    run(main())


def test_bad_arguments_are_config_errors(ring_name):
    async def main():
        with CaptureSession.create(ring_name, capacity=1024):
            with pytest.raises(ConfigError):
                await AsyncReader.attach(ring_name, after_seq=5)  # beyond the latest
            with pytest.raises(ConfigError):
                await AsyncReader.attach(ring_name, max_delay_s=-1)
            assert ring_stats(ring_name)["readers"] == []  # nothing left claimed

    run(main())


def test_archive_replays_what_left_the_ring_then_joins_it(ring_name, tmp_path):
    from shmring import Flusher

    async def main():
        with CaptureSession.create(ring_name, capacity=1024) as session:
            flusher = Flusher(ring_name, str(tmp_path / "logs"))
            flushing = threading.Thread(target=flusher.run)
            flushing.start()
            for i in range(1, 5001):
                session.publish(make_event(i))
            assert ring_stats(ring_name)["oldest_seq"] > 1000  # lapped: most of it is only in the files
            async with await AsyncReader.attach(ring_name, after_seq=0, archive=str(tmp_path / "logs")) as reader:
                results = []
                while not results or results[-1].envelope.seq < 5000:
                    results += await reader.read_many(500, timeout=10)
                session.publish(make_event(5001))  # and on into the ring, once
                results += await reader.read_many(timeout=10)
                assert check_accounting(results, 0, 5001) == list(range(1, 5002))
                assert reader.dropped == 0
            session.close()
            flushing.join(TIMEOUT_S)
            flusher.close()

    run(main())


# -- consumer groups: asyncio members, the same rules as Reader's ---------------------------------------------------

def assert_joined(proc, joined) -> None:
    """Until the members process `proc` says all its members joined; a process that ended first fails the test."""
    deadline = time.monotonic() + TIMEOUT_S
    while not joined.wait(0.05):
        assert proc.is_alive(), f"the members process ended with exit code {proc.exitcode} before joining"
        assert time.monotonic() < deadline, f"the members process did not join within {TIMEOUT_S} s"


def assert_all_ended_well(procs) -> None:
    for proc in procs:
        proc.join(TIMEOUT_S)
        assert proc.exitcode == 0, (proc.name, proc.exitcode)


def kill_alive(procs) -> None:
    """Teardown: SIGKILL (by pid) whichever of these processes, all started here, is still running."""
    for proc in procs:
        if proc.is_alive():
            proc.kill()
            proc.join(10)


def group_writer(name, count, ready, go, per_event_s, resume=None):
    """Publish `count` events (`per_event_s` apart, roughly), then close once the gating group has acked them all.
    With `resume`, publish the second half only once it is set (so the ring outlives a member's replacement)."""
    session = CaptureSession.create(name, capacity=1024, flusher_grace_s=30.0)
    ready.set()
    if go.wait(TIMEOUT_S):
        for i in range(1, count + 1):
            session.publish(make_event(i))
            if per_event_s and i % 50 == 0:
                time.sleep(50 * per_event_s)
            if resume is not None and i == count // 2 and not resume.wait(TIMEOUT_S):
                break
    session.close(timeout=TIMEOUT_S)


def async_members(name, paths, ready, claim_timeout_s, ack_delay_s=0.0):
    """Several AsyncReader members of group "g" on one loop, each recording every event (seq, redelivered) with one
    unbuffered write before it acknowledges it (`ack_delay_s` later, on the loop): one with ``async for`` and
    ack(seq), the others read_many and ack()."""

    async def member(path, style):
        reader = await AsyncReader.attach(name, group="g", gating=True, after_seq=0, claim_timeout_s=claim_timeout_s)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        joined.append(reader)
        try:
            if style == "for":
                async for r in reader:
                    os.write(fd, f"{r.envelope.seq} {int(r.redelivered)}\n".encode())
                    if ack_delay_s:
                        await asyncio.sleep(ack_delay_s)
                    reader.ack(r.envelope.seq)
            else:
                while True:
                    try:
                        batch = await reader.read_many(32, timeout=TIMEOUT_S)
                    except RingClosed:
                        break
                    os.write(fd, b"".join(f"{r.envelope.seq} {int(r.redelivered)}\n".encode() for r in batch))
                    if ack_delay_s:
                        await asyncio.sleep(ack_delay_s)
                    reader.ack()
        finally:
            os.close(fd)
            reader.close()

    async def main():
        tasks = [asyncio.ensure_future(member(path, "for" if i == 0 else "many")) for i, path in enumerate(paths)]
        while len(joined) < len(paths):
            for task in tasks:
                if task.done():
                    task.result()  # a member that could not join ends the process with its traceback
            await asyncio.sleep(0.01)
        ready.set()
        await asyncio.gather(*tasks)

    joined = []
    asyncio.run(main())


def group_records(paths):
    got = []
    for path in paths:
        if os.path.exists(path):
            with open(path) as f:
                got += [(int(seq), flag == "1") for seq, flag in (line.split() for line in f)]
    return got


def test_asyncio_members_in_two_processes_share_the_stream_exactly_once(ring_name, tmp_path):
    count = 6000
    ready, go = CTX.Event(), CTX.Event()
    writer_proc = CTX.Process(target=group_writer, args=(ring_name, count, ready, go, 0.0))
    writer_proc.start()
    procs = []
    try:
        assert ready.wait(TIMEOUT_S)
        paths = [[str(tmp_path / f"p{p}m{m}") for m in range(2)] for p in range(2)]
        for member_paths in paths:
            joined = CTX.Event()
            procs.append(CTX.Process(target=async_members, args=(ring_name, member_paths, joined, 10.0)))
            procs[-1].start()
            assert_joined(procs[-1], joined)
        go.set()
        assert_all_ended_well([writer_proc, *procs])
    finally:
        kill_alive([writer_proc, *procs])
    got = group_records([p for member_paths in paths for p in member_paths])
    assert sorted(seq for seq, _ in got) == list(range(1, count + 1))  # each seq once, to one member
    assert not any(redelivered for _, redelivered in got)
    per_process = [len(group_records(member_paths)) for member_paths in paths]
    assert all(n > 0 for n in per_process), per_process


def test_an_asyncio_member_killed_mid_claim_loses_nothing_and_its_events_are_redelivered(ring_name, tmp_path):
    count = 20_000
    ready, go, resume = CTX.Event(), CTX.Event(), CTX.Event()
    writer_proc = CTX.Process(target=group_writer, args=(ring_name, count, ready, go, 20e-6, resume))
    writer_proc.start()
    procs = []
    try:
        assert ready.wait(TIMEOUT_S)
        paths = [[str(tmp_path / f"p{p}m{m}") for m in range(2)] for p in range(3)]
        for member_paths, ack_delay_s in zip(paths[:2], (0.02, 0.0)):  # the first, the victim, acks late
            joined = CTX.Event()
            procs.append(CTX.Process(target=async_members, args=(ring_name, member_paths, joined, 10.0, ack_delay_s)))
            procs[-1].start()
            assert_joined(procs[-1], joined)
        go.set()
        deadline = time.monotonic() + TIMEOUT_S
        while len(group_records(paths[0])) < 100:  # the victim holds delivered, unacknowledged events now
            assert time.monotonic() < deadline and writer_proc.is_alive()
            time.sleep(0.005)
        os.kill(procs[0].pid, signal.SIGKILL)
        procs[0].join(10)
        joined = CTX.Event()  # a replacement joins; the dead member's claims go to the living
        procs.append(CTX.Process(target=async_members, args=(ring_name, paths[2], joined, 10.0)))
        procs[-1].start()
        assert_joined(procs[-1], joined)
        published_at_kill = ring_stats(ring_name)["latest_seq"]
        resume.set()  # the writer publishes its second half to the survivor and the replacement
        assert_all_ended_well([writer_proc, *procs[1:]])  # procs[0] was the victim
    finally:
        kill_alive([writer_proc, *procs])
    assert published_at_kill <= count // 2  # killed while events flowed
    got = group_records([p for member_paths in paths for p in member_paths])
    assert {seq for seq, _ in got} == set(range(1, count + 1))  # nothing lost
    fresh = [seq for seq, redelivered in got if not redelivered]
    assert len(fresh) == len(set(fresh))  # every duplicate is a redelivery, marked
    assert any(redelivered for _, redelivered in got)  # the victim died holding unacknowledged events


def test_asyncio_member_misuse_gets_clear_errors(ring_name):
    async def main():
        with CaptureSession.create(ring_name, capacity=1024):
            plain = await AsyncReader.attach(ring_name)
            with pytest.raises(ConfigError, match="in no consumer group"):
                plain.ack()
            assert plain.group is None
            plain.close()
            with pytest.raises(ConfigError, match="claim_timeout_s"):
                await AsyncReader.attach(ring_name, group="g", claim_timeout_s=-1)
            member = await AsyncReader.attach(ring_name, group="g", after_seq=0)
            assert member.group == "g"
            with pytest.raises(ConfigError, match="not an unacknowledged event"):
                member.ack(5)
            member.close()

    run(main())


def test_an_idle_asyncio_member_sleeps_and_is_woken_by_a_publish(ring_name):
    async def main():
        with CaptureSession.create(ring_name, capacity=1024) as session:
            member = await AsyncReader.attach(ring_name, group="g", after_seq=0)
            cpu = time.process_time()
            assert await member.read(timeout=0.5) is None  # nothing to claim: it waits, not spins
            assert time.process_time() - cpu < 0.1
            loop = asyncio.get_running_loop()
            loop.call_later(0.1, session.publish, make_event(1))
            started = time.monotonic()
            result = await member.read(timeout=5)
            assert result.envelope.seq == 1 and time.monotonic() - started < 1.0
            member.ack()
            member.close()

    run(main())
