"""The pure-Python reference path keeps working where the accelerator is not built.

``pip install`` builds ``shmring._hotpath`` when a C compiler is present; a
machine without one runs the Python in ring.py, session.py and reader.py.
``SHMRING_PURE_PYTHON=1`` forces that path; the ``ring_path`` fixture
(tests/conftest.py) runs the core's tests on both paths.
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


def test_the_accelerator_is_built_where_a_compiler_is():
    import shutil
    import sysconfig

    has_compiler = shutil.which("cc") or shutil.which("gcc")
    has_headers = os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))
    if not (has_compiler and has_headers) or os.environ.get("SHMRING_PURE_PYTHON"):
        pytest.skip("no C compiler or Python headers here: shmring runs pure Python, as designed")
    assert hotpath is not None, "pip install -e . should have built shmring._hotpath; see its build warning"


def test_the_ring_path_fixture_really_switches(ring_name, ring_path):
    from shmring import CaptureSession, Reader
    from shmring.ring import PyRingWriterCore

    with CaptureSession.create(ring_name, capacity=64, data_bytes=1 << 20) as session, \
            Reader.attach(ring_name) as reader:
        pure = ring_path == "pure"
        assert isinstance(session._res.core, PyRingWriterCore) == pure
        assert (reader._taker is None) == pure
