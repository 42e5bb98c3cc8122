"""Process identity and liveness: the only module that touches psutil.

Rules:
- A process is identified by its pid *and* its start time, so a recycled
  pid never counts as alive.
- A zombie (killed but not yet reaped) is dead.
"""

import os

import psutil

__all__ = ["ProcessIdentity", "current_identity", "is_alive"]

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
