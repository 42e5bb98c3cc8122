"""Clients of the HTTP edge for the integration tests: ``publish`` over POST, and ``Frames``, an SSE stream read by
a thread into parsed frames, so that every wait on it has a deadline.

The ``edge`` fixture in conftest.py starts ``shmring serve --http`` for them.
"""

import contextlib
import json
import socket
import threading

import httpx
import pytest

from tests.integration.commands import DEADLINE_S


def publish(base, *events, headers=None) -> list[int]:
    body = b"".join(json.dumps(e).encode() + b"\n" for e in events)
    r = httpx.post(f"{base}/events/publish", content=body, headers={"Content-Type": "application/x-ndjson",
                                                                     **(headers or {})}, timeout=DEADLINE_S)
    assert r.status_code == 200, r.text
    return [json.loads(line)["seq"] for line in r.text.splitlines()]


def connected(frames) -> bool:
    return any(f.get("event") == "session" for f in frames)


class Frames:
    """An SSE stream read with httpx: parsed frames, by a thread, so every wait has a deadline."""

    def __init__(self, url, headers=None, params=None):
        self.frames: list[dict] = []
        self.lines: list[str] = []
        self.closed = False
        self.response = None
        self._cond = threading.Condition()
        self._client = httpx.Client(timeout=httpx.Timeout(DEADLINE_S, read=None))
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url, headers, params), daemon=True)
        self._thread.start()
        assert self._ready.wait(DEADLINE_S)

    def _run(self, url, headers, params):
        try:
            with self._client.stream("GET", url, headers=headers, params=params) as response:
                self.response = response
                self._ready.set()
                if response.status_code != 200:
                    response.read()
                    return
                frame = {}
                for line in response.iter_lines():
                    with self._cond:
                        self.lines.append(line)
                        if line == "":
                            if frame:
                                self.frames.append(frame)
                            frame = {}
                        elif line.startswith(":"):
                            self.frames.append({"comment": line})
                        else:
                            key, _, value = line.partition(":")
                            frame[key] = value[1:] if value.startswith(" ") else value
                        self._cond.notify_all()
        except httpx.HTTPError:
            pass
        finally:
            self._ready.set()
            with self._cond:
                self.closed = True
                self._cond.notify_all()

    def wait(self, predicate, what, timeout=DEADLINE_S):
        assert self.response is not None and self.response.status_code == 200, (
            self.response and (self.response.status_code, self.response.text))
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.frames) or self.closed, timeout) or not predicate(
                    self.frames):
                pytest.fail(f"{what}: not seen within {timeout} s; last frames {str(self.frames[-5:])[:600]}")

    def events(self) -> list[dict]:
        return [f for f in self.frames if "id" in f]

    def wait_events(self, n):
        self.wait(lambda frames: len([f for f in frames if "id" in f]) >= n, f"{n} events")
        return self.events()

    def close(self):
        """Hang up: shut the socket down under the reading thread, which then ends."""
        stream = self.response.extensions.get("network_stream") if self.response is not None else None
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(DEADLINE_S)
        assert not self._thread.is_alive()
        self._client.close()
