"""Unix sockets served to this user only: the ingest and control servers' common start.

Rules:
- A socket is born mode 0600 (created under umask 0177, then chmod): there is
  no window in which another user could connect.
- A path a live server listens on is refused; a stale socket file (nobody
  listens) is removed; anything else at the path is refused.
- Failures are ``SocketPathError`` in one line; a caller that serves a
  particular socket rewords an ``OSError`` from ``listen_private`` for it.
"""

import asyncio
import os
import socket
import stat

from .errors import SocketPathError

__all__ = ["listen_private", "prepare_socket_path"]


def prepare_socket_path(path: str) -> None:
    """Refuse a path a live server listens on; remove a stale socket file."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SocketPathError(f"socket path {path} exists and is not a socket; choose another path", path=path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # nobody listens: a leftover from a dead server
        return
    except OSError as exc:
        raise SocketPathError(f"socket path {path} cannot be checked: {exc.strerror}", path=path) from None
    finally:
        probe.close()
    raise SocketPathError(f"socket path {path} is in use by a running server; stop it or choose another path",
                          path=path)


async def listen_private(serve, path: str, *, limit: int, backlog: int = 100) -> asyncio.AbstractServer:
    """``asyncio.start_unix_server`` at `path`, mode 0600 from birth; an ``OSError`` is the caller's to word."""
    old_umask = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(serve, path=path, limit=limit, backlog=backlog)
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    return server
