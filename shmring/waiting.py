"""Wait strategies: how a reader with nothing to read waits for its next event.

Rules:
- A strategy only decides; the reader carries the decision out. Decisions
  depend on the clock, on what the reader took and on how late its dozes
  ended, nothing else, so they are tested without processes.
- Two ways to wait: ``DOZE`` sleeps on a timer, with no wait flag raised,
  so the writer posts nothing; ``BLOCK`` raises the wait flag and sleeps on
  the reader's semaphore, so the writer's next publish wakes it. Neither
  spins: on a machine with fewer cores than processes a spinning reader
  takes the CPU its writer needs (see ``BlockingWait``).
- Only ``BLOCK`` is indefinite. It is bounded by ``IDLE_CHECK_S``, which is
  both the backstop against a lost wake-up and the pace of writer-liveness
  checks: an idle reader wakes once a second.
- ``BlockingWait`` (``max_delay_s=0``) wakes for every event, but in a
  stream faster than a wake-up (events less than ``HOT_GAP_S`` apart): there
  a reader that finds nothing dozes ``DOZE_S`` before it blocks, and takes
  what came meanwhile in one go. Shortly after a long run of events (a
  writer publishing flat out) it gives up its CPU once before that doze.
- ``BatchingWait`` (``max_delay_s=D``) dozes D after taking events, then takes
  all that came meanwhile; an event waits at most D. A timed sleep ends late
  (timer slack, scheduling), so it dozes D less what its dozes have lately
  overshot (their mean and three times their spread) and D/32, at most D/2
  less. A doze that finds nothing means the stream went quiet: the next wait
  blocks, so an idle batching reader costs what an idle blocking one does.
- ``SpinBackoff`` is for a waiter that may spin (the HTTP edge's wait for an
  ingest reply): it backs off from spinning while its spins find nothing.
"""

__all__ = ["DOZE", "BLOCK", "IDLE_CHECK_S", "SpinBackoff", "WaitStrategy", "BlockingWait", "BatchingWait",
           "wait_strategy"]

DOZE, BLOCK = "doze", "block"

IDLE_CHECK_S = 1.0
"""Longest single block: bounds a lost wake-up and paces writer-liveness checks."""


class SpinBackoff:
    """Whether a spin is worth trying: a spin that finds nothing makes the next 1, 2, 4 ... up to ``MAX_SKIP``
    chances pass without one, and a spin that finds what it waited for ends the back-off."""

    MAX_SKIP = 64

    __slots__ = ("_skip", "_backoff")

    def __init__(self):
        self._skip = self._backoff = 0

    def allowed(self) -> bool:
        """Spin this time? (Each call that answers no uses up one skipped chance.)"""
        if not self._skip:
            return True
        self._skip -= 1
        return False

    def spun(self, found: bool) -> None:
        if found:
            self._backoff = 0
        else:
            self._backoff = self._skip = min(max(1, 2 * self._backoff), self.MAX_SKIP)


class WaitStrategy:
    """Base: remembers when the reader last took events. Subclasses decide ``next_wait``."""

    __slots__ = ("_taken_at", "_gap_s", "_took_since_wait", "yield_first")

    def __init__(self):
        self._taken_at = None
        self._gap_s = None  # time between the last two takes
        self._took_since_wait = False
        self.yield_first = False
        """Whether the doze ``next_wait`` last chose begins by giving up the CPU once (``sched_yield``)."""

    def taken(self, now: float, count: int) -> None:
        """The reader took (delivered, dropped or filtered) `count` events since its last wait, the last at `now`."""
        if self._taken_at is not None:
            self._gap_s = now - self._taken_at
        self._taken_at = now
        self._took_since_wait = True

    def next_wait(self, now: float) -> tuple[str, float]:
        """(DOZE or BLOCK, for how many seconds at most): nothing is ready at `now`."""
        raise NotImplementedError

    def dozed(self, planned_end: float, now: float) -> None:
        """A doze meant to end at `planned_end` ended at `now` (only strategies that time their dozes care)."""


class BlockingWait(WaitStrategy):
    """Wake for every event (``max_delay_s=0``), but in a stream faster than a wake-up.

    While events come closer together than a wake-up costs (``HOT_GAP_S``), a
    reader that finds nothing has caught up with a writer that paused, most
    often for a scheduler slice: it dozes ``DOZE_S`` on a timer before it
    blocks. A doze costs the writer nothing and leaves the CPU idle for it. A
    block there would make the writer pay a wake-up for every pause, and the
    kernel move the woken reader next to the writer; a spin, even one that
    yields, keeps the CPU looking busy, and one that yields to a writer on the
    same CPU holds the two in lockstep. (Two cores, one writer and two readers
    flat out: with a 20 µs spin the writer waited for a CPU a third of its
    time, and the readers got 550k events/s each; dozing, they get 700k.)

    Within ``YIELD_WAITS`` waits of a run of ``LONG_RUN`` events or more
    taken without a wait, it yields its CPU once before the doze
    (``yield_first``). Such a run means a writer publishing flat out, which
    a reader catches up with only when the writer lost its core, often to
    this reader: yielding hands the core back at once, and the reader waits
    in the run queue, where the balancer can move it to the other core; a
    timer alone wakes it on the writer's core, ahead of the writer, doze
    after doze. (The same machine in a sitting where readers kept landing
    there: two readers' ``read`` went from 1.05-1.13x to 1.51-1.57x the
    pure-Python floor.) A reader woken for an event or a few, as at a paced
    rate, does not yield: its dozes follow late wake-ups, the yield gains
    nothing there, and with 16 readers at 10k events/s it cost their writer
    16.8 µs of CPU per publish instead of 11.6.
    """

    HOT_GAP_S = 20e-6
    """A stream whose last two takes were closer than this is hot: a wake-up per event would cost more."""

    DOZE_S = 50e-6
    """How long a hot stream's reader dozes when it finds nothing (a timer here ends 50-100 µs late)."""

    LONG_RUN = 256
    """Events taken between two waits that show a writer publishing flat out."""

    YIELD_WAITS = 8
    """For how many waits after a long run a doze yields first. Logged: of 16 readers' 7,117 dozes at 10k
    events/s (late as they are, they take up to a few hundred at a time) 86 came this soon after a long run;
    of two flat-out readers' 23 dozes, all did (within 4 waits)."""

    __slots__ = ("_waits_since_run",)

    def __init__(self):
        super().__init__()
        self._waits_since_run = self.YIELD_WAITS

    def taken(self, now: float, count: int) -> None:
        super().taken(now, count)
        if count >= self.LONG_RUN:
            self._waits_since_run = 0

    def next_wait(self, now: float) -> tuple[str, float]:
        took, self._took_since_wait = self._took_since_wait, False
        after_run = self._waits_since_run < self.YIELD_WAITS
        self._waits_since_run += 1
        if took and self._gap_s is not None and self._gap_s < self.HOT_GAP_S:
            self.yield_first = after_run
            return DOZE, self.DOZE_S
        self.yield_first = False
        return BLOCK, IDLE_CHECK_S


class BatchingWait(WaitStrategy):
    """Let events collect for up to `max_delay_s`, then take them in one go."""

    __slots__ = ("max_delay_s", "_late_s", "_late_spread_s")

    LATE_WEIGHT = 1 / 16
    """How fast the estimate of a doze's overshoot follows new ones (an exponential average)."""

    LATE_SPREADS = 3
    """How many mean absolute deviations past the mean overshoot a doze ends early: about the 99th percentile
    of a normal spread, so that 99% of events wait at most ``max_delay_s`` (two left it at about 98%)."""

    MARGIN = 1 / 32
    """The share of the budget a doze also ends early by: what it takes is handed out over the next several µs,
    and an event waits until it is handed out (without it the 99th percentile sat within 10 µs of the budget)."""

    def __init__(self, max_delay_s: float):
        super().__init__()
        self.max_delay_s = max_delay_s
        self._late_s = 0.0  # a doze's mean overshoot
        self._late_spread_s = 0.0  # its mean absolute deviation

    def next_wait(self, now: float) -> tuple[str, float]:
        took, self._took_since_wait = self._took_since_wait, False
        if took:
            # Doze from the last take: whatever is published meanwhile waits at most max_delay_s,
            # and the doze ends early by what dozes overshoot (the mean plus LATE_SPREADS spreads).
            early = min(self._late_s + self.LATE_SPREADS * self._late_spread_s + self.max_delay_s * self.MARGIN,
                        self.max_delay_s / 2)
            return DOZE, max(0.0, self._taken_at + self.max_delay_s - early - now)
        return BLOCK, IDLE_CHECK_S

    def dozed(self, planned_end: float, now: float) -> None:
        """A doze meant to end at `planned_end` ended at `now`."""
        late = min(max(0.0, now - planned_end), self.max_delay_s)  # a stall (SIGSTOP, swap) says nothing of timers
        w = self.LATE_WEIGHT
        self._late_spread_s += w * (abs(late - self._late_s) - self._late_spread_s)
        self._late_s += w * (late - self._late_s)


def wait_strategy(max_delay_s: float) -> WaitStrategy:
    return BlockingWait() if max_delay_s == 0 else BatchingWait(max_delay_s)
