"""Replay-merge: where a reader with ``archive=DIR`` finds the seqs its ring no longer holds.

A reader whose next seq has left the ring (``after_seq=0`` or an old N at
attach, or lapped later) reads it from the flusher's files in DIR instead,
then goes back to the ring at exactly the next seq. This module decides how
far the files may be read, and reads them; reader.py switches between the two.

Rules:
- Only the ring's own capture session is read, in seq order across
  categories and rotated files (archive.py). The reader's Filter applies; a
  category filter opens only that category's files.
- The files are read only up to a bound U that they are *final* for: every
  seq up to U is in them, recorded in ``_gaps.jsonl``, or will never be in
  them. Below U, what the files lack is a drop; above it, nothing is judged.
  U = min(oldest seq the ring holds - 1, A), where A is what the flusher has
  accounted for:
  - with no live flusher attached to the ring, A is unbounded: nothing below
    the ring's oldest seq can reach the files any more (a flusher that comes
    later reads the ring, and records the rest as a gap);
  - with live flushers (any pid alive with a flusher-role entry, gating or
    retired), A = max(the lowest of their committed cursors, the seq in DIR's
    ``_checkpoint.json`` for this session). A flusher writes its lines and
    its gap records before it commits, and checkpoints only after that, so
    everything up to A is in the files already. A flusher writing elsewhere
    can only lower the min, never raise it past what DIR holds.
  A is observed before the files are listed, so the listing holds all of it.
- If U is not past the reader's cursor, the flusher is behind (it may still
  write those seqs, from the ring or from what it took before its gate was
  retired): the reader waits for it, polling every few ms within its timeout;
  it never reports a drop for a seq the files may yet hold.
- A drop is one record per contiguous range lost, with its exact range. Without
  a category filter, any seq up to U the files lack is lost. With one, other
  categories' seqs are invisible: only recorded gaps and this category's torn
  lines are drops, and the seqs not shown are counted as filtered.
- Each pass over the files ends at its U, and the next one starts right after
  it, so a loss met in two passes (the ring moved on meanwhile, as it would
  lap a reader without an archive) comes as two adjacent drops, each exact.
- Each category's current file is opened before any is read, and the listing
  checked again (archive.py), so a rotation during the replay cannot hide a
  file (rotated files keep their names for good); what the flusher appends
  meanwhile is beyond U and is read by the next pass.
"""

import gc
import os
import time
from collections.abc import Callable, Iterator
from itertools import islice
from operator import attrgetter

import msgspec

from .archive import Archive
from .errors import ConfigError, ReaderClosed
from .filters import Filter
from .liveness import is_alive
from .results import RawRecord, ReadResult, check_max_events, decode_checked
from .schema import Envelope, decode_envelope

__all__ = ["History", "ReplayMerge"]

POLL_S = 0.002
"""How often a reader waiting for the flusher (U behind its cursor) looks again."""


class History:
    """The files of one capture session in a flusher's directory, as a reader's fallback."""

    def __init__(self, directory: str | os.PathLike, capture_session_id: str, filter: Filter | None,
                 flushers: Callable[[], list[tuple[int, float, int]]]):
        if not isinstance(directory, (str, os.PathLike)):
            raise ConfigError(f"archive must be a directory path, not {type(directory).__name__}")
        self.directory = os.fspath(directory)
        if not os.path.isdir(self.directory):
            raise ConfigError(f"archive {self.directory} is not a directory; give the directory the ring's "
                              "flusher writes (serve --log-dir, shmring flush NAME DIR)")
        self.archive = Archive(self.directory)
        self.capture_session_id = capture_session_id
        self.filter = filter
        self._flushers = flushers
        self._alive: dict[tuple[int, float], bool] = {}

    def final_through(self, oldest: int) -> int:
        """U: the highest seq the files are final for, given the ring's oldest retained seq (module rules)."""
        bound = oldest - 1
        live = [cursor for pid, start_time, cursor in self._flushers() if self._is_alive(pid, start_time)]
        if live:
            accounted = max(min(live), self.archive._checkpoint_seq(self.capture_session_id))
            bound = min(bound, accounted)
        return bound

    def _is_alive(self, pid: int, start_time: float) -> bool:
        # A dead process stays dead: only a live answer is asked again.
        key = (pid, start_time)
        if self._alive.get(key) is False:
            return False
        alive = self._alive[key] = is_alive(pid, start_time)
        return alive

    def walk(self, after_seq: int, until_seq: int) -> Iterator:
        """The session's steps after `after_seq` up to `until_seq` (which the files are final for), as
        RawRecords (the lines' bytes), drops in place. A decoding reader decodes them as it does the ring's."""
        return self.archive.read_raw(self.capture_session_id, after_seq=after_seq, until_seq=until_seq,
                                     filter=self.filter, _complete=True)

    @staticmethod
    def pause(deadline: float | None) -> bool:
        """Wait a poll interval for the flusher, within `deadline`; False if the deadline has passed."""
        if deadline is None:
            time.sleep(POLL_S)
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(POLL_S, left))
        return True


class ReplayMerge:
    """The reader's side of replay-merge: a mixin of ``Reader`` (reader.py), which holds the state it uses.

    While the files hold the next seq, the reader's read methods are the replay's (instance attributes
    shadowing the class's), and ``_take`` answers 0, which tells a class method already running to hand
    over. So the ring path has no check of its own for the replay: only its lapped and first_seq branches
    lead here, and once the ring holds the next seq the instance attributes go and the class's methods
    (``type(self).read`` and its siblings) read the ring again.
    """

    __slots__ = ()

    def _begin_replay(self) -> int:
        self._state.fast = False
        self._replaying = True
        self.read = self._replay_read
        self.read_many = self._replay_read_many
        self.read_raw_many = self._replay_read_raw_many
        self._take = _replay_marker
        return 0

    def _end_replay(self) -> None:
        self._replaying = False
        for attr in ("read", "read_many", "read_raw_many", "_take"):
            self.__dict__.pop(attr, None)
        self._stop_walk()
        self._state.fast = self._end is None and not self._detached

    def _stop_walk(self) -> None:
        walk, self._replay_walk = self._replay_walk, None
        self._replay_until = None
        if walk is not None:
            walk.close()

    def _replay_ready(self, deadline: float | None):
        """The walk over the files to take steps from, or False: the ring holds the next seq, and the replay has
        ended; or None: the deadline passed while the flusher was behind (history.py)."""
        if self._detached:
            raise ReaderClosed(f"this reader of ring {self.name!r} is closed; attach a new one", name=self.name)
        while True:
            if self._replay_walk is not None:
                return self._replay_walk
            until = self._replay_until
            self._replay_until = None
            if until is not None and until > self._state.cursor:
                # A walk is done: the seqs up to its bound it did not show are other categories' events
                # or ones the filter judged out (a lost one was shown as a drop).
                self._state.filtered += until - self._state.cursor
                self._state.cursor = until
                self._publish_progress()
            seq = self._state.cursor + 1
            core = self._core
            # The same test as the ring's (slot and data area), so the ring does not send the reader back here.
            oldest = max(core.oldest_retained(core.latest()), self._first_seq)
            if seq >= oldest:
                self._end_replay()
                return False
            until = self._history.final_through(oldest)
            if until < seq:  # the flusher has not yet accounted for seq: it may still write it
                self._publish_progress()
                if not self._history.pause(deadline):
                    return None
                continue
            self._replay_walk = self._history.walk(self._state.cursor, until)
            self._replay_until = until

    def _replay_steps(self, max_events: int, timeout: float | None, ring_many):
        """Up to `max_events` RawRecords from the files, counted as read; [] on timeout; or, once the ring holds
        the next seq, what `ring_many` (a class method) gives."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            walk = self._replay_ready(deadline)
            if not walk:
                return [] if walk is None else ring_many(self, max_events, _left(deadline))
            try:
                steps = list(islice(walk, max_events))
            except BaseException:
                self._stop_walk()  # not done: the next read starts again from the cursor
                raise
            if len(steps) < max_events:  # its last: the next read accounts for the rest of its bound
                self._replay_walk = None
                walk.close()
            if steps:
                break
        dropped = sum(map(_step_dropped, steps))
        delivered = len(steps) - (sum(1 for step in steps if step.dropped) if dropped else 0)
        last_seq = steps[-1].seq
        state = self._state
        state.filtered += last_seq - state.cursor - delivered - dropped
        state.delivered += delivered
        state.dropped += dropped
        state.cursor = last_seq
        state.unpublished += len(steps)
        if state.unpublished >= state.progress_every:
            self._publish_progress()
        return steps

    def _replay_read_raw_many(self, max_events: int = 1024, timeout: float | None = None) -> list[RawRecord]:
        check_max_events(max_events)
        if not self._replaying:  # a caller holding this bound method after the replay ended
            return type(self).read_raw_many(self, max_events, timeout)
        return self._replay_steps(max_events, timeout, type(self).read_raw_many)

    def _replay_read_many(self, max_events: int = 1024, timeout: float | None = None) -> list[ReadResult]:
        check_max_events(max_events)
        if not self._replaying:
            return type(self).read_many(self, max_events, timeout)
        steps = self._replay_steps(max_events, timeout, type(self).read_many)
        if not steps or type(steps[0]) is ReadResult:  # from the ring
            return steps
        if not any(map(_step_dropped, steps)):
            # The common case, in one msgspec call; any line that is not its seq's envelope: one by one below.
            results = _decoded_results(steps)
            if results is not None:
                return results
        results = []
        append = results.append
        for step in steps:
            if step.dropped:
                append(ReadResult(dropped=step.dropped, dropped_from=step.dropped_from, dropped_to=step.dropped_to))
            else:
                append(self._replay_decoded(step))
        return results

    def _replay_read(self, timeout: float | None = None) -> ReadResult | None:
        walk = self._replay_walk
        if walk is None:
            if not self._replaying:
                return type(self).read(self, timeout)
            steps = self._replay_steps(1, timeout, _ring_read_one)
            if not steps:
                return None
            step = steps[0]
            if type(step) is ReadResult:  # from the ring
                return step
        else:
            try:
                step = next(walk, None)
            except BaseException:
                self._stop_walk()
                raise
            if step is None:  # its last: the next read accounts for the rest of its bound
                self._replay_walk = None
                walk.close()
                return self._replay_read(timeout)
            state = self._state
            cursor = state.cursor
            seq = step.seq
            if not step.dropped and seq == cursor + 1:  # the common case, in one call
                if state.took(seq):
                    self._publish_progress()
            else:
                if step.dropped:
                    state.dropped += step.dropped
                    state.filtered += step.dropped_from - 1 - cursor
                else:
                    state.delivered += 1
                    state.filtered += seq - 1 - cursor
                state.cursor = seq
                state.unpublished += 1
                if state.unpublished >= state.progress_every:
                    self._publish_progress()
        if step.dropped:
            return ReadResult(dropped=step.dropped, dropped_from=step.dropped_from, dropped_to=step.dropped_to)
        try:  # _replay_decoded, inline: this is the per-event path of a decoding replay
            envelope = _decode(step.payload)
        except msgspec.DecodeError:
            return self._replay_decoded(step)
        if envelope.seq != step.seq:
            return self._replay_decoded(step)
        return ReadResult(envelope)

    def _replay_decoded(self, step: RawRecord) -> ReadResult:
        """A line of the files as the ring's read gives it: decoded, or (not its seq's envelope) a drop of one."""
        envelope = decode_checked(step.payload, step.seq)
        if envelope is None:
            self._state.delivered -= 1
            self._state.dropped += 1
            return ReadResult(dropped=1, dropped_from=step.seq, dropped_to=step.seq)
        return ReadResult(envelope)


def _decoded_results(steps: list[RawRecord]) -> list[ReadResult] | None:
    """The events of `steps` (no drops) as ReadResults, their lines decoded as one JSON array; None if that fails
    or any is not its seq's envelope (then each line is decoded alone, so a torn one is found as it always was).

    The cyclic GC is paused meanwhile: every object made here survives until the caller takes the batch, so a
    collection could free nothing, only scan the batch (and, as it moves to older generations, the whole heap)."""
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        envelopes = _decode_list(b"[" + b",".join(map(_step_payload, steps)) + b"]")
        if len(envelopes) != len(steps) or list(map(_envelope_seq, envelopes)) != list(map(_step_seq, steps)):
            return None
        return list(map(ReadResult, envelopes))
    except msgspec.DecodeError:
        return None
    finally:
        if paused:
            gc.enable()


_step_dropped = attrgetter("dropped")
_step_payload = attrgetter("payload")
_step_seq = _envelope_seq = attrgetter("seq")


def _replay_marker(timeout=None) -> int:
    """``_take`` while the replay reads the files: 0, the marker of a hand-over."""
    return 0


def _ring_read_one(reader, max_events: int, timeout: float | None) -> list:
    """``Reader.read`` shaped as a batch of at most one (for the replay's hand-over back to the ring)."""
    result = type(reader).read(reader, timeout)
    return [] if result is None else [result]


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


_decode = decode_envelope
_decode_list = msgspec.json.Decoder(list[Envelope]).decode
