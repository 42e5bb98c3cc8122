"""What this installation of shmring can do here: ``shmring doctor``.

Rules:
- Only reads: it creates no ring and writes nothing.
- Each check says what was found and, when it is a problem, what to do.
  ``problems`` lists what stops shmring from working here (the memory model,
  no /dev/shm); a missing accelerator only makes it slower, so it is a note.
"""

import importlib.metadata
import platform

from . import __version__
from .errors import UnsupportedPlatform
from .layout import ring_bytes
from .ring import check_memory_model, hotpath, hotpath_missing
from .segment import dev_shm_space
from .session import DEFAULT_CAPACITY, DEFAULT_DATA_BYTES

__all__ = ["diagnose", "LIBRARIES"]

LIBRARIES = ("msgspec", "posix_ipc", "psutil", "websockets")


def diagnose() -> dict:
    """Every check as plain data (what ``shmring doctor --json`` prints)."""
    problems = []
    try:
        check_memory_model()
        memory_model = dict(supported=True, detail=f"{platform.machine()}: x86-64 store ordering (TSO), supported")
    except UnsupportedPlatform as exc:
        memory_model = dict(supported=False, detail=str(exc))
        problems.append(str(exc))
    space = dev_shm_space()
    default_ring = ring_bytes(DEFAULT_CAPACITY, DEFAULT_DATA_BYTES)
    if space is None:
        dev_shm = dict(free_bytes=None, total_bytes=None, default_ring_bytes=default_ring, default_ring_fits=False)
        problems.append("there is no /dev/shm: shmring needs POSIX shared memory (a tmpfs on /dev/shm)")
    else:
        dev_shm = dict(free_bytes=space[0], total_bytes=space[1], default_ring_bytes=default_ring,
                       default_ring_fits=space[0] >= default_ring)
    accelerator = dict(in_use=hotpath is not None, path=getattr(hotpath, "__file__", None), why_not=hotpath_missing)
    return dict(
        shmring=__version__,
        python=platform.python_version(),
        machine=platform.machine(),
        accelerator=accelerator,
        memory_model=memory_model,
        dev_shm=dev_shm,
        libraries={name: _version(name) for name in LIBRARIES},
        problems=problems,
    )


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
