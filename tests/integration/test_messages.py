"""Failures a new user meets first: one line that says what is wrong and what to do, never a raw OS message.

Real subprocesses (``python -m shmring``) and real paths. For "no permission" as root, the serve process
runs without the capabilities that let root write anywhere (``setpriv``); a read-only directory is a
read-only bind mount made in a private mount namespace (``unshare --mount``), so nothing outside the test
ever sees it. FORBIDDEN: a traceback, a second line, a zero exit status, a ring left behind, and for
``stat --watch`` on a ring that closes cleanly: a DEAD writer or a non-zero exit.
"""

import os
import shutil
import signal
import subprocess
import sys

import pytest

from shmring import Flusher, Reader, RingNotFound
from shmring.stats import ring_stats
from tests.integration.commands import DEADLINE_S, SHMRING, assert_one_line_error, run, shm_entries


def test_flush_on_a_missing_ring_says_what_tail_says(ring_name, tmp_path):
    tail = run("tail", ring_name)
    flush = run("flush", ring_name, str(tmp_path / "logs"))
    line = assert_one_line_error(tail, "no ring", "shmring ls", f"shmring serve {ring_name}")
    assert assert_one_line_error(flush) == line
    assert assert_one_line_error(run("stat", ring_name, "--watch")) == line
    assert flush.stdout == tail.stdout == b""


def test_the_api_says_how_to_list_rings_or_start_one(ring_name, tmp_path):
    for attempt in (lambda: Reader.attach(ring_name), lambda: ring_stats(ring_name),
                    lambda: Flusher(ring_name, tmp_path / "logs")):
        message = str(pytest.raises(RingNotFound, attempt).value)
        assert "\n" not in message and f"no ring {ring_name!r}" in message
        assert "`shmring ls`" in message and f"`shmring serve {ring_name}`" in message
        assert f"CaptureSession.create({ring_name!r})" in message
        assert "/dev/shm" not in message and "segment" not in message  # not the OS's view of it


def _drop_root_powers() -> list[str] | None:
    """A command prefix that runs as root without the capabilities that bypass file permissions."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return None
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]
    probe = subprocess.run([*prefix, sys.executable, "-c", "import shmring"], capture_output=True, timeout=DEADLINE_S)
    return prefix if probe.returncode == 0 else None


def test_serve_log_dir_says_which_path_and_why(ring_name, tmp_path):
    regular = tmp_path / "a-file"
    regular.write_text("")
    closed = tmp_path / "closed"  # another user's private directory
    closed.mkdir(mode=0o700)
    cases = [  # (--log-dir, the reason with the part of the path in the way)
        ("/proc", "/proc is on a kernel filesystem"),
        ("/proc/shmring-logs", "/proc is on a kernel filesystem"),
        ("/proc/no/such/logs", "/proc is on a kernel filesystem"),
        (str(regular), f"{regular} is a regular file, not a directory"),
        (str(regular / "logs"), f"{regular} is a regular file, not a directory"),
        (str(regular / "deeper" / "logs"), f"{regular} is a regular file, not a directory"),
    ]
    prefix = []
    if os.geteuid() == 0:
        os.chown(closed, 12345, 12345)
        prefix = _drop_root_powers()
        if prefix is None:
            pytest.skip("needs setpriv to take root's file-permission override away")
    else:
        closed.chmod(0o500)
    permission = (str(closed / "logs"), f"has no permission to write in {closed} (owner uid {os.stat(closed).st_uid}")
    try:
        for path, why in cases + [permission]:
            argv = [*SHMRING, "serve", ring_name, "--log-dir", path]
            if (path, why) == permission:
                argv = [*prefix, *argv]
            result = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, timeout=DEADLINE_S)
            line = assert_one_line_error(result, f"cannot use {path} as the log directory: ", why,
                                         "give a path in a directory you own")
            assert "Errno" not in line and "No such file" not in line and "Not a directory" not in line, line
            assert shm_entries(ring_name) == [], path  # refused before the ring was made
    finally:
        if os.geteuid() != 0:
            closed.chmod(0o700)
    assert not os.path.exists("/proc/shmring-logs") and os.listdir(closed) == []


def test_serve_log_dir_on_a_read_only_filesystem(ring_name, tmp_path):
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare for a private read-only bind mount")
    frozen = tmp_path / "frozen"
    frozen.mkdir(mode=0o700)
    script = ('mount --bind -o ro "$1" "$1" || exit 99; shift; exec "$@"')
    for path in (frozen, frozen / "logs"):
        result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                                 str(frozen), *SHMRING, "serve", ring_name, "--log-dir", str(path)],
                                capture_output=True, stdin=subprocess.DEVNULL, timeout=DEADLINE_S)
        if result.returncode == 99:
            pytest.skip(f"cannot make a bind mount here: {result.stderr.decode().strip()}")
        assert_one_line_error(result, f"cannot use {path} as the log directory: {frozen} is on a read-only filesystem")
        assert shm_entries(ring_name) == []
    assert os.listdir(frozen) == []


def test_stat_watch_on_a_ring_that_closes_cleanly_says_closed(ring_name, serve, procs):
    srv = serve(ring_name, log_dir=True)  # a flusher too: closing then takes a moment, as it drains
    watch = procs("stat", ring_name, "--watch")
    watch.wait_until(lambda: any(line.startswith("writer pid") for line in watch.out), "a first table")
    srv.signal(signal.SIGINT)
    assert srv.wait() == 0
    assert watch.wait() == 0, (watch.out, watch.err)
    assert watch.out[-1] == f"ring {ring_name!r} closed" and watch.err == []
    assert not any("DEAD" in line for line in watch.out), watch.out

    # As JSON lines: the stream simply ends, status 0.
    srv = serve(ring_name)
    watch = procs("stat", ring_name, "--watch", "--json")
    watch.wait_until(lambda: watch.out, "a first JSON line")
    srv.signal(signal.SIGINT)
    assert srv.wait() == 0 and watch.wait() == 0 and watch.err == []
