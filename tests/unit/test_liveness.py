"""ProcessWatch: a reader's repeated look at its writer, with a real child process (this test's own, by pid)."""

import subprocess
import sys

import psutil
import pytest

from shmring.liveness import ProcessWatch
from tests.procs import TIMEOUT_S


@pytest.fixture
def child():
    """A child that sleeps, and a ProcessWatch on it; killed by pid and reaped at teardown if still there."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    watch = ProcessWatch(proc.pid, psutil.Process(proc.pid).create_time())
    yield proc, watch
    watch.close()
    if proc.poll() is None:
        proc.kill()
    proc.wait(TIMEOUT_S)


def end(proc) -> None:
    proc.kill()
    proc.wait(TIMEOUT_S)


def test_a_recent_look_answers_for_max_age_s_and_a_death_sticks(child):
    proc, watch = child
    assert watch.alive(3600.0)  # a real look: it lives
    end(proc)
    assert watch.alive(3600.0)  # answered from that look, without a new one
    assert not watch.alive()  # a new look sees the death
    assert not watch.alive(3600.0)  # and a death is never answered from an older look


def test_without_max_age_every_call_looks(child):
    proc, watch = child
    assert watch.alive()
    end(proc)
    assert not watch.alive()
