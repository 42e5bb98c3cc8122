"""Wait strategies: how a reader with nothing to read waits for its next event.

Rules:
- A strategy only decides; the reader carries the decision out. Decisions
  depend on the clock and on what the reader took, nothing else, so they are
  tested without processes.
- Three ways to wait, cheapest per event first at high rates:
  ``SPIN`` polls the slot for a few µs (yielding the CPU in between);
  ``DOZE`` sleeps on a timer, with no wait flag raised, so the writer posts
  nothing; ``BLOCK`` raises the wait flag and sleeps on the reader's
  semaphore, so the writer's next publish wakes it.
- Only ``BLOCK`` is indefinite. It is bounded by ``IDLE_CHECK_S``, which is
  both the backstop against a lost wake-up and the pace of writer-liveness
  checks: an idle reader wakes once a second.
- ``BlockingWait`` (``max_delay_s=0``) wakes for every event. It spins only
  while events arrive closer together than a sleep-and-wake costs.
- ``BatchingWait`` (``max_delay_s=D``) dozes D after taking events, then takes
  all that came meanwhile; an event waits at most D. A doze that finds
  nothing means the stream went quiet: the next wait blocks, so an idle
  batching reader costs what an idle blocking one does.
"""

__all__ = ["SPIN", "DOZE", "BLOCK", "IDLE_CHECK_S", "WaitStrategy", "BlockingWait", "BatchingWait", "wait_strategy"]

SPIN, DOZE, BLOCK = "spin", "doze", "block"

IDLE_CHECK_S = 1.0
"""Longest single block: bounds a lost wake-up and paces writer-liveness checks."""


class WaitStrategy:
    """Base: remembers when the reader last took events. Subclasses decide ``next_wait``."""

    __slots__ = ("_taken_at", "_gap_s", "_took_since_wait")

    def __init__(self):
        self._taken_at = None
        self._gap_s = None  # time between the last two takes
        self._took_since_wait = False

    def taken(self, now: float) -> None:
        """The reader took (delivered, dropped or filtered) one or more events at `now`."""
        if self._taken_at is not None:
            self._gap_s = now - self._taken_at
        self._taken_at = now
        self._took_since_wait = True

    def next_wait(self, now: float) -> tuple[str, float]:
        """(SPIN, DOZE or BLOCK, for how many seconds at most): nothing is ready at `now`."""
        raise NotImplementedError


class BlockingWait(WaitStrategy):
    """Wake for every event (``max_delay_s=0``)."""

    SPIN_S = 20e-6
    """How long a spin lasts; also the inter-arrival gap below which spinning beats sleeping."""

    __slots__ = ()

    def next_wait(self, now: float) -> tuple[str, float]:
        took, self._took_since_wait = self._took_since_wait, False
        if took and self._gap_s is not None and self._gap_s < self.SPIN_S:
            return SPIN, self.SPIN_S
        return BLOCK, IDLE_CHECK_S


class BatchingWait(WaitStrategy):
    """Let events collect for up to `max_delay_s`, then take them in one go."""

    __slots__ = ("max_delay_s",)

    def __init__(self, max_delay_s: float):
        super().__init__()
        self.max_delay_s = max_delay_s

    def next_wait(self, now: float) -> tuple[str, float]:
        took, self._took_since_wait = self._took_since_wait, False
        if took:
            # Doze from the last take: whatever is published meanwhile waits at most max_delay_s.
            return DOZE, max(0.0, self._taken_at + self.max_delay_s - now)
        return BLOCK, IDLE_CHECK_S


def wait_strategy(max_delay_s: float) -> WaitStrategy:
    return BlockingWait() if max_delay_s == 0 else BatchingWait(max_delay_s)
