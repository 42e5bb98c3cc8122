"""The SSE stream of the HTTP edge: where a client starts, and the frames it gets (WHATWG EventSource rules).

Rules:
- The stream opens with ``retry: <ms>``, then ``event: session`` with
  ``{"capture_session_id":…,"latest_seq":…}`` and no id line.
- An event is ``id: <seq>`` and ``data: <the envelope JSON exactly as in the
  ring>``, with no ``event:`` line (``EventSource.onmessage`` gets it). A drop
  is ``event: dropped`` with ``{"dropped":N,"from_seq":A,"to_seq":B}`` and no
  id, so the client's Last-Event-ID stays where it was. A comment line ``:``
  is sent after ``keepalive_s`` with nothing sent. Once the ring is closed and
  drained: ``event: end`` (``{"last_seq":N,"reason":"closed"|"writer_gone"}``)
  and the stream closes.
- Where it starts: the ``Last-Event-ID`` header wins, then ``?after_seq=N``,
  then ``?from=start`` (after seq 0: the session's first event); otherwise
  only new events. A Last-Event-ID beyond the latest seq belongs to another
  session: the stream starts at the beginning of this one. A malformed value
  is a ``ConfigError`` (the app answers 400).
- Slow clients: the stream is pulled. Each client has its own AsyncReader and
  takes the next batch only once the previous one was handed to its socket,
  so the server holds at most one batch per client (``BATCH_EVENTS`` events,
  sent in chunks of at most ``CHUNK_BYTES``) besides the socket's buffers. A
  client further behind than the ring (and the files, with an archive) holds
  gets exact ``dropped`` frames, as any reader does; it never slows the
  writer or another client.
"""

import msgspec

from .aio import AsyncReader
from .errors import ConfigError, RingClosed, WriterGone
from .filters import Filter

__all__ = ["StreamStart", "stream_start", "event_frames", "RETRY_MS"]

RETRY_MS = 1000
"""The reconnect delay a client is told (``retry:``)."""
BATCH_EVENTS = 256
CHUNK_BYTES = 256 * 1024
MAX_SEQ = (1 << 63) - 1

_encode = msgspec.json.Encoder().encode


class StreamStart(msgspec.Struct, frozen=True):
    after_seq: int | None
    filter: Filter | None


def _seq(value: str, what: str) -> int:
    text = value.strip()
    if not text.isascii() or not text.isdigit() or int(text) > MAX_SEQ:
        raise ConfigError(f"{what} must be a seq (a whole number >= 0), not {value[:40]!r}")
    return int(text)


def stream_start(last_event_id: str | None, query: list[tuple[str, str]], latest_seq: int) -> StreamStart:
    """Where a stream starts and what it selects, from the request; ConfigError if malformed."""
    values: dict[str, list[str]] = {}
    for key, value in query:
        values.setdefault(key, []).append(value)
    for key in ("after_seq", "from"):
        if len(values.get(key, ())) > 1:
            raise ConfigError(f"{key} given {len(values[key])} times; give it once")
    after_seq = None
    if "from" in values and values["from"][0] != "start":
        raise ConfigError(f"from must be 'start', not {values['from'][0][:40]!r}")
    if last_event_id is not None and last_event_id.strip() != "":
        after_seq = _seq(last_event_id, "Last-Event-ID")
        if after_seq > latest_seq:
            after_seq = 0  # another session's id: this session from its beginning
    elif "after_seq" in values:
        after_seq = _seq(values["after_seq"][0], "after_seq")
        if after_seq > latest_seq:
            raise ConfigError(f"after_seq {after_seq} is beyond the latest seq {latest_seq}; "
                                     f"resume from at most {latest_seq}")
    elif "from" in values:
        after_seq = 0
    try:
        selected = Filter(categories=values.get("category"), detail_levels=values.get("detail_level"),
                          source_kinds=values.get("source_kind"))
    except ValueError as exc:  # ConfigError included
        raise ConfigError(str(exc)) from None
    unfiltered = selected.categories is None and selected.detail_levels is None and selected.source_kinds is None
    return StreamStart(after_seq=after_seq, filter=None if unfiltered else selected)


def session_frame(capture_session_id: str, latest_seq: int) -> bytes:
    data = _encode({"capture_session_id": capture_session_id, "latest_seq": latest_seq})
    return b"retry: %d\n\nevent: session\ndata: %s\n\n" % (RETRY_MS, data)


def drop_frame(dropped: int, from_seq: int, to_seq: int) -> bytes:
    return b'event: dropped\ndata: {"dropped":%d,"from_seq":%d,"to_seq":%d}\n\n' % (dropped, from_seq, to_seq)


def end_frame(last_seq: int, reason: str) -> bytes:
    return b'event: end\ndata: {"last_seq":%d,"reason":"%s"}\n\n' % (last_seq, reason.encode())


KEEPALIVE = b":\n\n"


async def event_frames(reader: AsyncReader, *, keepalive_s: float, on_sent=None):
    """The frames after the session frame, as byte chunks, until the ring ends (then the end frame).

    on_sent(events, drops): called with what each chunk carries, for metrics.
    """
    while True:
        try:
            records = await reader.read_raw_many(BATCH_EVENTS, timeout=keepalive_s)
        except RingClosed:
            yield end_frame(reader.cursor, "closed")
            return
        except WriterGone:
            yield end_frame(reader.cursor, "writer_gone")
            return
        if not records:
            yield KEEPALIVE
            continue
        parts = []
        size = events = drops = 0
        for record in records:
            if record.dropped:
                frame = drop_frame(record.dropped, record.dropped_from, record.dropped_to)
                drops += 1
            else:
                frame = b"id: %d\ndata: %s\n\n" % (record.seq, record.payload)
                events += 1
            parts.append(frame)
            size += len(frame)
            if size >= CHUNK_BYTES:
                if on_sent is not None:
                    on_sent(events, drops)
                yield b"".join(parts)
                parts, size, events, drops = [], 0, 0, 0
        if parts:
            if on_sent is not None:
                on_sent(events, drops)
            yield b"".join(parts)
