"""Ingest: the Unix-socket front door through which co-located producers publish.

Rules:
- Newline-delimited JSON Events in; exactly one reply line per non-empty
  line, in order: ``{"seq": N}`` or ``{"error": "…"}``. Blank lines get none.
  A line the writer cannot take, for whatever reason, gets an error reply;
  it never ends the connection.
- A line longer than ``MAX_LINE_BYTES`` (4 MiB) gets an error reply. It is
  discarded as it streams in: the server never holds it whole.
- A fragment without a newline when the producer disconnects is not a line:
  it is neither published nor answered.
- Memory is bounded across connections. The bytes of every connection's
  partial line (received, no newline yet) count against one server-wide
  ``max_buffered_bytes``; the connection whose next bytes would take the
  total over it gets an error reply after the replies to its complete lines,
  and is closed, its partial line released. At most ``max_connections`` are
  served at once; one more gets an error reply and is closed. Only
  connections whose producer is still there count: before it refuses one,
  the server looks for served connections whose peer has closed (a burst
  of connect-then-close leaves many whose tasks have not yet seen their
  end), and counts those no more; their tasks still answer and publish the
  complete lines they hold, then end. Beyond that,
  each connection's stream buffers are bounded on their own: the socket is
  not read past ``2 * READ_CHUNK_BYTES`` unread (plus one socket read), and
  its task reads nothing while ``WRITE_HIGH_WATER_BYTES`` of replies wait.
- Each connection is its own task. A producer that stops reading its replies
  stalls only itself (its task waits for its socket to drain); the others
  go on. A task yields after every few lines, so producers share the writer.
- The socket is created with mode 0600. A path held by a live server is an
  error; a stale socket file is replaced.
"""

import asyncio
import contextlib
import os
import select

import msgspec

from .errors import ConfigError, InvalidEvent, RingClosed, SocketPathError
from .schema import decode_event
from .unix_socket import listen_private, prepare_socket_path

__all__ = [
    "MAX_LINE_BYTES",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_BUFFERED_BYTES",
    "IngestServer",
    "prepare_socket_path",
    "validate_ingest_limits",
]

MAX_LINE_BYTES = 4 * 1024 * 1024
READ_CHUNK_BYTES = 64 * 1024
LINES_PER_TURN = 64
WRITE_HIGH_WATER_BYTES = 1024 * 1024
ACCEPT_BACKLOG = 1024
DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_MAX_BUFFERED_BYTES = 64 * 1024 * 1024

_encode_reply = msgspec.json.Encoder().encode


def _error_line(message: str) -> bytes:
    return _encode_reply({"error": message}) + b"\n"


def validate_ingest_limits(max_connections: object, max_buffered_bytes: object) -> None:
    for option, value in (("max_connections", max_connections), ("max_buffered_bytes", max_buffered_bytes)):
        if type(value) is not int or value < 1:
            raise ConfigError(f"{option} must be a whole number of at least 1, not {value!r}")


class IngestServer:
    """Serves one socket path, publishing every accepted line through `publish`."""

    def __init__(self, path: str, publish, *, max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES):
        validate_ingest_limits(max_connections, max_buffered_bytes)
        self.path = path
        self._publish = publish
        self.max_connections = max_connections
        self.max_buffered_bytes = max_buffered_bytes
        self._server = None
        self._tasks: dict[asyncio.Task, int] = {}  # one per connection being served: its socket's fd
        self._hung_up: set[asyncio.Task] = set()  # served, but their producer has gone
        self.buffered_bytes = 0  # the partial lines held, summed over connections
        self.accepted = 0
        self.rejected = 0

    @property
    def connections(self) -> int:
        """The connections being served."""
        return len(self._tasks)

    def _live_connections(self) -> int:
        """The served connections whose producer is still there (those found hung up no longer count)."""
        if len(self._tasks) - len(self._hung_up) >= self.max_connections:
            poller = select.poll()
            fds = {}
            for task, fd in self._tasks.items():
                if task not in self._hung_up and fd >= 0:
                    poller.register(fd, select.POLLHUP)  # reported whatever is asked
                    fds[fd] = task
            for fd, events in poller.poll(0):
                # POLLHUP: the peer closed both ways. One that only shut its writing side (POLLRDHUP) still
                # counts: it may wait for its replies, and a flood of those must stay bounded.
                if events & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                    self._hung_up.add(fds[fd])
        return len(self._tasks) - len(self._hung_up)

    async def start(self) -> None:
        prepare_socket_path(self.path)
        try:
            self._server = await listen_private(self._serve, self.path, limit=READ_CHUNK_BYTES,
                                                backlog=ACCEPT_BACKLOG)
        except OSError as exc:
            raise SocketPathError(f"cannot listen on socket {self.path}: {exc.strerror or exc}; "
                                  "choose a path in an existing directory you can write", path=self.path) from None

    async def stop(self) -> None:
        """Stop accepting, end every connection, remove the socket file."""
        if self._server is not None:
            self._server.close()
        # Connections end before wait_closed: since Python 3.12 it waits for them,
        # and a producer that neither sends nor reads would hold shutdown forever.
        await asyncio.sleep(0)  # a connection accepted just before close starts its task
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _answer(self, line: bytes) -> bytes | None:
        line = line.strip()
        if not line:
            return None
        try:
            seq = self._publish(decode_event(line)).seq
        except (InvalidEvent, RingClosed) as exc:
            self.rejected += 1
            return _error_line(str(exc))
        except Exception as exc:  # noqa: BLE001 - hostile input must not end the connection or the server
            self.rejected += 1
            return _error_line(f"event not accepted: {type(exc).__name__}: {exc}")
        self.accepted += 1
        return b'{"seq":%d}\n' % seq

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._live_connections() >= self.max_connections:
            writer.write(_error_line(f"too many connections: the server serves at most {self.max_connections} "
                                     "at once; retry later"))
            writer.close()
            return
        task = asyncio.current_task()
        sock = writer.get_extra_info("socket")
        self._tasks[task] = sock.fileno() if sock is not None else -1
        writer.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER_BYTES)
        pending = bytearray()  # its length is always counted in self.buffered_bytes
        overlong = False
        try:
            while chunk := await reader.read(READ_CHUNK_BYTES):
                replies = []
                start = 0
                while (newline := chunk.find(b"\n", start)) != -1:
                    if overlong or len(pending) + newline - start > MAX_LINE_BYTES:
                        replies.append(_error_line(f"line longer than {MAX_LINE_BYTES} bytes"))
                        self.rejected += 1
                    else:
                        reply = self._answer(bytes(pending) + chunk[start:newline] if pending else chunk[start:newline])
                        if reply is not None:
                            replies.append(reply)
                    self._release(pending)
                    overlong = False
                    start = newline + 1
                    if len(replies) >= LINES_PER_TURN:
                        writer.write(b"".join(replies))
                        replies.clear()
                        await writer.drain()
                        await asyncio.sleep(0)  # drain() does not yield unless paused: let the others in
                tail = len(chunk) - start  # the start of a line still to come
                if tail and not overlong:
                    if len(pending) + tail > MAX_LINE_BYTES:  # discarded as it streams in
                        overlong = True
                        self._release(pending)
                    elif self.buffered_bytes + tail > self.max_buffered_bytes:
                        # Its complete lines are answered; this line and whatever follows are not taken.
                        self.rejected += 1
                        replies.append(_error_line(
                            f"the server's ingest buffer limit is reached ({self.max_buffered_bytes} bytes of "
                            "partial lines across all connections); retry later or send shorter lines; "
                            "closing this connection"))
                        writer.write(b"".join(replies))
                        return
                    else:
                        pending += chunk[start:]
                        self.buffered_bytes += tail
                if replies:
                    writer.write(b"".join(replies))
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            # Released before the close: a producer that sees its end finds the server's count already down.
            self._release(pending)
            self._tasks.pop(task, None)
            self._hung_up.discard(task)
            writer.close()

    def _release(self, pending: bytearray) -> None:
        self.buffered_bytes -= len(pending)
        pending.clear()
