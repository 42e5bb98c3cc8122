"""Real sink servers for the forwarder's tests: redis-server and nats-server (JetStream), each started on a free
loopback port with its own temporary directory, waited for by handshake, and ended by pid at teardown (the
``sink_server`` fixture in conftest.py starts them).

Readers of what a sink holds return [(seq, session, kind, payload_or_range)] in the sink's order.
"""

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

DEADLINE_S = 30


def _binary(name: str) -> str | None:
    """Debian puts nats-server in /usr/sbin, which a CI's PATH may lack."""
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)),
                                      None)


REDIS_SERVER, NATS_SERVER = _binary("redis-server"), _binary("nats-server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, what: str, greeting: bytes | None = None) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with status {proc.returncode} before it listened")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                if greeting is None:
                    sock.sendall(b"PING\r\n")
                    reply = sock.recv(64)
                    if reply.startswith((b"+PONG", b"-NOAUTH")):
                        return
                else:
                    if sock.recv(4).startswith(greeting):
                        return
        except OSError:
            pass
        time.sleep(0.02)
    pytest.fail(f"{what} did not listen on port {port} within {DEADLINE_S} s")


class Server:
    """One sink server process; restartable on the same port and directory."""

    def __init__(self, kind: str, directory: str, password: str | None = None):
        self.kind = kind
        self.directory = directory
        self.password = password
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        os.makedirs(directory, exist_ok=True)

    @property
    def url(self) -> str:
        if self.kind == "redis":
            auth = f":{self.password}@" if self.password else ""
            return f"redis://{auth}127.0.0.1:{self.port}/0"
        auth = f"shm:{self.password}@" if self.password else ""
        return f"nats://{auth}127.0.0.1:{self.port}"

    def start(self) -> "Server":
        if self.kind == "redis":
            args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.directory,
                    "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no",
                    "--loglevel", "warning"]
            if self.password:
                args += ["--requirepass", self.password]
        else:
            args = [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", self.directory]
            if self.password:
                args += ["--user", "shm", "--pass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     stdin=subprocess.DEVNULL)
        _wait_port(self.port, self.proc, self.kind, None if self.kind == "redis" else b"INFO")
        return self

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(DEADLINE_S)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    # -- what the sink holds ---------------------------------------------------
    def redis(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=10)

    def redis_entries(self, key: str) -> list[tuple[bytes, dict]]:
        client = self.redis()
        out, start = [], "-"
        while True:
            chunk = client.xrange(key, start, "+", count=10000)
            out += chunk
            if len(chunk) < 10000:
                return out
            start = "(" + chunk[-1][0].decode()

    def nats_messages(self, stream: str, subject: str) -> list[tuple[dict, bytes]]:
        import nats
        import nats.js.errors

        async def collect():
            nc = await nats.connect(self.url)
            try:
                js = nc.jetstream()
                try:
                    total = (await js.stream_info(stream)).state.messages
                except nats.js.errors.NotFoundError:
                    return []  # the forwarder has not made its stream yet: it holds nothing
                out = []
                if total:
                    sub = await js.subscribe(subject, ordered_consumer=True)
                    while len(out) < total:
                        msg = await sub.next_msg(timeout=DEADLINE_S)
                        out.append((dict(msg.headers or {}), msg.data))
                        if msg.metadata.num_pending == 0:
                            break
                return out
            finally:
                await nc.close()

        return asyncio.run(collect())


def held(server: Server, ring: str) -> list[tuple]:
    """What the sink holds for ring `ring` (default key/stream): (seq, session, payload) or (seq, session,
    ("gap", from, to, dropped)), in the sink's order."""
    out = []
    if server.kind == "redis":
        for entry_id, fields in server.redis_entries(f"shmring:{ring}"):
            ms, seq = map(int, entry_id.decode().split("-"))
            if b"envelope" in fields:
                import json

                envelope = fields[b"envelope"]
                head = json.loads(envelope)
                assert head["seq"] == seq, (entry_id, head["seq"])
                assert fields[b"category"].decode() == head["event"]["category"]
                assert fields[b"type"].decode() == head["event"]["type"]
                out.append((seq, head["capture_session_id"], envelope, ms))
            else:
                gap = ("gap", int(fields[b"from_seq"]), int(fields[b"to_seq"]), int(fields[b"dropped"]))
                assert gap[2] == seq
                out.append((seq, fields[b"capture_session_id"].decode(), gap, ms))
    else:
        for headers, body in server.nats_messages(f"shmring-{ring}", f"shmring.{ring}"):
            seq, session = int(headers["Shmring-Seq"]), headers["Shmring-Session"]
            assert headers["Nats-Msg-Id"] == f"{session}:{seq}"
            if "Shmring-Dropped" in headers:
                import json

                body_range = json.loads(body)
                gap = ("gap", body_range["from_seq"], body_range["to_seq"], int(headers["Shmring-Dropped"]))
                assert gap[2] == seq and gap[3] == body_range["dropped"]
                out.append((seq, session, gap, 0))
            else:
                out.append((seq, session, body, 0))
    return out


