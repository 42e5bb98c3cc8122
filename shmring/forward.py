"""Forward: a ring's stream into Redis Streams or NATS JetStream, exactly once per seq.

Rules:
- A forwarder is a plain reader (role ``forwarder`` in the registry): it never
  slows the writer. It reads in batches with ``read_raw_many`` (envelope bytes
  exactly as in the ring) and, given an archive (a flusher's directory), with
  replay-merge, so a sink that is down costs nothing while the files hold the
  backlog.
- It keeps no state of its own: where to start is where the sink stands for
  this capture session (see forward_redis, forward_nats). A batch is written
  before the next is read; the sink's IDs make a repeated write harmless.
- Loss is data: a drop becomes one gap marker in the sink, at its last seq.
- A sink that goes away is one line on the ``log``; the forwarder reconnects
  with capped back-off and goes on from where the sink then stands (holding
  the batch it had, re-reading if the sink lost some). Bad URLs, refused
  credentials, a key or stream it cannot use: ForwardError, at once.
- ``stop`` ends it after the batch in hand is written.
"""

import inspect
import threading

from .errors import ConfigError, ForwardError, RingClosed, SinkUnavailable, WriterGone
from .layout import ROLE_FORWARDER
from .reader import Reader
from .segment import validate_ring_name
from .stats import redact_url, ring_stats

__all__ = ["Forwarder", "open_sink", "redact_url"]

BATCH_MAX = 2048
MAX_DELAY_S = 0.02
"""The forwarder's latency budget: what came in the last 20 ms is forwarded in one batch."""
STOP_CHECK_S = 0.5
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 5.0
SCHEMES = {"redis": "redis", "rediss": "redis", "unix": "redis", "nats": "nats", "tls": "nats"}


REPLAY_MERGE = "archive" in inspect.signature(Reader.attach).parameters
"""Whether this shmring's Reader can merge a flusher's files (issue 13); without it --archive is refused."""


class _ForwardReader(Reader):
    _ROLE = ROLE_FORWARDER


def open_sink(name: str, url: str, *, stream: str | None = None, subject: str | None = None,
              maxlen: int | None = None):
    """The sink for `url` (not yet connected): redis://HOST:PORT/DB or nats://HOST:PORT."""
    shown = redact_url(url)
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    kind = SCHEMES.get(scheme)
    if kind is None:
        raise ForwardError(f"cannot forward to {shown!r}: use redis://HOST:PORT/DB or nats://HOST:PORT", name=name,
                           url=shown)
    if maxlen is not None and (type(maxlen) is not int or maxlen < 1):
        raise ForwardError(f"maxlen must be a positive number of entries, not {maxlen!r}", name=name, url=shown)
    if kind == "redis":
        if subject is not None:
            raise ForwardError("--subject is for nats:// sinks; a Redis stream is named with --stream", name=name,
                               url=shown)
        from .forward_redis import RedisSink

        return RedisSink(url, key=stream or f"shmring:{name}", maxlen=maxlen, shown_url=shown)
    if maxlen is not None:
        raise ForwardError("--maxlen is for redis:// sinks; limit a JetStream stream in its own configuration",
                           name=name, url=shown)
    from .forward_nats import NatsSink

    return NatsSink(url, stream=stream or f"shmring-{name.replace('.', '_')}", subject=subject or f"shmring.{name}",
                    shown_url=shown)


class Forwarder:
    """Forwards ring `name` to the sink at `to` until the ring ends or `run(stop)` is told to stop."""

    def __init__(self, name: str, to: str, *, archive: str | None = None, stream: str | None = None,
                 subject: str | None = None, maxlen: int | None = None, log=lambda message: None):
        validate_ring_name(name)
        self.name = name
        self.archive = archive
        self.log = log
        self.sink = open_sink(name, to, stream=stream, subject=subject, maxlen=maxlen)
        self.reader: Reader | None = None
        self.forwarded = 0
        self.gaps = 0
        self.reconnects = 0
        self.position = 0
        """The last seq the sink holds for this session, as far as this forwarder knows."""

    def _attach(self, after_seq: int) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        kwargs = {} if self.archive is None else {"archive": self.archive}
        if kwargs and not REPLAY_MERGE:
            raise ForwardError("this shmring's Reader has no replay-merge (archive=) yet; forward without --archive",
                               name=self.name)
        try:
            self.reader = _ForwardReader.attach(self.name, after_seq=after_seq, max_delay_s=MAX_DELAY_S, **kwargs)
        except ConfigError as exc:
            if "beyond the latest" not in str(exc):
                raise
            raise ForwardError(f"the sink {self.sink.description} holds seq {after_seq} of this capture session, "
                               f"beyond what ring {self.name!r} has published; it was fed by another writer",
                               name=self.name, url=self.sink.url) from None

    def start(self) -> int:
        """Connect to the sink and attach after where it stands; return that seq. A failure here is fatal."""
        session = self.session = ring_stats(self.name)["capture_session_id"]
        try:
            self.position = self.sink.open(session)
        except SinkUnavailable as exc:
            raise ForwardError(f"{exc}; check the URL and that the server runs", name=self.name,
                               url=self.sink.url) from None
        self._attach(self.position)
        if self.reader.capture_session_id != session:  # the ring was replaced meanwhile: its stream ended
            raise RingClosed(f"ring {self.name!r} was replaced by another capture session while the forwarder "
                             "started; start it again", name=self.name)
        return self.position

    def run(self, stop: threading.Event | None = None) -> dict:
        """Forward until the ring is closed and drained (or the writer died), or `stop` is set."""
        stop = stop or threading.Event()
        if self.reader is None:
            self.start()
        ending = "stopped"
        while not stop.is_set():
            try:
                records = self.reader.read_raw_many(BATCH_MAX, STOP_CHECK_S)
            except RingClosed:
                ending = "closed"
                break
            except WriterGone:
                ending = "writer_gone"
                break
            if records:
                self._deliver(records, stop)  # the batch in hand is written even when stop is set meanwhile
            else:
                self.sink.idle()
        return dict(forwarded=self.forwarded, gaps=self.gaps, reconnects=self.reconnects, ending=ending,
                    position=self.position, capture_session_id=self.session)

    def _deliver(self, records: list, stop: threading.Event) -> None:
        """Write `records` to the sink, across outages: until done, or `stop` during an outage."""
        backoff = BACKOFF_FIRST_S
        told = False
        while records:
            try:
                self.sink.write(records)
            except SinkUnavailable as exc:
                if not told:
                    self.log(f"forwarder of {self.name!r}: {exc}; reconnecting (up to every "
                             f"{BACKOFF_MAX_S:.0f} s)")
                    told = True
                records = self._reconnect(records, stop, backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            for record in records:
                if record.dropped:
                    self.gaps += record.dropped
                else:
                    self.forwarded += 1
            self.position = records[-1].seq
            return

    def _reconnect(self, records: list, stop: threading.Event, backoff: float) -> list:
        """Back off, reconnect, and return what of `records` the sink still lacks ([] if it must re-read)."""
        while True:
            if stop.wait(backoff):
                return []  # stopped during the outage: the sink resumes a successor where it stands
            try:
                position = self.sink.open(self.session)
                break
            except SinkUnavailable:
                backoff = min(backoff * 2, BACKOFF_MAX_S)
        self.reconnects += 1
        first = records[0].dropped_from if records[0].dropped else records[0].seq
        last = records[-1].seq
        if first - 1 <= position < last:
            remaining = [r for r in records if r.seq > position]
            self.position = position
            return remaining
        self.position = position
        if position == last:
            return []
        # The sink stands elsewhere (it lost entries, or someone else forwarded): read again from there.
        self._attach(position)
        return []

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        self.sink.close()

    def __enter__(self) -> "Forwarder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

