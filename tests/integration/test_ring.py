"""The ring across real processes: order, resume, drops, fan-out, filters, end of stream, crashes.

Each test uses real POSIX shared memory, a unique ring name, and spawned
processes that hand-shake readiness. FORBIDDEN outcomes: a seq delivered
twice or out of order, a drop not counted, an event counted twice, a torn
record returned, a reader waiting forever on a dead writer.
"""

import os
import time

import posix_ipc
import psutil
import pytest

from shmring import (
    CaptureSession,
    ConfigError,
    Filter,
    IncompatibleRing,
    Reader,
    ReadResult,
    RingBusy,
    RingClosed,
    RingNotFound,
    WriterGone,
)
from tests.procs import TIMEOUT_S, make_event, reader, writer

pytestmark = pytest.mark.usefixtures("ring_path")  # each test on the compiled and the pure path

SMALL = dict(capacity=8, data_bytes=1 << 20)


def publish(session, n, **kw):
    return [session.publish(make_event(i, **kw)) for i in range(n)]


def read_all(r, timeout=0.05):
    out = []
    while (res := r.read(timeout=timeout)) is not None:
        out.append(res)
    return out


def shm_entries(name):
    return [e for e in os.listdir("/dev/shm") if name in e]


# -- single process basics -----------------------------------------------------


def test_seqs_start_at_one_and_are_contiguous(ring_name):
    with CaptureSession.create(ring_name) as s:
        assert [e.seq for e in publish(s, 5)] == [1, 2, 3, 4, 5]
        assert s.last_seq == 5
        assert all(e.capture_session_id == s.capture_session_id for e in publish(s, 2))


def test_capture_session_id_defaults_to_uuid4_and_can_be_given(ring_name, more_ring_names):
    import uuid

    with CaptureSession.create(ring_name) as s:
        assert uuid.UUID(s.capture_session_id).version == 4
    with CaptureSession.create(more_ring_names(), capture_session_id="my-session") as s:
        assert s.publish(make_event(1)).capture_session_id == "my-session"


@pytest.mark.parametrize("capacity", [0, 3, 6, 100, -8, 2.0, "8", 1 << 25])
def test_capacity_must_be_a_power_of_two(ring_name, capacity):
    with pytest.raises(ConfigError, match="power of two"):
        CaptureSession.create(ring_name, capacity=capacity)
    assert shm_entries(ring_name) == []


@pytest.mark.parametrize("name", ["", "a/b", "-x", "a b", "x" * 101, None, "a+b"])
def test_ring_names_are_validated(name):
    with pytest.raises(ConfigError, match="ring name"):
        CaptureSession.create(name)
    with pytest.raises(ConfigError, match="ring name"):
        Reader.attach(name)


def test_data_area_must_hold_the_largest_envelope(ring_name):
    with pytest.raises(ConfigError, match="data_bytes"):
        CaptureSession.create(ring_name, data_bytes=4096)


def test_close_removes_every_object_and_publish_after_close_raises(ring_name):
    s = CaptureSession.create(ring_name)
    r = Reader.attach(ring_name)
    assert shm_entries(ring_name)
    s.close()
    s.close()  # idempotent
    assert shm_entries(ring_name) == []
    with pytest.raises(RingClosed):
        s.publish(make_event(1))
    with pytest.raises(RingClosed):
        r.read(timeout=1)
    r.close()


def test_default_ring_carries_a_full_size_event_intact(ring_name):
    with CaptureSession.create(ring_name) as s:
        r = Reader.attach(ring_name)
        big = "x" * 999_000
        env = s.publish(make_event(1, pad=0).__class__(type="console.log", category="console",
                                                          source=make_event(1).source, data={"big": big}))
        assert not env.event.truncated
        res = r.read(timeout=5)
        assert res.envelope == env
        r.close()


def test_read_result_carries_exactly_one_of_envelope_and_dropped(ring_name):
    with CaptureSession.create(ring_name, **SMALL) as s:
        r = Reader.attach(ring_name, after_seq=0)
        publish(s, 10)
        results = read_all(r)
        assert isinstance(results[0], ReadResult)
        for res in results:
            assert (res.envelope is None) != (res.dropped == 0)
        r.close()


# -- resume semantics (the Go tests' cases) -----------------------------------------


def test_resume_mid_stream(ring_name):
    with CaptureSession.create(ring_name) as s:
        publish(s, 5)
        with Reader.attach(ring_name, after_seq=3) as r:
            assert r.read(timeout=1).envelope.seq == 4


def test_resume_at_latest_waits_until_timeout(ring_name):
    with CaptureSession.create(ring_name) as s:
        publish(s, 5)
        with Reader.attach(ring_name, after_seq=5) as r:
            started = time.monotonic()
            assert r.read(timeout=0.2) is None
            assert time.monotonic() - started >= 0.2
            s.publish(make_event(6))
            assert r.read(timeout=1).envelope.seq == 6


def test_resume_beyond_latest_is_an_error(ring_name):
    with CaptureSession.create(ring_name) as s:
        publish(s, 5)
        with pytest.raises(ConfigError, match="beyond the latest published seq 5"):
            Reader.attach(ring_name, after_seq=6)
        with pytest.raises(ConfigError):
            Reader.attach(ring_name, after_seq=-1)


def test_resume_before_oldest_reports_exact_drop_then_continues(ring_name):
    with CaptureSession.create(ring_name, capacity=4) as s:
        publish(s, 10)  # ring holds 7..10
        with Reader.attach(ring_name, after_seq=1) as r:
            results = read_all(r)
    assert results[0] == ReadResult(dropped=5, dropped_from=2, dropped_to=6)
    assert [res.envelope.seq for res in results[1:]] == [7, 8, 9, 10]


def test_from_start_reports_oldest_minus_one(ring_name):
    with CaptureSession.create(ring_name, capacity=4) as s:
        publish(s, 10)
        with Reader.attach(ring_name, after_seq=0) as r:
            results = read_all(r)
            assert r.cursor == 10 and r.dropped == 6 and r.delivered == 4
    assert results[0] == ReadResult(dropped=6, dropped_from=1, dropped_to=6)


def test_overflow_with_existing_reader(ring_name):
    with CaptureSession.create(ring_name, capacity=2) as s:
        with Reader.attach(ring_name, after_seq=0) as r:
            publish(s, 3)
            assert r.read(timeout=1) == ReadResult(dropped=1, dropped_from=1, dropped_to=1)
            assert r.read(timeout=1).envelope.seq == 2
            assert r.read(timeout=1).envelope.seq == 3


def test_writer_never_waits_for_readers(ring_name):
    with CaptureSession.create(ring_name, capacity=2) as s:
        readers = [Reader.attach(ring_name) for _ in range(3)]
        started = time.monotonic()
        publish(s, 1000)
        assert time.monotonic() - started < 5
        for r in readers:
            assert r.read(timeout=1) == ReadResult(dropped=998, dropped_from=1, dropped_to=998)
            r.close()


def test_late_join_sees_only_new_events(ring_name):
    with CaptureSession.create(ring_name) as s:
        publish(s, 100)
        with Reader.attach(ring_name) as r:
            assert r.cursor == 100
            assert r.read(timeout=0.05) is None
            s.publish(make_event(101))
            assert r.read(timeout=1).envelope.seq == 101


def test_data_area_overwrite_is_a_counted_drop(ring_name):
    # 1 MiB of data, events of ~100 KB: the data area, not the slots, laps first.
    with CaptureSession.create(ring_name, capacity=1024, data_bytes=1 << 20) as s:
        with Reader.attach(ring_name, after_seq=0) as r:
            publish(s, 40, pad=100_000)
            results = read_all(r)
            seqs = [res.envelope.seq for res in results if res.envelope]
            assert seqs == sorted(set(seqs)) and seqs[-1] == 40
            assert r.dropped > 0
            assert r.delivered + r.dropped == 40


# -- filters -------------------------------------------------------------------------


def test_filters_skip_without_counting_drops(ring_name):
    with CaptureSession.create(ring_name) as s:
        f = Filter(categories=["network", "page"], detail_levels=["standard", "verbose"], source_kinds=["cdp"])
        with Reader.attach(ring_name, after_seq=0, filter=f) as r:
            s.publish(make_event(1, "network"))
            s.publish(make_event(2, "console"))
            s.publish(make_event(3, "page", detail="raw"))
            s.publish(make_event(4, "page", kind="extension"))
            s.publish(make_event(5, "page", detail="verbose"))
            results = read_all(r)
            assert [res.envelope.seq for res in results] == [1, 5]
            assert (r.delivered, r.dropped, r.filtered, r.cursor) == (2, 0, 3, 5)
            assert all(res.envelope.event.category in ('network', 'page') for res in results)


@pytest.mark.parametrize(
    "kwargs",
    [dict(categories=["Bad Cat"]), dict(detail_levels=["default"]), dict(source_kinds=["browser"]),
     dict(categories=[])],
)
def test_bad_filters_are_rejected(kwargs):
    with pytest.raises(ConfigError):
        Filter(**kwargs)


# -- errors at attach and create ---------------------------------------------------------


def test_attach_to_missing_ring(ring_name):
    with pytest.raises(RingNotFound):
        Reader.attach(ring_name)


def test_attach_to_foreign_segment(ring_name):
    shm = posix_ipc.SharedMemory(f"/shmring.{ring_name}", posix_ipc.O_CREX, size=8192)
    try:
        with pytest.raises(IncompatibleRing, match="not a shmring ring"):
            Reader.attach(ring_name)
    finally:
        shm.close_fd()
        shm.unlink()


def test_name_taken_by_live_writer(ring_name):
    with CaptureSession.create(ring_name):
        with pytest.raises(RingBusy, match="live writer"):
            CaptureSession.create(ring_name)


# -- multi-process ------------------------------------------------------------------------


def start_readers(spawn, name, n, **kwargs):
    results = spawn.Queue()
    procs = []
    for _ in range(n):
        ready = spawn.Event()
        p = spawn.Process(target=reader, args=(name, results, ready), kwargs=kwargs)
        p.start()
        assert ready.wait(TIMEOUT_S), "reader did not attach"
        procs.append(p)
    return procs, results


def collect(procs, results):
    out = [results.get(timeout=TIMEOUT_S) for _ in procs]
    for p in procs:
        p.join(TIMEOUT_S)
        assert p.exitcode == 0
    return out


def test_several_reader_processes_each_see_everything_in_order(ring_name, spawn):
    with CaptureSession.create(ring_name) as s:
        procs, results = start_readers(spawn, ring_name, 3)
        publish(s, 5000)
    for got in collect(procs, results):
        assert got["seqs"] == list(range(1, 5001))
        assert got["drops"] == [] and got["ending"] == "closed"


def test_writer_process_to_reader_in_order_with_filters(ring_name, spawn):
    ready, go, done = spawn.Event(), spawn.Event(), spawn.Event()
    w = spawn.Process(target=writer, args=(ring_name, 3000, ready, go, done),
                      kwargs=dict(categories=("console", "network", "page")))
    w.start()
    assert ready.wait(TIMEOUT_S)
    procs, results = start_readers(spawn, ring_name, 1, after_seq=0, filter_kwargs=dict(categories=["network"]))
    everything, all_results = start_readers(spawn, ring_name, 1, after_seq=0)
    go.set()
    w.join(TIMEOUT_S)
    filtered = collect(procs, results)[0]
    full = collect(everything, all_results)[0]
    assert full["seqs"] == list(range(1, 3001))
    assert filtered["seqs"] == [i for i in range(1, 3001) if i % 3 == 1]
    assert filtered["delivered"] + filtered["dropped"] + filtered["filtered"] == filtered["cursor"] - filtered["start"]
    assert filtered["filtered"] == 2000


def test_readers_drain_then_see_end_of_stream_after_close(ring_name, spawn):
    s = CaptureSession.create(ring_name)
    procs, results = start_readers(spawn, ring_name, 2)
    publish(s, 200)
    s.close()
    for got in collect(procs, results):
        assert got["seqs"] == list(range(1, 201)) and got["ending"] == "closed"
    assert shm_entries(ring_name) == []


def test_iteration_stops_at_end_of_stream(ring_name):
    s = CaptureSession.create(ring_name)
    r = Reader.attach(ring_name)
    publish(s, 3)
    s.close()
    assert [res.envelope.seq for res in r] == [1, 2, 3]
    with pytest.raises(RingClosed):
        r.read()
    r.close()


def test_blocked_reader_is_woken_and_idles_cheaply(ring_name, spawn):
    with CaptureSession.create(ring_name) as s:
        procs, results = start_readers(spawn, ring_name, 1)
        proc = psutil.Process(procs[0].pid)
        before = proc.cpu_times()
        time.sleep(1.0)  # measuring the idle reader's CPU over a known interval
        after = proc.cpu_times()
        idle_cpu_s = (after.user + after.system) - (before.user + before.system)
        assert idle_cpu_s < 0.05, f"idle blocked reader used {idle_cpu_s:.3f} s of CPU in 1 s"
        s.publish(make_event(1))
    got = collect(procs, results)[0]
    assert got["seqs"] == [1]


def test_writer_killed_readers_drain_then_writer_gone_and_name_is_reclaimed(ring_name, spawn):
    ready, done = spawn.Event(), spawn.Event()
    w = spawn.Process(target=writer, args=(ring_name, 500, ready, None, done), kwargs=dict(then="hold"))
    w.start()
    assert ready.wait(TIMEOUT_S)
    procs, results = start_readers(spawn, ring_name, 2, after_seq=0)
    assert done.wait(TIMEOUT_S)
    with pytest.raises(RingBusy):
        CaptureSession.create(ring_name)
    w.kill()
    w.join(TIMEOUT_S)
    killed_at = time.monotonic()
    for got in collect(procs, results):
        assert got["seqs"] == list(range(1, 501))
        assert got["ending"] == "writer_gone"
    assert time.monotonic() - killed_at < 3
    with CaptureSession.create(ring_name) as s:  # reclaimed
        assert s.publish(make_event(1)).seq == 1


def test_slot_left_half_written_by_dead_writer_is_skipped_and_counted(ring_name, spawn):
    ready, done = spawn.Event(), spawn.Event()
    w = spawn.Process(target=writer, args=(ring_name, 3, ready, None, done), kwargs=dict(then="half_write"))
    w.start()
    assert ready.wait(TIMEOUT_S) and done.wait(TIMEOUT_S)
    w.kill()
    w.join(TIMEOUT_S)
    r = Reader.attach(ring_name, after_seq=0)
    results = []
    with pytest.raises(WriterGone):
        for _ in range(10):
            results.append(r.read(timeout=TIMEOUT_S))
    assert [res.envelope.seq for res in results[:3]] == [1, 2, 3]
    assert results[3:] == [ReadResult(dropped=1, dropped_from=4, dropped_to=4)]
    assert r.cursor == 4
    with pytest.raises(WriterGone):  # the end state sticks
        r.read(timeout=0)
    r.close()


def test_publish_is_thread_safe_and_seqs_stay_contiguous(ring_name):
    import threading

    with CaptureSession.create(ring_name) as s:
        with Reader.attach(ring_name) as r:
            seqs, lock = [], threading.Lock()

            def publisher():
                mine = [s.publish(make_event(i)).seq for i in range(500)]
                with lock:
                    seqs.extend(mine)

            threads = [threading.Thread(target=publisher) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(TIMEOUT_S)
            assert sorted(seqs) == list(range(1, 2001))
            assert [res.envelope.seq for res in read_all(r)] == list(range(1, 2001))


def test_a_record_that_is_not_its_own_envelope_is_a_counted_drop_never_an_event(ring_name):
    from shmring.layout import category_field

    with CaptureSession.create(ring_name) as s:
        with Reader.attach(ring_name, after_seq=0) as fast, \
                Reader.attach(ring_name, after_seq=0, filter=Filter(categories=["console"])) as slow:
            s.publish(make_event(1))
            core = s._res.core  # forge two complete slots the seqlock cannot tell from good ones
            core.write(2, b"12345", 1, 2, 0, 0, category_field("console"))
            wrong_seq = (b'{"capture_session_id":"x","seq":99,"event":{"ts":1,"type":"t","category":"console",'
                         b'"source":{"kind":"cdp"},"detail_level":""}}')
            core.write(3, wrong_seq, 1, 2, 0, 0, category_field("console"))
            core.last_seq = 3
            s.publish(make_event(4))
            for reader in (fast, slow):
                results = read_all(reader)
                assert [r.envelope.seq if r.envelope else ("drop", r.dropped) for r in results] == [
                    1, ("drop", 1), ("drop", 1), 4]
                assert (reader.delivered, reader.dropped, reader.cursor) == (2, 2, 4)
