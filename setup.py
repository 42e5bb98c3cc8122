"""Builds the optional compiled accelerator; everything else is in pyproject.toml.

``optional=True``: on a machine without a C compiler or Python headers the
build of ``shmring._hotpath`` is skipped with a warning, and shmring runs its
pure-Python reference path (slower publish, same behaviour).
"""

import platform

from setuptools import Extension, setup

ext_modules = []
if platform.machine().lower() in ("x86_64", "amd64"):
    ext_modules.append(
        Extension("shmring._hotpath", ["shmring/_hotpath.c"], optional=True, extra_compile_args=["-O2", "-std=c11"])
    )

setup(ext_modules=ext_modules)
