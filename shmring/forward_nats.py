"""The forwarder's NATS JetStream sink: one message per seq, deduplicated by ``Nats-Msg-Id``.

Rules:
- The only module that imports nats (nats-py). Its client runs on an event
  loop of its own in the forwarder's thread: the loop runs while a batch is
  published and, when the ring is idle, for a moment every half second (so
  the server's pings are answered). No thread hand-offs per batch.
- An event is a message on the subject whose body is the envelope JSON
  exactly as in the ring, with the headers ``Nats-Msg-Id:
  <capture_session_id>:<seq>``, ``Shmring-Seq`` and ``Shmring-Session``. A gap is a
  message at the last lost seq with a ``Shmring-Dropped`` header and the body
  ``{"dropped":N,"from_seq":A,"to_seq":B}``.
- Publishes are asynchronous; acks are awaited per batch. A batch is written
  in one go with a reply subject on every 256th message and its last;
  JetStream stores one connection's messages in order, so if the stream's
  sequence moved from ack to ack by exactly the messages between them, every
  message is stored. Otherwise (duplicates after a
  reconnect, other publishers, a refusal) the batch is published again with a
  reply subject on every message and each ack is checked: the IDs make the
  repeat harmless.
- Where the stream stands is its last message for the subject (no local state).
- The stream is created, for the subject only, if it is missing.
"""

import asyncio

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.js.api import StorageType, StreamConfig

from .errors import ForwardError, SinkUnavailable

__all__ = ["NatsSink"]

CONNECT_TIMEOUT_S = 5.0
ACK_TIMEOUT_S = 10.0
"""A batch whose acks take longer than this: the server is stopped or stuck; reconnect."""
REQUEST_TIMEOUT_S = 5.0
IDLE_TURN_S = 0.01
CHUNK = 256
"""Without a slow path, every CHUNK-th message of a batch (and its last) asks for an ack."""


class _Ack(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: dict | None = None


_decode_ack = msgspec.json.Decoder(_Ack).decode


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, ``>`` the rest."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


class NatsSink:
    """Publishes RawRecords to one subject of one JetStream stream."""

    kind = "nats"

    def __init__(self, url: str, *, stream: str, subject: str, shown_url: str | None = None):
        self.url = url if shown_url is None else shown_url
        self._connect_url = url
        if not stream or any(c in stream for c in ".*> \t\r\n"):
            raise ForwardError(f"{stream!r} is not a JetStream stream name (no '.', '*', '>' or spaces); choose "
                               "another --stream", url=self.url)
        if not subject or any(c in subject for c in " \t\r\n") or "*" in subject or ">" in subject \
                or "" in subject.split("."):
            raise ForwardError(f"{subject!r} is not a NATS subject to publish on (dot-separated tokens, no "
                               "wildcards or spaces); choose another --subject", url=self.url)
        self.stream = stream
        self.subject = subject
        self.description = f"{self.url} stream {stream} subject {subject}"
        self._loop: asyncio.AbstractEventLoop | None = None  # made by the first open
        self._nc = None
        self._lost: str | None = None
        self._auth_error: str | None = None
        self._last_error: str | None = None
        self._inbox = ""
        self._stream_seq = 0
        self._session = b""
        self._want: set[int] = set()
        self._acks: dict[int, _Ack] = {}
        self._waiter: asyncio.Future | None = None
        self._max_payload = 1 << 20

    def _run(self, coro, timeout: float):
        return self._loop.run_until_complete(asyncio.wait_for(coro, timeout))

    # -- connection ------------------------------------------------------------
    def open(self, capture_session_id: str) -> int:
        """Connect, make sure the stream takes the subject, and return the last seq it holds for the session."""
        if any(c in capture_session_id for c in "\r\n") or capture_session_id != capture_session_id.strip():
            raise ForwardError(f"capture session id {capture_session_id!r} cannot be a NATS header value",
                               url=self.url)
        self._session = capture_session_id.encode()
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        self.close_connection()
        try:
            return self._run(self._open(capture_session_id), CONNECT_TIMEOUT_S + 4 * REQUEST_TIMEOUT_S)
        except ForwardError:
            raise
        except (asyncio.TimeoutError, OSError, nats.errors.Error) as exc:
            refused = _auth_refusal(exc, self._auth_error)
            self.close_connection()
            if refused:
                raise ForwardError(f"NATS at {self.url} refused the credentials ({refused}); check the user, "
                                   "password or token in the URL", url=self.url) from None
            reason = self._last_error or _text(exc)
            raise SinkUnavailable(f"NATS at {self.url} is unreachable: {reason}", url=self.url) from None

    async def _open(self, capture_session_id: str) -> int:
        self._lost = None
        self._auth_error = None
        self._last_error = None

        async def on_error(exc):
            self._last_error = _text(exc)
            if "authorization" in str(exc).lower() or "authentication" in str(exc).lower():
                self._auth_error = str(exc)

        async def on_gone():
            self._lost = self._lost or "the connection closed"
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_exception(ConnectionError(self._lost))

        self._nc = nc = await nats.connect(self._connect_url, allow_reconnect=False, max_reconnect_attempts=1,
                                           reconnect_time_wait=0, connect_timeout=CONNECT_TIMEOUT_S, error_cb=on_error,
                                           disconnected_cb=on_gone, closed_cb=on_gone,
                                           pending_size=64 * 1024 * 1024)
        self._max_payload = nc.max_payload
        js = nc.jetstream(timeout=REQUEST_TIMEOUT_S)
        try:
            info = await js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            try:
                info = await js.add_stream(StreamConfig(name=self.stream, subjects=[self.subject],
                                                        storage=StorageType.FILE))
            except nats.js.errors.APIError as exc:
                raise ForwardError(f"could not create JetStream stream {self.stream!r} for {self.subject!r} at "
                                   f"{self.url}: {exc.description}; choose another --stream or --subject",
                                   url=self.url) from None
        except nats.errors.NoRespondersError:
            raise ForwardError(f"NATS at {self.url} has no JetStream (start nats-server with -js)",
                               url=self.url) from None
        except nats.js.errors.APIError as exc:
            raise ForwardError(f"JetStream at {self.url} refused: {exc.description}", url=self.url) from None
        subjects = info.config.subjects or []
        if not any(subject_matches(s, self.subject) for s in subjects):
            raise ForwardError(f"JetStream stream {self.stream!r} at {self.url} does not take subject "
                               f"{self.subject!r} (its subjects: {', '.join(subjects) or 'none'}); choose another "
                               "--stream or --subject", url=self.url)
        self._stream_seq = info.state.last_seq
        self._inbox = f"{nc.new_inbox()}.ack"
        await nc.subscribe(f"{self._inbox}.*", cb=self._on_ack, pending_msgs_limit=1 << 20,
                           pending_bytes_limit=1 << 30)
        try:
            last = await js.get_last_msg(self.stream, self.subject)
        except nats.js.errors.NotFoundError:
            return 0
        headers = last.headers or {}
        if headers.get("Shmring-Session") != capture_session_id:
            return 0
        try:
            return int(headers.get("Shmring-Seq", "0"))
        except ValueError:
            return 0

    async def _on_ack(self, msg) -> None:
        try:
            seq = int(msg.subject.rsplit(".", 1)[1])
            ack = _decode_ack(msg.data)
        except (ValueError, msgspec.DecodeError):
            return
        if seq in self._want:
            self._want.discard(seq)
            self._acks[seq] = ack
            if not self._want and self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(None)

    def idle(self) -> None:
        """Between batches: let the client answer the server's pings and notice a closed connection."""
        if self._nc is not None:
            try:
                self._run(asyncio.sleep(IDLE_TURN_S), REQUEST_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - a broken connection is found by the next write
                pass

    def close_connection(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None:
            try:
                self._run(nc.close(), REQUEST_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - closing a dead connection
                pass

    def close(self) -> None:
        if self._loop is None:
            return
        self.close_connection()

        pending = asyncio.all_tasks(self._loop)  # the client's own tasks: ended before the loop closes
        for task in pending:
            task.cancel()
        try:
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        except Exception:  # noqa: BLE001 - what is left dies with the loop
            pass
        self._loop.close()
        self._loop = None

    # -- writing -----------------------------------------------------------------
    def _frames(self, records, replies: bool) -> tuple[bytes, list[int]]:
        session = self._session
        subject = self.subject.encode()
        inbox = self._inbox.encode()
        parts = []
        seqs = []
        last = len(records) - 1
        for i, record in enumerate(records):
            seq = record.seq
            seqs.append(seq)
            if record.dropped:
                hdr = (b"NATS/1.0\r\nNats-Msg-Id: %s:%d\r\nShmring-Seq: %d\r\nShmring-Session: %s\r\n"
                       b"Shmring-Dropped: %d\r\n\r\n" % (session, seq, seq, session, record.dropped))
                body = b'{"dropped":%d,"from_seq":%d,"to_seq":%d}' % (record.dropped, record.dropped_from, seq)
            else:
                hdr = (b"NATS/1.0\r\nNats-Msg-Id: %s:%d\r\nShmring-Seq: %d\r\nShmring-Session: %s\r\n\r\n"
                       % (session, seq, seq, session))
                body = record.payload
            size = len(hdr) + len(body)
            if size > self._max_payload:
                raise ForwardError(f"seq {seq} is {size} bytes with its headers, over the NATS server's max_payload "
                                   f"of {self._max_payload}; raise max_payload in the server's configuration",
                                   url=self.url)
            if replies or i == last or i % CHUNK == CHUNK - 1:
                parts.append(b"HPUB %s %s.%d %d %d\r\n%s%s\r\n" % (subject, inbox, seq, len(hdr), size, hdr, body))
            else:
                parts.append(b"HPUB %s %d %d\r\n%s%s\r\n" % (subject, len(hdr), size, hdr, body))
        return b"".join(parts), seqs

    def write(self, records) -> None:
        """Publish a batch: every message is stored (or was already) when this returns."""
        if self._nc is None or self._lost:
            raise SinkUnavailable(f"NATS at {self.url} went away: {self._lost or 'not connected'}", url=self.url)
        blob, seqs = self._frames(records, replies=False)
        marks = [i for i in range(len(seqs)) if i == len(seqs) - 1 or i % CHUNK == CHUNK - 1]
        acks = self._publish(blob, [seqs[i] for i in marks])
        stream_seq, previous, whole = self._stream_seq, -1, True
        for i in marks:  # each ack must show the stream moved by exactly the messages since the previous one
            ack = acks[seqs[i]]
            if ack.error is not None or ack.duplicate or ack.seq - stream_seq != i - previous:
                whole = False
                break
            stream_seq, previous = ack.seq, i
        if whole:
            self._stream_seq = stream_seq
            return
        blob, seqs = self._frames(records, replies=True)
        acks = self._publish(blob, seqs)
        for seq in seqs:
            error = acks[seq].error
            if error is not None:
                raise ForwardError(f"JetStream stream {self.stream!r} at {self.url} refused seq {seq}: "
                                   f"{error.get('description', error)}", url=self.url)
        self._stream_seq = max(self._stream_seq, *(acks[seq].seq for seq in seqs))

    def _publish(self, blob: bytes, want: list[int]) -> dict[int, _Ack]:
        try:
            return self._run(self._send(blob, want), ACK_TIMEOUT_S + REQUEST_TIMEOUT_S)
        except (asyncio.TimeoutError, ConnectionError, OSError, nats.errors.Error) as exc:
            self._lost = self._lost or _text(exc) or "no acks"
            self.close_connection()
            raise SinkUnavailable(f"NATS at {self.url} went away: {self._lost}", url=self.url) from None

    async def _send(self, blob: bytes, want: list[int]) -> dict[int, _Ack]:
        nc = self._nc
        if nc is None or self._lost:
            raise ConnectionError(self._lost or "not connected")
        self._acks = {}
        self._want = set(want)
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await nc._send_command(blob)  # nats-py's own outgoing buffer: one write of the whole batch
            await nc._flush_pending()
            try:
                await asyncio.wait_for(asyncio.shield(self._waiter), ACK_TIMEOUT_S)
            except asyncio.TimeoutError:
                raise asyncio.TimeoutError(f"no acks within {ACK_TIMEOUT_S:.0f} s") from None
            return self._acks
        finally:
            self._waiter = None


def _text(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__).splitlines()[0]


def _auth_refusal(exc: BaseException, seen: str | None) -> str | None:
    text = f"{exc} {seen or ''}".lower()
    if "authorization" in text or "authentication" in text:
        return (seen or _text(exc)).strip("'\" ")
    return None
