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

import os
import time
from collections.abc import Callable, Iterator

from .archive import Archive
from .errors import ConfigError
from .filters import Filter
from .liveness import is_alive

__all__ = ["History"]

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
