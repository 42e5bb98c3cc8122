"""Named shared memory and semaphores: the only module that touches posix_ipc and mmap.

Rules:
- A ring NAME owns ``/shmring.NAME`` (the ring), ``/shmring.NAME+readers``
  (the registry) and semaphores ``/shmring.NAME+wakeI``, one per registry entry.
  Names may not contain ``+``, so no ring's objects collide with another's.
- ``close`` releases this process's handle; ``unlink`` removes the name once.
  Both are idempotent.
- File descriptors are closed as soon as they are not needed, except the
  registry's, which readers keep for ``flock``: the kernel drops that lock
  when its holder dies, so a killed reader never wedges the registry.
"""

import contextlib
import errno
import fcntl
import mmap
import os
import re

import posix_ipc

from .errors import ConfigError, RingNotFound
from .layout import MAX_READERS

__all__ = [
    "Mapping",
    "validate_ring_name",
    "ring_shm_name",
    "registry_shm_name",
    "wake_sem_name",
    "create_segment",
    "open_segment",
    "ring_not_found",
    "unlink_segment",
    "WakeSemaphore",
    "unlink_ring_objects",
    "unlink_registry_objects",
    "list_ring_names",
    "dev_shm_space",
]

_RING_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_SHM_DIR = "/dev/shm"
_PREFIX = "shmring."


def validate_ring_name(name: object) -> str:
    if not isinstance(name, str) or not _RING_NAME.fullmatch(name):
        raise ConfigError(
            f"invalid ring name {name!r}: use 1-100 characters from letters, digits, "
            "'_', '-' and '.', starting with a letter or digit"
        )
    return name


def ring_shm_name(name: str) -> str:
    return f"/{_PREFIX}{name}"


def registry_shm_name(name: str) -> str:
    return f"/{_PREFIX}{name}+readers"


def wake_sem_name(name: str, index: int) -> str:
    return f"/{_PREFIX}{name}+wake{index}"


class Mapping:
    """One mapped segment: ``buf`` is the mmap; ``fd`` is kept only if asked."""

    __slots__ = ("buf", "fd", "size")

    def __init__(self, buf: mmap.mmap, fd: int | None, size: int):
        self.buf = buf
        self.fd = fd
        self.size = size

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


def create_segment(shm_name: str, size: int, *, keep_fd: bool = False) -> Mapping:
    """Create a new segment exclusively; raises FileExistsError if the name is taken."""
    try:
        shm = posix_ipc.SharedMemory(shm_name, posix_ipc.O_CREX, mode=0o600, size=size)
    except posix_ipc.ExistentialError:
        raise FileExistsError(f"shared-memory segment {shm_name} exists") from None
    except posix_ipc.PermissionsError:
        raise _permission_denied(shm_name) from None
    try:
        _reserve(shm.fd, shm_name, size)
        buf = mmap.mmap(shm.fd, size)
    except BaseException:
        shm.close_fd()
        posix_ipc.unlink_shared_memory(shm_name)
        raise
    if keep_fd:
        return Mapping(buf, shm.fd, size)
    shm.close_fd()
    return Mapping(buf, None, size)


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
            "shared memory (e.g. docker run --shm-size)"
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


def _mib(size: int) -> str:
    return f"{size / (1 << 20):,.1f} MiB"


def open_segment(shm_name: str, *, writable: bool, keep_fd: bool = False) -> Mapping:
    """Map an existing segment; raises RingNotFound if the name does not exist."""
    try:
        shm = posix_ipc.SharedMemory(shm_name, read_only=not writable)
    except posix_ipc.ExistentialError:
        raise ring_not_found(_ring_of(shm_name)) from None
    except posix_ipc.PermissionsError:
        raise _permission_denied(shm_name) from None
    try:
        size = os.fstat(shm.fd).st_size
        if size == 0:
            raise RingNotFound(f"ring {_ring_of(shm_name)!r} is still being created; retry in a moment "
                               "(`shmring gc` removes it if its writer died)")
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        buf = mmap.mmap(shm.fd, size, mmap.MAP_SHARED, prot)
    except BaseException:
        shm.close_fd()
        raise
    if keep_fd:
        return Mapping(buf, shm.fd, size)
    shm.close_fd()
    return Mapping(buf, None, size)


def ring_not_found(name: str) -> RingNotFound:
    """The one message for a ring that is not there, wherever it is looked for."""
    return RingNotFound(f"no ring {name!r} on this machine; `shmring ls` lists the rings, and `shmring serve {name}` "
                        f"(or CaptureSession.create({name!r})) starts one")


def _ring_of(shm_name: str) -> str:
    """The ring NAME of any of its objects' names (``/shmring.NAME``, ``/shmring.NAME+readers``)."""
    return shm_name.removeprefix(f"/{_PREFIX}").split("+", 1)[0]


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
    """Remove every name a ring may own. Open handles stay valid until closed."""
    unlink_segment(ring_shm_name(name))
    unlink_registry_objects(name)


def unlink_registry_objects(name: str) -> None:
    """Remove the registry and the wake semaphores of ring `name`."""
    unlink_segment(registry_shm_name(name))
    for index in range(MAX_READERS):
        with contextlib.suppress(posix_ipc.ExistentialError):
            posix_ipc.unlink_semaphore(wake_sem_name(name, index))


def list_ring_names() -> list[str]:
    """Names of the ring segments on this machine, sorted."""
    try:
        entries = os.listdir(_SHM_DIR)
    except FileNotFoundError:
        return []
    return sorted(e[len(_PREFIX):] for e in entries if e.startswith(_PREFIX) and "+" not in e)
