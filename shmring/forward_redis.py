"""The forwarder's Redis Streams sink: one entry per seq, with an ID derived from (capture session, seq).

Rules:
- The only module that imports redis (redis-py).
- An event is an entry with the fields ``envelope`` (the writer's bytes),
  ``category`` and ``type``; a gap is an entry with ``from_seq``, ``to_seq``,
  ``dropped`` and ``capture_session_id``, and no ``envelope``, at the last
  lost seq.
- Entry ID ``<E>-<seq>``: the sequence part is the seq; ``E`` (the ms part)
  is the session's *epoch in this key*, one value for a run of entries of one
  capture session. A session that is already on top of the key keeps its
  epoch (a ``serve --resume`` continues it); a session that is not gets
  ``E = max(the Redis server's clock in ms, the key's last ID's ms + 1)``. So
  IDs grow across sessions, and an entry maps back to (session, seq) by its
  seq part plus the session its run of ``E`` belongs to (in each entry).
- XADD with an ID at or below the top is answered with an error: that means
  "already there", never a failure. If it happens while another epoch is on
  top, someone else writes this key, and forwarding stops with an error.
- Where the key stands for a session is read from the key itself (no local
  state): the top entry, or, if another session is on top, the runs below it.
- Batches are pipelined: one write of every XADD, then the replies.
"""

import msgspec
import redis

from .errors import ForwardError, SinkUnavailable

__all__ = ["RedisSink"]

MAX_SEQ_PART = (1 << 64) - 1
WALK_LIMIT = 1000
"""How many runs of other sessions' entries the start looks through for this session's last entry."""
SOCKET_TIMEOUT_S = 5.0
CHUNK = 256
"""XADDs sent at once, while Redis works on the previous chunk."""
ALREADY_THERE = "equal or smaller than the target stream top item"


class _Head(msgspec.Struct):
    capture_session_id: str
    seq: int


_decode_head = msgspec.json.Decoder(_Head).decode


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


class RedisSink:
    """Writes RawRecords into one Redis stream key."""

    kind = "redis"

    def __init__(self, url: str, *, key: str, maxlen: int | None = None, shown_url: str | None = None):
        shown = url if shown_url is None else shown_url
        try:
            redis.ConnectionPool.from_url(url)  # checks the URL without connecting
        except ValueError as exc:
            raise ForwardError(f"bad Redis URL {shown!r}: {exc}; use redis://HOST:PORT/DB", url=shown) from None
        if not key:
            raise ForwardError("the Redis stream key must not be empty", url=shown)
        self.url = shown
        self._connect_url = url
        self._client = None
        self.key = key
        self.description = f"{self.url} stream {key}"
        self._key = key.encode()
        self._maxlen = maxlen
        trim = b"" if not maxlen else _bulk(b"MAXLEN") + _bulk(b"~") + _bulk(b"%d" % maxlen)
        args = 9 + (3 if maxlen else 0)
        self._event_head = b"*%d\r\n" % args + _bulk(b"XADD") + _bulk(self._key) + trim
        self._gap_head = b"*%d\r\n" % (args + 2) + _bulk(b"XADD") + _bulk(self._key) + trim
        self._category_parts: dict[str, bytes] = {}
        self._session = ""
        self._session_part = b""
        self._epoch = 0

    # -- connection ------------------------------------------------------------
    def open(self, capture_session_id: str) -> int:
        """Connect and find where the key stands for this session: the last seq it holds (0: none)."""
        self._session = capture_session_id
        self._session_part = _bulk(b"capture_session_id") + _bulk(capture_session_id.encode())
        try:
            if self._client is None:  # a single-connection client connects as it is made
                self._client = redis.Redis.from_url(self._connect_url, single_connection_client=True, protocol=2,
                                                    socket_timeout=SOCKET_TIMEOUT_S,
                                                    socket_connect_timeout=SOCKET_TIMEOUT_S)
            client = self._client
            client.ping()
            try:
                info = client.xinfo_stream(self.key)
            except redis.ResponseError as exc:
                if "no such key" not in str(exc):
                    raise
                info = None
            seconds, micros = client.time()
            now_ms = int(seconds) * 1000 + int(micros) // 1000
            if info is None:
                self._epoch = max(now_ms, 1)
                return 0
            top_ms = _id(info["last-generated-id"])[0]
            entry = info.get("last-entry")
            steps = 0
            while entry and steps < WALK_LIMIT:
                epoch, seq = _id(entry[0])
                if self._session_of(entry, seq) == capture_session_id:
                    if steps == 0:  # on top: continue its run
                        self._epoch = epoch
                    else:
                        self._epoch = max(now_ms, top_ms + 1)
                    return seq
                if epoch == 0:
                    break
                below = client.xrevrange(self.key, f"{epoch - 1}-{MAX_SEQ_PART}", "-", count=1)
                entry = below[0] if below else None
                steps += 1
            self._epoch = max(now_ms, top_ms + 1)
            return 0
        except redis.ResponseError as exc:
            raise self._refused(exc) from None
        except redis.AuthenticationError as exc:
            raise self._refused(exc) from None
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            self._disconnect()
            raise SinkUnavailable(f"Redis at {self.url} is unreachable: {exc}", url=self.url) from None

    @staticmethod
    def _session_of(entry, seq: int) -> str | None:
        fields = entry[1]
        envelope = fields.get(b"envelope")
        if envelope is not None:
            try:
                head = _decode_head(envelope)
            except msgspec.DecodeError:
                return None
            return head.capture_session_id if head.seq == seq else None
        session = fields.get(b"capture_session_id")
        return session.decode(errors="replace") if session is not None and b"to_seq" in fields else None

    def _refused(self, exc: Exception) -> ForwardError:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if text.startswith("WRONGTYPE"):
            return ForwardError(f"Redis key {self.key!r} at {self.url} holds another type, not a stream; choose "
                                "another --stream", url=self.url)
        if any(word in text for word in ("WRONGPASS", "NOAUTH", "invalid password", "Authentication", "NOPERM",
                                         "invalid username", "authenticated")):
            return ForwardError(f"Redis at {self.url} refused the credentials: {text}; check the password in the "
                                "URL (redis://:PASSWORD@HOST:PORT/DB)", url=self.url)
        return ForwardError(f"Redis at {self.url} refused: {text}", url=self.url)

    def _disconnect(self) -> None:
        if self._client is None:
            return
        try:
            self._client.connection.disconnect()
        except Exception:  # noqa: BLE001 - a broken connection may fail to close; it is dropped either way
            pass

    def idle(self) -> None:
        """Nothing to do between batches (Redis keeps an idle connection)."""

    def close(self) -> None:
        if self._client is None:
            return
        try:
            self._client.close()
        except Exception:  # noqa: BLE001 - closing a dead connection
            pass

    # -- writing -----------------------------------------------------------------
    def write(self, records) -> None:
        """Write a batch: every entry is in the key when this returns (or was already there).

        The batch goes out in chunks, each sent before the previous one's
        replies are read, so Redis works on one while the next is packed.
        """
        connection = self._client.connection
        self._already = 0
        self._refusal = None
        try:
            sent = 0
            for start in range(0, len(records), CHUNK):
                chunk = self._pack(records[start:start + CHUNK])
                connection.send_packed_command([chunk[0]], check_health=False)
                if sent:
                    self._replies(connection, sent)
                sent = chunk[1]
            self._replies(connection, sent)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            self._disconnect()
            raise SinkUnavailable(f"Redis at {self.url} went away: {exc}", url=self.url) from None
        if self._refusal is not None:
            raise self._refused(self._refusal)
        if self._already:
            self._check_top()

    def _replies(self, connection, count: int) -> None:
        read = connection.read_response
        for _ in range(count):
            try:
                read(disable_decoding=True)
            except redis.ResponseError as exc:
                if ALREADY_THERE in str(exc):
                    self._already += 1
                elif self._refusal is None:
                    self._refusal = exc

    def _pack(self, records) -> tuple[bytes, int]:
        parts = []
        epoch = b"%d-" % self._epoch
        categories = self._category_parts
        event_head = self._event_head
        for record in records:
            seq_id = epoch + b"%d" % record.seq
            if record.dropped:
                parts.append(self._gap_head + _bulk(seq_id) + _bulk(b"from_seq") + _bulk(b"%d" % record.dropped_from)
                             + _bulk(b"to_seq") + _bulk(b"%d" % record.seq) + _bulk(b"dropped")
                             + _bulk(b"%d" % record.dropped) + self._session_part)
                continue
            payload = record.payload
            category = categories.get(record.category)
            if category is None:
                category = categories[record.category] = (_bulk(b"category") + _bulk(record.category.encode())
                                                           + b"$4\r\ntype\r\n")
            kind = event_type(payload)
            parts.append(b"%s$%d\r\n%s\r\n$8\r\nenvelope\r\n$%d\r\n%s\r\n%s$%d\r\n%s\r\n" % (
                event_head, len(seq_id), seq_id, len(payload), payload, category, len(kind), kind))
        return b"".join(parts), len(parts)

    def _check_top(self) -> None:
        """Some entries were already there: fine if this session's run is on top, an error if another's is."""
        try:
            top = self._client.xrevrange(self.key, "+", "-", count=1)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            self._disconnect()
            raise SinkUnavailable(f"Redis at {self.url} went away: {exc}", url=self.url) from None
        if top and _id(top[0][0])[0] > self._epoch:
            raise ForwardError(f"Redis stream {self.key!r} at {self.url} has entries above this capture session's "
                               f"(top {top[0][0].decode()}): another session or forwarder writes into it; give each "
                               "ring its own --stream", url=self.url)


def _id(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


_TS_AT = b'"event":{"ts":'
_TYPE_AT = b',"type":"'
_decode_type = msgspec.json.Decoder(dict).decode


def event_type(payload: bytes) -> bytes:
    """The event's type, read from the envelope's bytes (`ts` always precedes it; see schema)."""
    start = payload.find(_TYPE_AT, payload.find(_TS_AT) + len(_TS_AT)) + len(_TYPE_AT)
    end = payload.find(b'"', start)
    kind = payload[start:end]
    if b"\\" in kind or start < len(_TYPE_AT):  # an escape in the type: decode it properly
        try:
            return str(_decode_type(payload)["event"]["type"]).encode()
        except (msgspec.DecodeError, KeyError, TypeError):
            return b""
    return kind

