"""Builds the optional compiled accelerator; everything else is in pyproject.toml.

``optional=True``: on a machine without a C compiler or Python headers the
build of ``shmring._hotpath`` is skipped with a warning, and shmring runs its
pure-Python reference path (slower publish, same behaviour).

Its sources are in ``csrc/`` (hotpath.h maps the parts), outside the package:
they are compiled into one extension, never installed as files.
``-fvisibility=hidden`` keeps the functions the parts share private to it.
"""

import platform

from setuptools import Extension, setup

SOURCES = ["compact.c", "encode.c", "config.c", "fields.c", "writer.c", "taker.c", "metadata.c", "method.c",
           "eventcount.c", "module.c"]

ext_modules = []
if platform.machine().lower() in ("x86_64", "amd64"):
    ext_modules.append(
        Extension(
            "shmring._hotpath",
            [f"csrc/{name}" for name in SOURCES],
            depends=["csrc/hotpath.h"],
            optional=True,
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-fvisibility=hidden"],
        )
    )

setup(ext_modules=ext_modules)
