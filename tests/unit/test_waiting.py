"""The wait strategies' decisions, on a fake clock: no processes, no shared memory."""

import pytest

from shmring.waiting import BLOCK, DOZE, IDLE_CHECK_S, BatchingWait, BlockingWait, SpinBackoff, wait_strategy


def test_factory_picks_by_budget():
    assert type(wait_strategy(0)) is BlockingWait
    assert type(wait_strategy(0.0)) is BlockingWait
    batching = wait_strategy(0.002)
    assert type(batching) is BatchingWait and batching.max_delay_s == 0.002


def test_an_idle_blocking_reader_blocks_for_the_idle_check():
    w = BlockingWait()
    assert w.next_wait(10.0) == (BLOCK, IDLE_CHECK_S)
    assert w.next_wait(11.0) == (BLOCK, IDLE_CHECK_S)


def test_a_hot_blocking_reader_that_finds_nothing_dozes_once_then_blocks():
    w = BlockingWait()
    w.taken(1.0, 1)
    w.taken(1.0 + 5e-6, 1)  # 5 µs apart: a hot stream
    assert w.next_wait(1.00001) == (DOZE, BlockingWait.DOZE_S)  # the writer paused: take what comes meanwhile
    assert w.next_wait(1.0002) == (BLOCK, IDLE_CHECK_S)  # the doze found nothing either: sleep until woken


def test_a_hot_blocking_reader_dozes_each_time_it_catches_up():
    w = BlockingWait()
    t = 1.0
    w.taken(t - 2e-6, 1)
    for _ in range(100):
        w.taken(t, 1)
        assert w.next_wait(t + 1e-6) == (DOZE, BlockingWait.DOZE_S)
        t += 2e-6


def test_blocking_reader_at_ten_thousand_a_second_blocks_for_every_event():
    w = BlockingWait()
    t = 5.0
    for _ in range(100):
        w.taken(t, 1)
        assert w.next_wait(t + 1e-6)[0] == BLOCK
        t += 100e-6


def test_batching_reader_dozes_from_its_last_take_then_blocks_when_quiet():
    w = BatchingWait(0.002)
    assert w.next_wait(1.0) == (BLOCK, IDLE_CHECK_S)  # nothing taken yet: sleep on the semaphore
    w.taken(2.0, 1)
    action, seconds = w.next_wait(2.0005)
    # An event now waits at most 2 ms in all, less the margin for handing the batch out.
    assert action == DOZE and seconds == pytest.approx(0.0015 - 0.002 * BatchingWait.MARGIN)
    assert w.next_wait(2.002) == (BLOCK, IDLE_CHECK_S)  # the doze found nothing: the stream is quiet


def test_batching_reader_keeps_dozing_while_events_come():
    w = BatchingWait(0.002)
    t = 3.0
    for _ in range(50):
        w.taken(t, 1)
        action, seconds = w.next_wait(t)
        assert action == DOZE and seconds == pytest.approx(0.002 * (1 - BatchingWait.MARGIN))
        t += seconds


def test_a_late_decision_dozes_for_nothing_rather_than_a_negative_time():
    w = BatchingWait(0.002)
    w.taken(1.0, 1)
    assert w.next_wait(1.5) == (DOZE, 0.0)


def test_batching_reader_ends_its_dozes_early_by_what_they_overshoot():
    w = BatchingWait(0.002)
    t = 1.0
    for _ in range(200):  # every doze ends 0.3 ms late
        w.taken(t, 1)
        action, wait_s = w.next_wait(t)
        assert action == DOZE
        w.dozed(t + wait_s, t + wait_s + 0.0003)
        t += wait_s + 0.0003
    w.taken(t, 1)
    action, wait_s = w.next_wait(t)
    # So it wakes 2 ms after the take, less the margin.
    assert action == DOZE and wait_s == pytest.approx(0.0017 - 0.002 * BatchingWait.MARGIN, abs=2e-5)


def test_batching_reader_never_shortens_a_doze_below_half_its_budget():
    w = BatchingWait(0.002)
    for i in range(100):  # timers overshoot wildly, or the process was stopped: each late by far more than D
        w.dozed(float(i), i + 5.0)
    w.taken(200.0, 1)
    assert w.next_wait(200.0) == (DOZE, pytest.approx(0.001))


def test_blocking_reader_ignores_dozes():
    w = BlockingWait()
    w.dozed(1.0, 2.0)
    assert w.next_wait(3.0) == (BLOCK, IDLE_CHECK_S)


def test_blocking_reader_after_a_burst_and_a_quiet_dozes_once_per_burst():
    w = BlockingWait()
    t = 1.0
    for _ in range(20):
        w.taken(t, 1)
        w.taken(t + 2e-6, 1)  # a burst: two takes 2 µs apart, then nothing for a while
        assert w.next_wait(t + 3e-6) == (DOZE, BlockingWait.DOZE_S)
        assert w.next_wait(t + 2e-4) == (BLOCK, IDLE_CHECK_S)
        t += 1e-3



def test_spin_backoff_skips_twice_as_many_chances_after_each_fruitless_spin_and_resets_on_a_find():
    b = SpinBackoff()
    pattern = []
    for _ in range(16):
        allowed = b.allowed()
        pattern.append(allowed)
        if allowed:
            b.spun(False)
    assert pattern == [True, False, True, False, False, True, False, False, False, False, True,
                       False, False, False, False, False]
    while not b.allowed():
        pass
    b.spun(True)
    assert b.allowed() and b.allowed()  # a spin that found what it waited for: no back-off
    for _ in range(20):  # capped at MAX_SKIP chances
        b.spun(False)
    skipped = 0
    while not b.allowed():
        skipped += 1
    assert skipped == SpinBackoff.MAX_SKIP


def _hot_doze(w: BlockingWait, t: float, count: int) -> bool:
    """Two takes 5 µs apart, the second after `count` events, then nothing: whether the doze yields first."""
    w.taken(t, 1)
    w.taken(t + 5e-6, count)
    assert w.next_wait(t + 6e-6) == (DOZE, BlockingWait.DOZE_S)
    return w.yield_first


def test_a_blocking_reader_yields_before_its_dozes_only_shortly_after_a_long_run():
    w = BlockingWait()
    assert not _hot_doze(w, 1.0, 1)  # a paced stream's late wake-up: no yield
    assert not _hot_doze(w, 2.0, BlockingWait.LONG_RUN - 1)
    assert _hot_doze(w, 3.0, BlockingWait.LONG_RUN)  # caught up with a writer publishing flat out
    for i in range(1, BlockingWait.YIELD_WAITS):  # each wait after it, a doze or a block, uses up one
        if i % 2:
            assert _hot_doze(w, 3.0 + i, 1)
        else:
            assert w.next_wait(3.0 + i) == (BLOCK, IDLE_CHECK_S) and not w.yield_first
    assert not _hot_doze(w, 20.0, 1)  # YIELD_WAITS waits later the spell is over
    assert _hot_doze(w, 30.0, 10 * BlockingWait.LONG_RUN)  # a new long run starts it again


def test_a_batching_reader_never_yields_before_its_doze():
    w = BatchingWait(0.002)
    w.taken(1.0, 10 * BlockingWait.LONG_RUN)
    assert w.next_wait(1.0)[0] == DOZE and not w.yield_first
