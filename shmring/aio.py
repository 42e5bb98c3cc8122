"""AsyncReader: a Reader for asyncio, and the one wake source the async readers of a process share.

Rules:
- An AsyncReader is a ``Reader`` polled without blocking (timeout 0) from the
  event loop, so order, drops (with their range), the filter, the accounting,
  replay from an archive and the end of the stream (``RingClosed`` after a
  clean close, ``WriterGone`` after a crash) are exactly Reader's.
- It never blocks the loop and has no thread of its own. With nothing to
  read it awaits its ring's ``_Waker``: one per ring per process, shared by
  every AsyncReader of that ring in every loop. A waker is one registry entry
  and one helper thread that sleeps on that entry's semaphore while any
  async reader waits, and wakes the waiting readers' loops when the ring's
  latest seq moves, the ring closes or the writer dies. The writer posts
  once per publish to the waker, never to each async reader. An idle waker
  wakes once a second (the liveness pace, ``IDLE_CHECK_S``).
- The registry holds 64 entries per ring, so async readers hold none of
  their own: each hands back the entry its attach claimed, and the waker's
  entry (role ``reader``, this pid) stands for them all in ``stat`` and
  ``/metrics``: the lowest cursor (so the largest lag) and the sums of
  delivered, dropped and filtered.
- ``max_delay_s=D`` is the latency budget, as for Reader: after taking events
  the reader sleeps on the loop until D after its last take, then takes all
  that came; while it dozes it does not wait on the waker, so it costs the
  writer nothing.
- With ``archive=``, a step that replays history reads the files on the loop,
  in batches of at most ``max_events``.
- ``group=G`` makes it a member of consumer group G with Reader's rules
  (claims, ``ack``, redelivery after ``claim_timeout_s`` or the member's
  death; groups.py). A member, like a ``gating=True`` reader, keeps the
  registry entry its attach claimed (the group and the gate are recorded
  there): it counts against the 64, and the waker only wakes it. It waits
  for its claim's rest, or for the group's next unclaimed seq.
"""

import asyncio
import inspect
import os
import threading
import time

from .errors import ConfigError, RingClosed
from .groups import DEFAULT_CLAIM_TIMEOUT_S
from .reader import WRITER_LOOK_S, RawRecord, Reader, ReadResult
from .ring import EMPTY, full_fence
from .filters import Filter
from .waiting import DOZE, IDLE_CHECK_S, wait_strategy

__all__ = ["AsyncReader"]

ENDED_POLL_S = 0.05
"""After its waker ended (ring closed, writer gone), a reader still draining looks again at this pace."""


class AsyncReader:
    """A cursor over one ring for asyncio. Create with ``await AsyncReader.attach(name)``."""

    def __init__(self, *, _reader: Reader, _waker: "_Waker", _token: int | None):
        self._reader = _reader
        self._waker = _waker
        self._token = _token
        self._strategy = wait_strategy(_reader.max_delay_s)
        self._cursor_at_wait = _reader.cursor
        self._closed = False

    @classmethod
    async def attach(cls, name: str, *, after_seq: int | None = None, filter: Filter | None = None,
                     archive: "str | os.PathLike | None" = None, max_delay_s: float = 0.0, group: str | None = None,
                     gating: bool = False,
                     claim_timeout_s: float | None = DEFAULT_CLAIM_TIMEOUT_S,
                     populate: bool = True) -> "AsyncReader":
        """Attach to ring `name`; the arguments are ``Reader.attach``'s (archive: a flusher's directory; group: a
        consumer group to join, with ``ack``; populate=False: a cheap attach, pages mapped as first read)."""
        loop = asyncio.get_running_loop()
        kwargs = dict(after_seq=after_seq, filter=filter, max_delay_s=max_delay_s, populate=populate)
        if archive is not None:
            if "archive" not in _reader_attach_parameters():
                raise ConfigError("archive= needs replay-merge, which this shmring's Reader.attach lacks")
            kwargs["archive"] = archive
        if group is not None or gating:
            kwargs.update(group=group, gating=gating, claim_timeout_s=claim_timeout_s)
        reader = Reader.attach(name, **kwargs)
        try:
            waker = _Waker.of(reader)
            # A plain reader hands its entry back; a member or a gating reader keeps it (its group or its gate).
            token = waker.adopt(reader, loop) if group is None and not gating else None
        except BaseException:
            reader.close()
            raise
        return cls(_reader=reader, _waker=waker, _token=token)

    # -- the reader's own properties (Reader's) ---------------------------------
    @property
    def name(self) -> str:
        return self._reader.name

    @property
    def capture_session_id(self) -> str:
        return self._reader.capture_session_id

    @property
    def capacity(self) -> int:
        return self._reader.capacity

    @property
    def first_seq(self) -> int:
        return self._reader.first_seq

    @property
    def filter(self) -> Filter | None:
        return self._reader.filter

    @property
    def max_delay_s(self) -> float:
        return self._reader.max_delay_s

    @property
    def cursor(self) -> int:
        """The seq of the last event consumed, dropped or filtered out."""
        return self._reader.cursor

    @property
    def start_seq(self) -> int:
        """The cursor at attach."""
        return self._reader.start_seq

    @property
    def delivered(self) -> int:
        return self._reader.delivered

    @property
    def dropped(self) -> int:
        return self._reader.dropped

    @property
    def filtered(self) -> int:
        return self._reader.filtered

    @property
    def group(self) -> str | None:
        """The consumer group this reader is a member of, or None."""
        return getattr(self._reader, "group", None)

    def ack(self, seq: int | None = None) -> None:
        """Acknowledge an event of this member's group (``Reader.ack``): `seq`, or all delivered so far."""
        self._reader.ack(seq)

    # -- reading ---------------------------------------------------------------
    async def read(self, timeout: float | None = None) -> ReadResult | None:
        """The next ReadResult; None only if `timeout` seconds pass first (as ``Reader.read``)."""
        return await self._next(lambda: self._reader.read(0), lambda r: r is not None, timeout, None)

    async def read_many(self, max_events: int = 1024, timeout: float | None = None) -> list[ReadResult]:
        """The next results in order, drops in place: at least one, at most `max_events`; [] on timeout."""
        return await self._next(lambda: self._reader.read_many(max_events, 0), bool, timeout, [])

    async def read_raw_many(self, max_events: int = 1024, timeout: float | None = None) -> list[RawRecord]:
        """``read_many`` undecoded (``RawRecord``s: the envelope JSON exactly as the writer encoded it)."""
        return await self._next(lambda: self._reader.read_raw_many(max_events, 0), bool, timeout, [])

    async def _next(self, poll, got, timeout, nothing):
        deadline = None if timeout is None else time.monotonic() + timeout
        loop = asyncio.get_running_loop()
        while True:
            result = poll()
            if got(result):
                return result
            if getattr(self._reader, "_refused", False):  # a member that must acknowledge first: no wait helps
                raise self._reader._too_much_unacknowledged()
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return nothing
            strategy = self._strategy
            if self._reader.cursor != self._cursor_at_wait:
                strategy.taken(now, self._reader.cursor - self._cursor_at_wait)
                self._cursor_at_wait = self._reader.cursor
            action, wait_s = strategy.next_wait(now)
            if deadline is not None:
                wait_s = min(wait_s, deadline - now)
            if action == DOZE:
                self._reader._publish_progress()
                await asyncio.sleep(wait_s)
            else:
                await self._waker.wait(loop, self._reader, deadline)

    # -- lifecycle -------------------------------------------------------------
    def __aiter__(self) -> "AsyncReader":
        return self

    async def __anext__(self) -> ReadResult:
        """The next ReadResult; the iteration stops when the ring is closed and drained."""
        while True:
            try:
                result = await self.read()
            except RingClosed:
                raise StopAsyncIteration from None
            if result is not None:
                return result

    def close(self) -> None:
        """Detach. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._reader.close()
        finally:
            self._waker.forget(self._token)

    async def __aenter__(self) -> "AsyncReader":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __del__(self):
        if not getattr(self, "_closed", True):
            try:
                self.close()
            except Exception:
                pass

    def __repr__(self) -> str:
        r = self._reader
        return (f"<AsyncReader {r.name!r} cursor={r.cursor} delivered={r.delivered} "
                f"dropped={r.dropped} filtered={r.filtered}>")


_attach_parameters = None


def archive_supported() -> bool:
    """Whether this shmring's Reader replays history from a flusher's directory (``archive=``)."""
    return "archive" in _reader_attach_parameters()


def _reader_attach_parameters() -> frozenset:
    global _attach_parameters
    if _attach_parameters is None:
        _attach_parameters = frozenset(inspect.signature(Reader.attach).parameters)
    return _attach_parameters


class _SharedEntry:
    """Stands in for the registry of an adopted reader: its progress goes to the waker's entry."""

    __slots__ = ("_waker", "_token", "mapping")

    def __init__(self, waker: "_Waker", token: int, mapping):
        self._waker = waker
        self._token = token
        self.mapping = mapping

    def publish_progress(self, index, cursor, delivered, dropped, filtered) -> None:
        self._waker.progress[self._token] = (cursor, delivered, dropped, filtered)

    def release(self, index) -> None:
        pass

    def abandon(self, index) -> None:
        pass

    def set_waiting(self, index, waiting) -> None:
        pass


class _Unmapped:
    @staticmethod
    def close() -> None:
        pass


class _NoSemaphore:
    @staticmethod
    def wait(timeout_s) -> bool:
        time.sleep(timeout_s)  # never reached: an adopted reader is only polled
        return False

    @staticmethod
    def close() -> None:
        pass


class _Waker:
    """One registry entry and one thread per ring per process: the wake source of its async readers."""

    _lock = threading.Lock()
    _wakers: dict[tuple, "_Waker"] = {}

    @classmethod
    def of(cls, reader: Reader) -> "_Waker":
        key = (reader.name, reader.capture_session_id, reader._info.writer_pid, reader._info.epoch)
        with cls._lock:
            waker = cls._wakers.get(key)
            if waker is None or waker._stopping:
                waker = cls._wakers[key] = cls(key, Reader.attach(reader.name))
            waker._users += 1  # under the class lock: a waker is never stopped between lookup and adoption
            return waker

    def __init__(self, key: tuple, reader: Reader):
        self._key = key
        self._reader = reader  # a registered reader; its thread only watches its ring and its semaphore
        self._users = 0
        self._stopping = False
        self._reader_closed = False
        self.ended = False
        self.progress: dict[int, tuple[int, int, int, int]] = {}
        self._next_token = 0
        self._state = threading.Lock()
        self._waiting: dict[asyncio.AbstractEventLoop, list[asyncio.Future]] = {}
        self._pending: set[asyncio.AbstractEventLoop] = set()
        self._wanted = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"shmring-waker-{reader.name}", daemon=True)
        self._thread.start()

    def adopt(self, reader: Reader, loop) -> int:
        """Hand `reader`'s own registry entry back; from now on it reports through this waker's entry."""
        with self._state:
            token = self._next_token
            self._next_token += 1
        reader._publish_progress()
        registry, index = reader._registry, reader._index
        registry.release(index)
        # A reader with an archive keeps its view of the registry: replay-merge reads the flusher's cursor
        # there (one small mapping and its fd); it is unmapped when the reader closes.
        keep = getattr(reader, "_history", None) is not None
        if not keep:
            registry.mapping.close()
        reader._semaphore.close()
        reader._registry = _SharedEntry(self, token, registry.mapping if keep else _Unmapped)
        reader._semaphore = _NoSemaphore
        self.progress[token] = (reader.cursor, reader.delivered, reader.dropped, reader.filtered)
        return token

    def forget(self, token: int | None) -> None:
        """An async reader of this waker closed (its adoption token, None if it kept its own entry)."""
        if token is not None:
            self.progress.pop(token, None)
        with _Waker._lock:
            self._users -= 1
            if self._users > 0:
                return
            self._stopping = True
            if _Waker._wakers.get(self._key) is self:
                del _Waker._wakers[self._key]
        self._wanted.set()
        with self._state:
            if not self._reader_closed:
                self._reader._semaphore.post()  # out of its block now, not at the next liveness check

    async def wait(self, loop, reader: Reader, deadline: float | None) -> None:
        """Until the ring may have moved (or `deadline`); the caller looks at the ring again after."""
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        if self.ended:
            await asyncio.sleep(ENDED_POLL_S if timeout is None else min(ENDED_POLL_S, timeout))
            return
        future = loop.create_future()
        with self._state:
            self._waiting.setdefault(loop, []).append(future)
        self._wanted.set()
        # Registered before the last look: whatever is published after that look wakes this future.
        if reader._slot_state(reader._awaited()) != EMPTY or self.ended:
            future.cancel()
            return
        try:
            await asyncio.wait((future,), timeout=timeout)
        finally:
            if not future.done():
                future.cancel()

    def _run(self) -> None:
        reader = self._reader
        core, registry, index, semaphore = reader._core, reader._registry, reader._index, reader._semaphore
        seen = core.latest()
        try:
            while not self._stopping:
                self._wanted.wait(IDLE_CHECK_S)
                self._report(seen)
                if self._stopping:
                    break
                if not self._wanted.is_set():
                    ended = core.closed() or not reader._writer.alive()
                    if ended:
                        self._end()
                        break
                    continue
                registry.set_waiting(index, True)
                full_fence()  # StoreLoad: the flag is visible before we look, or a publish could miss us
                latest = core.latest()
                ended = core.closed() or not reader._writer.alive(WRITER_LOOK_S)
                if latest == seen and not ended:
                    semaphore.wait(IDLE_CHECK_S)
                    latest = core.latest()
                    ended = core.closed() or not reader._writer.alive(WRITER_LOOK_S)
                registry.set_waiting(index, False)
                if ended:
                    self._end()
                    break
                if latest != seen:
                    seen = latest
                    self._wanted.clear()  # before the wake: a reader that waits after it sets it again
                    self._wake_all()
        finally:
            with self._state:
                self._reader_closed = True
                try:
                    reader.close()
                except Exception:
                    pass

    def _end(self) -> None:
        self.ended = True
        self._wake_all()

    def _report(self, latest: int) -> None:
        """Publish the adopted readers' progress in one entry: the lowest cursor, the sums."""
        values = list(self.progress.values())
        if values:
            cursor = min(v[0] for v in values)
            totals = [sum(v[i] for v in values) for i in (1, 2, 3)]
        else:
            cursor, totals = latest, (0, 0, 0)
        self._reader._registry.publish_progress(self._reader._index, cursor, *totals)

    def _wake_all(self) -> None:
        with self._state:
            loops = [loop for loop, futures in self._waiting.items() if futures and loop not in self._pending]
            self._pending.update(loops)
        for loop in loops:
            try:
                loop.call_soon_threadsafe(self._wake_loop, loop)
            except RuntimeError:  # that loop is closed
                with self._state:
                    self._waiting.pop(loop, None)
                    self._pending.discard(loop)

    def _wake_loop(self, loop) -> None:
        with self._state:
            futures = self._waiting.pop(loop, [])
            self._pending.discard(loop)
        for future in futures:
            if not future.done():
                future.set_result(None)
