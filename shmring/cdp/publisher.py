"""The publisher thread: sends events to serve's ingest socket in batches, so the asyncio loop never blocks.

Rules:
- Events go out with the Producer client's ``publish_many``; the writer stays
  the single write path.
- While the socket is down events are held and the connection retried with
  back-off; one line through ``log`` when it goes down, one when it is back.
- A batch whose connection broke is sent again (the server that took it is
  gone). Every event ends counted: published, rejected, truncated or lost.
- ``close()`` drains for up to ``drain_timeout_s``; what cannot be delivered
  by then is counted as lost and logged.
"""

import collections
import contextlib
import threading
import time

from ..errors import ShmringError
from ..producer import Producer, PublishRejected
from .mapper import encode_for_ingest

PUBLISH_BATCH = 512


class _Publisher:
    """Sends events to the ingest socket from its own thread, in batches."""

    def __init__(self, socket_path: str, log, counts: dict, *, drain_timeout_s: float = 10.0):
        self.socket_path = socket_path
        self.log = log
        self.counts = counts
        self.drain_timeout_s = drain_timeout_s
        self.connected = False
        self._items: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="cdp-publisher", daemon=True)
        self._rejections_logged = 0

    def start(self) -> None:
        self._thread.start()

    def submit(self, events: list[dict]) -> None:
        with self._cond:
            self._items.extend(events)
            self._cond.notify()

    def backlog(self) -> int:
        return len(self._items)

    def discard_oldest(self, keep: int) -> int:
        with self._cond:
            n = max(0, len(self._items) - keep)
            for _ in range(n):
                self._items.popleft()
        return n

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(self.drain_timeout_s + 15)

    def _take(self) -> list | None:
        with self._cond:
            while not self._items and not self._closing:
                self._cond.wait(0.5)
            if not self._items:
                return None
            n = min(len(self._items), PUBLISH_BATCH)
            return [self._items.popleft() for _ in range(n)]

    def _run(self) -> None:
        producer = None
        down_since = None
        backoff = 0.05
        deadline = None
        while (batch := self._take()) is not None:
            lines = []
            for event in batch:
                line, cut = encode_for_ingest(event)
                if cut:
                    self.counts["truncated"] += 1
                lines.append(line)
            while True:
                if self._closing and deadline is None:
                    deadline = time.monotonic() + self.drain_timeout_s
                if producer is None:
                    try:
                        # A long timeout: a writer held by its flusher (gating) is slow, not gone.
                        producer = Producer.connect(self.socket_path, timeout=60.0)
                    except ShmringError as exc:
                        if down_since is None:
                            down_since = time.monotonic()
                            self.log(f"capture-cdp: cannot publish: {exc}; holding events and retrying")
                        if deadline is not None and time.monotonic() > deadline:
                            lost = len(batch) + self.discard_oldest(0)
                            self.counts["lost"] += lost
                            self.log(f"capture-cdp: {lost} events were not delivered: the ingest socket "
                                     f"{self.socket_path} stayed unreachable while stopping")
                            return
                        time.sleep(backoff)
                        backoff = min(backoff * 2, 1.0)
                        continue
                    self.connected = True
                    backoff = 0.05
                    if down_since is not None:
                        self.log(f"capture-cdp: publishing to {self.socket_path} again")
                        down_since = None
                try:
                    producer.publish_many(lines)
                    self.counts["published"] += len(lines)
                except PublishRejected as exc:
                    self.counts["published"] += len(lines) - len(exc.rejected)
                    self.counts["rejected"] += len(exc.rejected)
                    for index, message in exc.rejected:
                        self._log_rejection(batch[index], message)
                except Exception as exc:  # noqa: BLE001 - a broken connection, whatever the error
                    # The batch's fate is unknown; the server that took it is gone
                    # (a restarted one has a new ring), so it is sent again.
                    with contextlib.suppress(OSError):
                        producer.close()
                    producer = None
                    self.connected = False
                    if down_since is None:
                        down_since = time.monotonic()
                        self.log(f"capture-cdp: the ingest connection broke ({exc}); reconnecting")
                    continue
                break
        if producer is not None:
            producer.close()

    def _log_rejection(self, event: dict, message: str) -> None:
        self._rejections_logged += 1
        n = self._rejections_logged
        if n <= 5 or n % 1000 == 0:
            source = event.get("source", {}).get("event", "")
            self.log(f"capture-cdp: the writer rejected a {event.get('type')} event ({source}): {message}"
                     + (f" [{n} rejected so far]" if n > 5 else ""))
