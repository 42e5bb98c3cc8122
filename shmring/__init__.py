"""shmring: a shared-memory event broker for processes on one machine.

One writer (``CaptureSession``) publishes ``Event``s into a named ring of
seqlocked slots; any number of ``Reader``s attach by name, each with its own
seq cursor, and learn exactly how many events they lost.
"""

from .archive import Archive
from .errors import (
    ConfigError,
    EventTooLarge,
    FlushError,
    IncompatibleRing,
    InvalidEvent,
    RingBusy,
    RingClosed,
    RingNotFound,
    ShmringError,
    UnsupportedPlatform,
    WriterGone,
)
from .producer import Producer, PublishRejected
from .reader import Filter, Reader, ReadResult
from .schema import Envelope, Event, Source
from .session import CaptureSession

__all__ = [
    "Event",
    "Source",
    "Envelope",
    "CaptureSession",
    "Reader",
    "ReadResult",
    "Filter",
    "Flusher",
    "Archive",
    "Producer",
    "PublishRejected",
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

__version__ = "0.1.0"


def __getattr__(name: str):
    # Imported on first use, so `python -m shmring.flusher` does not find the
    # module already imported by the package.
    if name == "Flusher":
        from .flusher import Flusher

        return Flusher
    raise AttributeError(f"module 'shmring' has no attribute {name!r}")
