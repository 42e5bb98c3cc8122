"""The pure-Python reference path keeps working where the accelerator is not built.

``pip install`` builds ``shmring._hotpath`` when a C compiler is present; a
machine without one runs the Python in ring.py, session.py and reader.py.
``SHMRING_PURE_PYTHON=1`` forces that path, so this runs the core's
multi-process and torn-read tests again under it, in a child pytest.
"""

import os
import subprocess
import sys

import pytest

from shmring.ring import hotpath

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_switch_selects_the_python_path():
    code = "from shmring.ring import hotpath, full_fence; print(hotpath is None, full_fence.__name__)"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "SHMRING_PURE_PYTHON": "1"},
                         capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert out == ["True", "_lock_fence"]


@pytest.mark.slow
@pytest.mark.skipif(hotpath is None, reason="the accelerator is not built: the whole suite already runs pure Python")
def test_core_suite_passes_on_the_pure_python_path():
    tests = ["tests/integration/test_ring.py", "tests/integration/test_torn_reads.py", "tests/property"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        cwd=ROOT, env={**os.environ, "SHMRING_PURE_PYTHON": "1"}, capture_output=True, text=True, timeout=110,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_the_accelerator_is_built_where_a_compiler_is():
    import shutil
    import sysconfig

    has_compiler = shutil.which("cc") or shutil.which("gcc")
    has_headers = os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))
    if not (has_compiler and has_headers) or os.environ.get("SHMRING_PURE_PYTHON"):
        pytest.skip("no C compiler or Python headers here: shmring runs pure Python, as designed")
    assert hotpath is not None, "pip install -e . should have built shmring._hotpath; see its build warning"
