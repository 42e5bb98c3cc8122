"""Named shared memory and semaphores: the only module that touches posix_ipc and mmap.

Rules:
- A ring NAME owns ``/shmring.NAME`` (the ring), ``/shmring.NAME+readers``
  (the registry) and semaphores ``/shmring.NAME+wakeI``, one per registry entry.
  Names may not contain ``+``, so no ring's objects collide with another's.
- ``close`` releases this process's handle; ``unlink`` removes the name once.
  Both are idempotent.
- A ring's control socket (``serve --cdp``'s producer control) is
  ``/dev/shm/shmring.NAME+control``, so a command needs only the ring's name
  to find it, and ``serve --cdp`` without ``--socket`` takes its ingest
  socket at ``/dev/shm/shmring.NAME+ingest``; a name too long for a socket
  path gets a hashed one.
- The writer's and each reader's mapping of a ring is populated when made
  (``populate``): the first lap takes no page fault per 4 KiB page, and a
  68 MB ring costs ~25 ms more to create and ~8 ms more to attach to. A
  reader may opt out (``Reader.attach(populate=False)``, the edge's streams).
- Every ``/dev/shm`` path is built here: other modules ask ``ring_exists``,
  ``ring_age_s`` and ``orphaned_ring_names`` rather than look for files.
- File descriptors are closed as soon as they are not needed, except the
  registry's, which readers keep for ``flock``: the kernel drops that lock
  when its holder dies, so a killed reader never wedges the registry.
"""

import contextlib
import errno
import hashlib
import fcntl
import mmap
import os
import re
import time

import posix_ipc

from .errors import ConfigError, RingNotFound
from .layout import MAX_READERS

__all__ = [
    "Mapping",
    "validate_ring_name",
    "ring_shm_name",
    "ring_name_of",
    "registry_shm_name",
    "wake_sem_name",
    "create_segment",
    "open_segment",
    "unlink_segment",
    "WakeSemaphore",
    "unlink_ring_objects",
    "unlink_registry_objects",
    "list_ring_names",
    "ring_not_found",
    "dev_shm_space",
    "ring_exists",
    "ring_age_s",
    "orphaned_ring_names",
    "unlink_orphan",
    "control_socket_path",
    "default_ingest_socket_path",
]

_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
"""Linux: map the pages at mmap time (0 where there is no such flag: they are mapped at first touch)."""

_RING_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_SHM_DIR = "/dev/shm"
_PREFIX = "shmring."
_REGISTRY_OR_WAKE = re.compile(r"(?:sem\.)?shmring\.([^+]+)\+(?:readers|wake(\d+))")
"""An entry of /dev/shm holding a ring's registry (``shmring.NAME+readers``) or a wake semaphore
(``sem.shmring.NAME+wakeI``, as glibc names POSIX semaphores)."""


def validate_ring_name(name: object) -> str:
    if not isinstance(name, str) or not _RING_NAME.fullmatch(name):
        raise ConfigError(
            f"invalid ring name {name!r}: use 1-100 characters from letters, digits, "
            "'_', '-' and '.', starting with a letter or digit"
        )
    return name


def ring_shm_name(name: str) -> str:
    return f"/{_PREFIX}{name}"


def ring_name_of(shm_name: str) -> str | None:
    """The ring that segment or semaphore `shm_name` belongs to (None if it is not a shmring name)."""
    if not shm_name.startswith(f"/{_PREFIX}"):
        return None
    return shm_name[len(_PREFIX) + 1:].split("+", 1)[0]


def registry_shm_name(name: str) -> str:
    return f"/{_PREFIX}{name}+readers"


def wake_sem_name(name: str, index: int) -> str:
    return f"/{_PREFIX}{name}+wake{index}"


class Mapping:
    """One mapped segment: ``buf`` is the mmap; ``fd`` is kept only if asked; ``shm_name`` is its name."""

    __slots__ = ("buf", "fd", "size", "shm_name")

    def __init__(self, buf: mmap.mmap, fd: int | None, size: int, shm_name: str | None = None):
        self.buf = buf
        self.fd = fd
        self.size = size
        self.shm_name = shm_name

    def close(self) -> None:
        if self.buf is not None:
            try:
                self.buf.close()
            except BufferError:
                # A caller still holds a view; the mapping goes when it does.
                pass
            self.buf = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    @contextlib.contextmanager
    def locked(self):
        """Exclusive flock on the segment; released by the kernel if we die."""
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)


def create_segment(shm_name: str, size: int, *, keep_fd: bool = False, populate: bool = False) -> Mapping:
    """Create a new segment exclusively; raises FileExistsError if the name is taken.

    With `populate`, the mapping's pages are mapped now (see ``open_segment``).
    """
    try:
        shm = posix_ipc.SharedMemory(shm_name, posix_ipc.O_CREX, mode=0o600, size=size)
    except posix_ipc.ExistentialError:
        raise FileExistsError(f"shared-memory segment {shm_name} exists") from None
    except posix_ipc.PermissionsError:
        raise _permission_denied(shm_name) from None
    try:
        _reserve(shm.fd, shm_name, size)
        buf = mmap.mmap(shm.fd, size, mmap.MAP_SHARED | (_POPULATE if populate else 0))
    except BaseException:
        shm.close_fd()
        posix_ipc.unlink_shared_memory(shm_name)
        raise
    if keep_fd:
        return Mapping(buf, shm.fd, size, shm_name)
    shm.close_fd()
    return Mapping(buf, None, size, shm_name)


def _reserve(fd: int, shm_name: str, size: int) -> None:
    """Commit the segment's pages now, so that touching them later can never raise SIGBUS.

    A tmpfs segment is sparse: without this, the first store to a page that
    /dev/shm has no room for kills the writer with SIGBUS, silently.
    """
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EFBIG, errno.ENOMEM):
            raise
        free = _free_bytes()
        raise ConfigError(
            f"shared-memory segment {shm_name} needs {_mib(size)} but {_SHM_DIR} has {_mib(free)} free; lower "
            "the ring's capacity or data_bytes (--capacity / --data-bytes), or give the machine or container more "
            "shared memory (e.g. docker run --shm-size)", name=ring_name_of(shm_name)
        ) from None


def _free_bytes() -> int:
    space = dev_shm_space()
    return 0 if space is None else space[0]


def dev_shm_space() -> tuple[int, int] | None:
    """(free, total) bytes of /dev/shm, or None if there is no /dev/shm."""
    try:
        st = os.statvfs(_SHM_DIR)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def ring_not_found(name: str) -> RingNotFound:
    """The one message for a ring that is not there, wherever it is looked for."""
    return RingNotFound(f"no ring {name!r} on this machine; `shmring ls` lists the rings, and `shmring serve {name}` "
                        f"(or CaptureSession.create({name!r})) starts one", name=name)


def _mib(size: int) -> str:
    return f"{size / (1 << 20):,.1f} MiB"


def open_segment(shm_name: str, *, writable: bool, keep_fd: bool = False, populate: bool = False) -> Mapping:
    """Map an existing segment; raises RingNotFound if the name does not exist.

    With `populate`, every page is mapped now rather than at its first touch
    (a fault per 4 KiB page, ~1 µs here: a 68 MB ring's first lap costs its
    writer ~20 ms of faults and each reader ~9 ms). For the writer and the
    readers, which walk the whole ring; not for a look at its header.
    """
    try:
        shm = posix_ipc.SharedMemory(shm_name, read_only=not writable)
    except posix_ipc.ExistentialError:
        raise ring_not_found(ring_name_of(shm_name)) from None
    except posix_ipc.PermissionsError:
        raise _permission_denied(shm_name) from None
    try:
        size = os.fstat(shm.fd).st_size
        if size == 0:
            raise RingNotFound(f"ring {ring_name_of(shm_name)!r} is still being created; retry in a moment "
                               "(`shmring gc` removes it if its writer died)", name=ring_name_of(shm_name))
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        buf = mmap.mmap(shm.fd, size, mmap.MAP_SHARED | (_POPULATE if populate else 0), prot)
    except BaseException:
        shm.close_fd()
        raise
    if keep_fd:
        return Mapping(buf, shm.fd, size, shm_name)
    shm.close_fd()
    return Mapping(buf, None, size, shm_name)


def _permission_denied(shm_name: str) -> PermissionError:
    return PermissionError(errno.EACCES, "permission denied", f"/dev/shm{shm_name}")


def unlink_segment(shm_name: str) -> None:
    with contextlib.suppress(posix_ipc.ExistentialError):
        posix_ipc.unlink_shared_memory(shm_name)


class WakeSemaphore:
    """The semaphore a sleeping reader waits on and the writer posts; created on first use."""

    __slots__ = ("_sem",)

    def __init__(self, name: str, index: int):
        self._sem = posix_ipc.Semaphore(wake_sem_name(name, index), posix_ipc.O_CREAT, mode=0o600, initial_value=0)

    def post(self) -> None:
        self._sem.release()

    def wait(self, timeout_s: float) -> bool:
        """True if posted, False after `timeout_s` seconds."""
        try:
            self._sem.acquire(timeout_s)
            return True
        except posix_ipc.BusyError:
            return False
        except posix_ipc.SignalError:
            return True  # a signal interrupted the wait: callers re-check, as after a wake

    def close(self) -> None:
        self._sem.close()


def unlink_ring_objects(name: str) -> None:
    """Remove every name a ring may own (its control socket too). Open handles stay valid until closed."""
    unlink_segment(ring_shm_name(name))
    unlink_registry_objects(name)
    for path in (control_socket_path(name), default_ingest_socket_path(name)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def unlink_registry_objects(name: str) -> None:
    """Remove the registry and the wake semaphores of ring `name`."""
    unlink_segment(registry_shm_name(name))
    for index in range(MAX_READERS):
        with contextlib.suppress(posix_ipc.ExistentialError):
            posix_ipc.unlink_semaphore(wake_sem_name(name, index))


def _entries() -> list[str]:
    try:
        return os.listdir(_SHM_DIR)
    except FileNotFoundError:
        return []


def list_ring_names() -> list[str]:
    """Names of the ring segments on this machine, sorted."""
    return sorted(e[len(_PREFIX):] for e in _entries() if e.startswith(_PREFIX) and "+" not in e)


def _ring_path(name: str) -> str:
    return os.path.join(_SHM_DIR, ring_shm_name(name)[1:])


def ring_exists(name: str) -> bool:
    """True while the ring segment of `name` exists (complete or not)."""
    return os.path.exists(_ring_path(name))


def ring_age_s(name: str) -> float:
    """Seconds since the ring segment of `name` was created (its inode last changed); RingNotFound if none."""
    try:
        created = os.stat(_ring_path(name)).st_ctime
    except FileNotFoundError:
        raise ring_not_found(name) from None
    return time.time() - created


def orphaned_ring_names() -> list[str]:
    """Names whose registry or wake semaphores are left without a ring segment, sorted."""
    names = {m[1] for m in map(_REGISTRY_OR_WAKE.fullmatch, _entries()) if m}
    return sorted(name for name in names if not ring_exists(name))


def unlink_orphan(name: str) -> bool:
    """Remove the registry and wake semaphores of `name` unless its ring exists; True if any was removed.

    Objects another user owns are left alone.
    """
    if ring_exists(name):
        return False
    removed = False
    for match in map(_REGISTRY_OR_WAKE.fullmatch, _entries()):
        if match is None or match[1] != name:
            continue
        try:
            if match[2] is None:
                posix_ipc.unlink_shared_memory(registry_shm_name(name))
            else:
                posix_ipc.unlink_semaphore(wake_sem_name(name, int(match[2])))
        except (posix_ipc.ExistentialError, posix_ipc.PermissionsError):
            continue
        removed = True
    return removed


_SOCKET_PATH_MAX = 107
"""sun_path holds 108 bytes, the terminating NUL included."""


def _socket_path(name: str, role: str) -> str:
    path = os.path.join(_SHM_DIR, f"{_PREFIX}{name}+{role}")
    if len(path.encode()) <= _SOCKET_PATH_MAX:
        return path
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    return os.path.join(_SHM_DIR, f"{_PREFIX}{name[:48]}+{role}.{digest}")


def control_socket_path(name: str) -> str:
    """Where ``serve NAME`` listens for producer control (see ``shmring.control``)."""
    return _socket_path(name, "control")


def default_ingest_socket_path(name: str) -> str:
    """The ingest socket of ``serve NAME --cdp`` when no ``--socket`` is given."""
    return _socket_path(name, "ingest")
