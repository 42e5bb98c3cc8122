"""Producer: the client side of serve's ingest socket.

Rules:
- The protocol is newline-delimited JSON: one Event per line in, one reply
  line out per non-empty line, in order: ``{"seq": N}`` or ``{"error": "…"}``.
- ``publish_many`` pipelines: a sender thread writes while the caller reads
  replies, so neither side's buffer can deadlock the other.
- Every failure is a ShmringError: a rejected event (``PublishRejected``),
  an event that is not one JSON line (``InvalidEvent``), and a connection
  that failed, broke or timed out (``ProducerError``).
- ``connect`` waits (up to its timeout) while the server's accept backlog is
  full: a busy server is not a missing one.
"""

import socket
import threading
import time
from collections.abc import Iterable

import msgspec

from .errors import InvalidEvent, ProducerError, PublishRejected
from .schema import Event

EventLike = Event | dict | bytes | bytearray | str
"""What ``publish`` takes: an Event, a dict of its fields, or one JSON line."""

__all__ = ["Producer", "PublishRejected"]

_encoder = msgspec.json.Encoder()
_reply_decoder = msgspec.json.Decoder(dict)


class Producer:
    """A connection to ``shmring serve --socket PATH``."""

    def __init__(self, sock: socket.socket, path: str):
        self._sock = sock
        self._path = path
        self._replies = sock.makefile("rb")

    @classmethod
    def connect(cls, path: str, timeout: float | None = 30.0) -> "Producer":
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(path)
                return cls(sock, path)
            except BlockingIOError:
                # A Unix socket with a timeout fails at once (EAGAIN) while the
                # server's accept backlog is full: retry until the deadline.
                sock.close()
                if deadline is not None and time.monotonic() >= deadline:
                    raise ProducerError(f"cannot connect to {path}: the server accepted no connection within "
                                        f"{timeout} s; it is overloaded or stuck", path=path) from None
                time.sleep(0.002)
            except OSError as exc:
                sock.close()
                raise ProducerError(
                    f"cannot connect to {path}: {exc.strerror or exc}; is `shmring serve --socket` running?", path=path
                ) from None

    @staticmethod
    def _line(event: EventLike) -> bytes:
        if isinstance(event, (bytes, bytearray)):
            line = bytes(event).strip()
        elif isinstance(event, str):
            line = event.strip().encode()
        else:
            line = _encoder.encode(event)
        if not line or b"\n" in line:
            raise InvalidEvent("an event must encode to one non-empty JSON line")
        return line + b"\n"

    def _reply(self) -> dict:
        try:
            raw = self._replies.readline()
        except OSError as exc:
            raise ProducerError(f"reading a reply from {self._path} failed: {exc.strerror or exc}",
                                path=self._path) from None
        if not raw:
            raise ProducerError(f"the server at {self._path} closed the connection", path=self._path)
        return _reply_decoder.decode(raw)

    def publish(self, event: EventLike) -> int:
        """Publish one event (an Event, a dict, or a JSON line); return its seq."""
        line = self._line(event)
        try:
            self._sock.sendall(line)
        except OSError as exc:
            raise ProducerError(f"sending to {self._path} failed: {exc.strerror or exc}; is the server still "
                                "running?", path=self._path) from None
        reply = self._reply()
        if "seq" in reply:
            return reply["seq"]
        raise PublishRejected(f"event rejected: {reply.get('error')}", [(0, reply.get("error", ""))], [None],
                              path=self._path)

    def publish_many(self, events: Iterable[EventLike]) -> list[int]:
        """Publish a batch, pipelined; return the seqs. Raises PublishRejected after the whole batch."""
        lines = [self._line(e) for e in events]
        failure = []

        def send():
            try:
                for start in range(0, len(lines), 256):
                    self._sock.sendall(b"".join(lines[start:start + 256]))
            except OSError as exc:
                failure.append(exc)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        seqs, rejected = [], []
        try:
            for index in range(len(lines)):
                reply = self._reply()
                if "seq" in reply:
                    seqs.append(reply["seq"])
                else:
                    seqs.append(None)
                    rejected.append((index, reply.get("error", "")))
        finally:
            sender.join()
        if failure:
            raise ProducerError(f"sending to {self._path} failed: {failure[0]}", path=self._path)
        if rejected:
            detail = "; ".join(f"#{i}: {msg}" for i, msg in rejected[:10])
            raise PublishRejected(f"{len(rejected)} of {len(lines)} events rejected ({detail})", rejected, seqs,
                                  path=self._path)
        return seqs

    def close(self) -> None:
        self._replies.close()
        self._sock.close()

    def __enter__(self) -> "Producer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
