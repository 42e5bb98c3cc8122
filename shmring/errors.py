"""The error hierarchy: one base, a few subclasses, each message saying what to do.

Rules:
- Every error raised by shmring is a ``ShmringError``.
- Errors about bad arguments or bad events also subclass ``ValueError``.
- The hot path reports loss as data (``ReadResult.dropped``), never as an error.
- Errors carry only a message, so they pickle across processes unchanged.
"""

__all__ = [
    "ShmringError",
    "ConfigError",
    "InvalidEvent",
    "EventTooLarge",
    "RingNotFound",
    "RingBusy",
    "IncompatibleRing",
    "RingClosed",
    "WriterGone",
    "UnsupportedPlatform",
    "FlushError",
]


class ShmringError(Exception):
    """Base class of every error shmring raises."""


class ConfigError(ShmringError, ValueError):
    """A bad argument: ring name, capacity, resume seq, filter value."""


class InvalidEvent(ShmringError, ValueError):
    """An event was rejected at publish; nothing was written."""


class EventTooLarge(InvalidEvent):
    """The envelope is over the size limit even with its data dropped."""


class RingNotFound(ShmringError):
    """No ring of that name exists on this machine."""


class RingBusy(ShmringError):
    """The ring name is taken by a live writer."""


class IncompatibleRing(ShmringError):
    """The segment is not a shmring ring of this layout version."""


class RingClosed(ShmringError):
    """The writer closed the ring and this handle has consumed all of it."""


class WriterGone(ShmringError):
    """The writer process died without closing the ring."""


class UnsupportedPlatform(ShmringError):
    """This CPU's memory model does not give the ordering the seqlock needs."""


class FlushError(ShmringError):
    """The flusher could not write or sync its files; its checkpoint is still consistent."""
