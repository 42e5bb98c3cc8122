"""AsyncReader: the same order, drop and end-of-stream semantics as Reader, and one wake source per process.

Writers run in their own processes (real shared memory); every wait is bounded.
"""

import asyncio
import json
import multiprocessing
import threading

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
                    assert all(json.loads(bytes(r.envelope.event.data))["i"] == r.envelope.seq for r in results if not r.dropped)
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
