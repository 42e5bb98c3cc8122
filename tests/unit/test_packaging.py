"""Packaging: typed (py.typed shipped, the public API annotated), the current license form, tools that keep
the repository clean."""

import importlib.util
import inspect
import os
import pathlib
import sys
import tomllib

import shmring

ROOT = pathlib.Path(__file__).resolve().parents[2]


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_py_typed_is_shipped_as_package_data():
    assert (ROOT / "shmring" / "py.typed").is_file()
    assert "py.typed" in pyproject()["tool"]["setuptools"]["package-data"]["shmring"]


def test_the_license_is_an_spdx_expression_with_its_file():
    project = pyproject()["project"]
    assert project["license"] == "MIT"  # PEP 639, not the deprecated {text = ...} table
    assert project["license-files"] == ["LICENSE"] and (ROOT / "LICENSE").is_file()
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    # setuptools reads PEP 639 metadata from 77 on.
    (requirement,) = [r for r in pyproject()["build-system"]["requires"] if r.startswith("setuptools")]
    assert requirement == "setuptools>=77"


def _public_callables():
    for name in shmring.__all__:
        obj = getattr(shmring, name)
        if not inspect.isclass(obj) or issubclass(obj, BaseException):
            continue
        for attr, value in vars(obj).items():
            if attr.startswith("_") and attr not in ("__init__", "__enter__", "__exit__", "__iter__", "__next__"):
                continue
            if isinstance(value, (classmethod, staticmethod)):
                value = value.__func__
            elif isinstance(value, property):
                value = value.fget
            if inspect.isfunction(value):
                yield f"{name}.{attr}", value


def test_the_public_api_is_annotated():
    missing = []
    checked = 0
    for where, function in _public_callables():
        checked += 1
        signature = inspect.signature(function)
        for parameter in signature.parameters.values():
            if parameter.name not in ("self", "cls") and parameter.annotation is inspect.Parameter.empty:
                missing.append(f"{where}({parameter.name})")
        if function.__name__ != "__init__" and signature.return_annotation is inspect.Signature.empty:
            missing.append(f"{where} -> ?")
    assert checked > 40 and not missing, missing


def _bench_peers():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        spec = importlib.util.spec_from_file_location("bench_peers_under_test", ROOT / "tools" / "bench_peers.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "tools"))


def test_bench_peers_writes_to_a_new_directory_unless_asked_to_publish(tmp_path, monkeypatch):
    bench_peers = _bench_peers()
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    first, second = bench_peers.results_dir(None, False), bench_peers.results_dir(None, False)
    assert first != second and os.listdir(first) == os.listdir(second) == []
    assert pathlib.Path(first).parent == tmp_path and pathlib.Path(first).name.startswith("bench-peers-")
    chosen = tmp_path / "mine"
    assert bench_peers.results_dir(str(chosen), False) == str(chosen) and chosen.is_dir()
    try:
        bench_peers.results_dir(str(chosen), False)
        raise AssertionError("an existing --out directory was reused")
    except FileExistsError:
        pass
    tracked = ROOT / "tools" / "bench_peers_results"
    assert bench_peers.results_dir(None, True) == str(tracked)
