"""Process identity and liveness: the only module that touches psutil.

Rules:
- A process is identified by its pid *and* its start time, so a recycled
  pid never counts as alive.
- A zombie (killed but not yet reaped) is dead.
"""

import math
import os
import select
import time

import psutil

__all__ = ["ProcessIdentity", "ProcessWatch", "current_identity", "is_alive", "maps_file", "command_line"]

# psutil derives create_time from boot time plus clock ticks: it is stable for
# one process, and two processes sharing a pid are started far more than this
# apart.
_START_TIME_TOLERANCE_S = 0.05

ProcessIdentity = tuple[int, float]

_own_identity: ProcessIdentity | None = None


def current_identity() -> ProcessIdentity:
    """(pid, start time) of this process; cached, refreshed after fork."""
    global _own_identity
    pid = os.getpid()
    if _own_identity is None or _own_identity[0] != pid:
        _own_identity = (pid, psutil.Process(pid).create_time())
    return _own_identity


def is_alive(pid: int, start_time: float) -> bool:
    """True if the process `pid` that started at `start_time` still runs."""
    if pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - start_time) > _START_TIME_TOLERANCE_S:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def maps_file(pid: int, start_time: float, fragment: str) -> bool | None:
    """Whether process `pid` (that started at `start_time`) has a file whose path contains `fragment` mapped.

    None if that cannot be told: the process is gone, or is another user's.
    """
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - start_time) > _START_TIME_TOLERANCE_S:
            return None
        return any(fragment in m.path for m in proc.memory_maps(grouped=True))
    except psutil.Error:
        return None


def command_line(pid: int, start_time: float) -> list[str] | None:
    """The arguments process `pid` (that started at `start_time`) runs with; None if that cannot be told."""
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - start_time) > _START_TIME_TOLERANCE_S:
            return None
        return proc.cmdline()
    except psutil.Error:
        return None


class ProcessWatch:
    """Cheap, repeated liveness checks of one process (a reader watching its writer).

    On Linux a pidfd refers to the very process it was opened on (pid reuse
    cannot fool it) and turns readable when that process ends, so each check
    is one ``poll`` syscall instead of a psutil ``Process``. The identity is
    checked once, after the pidfd is open. Where pidfds are missing, a cached
    ``psutil.Process`` (which compares start times) does the same job.
    """

    __slots__ = ("pid", "_fd", "_poll", "_proc", "_dead", "_seen_alive_at")

    def __init__(self, pid: int, start_time: float):
        self.pid = pid
        self._fd = self._poll = self._proc = None
        self._dead = False
        self._seen_alive_at = -math.inf
        try:
            self._fd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pass
        if not is_alive(pid, start_time):  # checked after the open: the pidfd is that process's
            self._dead = True
            self.close()
            return
        if self._fd is not None:
            self._poll = select.poll()
            self._poll.register(self._fd, select.POLLIN)
        else:
            try:
                self._proc = psutil.Process(pid)
            except psutil.Error:
                self._dead = True

    def alive(self, max_age_s: float = 0.0) -> bool:
        """Whether the process lives; with `max_age_s`, a look that found it alive at most that long ago answers
        without a new one (a reader that looks before every sleep need not make a syscall per event)."""
        if self._dead:
            return False
        if max_age_s:
            now = time.monotonic()
            if now - self._seen_alive_at < max_age_s:
                return True
            self._seen_alive_at = now
        if self._poll is not None:
            self._dead = bool(self._poll.poll(0))
        elif self._proc is not None:
            try:
                self._dead = not self._proc.is_running() or self._proc.status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                self._dead = True
            except psutil.AccessDenied:
                pass
        return not self._dead

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._poll = None
