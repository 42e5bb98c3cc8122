"""The error tree: one base, a class per case, each message saying what to do.

Rules:
- Every error shmring raises is a ``ShmringError``, and every error class is
  defined here. A specific case gets its own class, never a bare
  ``ShmringError``.
- Errors about bad arguments or bad events also subclass ``ValueError``.
- The hot path reports loss as data (``ReadResult.dropped``), never as an error.
- The message is the first argument and ``str(e)``. Anything else an error
  knows is a keyword *field* (the ring's ``name``, a ``pid``, a ``path``...),
  None when the raise site did not know it. A class lists the fields it adds
  in ``fields``; it also has every field of its parents.
- Errors pickle whole (message and fields), so they cross processes.
"""

__all__ = [
    "ShmringError",
    "ConfigError",
    "SocketPathError",
    "InvalidEvent",
    "EventTooLarge",
    "RingNotFound",
    "RingBusy",
    "IncompatibleRing",
    "RingClosed",
    "ReaderClosed",
    "WriterGone",
    "RegistryFull",
    "UnsupportedPlatform",
    "FlushError",
    "ProducerError",
    "PublishRejected",
    "ServeError",
    "ResumeError",
    "DemoError",
    "CdpError",
    "MalformedCdp",
    "BrowserError",
    "ProducerNotRunning",
    "ControlError",
    "ControlTimeout",
    "ForwardError",
    "SinkUnavailable",
]


class ShmringError(Exception):
    """Base class of every error shmring raises."""

    fields: tuple[str, ...] = ()
    """The keyword fields of this class, its parents' included (see the module rules)."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        inherited = [f for base in cls.__mro__[1:] if issubclass(base, ShmringError) for f in base.fields]
        cls.fields = tuple(dict.fromkeys([*inherited, *cls.__dict__.get("fields", ())]))

    def __init__(self, message: str, /, **fields):
        unknown = fields.keys() - set(self.fields)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field {', '.join(sorted(unknown))}")
        super().__init__(message)
        for field in self.fields:
            setattr(self, field, fields.get(field))

    def __reduce__(self):
        return _rebuild, (type(self), self.args, {field: getattr(self, field) for field in self.fields})

    def __repr__(self) -> str:
        known = "".join(f", {f}={getattr(self, f)!r}" for f in self.fields if getattr(self, f) is not None)
        return f"{type(self).__name__}({', '.join(map(repr, self.args))}{known})"


def _rebuild(cls, args, fields):
    return cls(*args, **fields)


class ConfigError(ShmringError, ValueError):
    """A bad argument: ring name, capacity, resume seq, filter value."""

    fields = ("name",)


class SocketPathError(ConfigError):
    """The ingest socket path cannot be used: not a socket, in use, or not creatable."""

    fields = ("path",)


class InvalidEvent(ShmringError, ValueError):
    """An event was rejected at publish; nothing was written."""


class EventTooLarge(InvalidEvent):
    """The envelope is over the size limit even with its data dropped."""

    fields = ("size_bytes", "limit_bytes")


class RingNotFound(ShmringError):
    """No ring of that name exists on this machine."""

    fields = ("name",)


class RingBusy(ShmringError):
    """The ring name is taken by a live writer."""

    fields = ("name", "pid")


class IncompatibleRing(ShmringError):
    """The segment is not a shmring ring of this layout version."""

    fields = ("name",)


class RingClosed(ShmringError):
    """The writer closed the ring and this handle has consumed all of it."""

    fields = ("name", "last_seq")


class ReaderClosed(ShmringError):
    """This reader was closed; attach a new one."""

    fields = ("name",)


class WriterGone(ShmringError):
    """The writer process died without closing the ring."""

    fields = ("name", "pid", "last_seq")


class RegistryFull(ShmringError):
    """Every reader entry of the ring is held by a live process (or the ring's consumer groups are full)."""

    fields = ("name", "max_readers", "group")


class UnsupportedPlatform(ShmringError):
    """This CPU's memory model does not give the ordering the seqlock needs."""

    fields = ("machine",)


class FlushError(ShmringError):
    """The flusher could not write or sync its files; its checkpoint is still consistent."""

    fields = ("name", "path")


class ProducerError(ShmringError):
    """The connection to serve's ingest socket failed, broke or timed out."""

    fields = ("path",)


class PublishRejected(ShmringError):
    """The writer rejected events; ``rejected`` lists (index, message); ``seqs`` has None for each."""

    fields = ("path", "rejected", "seqs")

    def __init__(self, message: str, /, rejected: list[tuple[int, str]] | None = None, seqs: list | None = None,
                 *, path: str | None = None):
        super().__init__(message, path=path, rejected=rejected or [], seqs=seqs or [])


class ServeError(ShmringError):
    """``serve`` could not start one of its parts (the flusher did not attach)."""

    fields = ("name", "path")


class ResumeError(ServeError):
    """``serve --resume`` cannot continue the session safely (a dead writer's ring it must not drain, or
    a flusher still draining it); nothing was changed."""

    fields = ("pid", "capture_session_id")


class ProducerNotRunning(ShmringError):
    """No producer to configure: no ``serve NAME --cdp`` runs, or its producer is between restarts."""

    fields = ("name", "producer")


class ControlError(ShmringError):
    """A producer's control channel failed: no answer in time, or an answer that is not the protocol."""

    fields = ("name", "path")


class ControlTimeout(ControlError):
    """The producer (or serve, for it) did not answer a control request in time (504 at the HTTP edge)."""


class DemoError(ShmringError):
    """``shmring demo`` could not start one of its parts."""

    fields = ("path", "status")


class ForwardError(ShmringError):
    """``forward`` cannot go on: a bad sink URL, refused authentication, a key or stream it cannot use."""

    fields = ("name", "url")


class SinkUnavailable(ShmringError):
    """The forwarder's sink is unreachable or stopped answering; the forwarder reconnects with back-off."""

    fields = ("url",)


class CdpError(ShmringError):
    """A Chrome DevTools Protocol command failed (the browser answered with an error, or the call broke)."""


class MalformedCdp(ShmringError, ValueError):
    """A CDP message the mapper cannot read (the capture loop reports and skips it)."""


class BrowserError(ShmringError):
    """A Chromium the project launched could not start or open its debugging port."""

    fields = ("port", "status")
