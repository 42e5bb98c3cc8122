"""Resume: which capture session a restarted writer continues, from which seq, after draining a dead writer's ring.

Rules:
- The session continued is the newest in the log directory (``Archive.sessions()``);
  if the directory holds none, the one a dead writer's ring under the name holds;
  if neither exists there is nothing to resume (None: the caller starts a new session).
- A ring under the name whose writer lives is never touched (RingBusy).
- A dead writer's ring of the session continued is drained into the directory
  first, by a Flusher resuming after the directory's checkpoint: what the files
  already hold is not written again, and what the gating flusher had not yet
  written is still in the ring. So every event acknowledged with a seq ends up
  in the files exactly once. A flusher still attached to that ring (its writer
  was killed, the flusher lives on) is waited for first: it drains the ring and
  exits on its own; two flushers never write the directory at once.
- A dead writer's ring holding events of another session is left alone
  (ResumeError): draining it would mix them into this session's files. One
  holding no events is just replaced.
- The next seq is one after the highest seq any earlier writer assigned, by
  every record there is: the files' lines, ``_gaps.jsonl``, the checkpoint, and
  the dead ring (a slot its writer left half-written included: the drain
  records it as a gap).
- One resume at a time per directory: ``resuming(directory)`` holds an
  exclusive lock on it from before the drain until the caller has created the
  new ring (after that, a second resumer meets a live writer); a second one
  meanwhile is refused, never run beside it.
- Nothing here prints: progress goes to the ``log`` callback.
"""

import contextlib
import fcntl
import json
import os
import time
from typing import NamedTuple

from .archive import Archive
from .errors import IncompatibleRing, ResumeError, RingBusy, RingNotFound
from .flusher import Flusher
from .logdir import CHECKPOINT_FILE, GAPS_FILE, LogDirectory
from .segment import validate_ring_name
from .stats import ring_stats

__all__ = ["Resumption", "prepare_resume", "resuming", "FLUSHER_EXIT_WAIT_S"]

FLUSHER_EXIT_WAIT_S = 30.0
"""How long to wait for a live flusher of a dead writer's ring to finish draining it and exit."""
_POLL_S = 0.05


class Resumption(NamedTuple):
    """What a restarted writer continues: pass these to ``CaptureSession.create``."""

    capture_session_id: str
    first_seq: int
    drained: int
    """Lines the drain of a dead writer's ring wrote into the directory (0 if there was none)."""
    dead_ring: bool
    """Whether a dead writer's ring of this session was found (and drained)."""


@contextlib.contextmanager
def resuming(directory: str):
    """Hold the directory's resume lock (see the module rules); ResumeError if another process holds it."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ResumeError(f"another `serve --resume` is resuming the session in {directory} right now; "
                              "wait until it serves, or stop it, then retry", path=directory) from None
        yield
    finally:
        os.close(fd)


def prepare_resume(name: str, directory: str, *, fsync: str = "batch", group_readable: bool = False,
                   wait_s: float = FLUSHER_EXIT_WAIT_S, log=lambda msg: None) -> Resumption | None:
    """Decide what to continue in log directory `directory` (already checked) for ring `name`; drain a dead
    writer's ring of that session into it. None if there is no session to continue.

    Raises RingBusy if a live writer owns the ring, ResumeError if a dead writer's
    ring must not be drained here or a flusher keeps draining it past `wait_s`.
    """
    validate_ring_name(name)
    sessions = Archive(directory).sessions()
    newest = sessions[-1] if sessions else None
    ring = _dead_ring(name, log)
    if ring is not None and newest is not None and ring["capture_session_id"] != newest.capture_session_id:
        if ring["latest_seq"] >= ring["first_seq"]:
            raise ResumeError(
                f"ring {name!r} was left by a dead writer (pid {ring['writer']['pid']}) holding seqs up to "
                f"{ring['latest_seq']} of capture session {ring['capture_session_id']}, not of "
                f"{newest.capture_session_id}, the newest in {directory}; flush it where that session belongs "
                f"(shmring flush {name} DIR) or remove it (shmring gc), then retry",
                name=name, path=directory, pid=ring["writer"]["pid"], capture_session_id=ring["capture_session_id"])
        log(f"replacing ring {name!r} left by a dead writer: it holds no events")
        ring = None
    if ring is not None:
        session = ring["capture_session_id"]
    elif newest is not None:
        session = newest.capture_session_id
    else:
        return None
    last = newest.last_seq if newest is not None and newest.capture_session_id == session else 0
    drained = 0
    if ring is not None:
        _wait_for_flushers(name, directory, wait_s, log)
        ring_last, drained = _drain(name, directory, session, ring, fsync, group_readable)
        last = max(last, ring_last)
        if drained:
            log(f"drained {drained} events of capture session {session} left in ring {name!r} by its dead writer "
                f"into {directory}")
    last = max(last, _recorded_through(directory, session, group_readable))
    return Resumption(session, last + 1, drained, ring is not None)


def _dead_ring(name: str, log) -> dict | None:
    """The stats of ring `name` if a dead writer left it; None if there is none; RingBusy if its writer lives."""
    try:
        ring = ring_stats(name)
    except RingNotFound:
        return None
    except IncompatibleRing as exc:  # half-built, or another layout: nothing this version could drain
        log(f"{exc}; it is replaced, not drained")
        return None
    writer = ring["writer"]
    if writer["alive"]:
        raise RingBusy(f"ring {name!r} is served by a live writer (pid {writer['pid']}); stop it before resuming "
                       "its session, or choose another name", name=name, pid=writer["pid"])
    return ring


def _wait_for_flushers(name: str, directory: str, wait_s: float, log) -> None:
    """Until no live flusher is attached to the dead writer's ring (it drains and exits by itself)."""
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        live = [r["pid"] for r in ring_stats(name)["readers"] if r["role"] == "flusher" and r["alive"]]
        if not live:
            return
        if time.monotonic() >= deadline:
            raise ResumeError(
                f"a flusher (pid {live[0]}) is still attached to ring {name!r}, whose writer died, after "
                f"{wait_s:g} s; it exits once it has drained the ring: wait for it (or stop it), then retry",
                name=name, path=directory, pid=live[0])
        if not said:
            log(f"waiting for the flusher (pid {live[0]}) of ring {name!r}, whose writer died, to drain it and exit")
            said = True
        time.sleep(_POLL_S)


def _drain(name: str, directory: str, session: str, ring: dict, fsync: str,
           group_readable: bool) -> tuple[int, int]:
    """(the last seq the dead ring assigned, lines written): flush what it holds beyond the directory's checkpoint."""
    if ring["latest_seq"] < _checkpoint(directory, session, group_readable):
        return ring["latest_seq"], 0  # the files are ahead of this ring: nothing in it is missing from them
    with Flusher(name, directory, fsync=fsync, group_readable=group_readable) as flusher:
        stats = flusher.run()  # to the end of the ring: WriterGone (or RingClosed) once it is drained
    return stats["last_seq"], stats["lines"]


def _checkpoint(directory: str, session: str, group_readable: bool) -> int:
    """The checkpoint's seq if it is this session's, else 0."""
    checkpoint = _read_json_lines(directory, CHECKPOINT_FILE, group_readable)
    return max((c["seq"] for c in checkpoint if c.get("capture_session_id") == session), default=0)


def _recorded_through(directory: str, session: str, group_readable: bool) -> int:
    """The highest seq of `session` the checkpoint or ``_gaps.jsonl`` accounts for (0 if none)."""
    gaps = _read_json_lines(directory, GAPS_FILE, group_readable)
    recorded = max((g["to_seq"] for g in gaps if g.get("capture_session_id") == session), default=0)
    return max(recorded, _checkpoint(directory, session, group_readable))


def _read_json_lines(directory: str, name: str, group_readable: bool) -> list[dict]:
    """The JSON objects, one a line, of the flusher's file `name` whose seq fields are ints; a torn line is skipped."""
    log_dir = LogDirectory(directory, group_readable)
    try:
        with log_dir.open_file(name, "rb") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    finally:
        log_dir.close()
    out = []
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and all(type(obj.get(k, 0)) is int for k in ("seq", "to_seq")):
            out.append(obj)
    return out
