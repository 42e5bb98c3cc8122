"""``shmring tail`` for people and scripts, and ``publish --print-seqs``, against live rings (real processes).

Every process is a real ``python -m shmring`` subprocess, waited for by handshake with a deadline (its
output, or its registry entry). FORBIDDEN: ``-n N`` printing other than the last N (matching) events
before it follows; ``--type``/``--grep`` leaving out an event that matches, letting one through that
doesn't, or counting what they leave out as drops; colour on a pipe; a drop whose seq range is not
exactly the seqs missing from the output; a seq printed by ``--print-seqs`` that is not the event's.
"""

import json
import os
import pty
import re
import select
import signal
import subprocess

from shmring import Producer
from tests.integration.commands import (
    DEADLINE_S,
    SHMRING,
    assert_one_line_error,
    envelopes,
    ev,
    jl,
    run,
    wait_for_reader,
)

SMALL = ["--capacity", "8", "--data-bytes", str(1 << 20)]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def request(i: int) -> dict:
    return {"type": "network.request", "category": "network", "source": {"kind": "cdp"}, "url": "http://page/",
            "data": {"method": "GET", "url": f"http://127.0.0.1:8000/r{i}", "i": i}}


def mixed(count: int) -> list[dict]:
    """Console logs, with a network request every third event (seq 3, 6, 9, ...)."""
    return [request(i) if i % 3 == 0 else {**ev(i), "type": "console.log"} for i in range(1, count + 1)]


def publish(srv, events) -> list[int]:
    with Producer.connect(srv.socket) as producer:
        return producer.publish_many(events)


def seqs(stdout) -> list[int]:
    return [e["seq"] for e in envelopes(stdout)]


def test_tail_n_prints_the_last_n_then_follows(ring_name, serve, procs):
    srv = serve(ring_name)
    assert publish(srv, mixed(20))[-1] == 20

    follower = procs("tail", ring_name, "-n", "3")
    follower.wait_until(lambda: len(follower.out) == 3, "the last three events")
    assert seqs(follower.out) == [18, 19, 20]
    wait_for_reader(ring_name, follower.pid, cursor=20)
    publish(srv, [ev(21)])
    follower.wait_until(lambda: len(follower.out) == 4, "the event published after")
    assert seqs(follower.out) == [18, 19, 20, 21]

    # With filters, the last N that pass them: the ring is read back, not just its last N slots.
    assert seqs(run("tail", ring_name, "-n", "2", "--category", "network", "--no-follow").stdout) == [15, 18]
    assert seqs(run("tail", ring_name, "--lines", "4", "--type", "network.", "--no-follow").stdout) == [
        9, 12, 15, 18]
    assert seqs(run("tail", ring_name, "-n", "100", "--no-follow").stdout) == list(range(1, 22))
    assert run("tail", ring_name, "-n", "3", "--grep", "no such text", "--no-follow").stdout == b""
    clash = run("tail", ring_name, "-n", "3", "--from-start")
    assert_one_line_error(clash, "not allowed with")

    srv.signal(signal.SIGTERM)
    assert srv.wait() == 0 and follower.wait() == 0
    assert follower.err == []


def test_type_and_grep_select_on_the_consumer_side_and_are_not_drops(ring_name, serve, procs):
    srv = serve(ring_name)
    network = procs("tail", ring_name, "--type", "network.", "--json-drops")
    grep = procs("tail", ring_name, "--grep", '"url":"http://127.0.0.1:8000/r1', "--json-drops")
    both = procs("tail", ring_name, "--type", "console.", "--type", "network.req", "--grep", '"i":1')
    for proc in (network, grep, both):
        wait_for_reader(ring_name, proc.pid)
    publish(srv, mixed(30))
    network.wait_until(lambda: len(network.out) == 10, "the ten network events")
    grep.wait_until(lambda: len(grep.out) == 3, "the requests for /r1*")
    both.wait_until(lambda: len(both.out) == 11, "the events whose data has an i of 1 or 10-19")
    for proc in (network, grep, both):
        entry = wait_for_reader(ring_name, proc.pid, cursor=30)
        # Delivered to tail, then left out by it: not drops, not the reader's filter.
        assert (entry["delivered"], entry["dropped"], entry["filtered"]) == (30, 0, 0), entry
    assert seqs(network.out) == list(range(3, 31, 3))
    assert {e["event"]["type"] for e in envelopes(network.out)} == {"network.request"}
    assert seqs(grep.out) == [12, 15, 18]
    assert seqs(both.out) == [1, *range(10, 20)]
    srv.signal(signal.SIGTERM)
    assert srv.wait() == 0
    for proc in (network, grep, both):
        assert proc.wait() == 0 and proc.err == [], proc.err  # no drop notice


def test_pretty_and_template_formats(ring_name, serve):
    srv = serve(ring_name)
    publish(srv, [request(1), {**ev(2), "type": "console.log", "data": {"level": "log", "args": ["hello", 2]}},
                  {**ev(3), "type": "console.log", "data": {"args": ["x" * 200]}}])

    pretty = run("tail", ring_name, "--from-start", "--no-follow", "--format", "pretty")
    assert pretty.returncode == 0 and pretty.stderr == b""
    lines = pretty.stdout.decode().splitlines()
    assert len(lines) == 3 and not ANSI.search(pretty.stdout.decode())  # a pipe: no colour
    time_, seq, category, type_, url, preview = lines[0].split(maxsplit=5)
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3}", time_)
    assert (seq, category, type_, url) == ("1", "network", "network.request", "http://127.0.0.1:8000/r1")
    assert json.loads(preview) == request(1)["data"]
    assert lines[1].split(maxsplit=4)[1:] == ["2", "console", "console.log", '{"level":"log","args":["hello",2]}']
    assert lines[2].endswith("…") and len(lines[2].split(maxsplit=4)[4]) == 80  # a short preview

    # On a terminal, the same line in colour.
    coloured = _on_a_terminal([*SHMRING, "tail", ring_name, "--from-start", "--no-follow", "--format", "pretty"])
    assert ANSI.search(coloured)
    assert [ANSI.sub("", line) for line in coloured.splitlines()] == lines
    plain = _on_a_terminal([*SHMRING, "tail", ring_name, "--from-start", "--no-follow", "--format", "pretty"],
                           NO_COLOR="1")
    assert plain.splitlines() == lines

    template = run("tail", ring_name, "--from-start", "--no-follow", "--format",
                   r"{seq}\t{event.type} {event.data.url}|{event.data.args.0}|{event.nope.deeper}|{{literal}}")
    assert template.returncode == 0 and template.stderr == b""
    assert template.stdout.decode().splitlines() == [
        "1\tnetwork.request http://127.0.0.1:8000/r1|||{literal}",
        "2\tconsole.log |hello||{literal}",
        f"3\tconsole.log |{'x' * 200}||{{literal}}",
    ]
    as_json = run("tail", ring_name, "--after", "1", "--no-follow", "--format", "{event.data}")
    assert [json.loads(line) for line in as_json.stdout.decode().splitlines()] == [
        {"level": "log", "args": ["hello", 2]}, {"args": ["x" * 200]}]
    for bad, needle in (("{seq", "unmatched"), ("{a b}", "bad field"), ("plain text", "neither json nor pretty")):
        assert_one_line_error(run("tail", ring_name, "--format", bad), needle)


def _on_a_terminal(argv: list[str], **env: str) -> str:
    """Run `argv` to its end with stdout on a pseudo-terminal; what it printed there."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE,
                                env={**os.environ, **env})
        os.close(slave)
        slave = None
        out = b""
        while True:
            ready, _, _ = select.select([master], [], [], DEADLINE_S)
            assert ready, f"{argv} printed nothing for {DEADLINE_S} s"
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            out += chunk
        assert proc.wait(DEADLINE_S) == 0 and proc.stderr.read() == b""
        proc.stderr.close()
    finally:
        os.close(master)
        if slave is not None:
            os.close(slave)
    return out.decode().replace("\r\n", "\n")


def test_drops_carry_their_seq_range_on_stderr_and_in_band(ring_name, serve, procs):
    srv = serve(ring_name, *SMALL)
    publish(srv, [ev(i) for i in range(1, 41)])
    lapped = run("tail", ring_name, "--from-start", "--no-follow", "--json-drops")
    assert lapped.returncode == 0
    lines = lapped.stdout.decode().splitlines()
    assert json.loads(lines[0]) == {"dropped": 32, "from_seq": 1, "to_seq": 32}
    assert seqs(lines[1:]) == list(range(33, 41))
    assert lapped.stderr.decode().splitlines() == [
        "shmring: dropped 32 events, seq 1-32 (overwritten before this reader got them)"]
    without = run("tail", ring_name, "--from-start", "--no-follow")
    assert seqs(without.stdout) == list(range(33, 41)) and without.stderr == lapped.stderr

    # A drop mid-stream: a follower stopped while the writer laps it, then let go.
    follower = procs("tail", ring_name, "--json-drops")
    wait_for_reader(ring_name, follower.pid)
    publish(srv, [ev(i) for i in range(41, 45)])
    follower.wait_until(lambda: len(follower.out) == 4, "the first four events")
    wait_for_reader(ring_name, follower.pid, cursor=44)
    follower.signal(signal.SIGSTOP)
    try:
        publish(srv, [ev(i) for i in range(45, 65)])
    finally:
        follower.signal(signal.SIGCONT)
    follower.wait_until(lambda: follower.out and '"seq":64,' in follower.out[-1], "the last event")
    records = [json.loads(line) for line in follower.out]
    drops = [r for r in records if "dropped" in r]
    assert len(drops) == 1 and drops[0]["from_seq"] == 45, records
    drop = drops[0]
    assert drop["dropped"] == drop["to_seq"] - drop["from_seq"] + 1 >= 20 - 8
    # Events and the drop's range cover every seq exactly once, in order.
    covered = []
    for r in records:
        covered += list(range(r["from_seq"], r["to_seq"] + 1)) if "dropped" in r else [r["seq"]]
    assert covered == list(range(41, 65))
    # stderr is pumped by its own thread; the notice may trail the stdout line.
    follower.wait_until(lambda: follower.err, "the drop notice on stderr")
    assert follower.err == [f"shmring: dropped {drop['dropped']} events, seq {drop['from_seq']}-{drop['to_seq']} "
                            "(overwritten before this reader got them)"]
    srv.signal(signal.SIGTERM)
    assert srv.wait() == 0 and follower.wait() == 0


def test_publish_print_seqs(ring_name, serve):
    srv = serve(ring_name)
    lines = [jl(ev(1)), b"\n", b"not json\n", jl(ev(2)), jl({**ev(3), "category": "Bad!"}), jl(ev(4))]
    result = run("publish", "--socket", srv.socket, "--print-seqs", input=b"".join(lines))
    assert result.returncode == 1
    assert result.stdout.decode().splitlines() == ["1", "2", "3"]
    assert [e.split(":")[0] for e in result.stderr.decode().splitlines()] == ["line 3", "line 5"]
    printed = run("tail", ring_name, "--from-start", "--no-follow", "--format", "{seq} {event.data.i}")
    assert printed.stdout.decode().splitlines() == ["1 1", "2 2", "3 4"]

    clean = run("publish", "--socket", srv.socket, "--print-seqs", input=b"".join(jl(ev(i)) for i in range(5, 605)))
    assert clean.returncode == 0 and clean.stderr == b""  # 600 lines: two batches of the command
    assert clean.stdout.decode().splitlines() == [str(seq) for seq in range(4, 604)]
    quiet = run("publish", "--socket", srv.socket, input=jl(ev(700)))
    assert quiet.returncode == 0 and quiet.stdout == b""  # without the flag, as before
