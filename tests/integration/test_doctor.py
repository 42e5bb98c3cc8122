"""``shmring doctor`` and ``stat`` say whether the compiled accelerator runs, and why not (real processes).

A build without the accelerator is the same package with its extension module unimportable, the way a
machine without a C compiler leaves it: an import hook in the child refuses ``shmring._hotpath`` as
not found (the extension is never built, rather than deleted from this checkout).
FORBIDDEN: a pure-Python run that looks accelerated (or the reverse), a reason missing, a traceback.
"""

import json
import os
import signal
import subprocess
import sys

import pytest

import shmring.ring
from tests.integration.commands import DEADLINE_S, SHMRING, run

WITHOUT_ACCELERATOR = """
import runpy, sys
class NotBuilt:
    def find_spec(self, name, path=None, target=None):
        if name == "shmring._hotpath":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NotBuilt())
sys.argv = ["shmring", *sys.argv[1:]]
runpy.run_module("shmring", run_name="__main__", alter_sys=True)
"""

NOT_LOADABLE = """
import importlib.machinery, importlib.util, runpy, sys
broken = sys.argv.pop(1)  # an extension file that is not one (a build for another Python, a truncated copy)
class Broken:
    def find_spec(self, name, path=None, target=None):
        if name == "shmring._hotpath":
            return importlib.util.spec_from_file_location(name, broken)
sys.meta_path.insert(0, Broken())
sys.argv = ["shmring", *sys.argv[1:]]
runpy.run_module("shmring", run_name="__main__", alter_sys=True)
"""

needs_accelerator = pytest.mark.skipif(shmring.ring.hotpath is None, reason="this build has no accelerator")


def pure_env() -> dict:
    return {**os.environ, "SHMRING_PURE_PYTHON": "1"}


def doctor(*args: str, argv=None, env=None) -> subprocess.CompletedProcess:
    env = env or {k: v for k, v in os.environ.items() if k != "SHMRING_PURE_PYTHON"}
    return subprocess.run([*(argv or SHMRING), "doctor", *args], capture_output=True, timeout=DEADLINE_S, env=env,
                          stdin=subprocess.DEVNULL)


@needs_accelerator
def test_doctor_reports_the_accelerator_in_use_and_every_check():
    result = doctor()
    assert result.returncode == 0 and result.stderr == b""
    out = result.stdout.decode()
    assert f"accelerator: compiled and in use ({shmring.ring.hotpath.__file__})" in out
    assert "memory model: x86_64: x86-64 store ordering (TSO), supported" in out
    assert "/dev/shm: " in out and "MiB free of" in out and "a default ring (68.0 MiB)" in out
    for library in ("msgspec", "posix_ipc", "psutil", "websockets"):
        assert f"{library} " in out.split("libraries: ")[1]
    as_json = json.loads(doctor("--json").stdout)
    assert as_json["accelerator"] == {"in_use": True, "path": shmring.ring.hotpath.__file__, "why_not": None}
    assert as_json["memory_model"]["supported"] and as_json["problems"] == []
    assert as_json["dev_shm"]["free_bytes"] > 0 and as_json["libraries"]["posix_ipc"]


def test_doctor_says_why_the_accelerator_is_not_in_use(tmp_path):
    turned_off = doctor(env=pure_env())
    assert turned_off.returncode == 0 and turned_off.stderr == b""
    assert ("accelerator: NOT in use, turned off by SHMRING_PURE_PYTHON in the environment. shmring runs in pure "
            "Python") in turned_off.stdout.decode()

    not_built = doctor(argv=[sys.executable, "-c", WITHOUT_ACCELERATOR])
    assert not_built.returncode == 0 and not_built.stderr == b"", not_built.stderr
    line = next(x for x in not_built.stdout.decode().splitlines() if x.startswith("accelerator:"))
    assert line.startswith("accelerator: NOT in use, not built: `pip install` found no C compiler"), line
    assert "reinstall shmring" in line
    assert json.loads(doctor("--json", argv=[sys.executable, "-c", WITHOUT_ACCELERATOR]).stdout)["accelerator"][
        "in_use"] is False

    broken = tmp_path / "_hotpath.cpython-311-x86_64-linux-gnu.so"
    broken.write_bytes(b"not an ELF file")
    not_loadable = doctor(argv=[sys.executable, "-c", NOT_LOADABLE, str(broken)])
    assert not_loadable.returncode == 0 and not_loadable.stderr == b"", not_loadable.stderr
    line = next(x for x in not_loadable.stdout.decode().splitlines() if x.startswith("accelerator:"))
    assert line.startswith(f"accelerator: NOT in use, built but not loadable ({broken}: "), line
    assert "reinstall shmring" in line


def test_python_m_shmring_doctor_is_the_same_command():
    a, b = doctor("--json"), doctor("--json", argv=[sys.executable, "-m", "shmring"])
    assert a.returncode == b.returncode == 0
    drop = ("dev_shm",)  # free space moves between the two runs
    assert {k: v for k, v in json.loads(a.stdout).items() if k not in drop} == {
        k: v for k, v in json.loads(b.stdout).items() if k not in drop}


def _writer_line(name: str) -> str:
    result = run("stat", name)
    assert result.returncode == 0, result.stderr
    return next(line for line in result.stdout.decode().splitlines() if line.startswith("writer pid"))


@needs_accelerator
def test_stat_shows_whether_the_writer_runs_the_accelerator(ring_name, more_ring_names, procs):
    pure_name = more_ring_names()
    fast = procs("serve", ring_name)
    pure = procs("serve", pure_name, env=pure_env())
    fast.wait_for_err("serving ring")
    pure.wait_for_err("serving ring")
    assert "(accelerator in use)" in _writer_line(ring_name)
    assert "(pure Python: no accelerator)" in _writer_line(pure_name)
    assert json.loads(run("stat", pure_name, "--json").stdout)["writer"]["accelerator"] is False
    assert json.loads(run("stat", ring_name, "--json").stdout)["writer"]["accelerator"] is True
    for proc in (fast, pure):
        proc.signal(signal.SIGTERM)
        assert proc.wait() == 0
