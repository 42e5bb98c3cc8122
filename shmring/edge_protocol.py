"""The HTTP edge's connections: uvicorn's httptools protocol, with a connection's writes in one turn of the loop
sent as one.

Rules:
- A response's head and body reach the socket as one write, not two: a
  client then wakes once per response. What is held goes out when the
  response completes, else when the loop turns; a close sends it first.
- Everything else is uvicorn's: this subclass only wraps the transport.
"""

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["HttpProtocol"]


class Batched:
    """A connection's transport whose writes in one turn of the loop reach the socket as one write: a
    response's head and body are one send, not two (a client then wakes once per response, not twice).
    What is held goes out when the response completes, else when the loop turns; ``close`` sends it first."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []
        self._flush_handle: asyncio.Handle | None = None

    def write(self, data: bytes) -> None:
        if not self._held:
            self._flush_handle = self._loop.call_soon(self.flush)
        self._held.append(data)

    def flush(self) -> None:
        if self._held:
            self._flush_handle.cancel()
            data = b"".join(self._held) if len(self._held) > 1 else self._held[0]
            self._held.clear()
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._held))

    def __getattr__(self, name):  # the rest (is_closing, get_extra_info, pause_reading, ...) is the socket's
        return getattr(self._transport, name)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing through `Batched`."""

    def connection_made(self, transport):
        super().connection_made(Batched(transport, self.loop))

    def on_response_complete(self):
        self.transport.flush()
        super().on_response_complete()
