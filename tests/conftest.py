"""Shared fixtures: unique ring names, guaranteed clean-up, child-process bookkeeping.

Every ring a test makes is named from ``ring_name`` (prefix ``shmring-test-<pid>-``)
and removed at teardown, pass or fail; the session ends by checking that
nothing with this run's prefix is left in /dev/shm. Child processes are
registered and, if still alive at teardown, killed by pid.

The suite runs on two pytest-xdist workers. A test marked ``alone`` runs while
no other test does: one with effects beyond its own rings (``shmring gc``
judges every ring on the machine) or a bound on timing that the other
worker's load would blur. The others share.
"""

import fcntl
import multiprocessing
import os
import signal
import uuid

import pytest

from shmring.ring import hotpath
from shmring.segment import unlink_ring_objects

# The integration tests' helper modules report a failed assert as a test module does (pytest rewrites test modules
# and conftests by itself; these must be named before anything imports them).
pytest.register_assert_rewrite("tests.integration.chromium", "tests.integration.commands",
                               "tests.integration.flusher_procs", "tests.integration.http_clients",
                               "tests.integration.prepared", "tests.integration.producers")

# Tests end demo and README processes with Ctrl-C (SIGINT), which must reach them at its default, as in a terminal.
# A suite started as a background job of a non-interactive shell inherits SIGINT ignored, and an ignored signal
# stays ignored across exec; a handled one is reset to the default there.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

RUN_PREFIX = f"shmring-test-{os.getpid()}-"


@pytest.fixture(scope="session")
def _lock_path(tmp_path_factory) -> str | None:
    """The lock file the xdist workers of this run share, in the run's pytest temporary directory (which pytest
    prunes); None when the suite runs in one process."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return None
    return str(tmp_path_factory.getbasetemp().parent / "alone.lock")  # the parent of popen-gwN: the run's own


@pytest.fixture(autouse=True)
def _alone_when_marked(request, _lock_path):
    """Shared for every test, exclusive for one marked ``alone`` (see the module docstring)."""
    if _lock_path is None:
        yield
        return
    fd = os.open(_lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if request.node.get_closest_marker("alone") else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


def _leftovers() -> list[str]:
    return sorted(e for e in os.listdir("/dev/shm") if RUN_PREFIX in e)


@pytest.fixture
def ring_name(request):
    """A unique ring name; every object of that ring is unlinked at teardown."""
    names = []

    def make(suffix: str = "") -> str:
        name = f"{RUN_PREFIX}{uuid.uuid4().hex[:10]}{suffix}"
        names.append(name)
        return name

    request.node.make_ring_name = make
    first = make()
    yield first
    for name in names:
        unlink_ring_objects(name)


@pytest.fixture
def more_ring_names(request, ring_name):
    """Factory for additional unique ring names, cleaned up like ring_name."""
    return request.node.make_ring_name


@pytest.fixture
def spawn():
    """The spawn multiprocessing context, with every child killed at teardown."""
    ctx = multiprocessing.get_context("spawn")
    children = []

    class Ctx:
        def __getattr__(self, attr):
            return getattr(ctx, attr)

        def Process(self, *args, **kwargs):
            kwargs.setdefault("daemon", True)
            proc = ctx.Process(*args, **kwargs)
            children.append(proc)
            return proc

    yield Ctx()
    for proc in children:
        if proc.pid is not None and proc.is_alive():
            proc.kill()
        if proc.pid is not None:
            proc.join(timeout=10)


@pytest.fixture(scope="session", autouse=True)
def nothing_left_in_dev_shm():
    yield
    left = _leftovers()
    for entry in left:
        try:
            os.unlink(os.path.join("/dev/shm", entry))
        except OSError:
            pass
    assert not left, f"tests left shared-memory objects behind: {left}"


@pytest.fixture(params=["compiled", "pure"])
def ring_path(request, monkeypatch):
    """Run the test on the compiled accelerator (where it is built) and on the pure-Python reference path.

    The switch is the SHMRING_PURE_PYTHON environment variable: rings and
    readers made in this process from now on follow it, and spawned children
    inherit it.
    """
    if request.param == "pure":
        monkeypatch.setenv("SHMRING_PURE_PYTHON", "1")
    elif hotpath is None:
        pytest.skip("the accelerator is not built here (or SHMRING_PURE_PYTHON is set): pure Python only")
    else:
        monkeypatch.delenv("SHMRING_PURE_PYTHON", raising=False)
    return request.param
