"""ProcessWatch: a reader's repeated look at its writer, with a real child process (this test's own, by pid)."""

import subprocess
import sys

import psutil

from shmring.liveness import ProcessWatch
from tests.procs import TIMEOUT_S


def test_a_recent_look_answers_for_max_age_s_and_a_death_sticks():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        watch = ProcessWatch(child.pid, psutil.Process(child.pid).create_time())
        try:
            assert watch.alive(3600.0)  # a real look: it lives
            child.kill()
            child.wait(TIMEOUT_S)
            assert watch.alive(3600.0)  # answered from that look, without a new one
            assert not watch.alive()  # a new look sees the death
            assert not watch.alive(3600.0)  # and a death is never answered from an older look
        finally:
            watch.close()
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(TIMEOUT_S)


def test_without_max_age_every_call_looks():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        watch = ProcessWatch(child.pid, psutil.Process(child.pid).create_time())
        try:
            assert watch.alive()
            child.kill()
            child.wait(TIMEOUT_S)
            assert not watch.alive()
        finally:
            watch.close()
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(TIMEOUT_S)
