"""The flusher's log directory: checked once, then every file in it opened safely.

Rules:
- The directory must belong to this user and not be writable by group or
  others (or another user could plant links in it). A new one is created
  0700 (0750 with ``group_readable``), its files 0600 (0640), exactly,
  whatever the umask; an existing one keeps its mode.
- Every file is opened relative to the directory's fd with ``O_NOFOLLOW``: a
  symlink or other non-regular file where one of the flusher's files belongs
  is a FlushError, never a target, and is found before anything is written
  or cut.
- Temporary files are created exclusively; a rotation never replaces a file.
"""

import errno
import os
import re
import stat

from .errors import FlushError
from .schema import CATEGORY_PATTERN

__all__ = ["GAPS_FILE", "CHECKPOINT_FILE", "CHECKPOINT_TMP", "LogDirectory", "prepare_log_directory"]

GAPS_FILE = "_gaps.jsonl"
CHECKPOINT_FILE = "_checkpoint.json"
CHECKPOINT_TMP = CHECKPOINT_FILE + ".tmp"
_OWN_FILE = re.compile(rf"{CATEGORY_PATTERN}(\.\d+)?\.jsonl")


def _modes(group_readable: bool) -> tuple[int, int]:
    """(directory mode, file mode) of what the flusher creates."""
    return (0o750, 0o640) if group_readable else (0o700, 0o600)


def _open_directory(path: str, group_readable: bool) -> int:
    """An fd of log directory `path`, created if missing, after checking that no other user controls it."""
    path = path.rstrip(os.sep) or os.sep  # a trailing slash would follow a symlink
    dir_mode = _modes(group_readable)[0]
    try:
        os.makedirs(path, dir_mode)
        created = True
    except FileExistsError:
        created = False
    except OSError as exc:
        raise _unusable_directory(path, exc) from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(path):
            raise FlushError(f"log directory {path} is a symbolic link; give the path of a directory you own, "
                             "or a new path") from None
        raise _unusable_directory(path, exc, path if os.path.isdir(path) else None) from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise FlushError(f"log directory {path} belongs to uid {st.st_uid}, not to this user "
                             f"(uid {os.geteuid()}), and its owner could plant links in it; use a directory of "
                             "your own, or a new path")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise FlushError(f"log directory {path} is writable by group or others (mode "
                             f"{stat.S_IMODE(st.st_mode):04o}); run `chmod go-w` on it, or use a new path")
        if created:  # exact, whatever the umask; a directory that was there keeps its mode
            os.fchmod(fd, dir_mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


_WHY = {
    errno.EROFS: "is on a read-only filesystem",
    errno.ENOSPC: "is on a filesystem with no space left",
    errno.EDQUOT: "is on a filesystem where this user's quota is used up",
    errno.ENOENT: "is on a kernel filesystem (like /proc) where no files can be created",  # in a directory that exists
    errno.EPERM: "does not let this process create files in it (a kernel filesystem like /sys, or an immutable "
                 "directory)",
}


def _unusable_directory(path: str, exc: OSError, blocked: str | None = None) -> FlushError:
    """Why log directory `path` cannot be created or used, in words, naming the part of the path in the way.

    `blocked` is that part when the caller knows it; otherwise it is the
    first part of the path that is not a directory, or else the deepest one
    that exists (where the directory could not be made).
    """
    what = f"cannot use {path} as the log directory"
    todo = "give a path in a directory you own on a writable filesystem (for example ./logs)"
    if exc.errno == errno.ENAMETOOLONG:
        return FlushError(f"{what}: the path is too long; {todo}")
    if exc.errno == errno.ELOOP:
        return FlushError(f"{what}: its path has a loop of symbolic links; {todo}")
    if blocked is None:
        blocked = os.sep
        for part in os.path.abspath(path).split(os.sep)[1:]:
            below = os.path.join(blocked, part)
            if not os.path.lexists(below):
                break
            blocked = below
            if not os.path.isdir(blocked):
                break
    if not os.path.isdir(blocked):
        kind = "a regular file" if os.path.isfile(blocked) else "not a directory"
        return FlushError(f"{what}: {blocked} is {kind}, not a directory; {todo}")
    if exc.errno == errno.EACCES:
        try:
            st = os.stat(blocked)
            owner = f" (owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})"
        except OSError:
            owner = ""
        return FlushError(f"{what}: this user (uid {os.geteuid()}) has no permission to write in {blocked}{owner}; "
                          f"{todo}")
    why = _WHY.get(exc.errno, f"refuses it ({errno.errorcode.get(exc.errno, exc.errno)})")
    return FlushError(f"{what}: {blocked} {why}; {todo}")


def prepare_log_directory(path: str | os.PathLike, *, group_readable: bool = False) -> None:
    """Create log directory `path` (0700, or 0750), or check an existing one, as a Flusher would.

    Raises FlushError if it is a symbolic link, not a directory, not owned
    by this user, writable by group or others, or refuses a new file (a
    probe file is created and removed: /proc, a read-only mount, no write
    permission), saying which part of the path is in the way and why.
    """
    path = os.fspath(path)
    fd = _open_directory(path, group_readable)
    probe = f".shmring-probe.{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=fd))
        os.unlink(probe, dir_fd=fd)
    except OSError as exc:
        raise _unusable_directory(path, exc, path) from None
    finally:
        os.close(fd)


class LogDirectory:
    """The checked log directory, held open: every file operation goes through its fd, never a symlink."""

    def __init__(self, path: str, group_readable: bool):
        self.path = path
        self.file_mode = _modes(group_readable)[1]
        self.fd = _open_directory(path, group_readable)

    def check_entries(self) -> list[str]:
        """Every entry's name; FlushError if one of the flusher's names is not a regular file."""
        names = os.listdir(self.fd)
        for name in names:
            own = name in (GAPS_FILE, CHECKPOINT_FILE, CHECKPOINT_TMP) or _OWN_FILE.fullmatch(name)
            if own and not stat.S_ISREG(os.lstat(name, dir_fd=self.fd).st_mode):
                raise self._not_a_file(name)
        return names

    def open(self, name: str, flags: int) -> int:
        """Open `name` (a file created here gets exactly the file mode); never a symlink or non-regular file."""
        # O_NONBLOCK: a FIFO planted there cannot hang the open; it is cleared once the file is known regular.
        flags |= os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            if flags & os.O_CREAT and not flags & os.O_EXCL:  # create if missing: learn whether it was
                try:
                    fd = os.open(name, flags | os.O_EXCL, self.file_mode, dir_fd=self.fd)
                    created = True
                except FileExistsError:
                    fd, created = os.open(name, flags & ~os.O_CREAT, dir_fd=self.fd), False
            else:
                fd, created = os.open(name, flags, self.file_mode, dir_fd=self.fd), bool(flags & os.O_CREAT)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENXIO):
                raise self._not_a_file(name) from None
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise self._not_a_file(name)
            os.set_blocking(fd, True)
            if created and stat.S_IMODE(st.st_mode) != self.file_mode:
                os.fchmod(fd, self.file_mode)  # the umask may have taken bits off
        except BaseException:
            os.close(fd)
            raise
        return fd

    def open_file(self, name: str, mode: str):
        """A Python file object for reading ('rb') or repairing ('rb+') `name`."""
        return os.fdopen(self.open(name, os.O_RDWR if "+" in mode else os.O_RDONLY), mode)

    def create_exclusive(self, name: str) -> int:
        """A new, empty `name` for writing; a stale one (the flusher's own, or a link) is removed first."""
        try:
            os.unlink(name, dir_fd=self.fd)  # unlink never follows a link
        except FileNotFoundError:
            pass
        return self.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL)

    def rename_new(self, src: str, dst: str) -> None:
        """Rename `src` to `dst`, which must not exist (a rotation never replaces anything)."""
        try:
            os.lstat(dst, dir_fd=self.fd)
        except FileNotFoundError:
            os.rename(src, dst, src_dir_fd=self.fd, dst_dir_fd=self.fd)
            return
        raise FlushError(f"cannot rotate {self.join(src)}: {self.join(dst)} already exists and the flusher "
                         "did not expect it; move it away and restart the flusher")

    def replace(self, src: str, dst: str) -> None:
        os.replace(src, dst, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def join(self, name: str) -> str:
        return os.path.join(self.path, name)

    def _not_a_file(self, name: str) -> FlushError:
        return FlushError(f"{self.join(name)} is a symbolic link or another non-regular file where the flusher "
                          "keeps one of its files, and was left alone; remove it (was the directory tampered "
                          "with?) and restart the flusher")

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
