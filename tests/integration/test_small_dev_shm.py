"""A ring larger than free shared memory is refused up front, never a SIGBUS mid-publish.

Each test runs in a private mount namespace (``unshare -m``) with a small
tmpfs mounted on /dev/shm, so the machine's /dev/shm is never filled.
FORBIDDEN: a writer killed by SIGBUS; an error that is not a one-line
ConfigError naming the sizes; anything left in the small /dev/shm.
"""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare for a private /dev/shm"
)


def in_small_dev_shm(size: str, script: str) -> subprocess.CompletedProcess:
    shell = f'mount -t tmpfs -o size={size} tmpfs /dev/shm && "$0" -c "$1"; rc=$?; echo "left: $(ls -A /dev/shm)"; exit $rc'
    return subprocess.run(["unshare", "-m", "sh", "-c", shell, sys.executable, textwrap.dedent(script)],
                          capture_output=True, timeout=60, cwd=os.getcwd())


def test_default_ring_on_a_docker_sized_dev_shm_is_refused_with_sizes():
    result = in_small_dev_shm("64m", """
        from shmring import CaptureSession, ConfigError
        try:
            CaptureSession.create("big")
        except ConfigError as exc:
            print("refused:", exc)
        else:
            print("created")
    """)
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    assert "refused:" in out and "needs 68.0 MiB" in out and "--data-bytes" in out, out
    assert out.rstrip().endswith("left:"), out  # nothing left behind


def test_a_ring_that_fits_fills_its_whole_data_area_without_sigbus():
    result = in_small_dev_shm("8m", """
        from shmring import CaptureSession, Event, Source
        with CaptureSession.create("fits", capacity=1024, data_bytes=4 << 20) as session:
            for i in range(20_000):  # ~20 MB of envelopes: the data area wraps several times
                session.publish(Event(type="console.log", category="console", source=Source(kind="cdp"),
                                      data={"i": i, "pad": "x" * 1000}))
            print("published", session.last_seq)
    """)
    assert result.returncode == 0, (result.returncode, result.stderr.decode())
    assert "published 20000" in result.stdout.decode()


def test_serve_with_a_data_area_bigger_than_dev_shm_exits_with_one_line():
    result = in_small_dev_shm("4m", """
        import subprocess, sys
        r = subprocess.run([sys.executable, "-m", "shmring", "serve", "small", "--data-bytes", str(16 << 20)],
                           capture_output=True, timeout=30)
        print("rc", r.returncode)
        print("stderr", r.stderr.decode().strip().replace("\\n", "|"))
    """)
    out = result.stdout.decode()
    assert "rc 1" in out, out
    err = out.split("stderr ", 1)[1].split("\n", 1)[0]
    assert "|" not in err and "Traceback" not in err and "needs 20.0 MiB" in err and "4.0 MiB free" in err, err
    assert out.rstrip().endswith("left:"), out
