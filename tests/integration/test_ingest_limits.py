"""Ingest's memory bound across connections, on real Unix sockets against an in-process IngestServer.

The server runs on an asyncio loop in a thread and publishes into a recorder
(the point here is the socket behaviour, not the ring; ``shmring serve``
with the same limits is tested in test_cli.py). The test thread waits for
the server's accounting by polling it with a deadline, and for a
connection's end by reading to EOF. FORBIDDEN outcomes: more partial lines
held than the limit allows, an accounted total that does not return to 0,
a fragment published, a connection other than the offender refused or
ended, a complete line sent before the limit was hit left unanswered.
"""

import asyncio
import errno
import json
import socket
import threading
import time
from types import SimpleNamespace

import pytest

from shmring import Producer
from shmring.errors import ConfigError
from shmring.ingest import IngestServer
from tests.integration.commands import replies_until_end

DEADLINE_S = 30
MIB = 1024 * 1024


def line(i: int, pad: int = 0) -> bytes:
    return json.dumps({"type": "console.test", "category": "console", "source": {"kind": "cdp"},
                       "data": {"i": i, "pad": "x" * pad}}, separators=(",", ":")).encode() + b"\n"


class Recorder:
    """The publish target: keeps every event (called on the loop's thread only)."""

    def __init__(self):
        self.events = []

    def __call__(self, event):
        self.events.append(event)
        return SimpleNamespace(seq=len(self.events))


@pytest.fixture
def ingest(tmp_path):
    """Start an IngestServer on its own loop thread: returns (server, recorder); stopped and joined at teardown."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="ingest-loop", daemon=True)
    thread.start()
    servers = []

    def start(**limits) -> tuple[IngestServer, Recorder]:
        recorder = Recorder()
        server = IngestServer(str(tmp_path / f"ingest{len(servers)}.sock"), recorder, **limits)
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(DEADLINE_S)
        servers.append(server)
        return server, recorder

    yield start
    for server in servers:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(DEADLINE_S)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(DEADLINE_S)
    loop.close()


@pytest.fixture
def connect():
    """Connect to a socket path (with a timeout on every call); every socket is closed at teardown."""
    socks = []

    def make(path: str) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        socks.append(sock)
        sock.settimeout(DEADLINE_S)
        sock.connect(path)
        return sock

    yield make
    for sock in socks:
        sock.close()


def wait_for(predicate, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {DEADLINE_S} s"
        time.sleep(0.005)


def send_until_closed(sock: socket.socket, data: bytes) -> None:
    """Send `data`; the server may close the connection part way (then the rest is not taken)."""
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


def replies(sock: socket.socket, count: int) -> list[dict]:
    """Exactly `count` reply lines (the socket's timeout bounds the wait)."""
    buffer = bytearray()
    while buffer.count(b"\n") < count:
        chunk = sock.recv(1 << 16)
        assert chunk, f"the server ended the connection before {count} replies: {bytes(buffer)[:200]!r}"
        buffer += chunk
    return [json.loads(raw) for raw in buffer.splitlines()]


def test_partial_lines_are_bounded_across_connections(ingest, connect):
    server, recorder = ingest(max_buffered_bytes=1 * MIB)
    held_a = line(1, pad=400 * 1024)[:-4]  # a valid event but for its closing `"}}` and newline
    held_b = b"b" * (400 * 1024)

    a = connect(server.path)
    a.sendall(held_a)
    wait_for(lambda: server.buffered_bytes == len(held_a), "A's partial line held")
    b = connect(server.path)
    b.sendall(held_b)
    wait_for(lambda: server.buffered_bytes == len(held_a) + len(held_b), "B's partial line held")

    # A well-behaved producer publishes throughout, one line at a time.
    steady_seqs, steady_errors, steady_stop = [], [], threading.Event()

    def steady():
        try:
            with Producer.connect(server.path, timeout=DEADLINE_S) as producer:
                while not steady_stop.is_set() or len(steady_seqs) < 200:
                    steady_seqs.append(producer.publish(line(10_000 + len(steady_seqs))))
        except BaseException as exc:  # reported by the test thread
            steady_errors.append(exc)

    steady_thread = threading.Thread(target=steady, daemon=True)
    steady_thread.start()
    wait_for(lambda: len(steady_seqs) >= 20 or steady_errors, "the steady producer under way")

    # C's two complete lines come first; its 400 KiB fragment would take the total over 1 MiB.
    c = connect(server.path)
    send_until_closed(c, line(2) + line(3) + b"c" * (400 * 1024))
    c_replies = replies_until_end(c)
    c.close()
    assert len(c_replies) == 3, c_replies
    assert "seq" in c_replies[0] and "seq" in c_replies[1], c_replies
    assert "ingest buffer limit is reached" in c_replies[2]["error"], c_replies
    assert "retry later or send shorter lines" in c_replies[2]["error"]
    # C's bytes were released before its connection ended; A's and B's are still held.
    assert server.buffered_bytes == len(held_a) + len(held_b)

    # Nothing already held is lost: A finishes its line and it is published.
    a.sendall(b'"}}\n')
    assert "seq" in replies(a, 1)[0]
    wait_for(lambda: server.buffered_bytes == len(held_b), "A's line released once complete")
    # With room again, a new connection may hold a partial line.
    e = connect(server.path)
    e.sendall(b"e" * (500 * 1024))
    wait_for(lambda: server.buffered_bytes == len(held_b) + 500 * 1024, "E's partial line held")

    steady_stop.set()
    steady_thread.join(DEADLINE_S)
    assert not steady_thread.is_alive() and not steady_errors, steady_errors
    assert len(steady_seqs) >= 200 and steady_seqs == sorted(steady_seqs)

    by_i = {data["i"]: data for data in (json.loads(bytes(event.data)) for event in recorder.events)}
    assert {1, 2, 3} <= set(by_i) and len(by_i[1]["pad"]) == 400 * 1024
    assert len(recorder.events) == len(steady_seqs) + 3  # no fragment was ever published
    assert server.rejected == 1
    wait_for(lambda: server.connections == 3, "A, B and E still served once the steady producer left")
    for sock in (a, b, e):
        sock.close()
    wait_for(lambda: server.buffered_bytes == 0 and server.connections == 0, "every byte released after all closed")


def test_many_fragments_never_hold_more_than_the_limit(ingest, connect):
    server, recorder = ingest(max_buffered_bytes=1 * MIB)
    fragment = b"f" * (300 * 1024)
    socks = [connect(server.path) for _ in range(10)]  # 3 MiB of fragments offered for a 1 MiB limit
    for sock in socks:
        send_until_closed(sock, fragment)
    # Three whole fragments fit and stay held; each of the others went over, was told so and closed.
    wait_for(lambda: server.buffered_bytes == 3 * len(fragment) and server.rejected == 7, "all input read")
    outcomes = []
    for sock in socks:
        sock.shutdown(socket.SHUT_WR)  # a held fragment is then dropped unanswered, as at any disconnect
        outcomes.append(replies_until_end(sock))
        sock.close()
    refused = [r for r in outcomes if r]
    assert len(refused) == 7 and all(len(r) == 1 and "ingest buffer limit" in r[0]["error"] for r in refused)
    assert recorder.events == []
    wait_for(lambda: server.buffered_bytes == 0 and server.connections == 0, "every byte released after all closed")


@pytest.mark.parametrize("limits", [dict(max_connections=0), dict(max_buffered_bytes=0),
                                    dict(max_connections=2.5), dict(max_buffered_bytes="1")])
def test_limits_must_be_positive_whole_numbers(tmp_path, limits):
    with pytest.raises(ConfigError, match="at least 1"):
        IngestServer(str(tmp_path / "x.sock"), Recorder(), **limits)


def test_a_burst_of_closed_connections_does_not_refuse_a_live_producer(ingest, connect):
    server, recorder = ingest()
    deadline = time.monotonic() + DEADLINE_S
    for _ in range(2000):  # connect, then hang up at once: none of these is a producer any more
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as gone:
            gone.setblocking(False)
            while gone.connect_ex(server.path) == errno.EAGAIN:  # the accept backlog is full: the server catches up
                assert time.monotonic() < deadline, "the server stopped accepting"
                time.sleep(0.001)
    producer = connect(server.path)
    producer.sendall(line(1))
    assert replies(producer, 1) == [{"seq": 1}]
    wait_for(lambda: server.connections == 1, "the hung-up connections' tasks ended")
    assert len(recorder.events) == 1


def test_a_flood_of_open_connections_is_still_refused_and_the_served_still_served(ingest, connect):
    server, recorder = ingest(max_connections=8)
    served = [connect(server.path) for _ in range(8)]
    wait_for(lambda: server.connections == 8, "eight connections served")
    refused = connect(server.path)
    answer = replies_until_end(refused)
    assert len(answer) == 1 and answer[0]["error"].startswith("too many connections: the server serves at most 8")
    for i, sock in enumerate(served):
        sock.sendall(line(i))
        assert "seq" in replies(sock, 1)[0]
    served[0].close()  # one producer leaves: its place is free again, at once
    late = connect(server.path)
    late.sendall(line(99))
    assert "seq" in replies(late, 1)[0]
    assert len(recorder.events) == 9
