"""shmring: a shared-memory event broker for processes on one machine.

One writer (``CaptureSession``) publishes ``Event``s into a named ring of
seqlocked slots; any number of ``Reader``s attach by name, each with its own
seq cursor, and learn exactly how many events they lost.
"""

from .errors import (
    ConfigError,
    EventTooLarge,
    IncompatibleRing,
    InvalidEvent,
    RingBusy,
    RingClosed,
    RingNotFound,
    ShmringError,
    UnsupportedPlatform,
    WriterGone,
)
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
]

__version__ = "0.1.0"
