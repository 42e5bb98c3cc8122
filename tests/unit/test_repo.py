"""Repository rules: CI runs the README's commands verbatim, and the layers import only downwards."""

import ast
import re
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    lines = (ROOT / "README.md").read_text().splitlines()
    return [lines[i + 1] for i, line in enumerate(lines) if line in ("# the demo: serve + a synthetic browser "
                                                                     "producer + two filtered readers + a flusher, "
                                                                     "for ten seconds", "# the tests")]


def test_ci_runs_the_readme_commands_verbatim():
    commands = readme_commands()
    assert len(commands) == 2
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for command in commands:
        assert command in ci


def imports_of(module: str | pathlib.Path) -> set[str]:
    path = module if isinstance(module, pathlib.Path) else ROOT / "shmring" / f"{module}.py"
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
    return found


def test_os_facing_libraries_stay_in_their_modules():
    owners = {"posix_ipc": {"segment"}, "psutil": {"liveness"}, "mmap": {"segment"}, "redis": {"forward_redis"},
              "nats": {"forward_nats"}}
    for path in (ROOT / "shmring").rglob("*.py"):  # subpackages (cdp/) too
        used = imports_of(path)
        for library, allowed in owners.items():
            if library in used:
                assert path.stem in allowed, f"{path.stem} imports {library}"


def test_the_ring_core_makes_no_os_calls():
    # os: only to read the SHMRING_PURE_PYTHON switch; _hotpath: the same protocol, compiled.
    assert imports_of("ring") <= {"os", "platform", "threading", "errors", "layout", "_hotpath"}
    assert imports_of("layout") <= {"struct"}


EXITS = {("sys", "exit"), ("os", "_exit"), ("os", "abort")}
PRINTS_OR_EXITS = {"print", "exit", "quit", "SystemExit"}


def prints_or_exits(path: pathlib.Path) -> list[str]:
    """Each print, exit, quit, SystemExit, sys.exit, os._exit or os.abort a module names, by line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Name) and node.id in PRINTS_OR_EXITS:
            found.append(f"line {node.lineno}: {node.id}")
        elif isinstance(node, ast.Attribute) and (getattr(node.value, "id", None), node.attr) in EXITS:
            found.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module in ("sys", "os", "builtins"):
            found += [f"line {node.lineno}: from {node.module} import {a.name}" for a in node.names
                      if a.name in PRINTS_OR_EXITS or (node.module, a.name) in EXITS]
    return found


def test_only_the_cli_prints_or_exits():
    cli = sorted((ROOT / "shmring" / "cli").glob("*.py"))  # the cli/ package, each of its files
    assert any(prints_or_exits(path) for path in cli), "the cli/ package should be where shmring prints and exits"
    allowed = {*cli, ROOT / "shmring" / "__main__.py"}
    for path in sorted((ROOT / "shmring").rglob("*.py")):
        if path not in allowed:
            assert not prints_or_exits(path), f"{path.relative_to(ROOT)} prints or exits: {prints_or_exits(path)}"


def test_the_print_and_exit_rule_sees_each_form(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os, sys\nfrom sys import exit as leave\nprint('x')\nsys.exit(1)\nos._exit(1)\n"
                      "raise SystemExit(2)\nexit()\n")
    assert sorted(line.split(": ")[1] for line in prints_or_exits(module)) == sorted(
        ["from sys import exit", "print", "sys.exit", "os._exit", "SystemExit", "exit"])

def names_used(path: pathlib.Path) -> set[str]:
    """Names a module reads or writes in its code (its imports left out)."""
    return {n.id for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Name)}


def test_only_the_header_module_reads_or_writes_the_ring_header():
    header_fields = {"CONFIG", "HDR_CONFIG", "HDR_MAGIC", "HDR_VERSION", "HDR_SESSION_ID", "SESSION_ID", "MAGIC"}
    for path in (ROOT / "shmring").rglob("*.py"):  # subpackages (cdp/, cli/) too
        if path.stem not in ("header", "layout"):
            assert not names_used(path) & header_fields, f"{path.stem} parses the ring header itself"


def test_only_segment_names_dev_shm():
    for path in (ROOT / "shmring").rglob("*.py"):  # subpackages (cdp/, cli/) too
        if path.stem != "segment":
            strings = [n.value for n in ast.walk(ast.parse(path.read_text()))
                       if isinstance(n, ast.Constant) and isinstance(n.value, str)]
            # a path is "/dev/shm" alone or "/dev/shm/..."; messages may name /dev/shm
            assert not [s for s in strings if re.search(r"/dev/shm(/|$)", s)], f"{path.stem} builds /dev/shm paths"


def test_every_error_class_lives_in_errors():
    import importlib
    import inspect
    import pkgutil

    import shmring

    strays = []
    for info in pkgutil.walk_packages(shmring.__path__, "shmring."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        if not module.__file__.endswith(".py"):
            continue  # the compiled accelerator: its exceptions never leave shmring
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == info.name:
                if info.name != "shmring.errors":
                    strays.append(f"{info.name}.{name}")
    assert not strays, f"error classes outside shmring/errors.py: {strays}"


def test_no_bare_shmring_error_is_raised():
    for path in sorted((ROOT / "shmring").rglob("*.py")):
        bare = [n.lineno for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Raise)
                and isinstance(n.exc, ast.Call) and getattr(n.exc.func, "id", None) == "ShmringError"]
        assert not bare, f"{path.relative_to(ROOT)} raises a bare ShmringError at lines {bare}: give the case a class"


LAYERS = {
    # bottom up: a module imports only modules of lower layers (README "Layout")
    "errors": 0,
    "layout": 1, "unix_socket": 1,
    "ring": 2, "waiting": 2,
    "segment": 3, "liveness": 3, "header": 3,
    "schema": 4,
    "filters": 5, "registry": 5, "group_table": 5, "logdir": 5, "results": 5, "accounting": 5,
    "producer_config": 5,
    "archive": 6, "groups": 6,
    "history": 7,
    "session": 8, "reader": 8, "control": 8,
    "forward_redis": 9, "forward_nats": 9,
    "render": 9, "doctor": 9, "flusher": 9, "ingest": 9, "producer": 9, "stats": 9, "cleanup": 9,
    "aio": 9,
    "cdp": 10, "resume": 10, "forward": 10, "sse": 10, "edge": 10, "edge_publish": 10, "edge_protocol": 10,
    "edge_control": 10,
    "serve": 11, "demo": 11, "httpd": 11,
    "cli": 12, "__main__": 13, "__init__": 13,
}


def layer_module(path: pathlib.Path) -> str:
    """The name LAYERS knows `path` by: its own for a top-level module, its package's (cdp, cli) for a subpackage's."""
    parts = path.relative_to(ROOT / "shmring").parts
    return parts[0] if len(parts) > 1 else path.stem


def package_imports(path: pathlib.Path) -> set[str]:
    """The shmring modules (top-level names; a subpackage's name for its modules) that `path` imports."""
    depth = len(path.relative_to(ROOT / "shmring").parts) - 1  # 1 inside a subpackage (cdp/, cli/)
    found = set()
    tree = ast.parse(path.read_text())
    # A module's `if __name__ == "__main__":` block is a program, not part of its layer: it may hand over to the CLI.
    tree.body = [n for n in tree.body
                 if not (isinstance(n, ast.If) and ast.unparse(n.test) == "__name__ == '__main__'")]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            if node.level != depth + 1:
                continue  # inside a subpackage: its own modules
            found.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
    return {name for name in found if not name.startswith("_")}  # _hotpath, and `from . import __version__`


def test_every_module_has_a_layer_and_imports_only_downwards():
    for path in (ROOT / "shmring").rglob("*.py"):
        module = layer_module(path)
        assert module in LAYERS, f"shmring/{path.relative_to(ROOT / 'shmring')} has no layer in LAYERS (and README)"
        for imported in package_imports(path):
            assert LAYERS[imported] < LAYERS[module] or module == imported and path.parent.name == module, (
                f"{path.relative_to(ROOT)} (layer {LAYERS[module]}) imports {imported} (layer {LAYERS[imported]})")


def test_the_layer_rule_reads_a_subpackage_as_one_module():
    own, top = ROOT / "shmring" / "cli" / "streams.py", ROOT / "shmring" / "ring.py"
    assert layer_module(own) == "cli" and layer_module(top) == "ring"
    assert layer_module(ROOT / "shmring" / "cli" / "__init__.py") == "cli"
    assert "common" not in package_imports(own) and "reader" in package_imports(own)  # `from .common`, `from ..reader`


def imported_test_modules(path: pathlib.Path) -> list[str]:
    """The test modules (test_*) that the file at `path` imports, however it names them."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[-1].startswith("test_")]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if module.split(".")[-1].startswith("test_"):
                found.append(module)
            elif node.level or module.split(".")[0] == "tests":
                found += [f"{module}.{a.name}" for a in node.names if a.name.startswith("test_")]
    return found


def test_no_test_module_imports_another():
    # Shared fixtures live in a conftest.py, shared helpers in a plain module beside the tests (tests/procs.py,
    # tests/integration/commands.py, ...): a fixture imported from a test module is defined again in the importer.
    for path in sorted((ROOT / "tests").rglob("*.py")):
        assert not imported_test_modules(path), f"{path.relative_to(ROOT)} imports {imported_test_modules(path)}"


def test_the_test_import_rule_sees_each_form(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import tests.integration.test_cli\nfrom tests.integration.test_http import edge\n"
                      "from .test_flusher import flushers\nfrom tests.integration import test_cdp\n"
                      "from tests.integration.commands import run\nimport test_helpers_elsewhere\n")
    assert imported_test_modules(module) == ["tests.integration.test_cli", "tests.integration.test_http",
                                             "test_flusher", "tests.integration.test_cdp", "test_helpers_elsewhere"]


def test_tools_import_shmring_and_each_other_without_path_edits():
    scripts = sorted((ROOT / "tools").glob("*.py"))
    assert scripts
    for path in scripts:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "path" and ast.unparse(node.value) == "sys":
                raise AssertionError(f"tools/{path.name} edits or reads sys.path; import shmring from the package")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(n.split(".")[0].startswith("bench") for n in names), (
                    f"tools/{path.name} imports a benchmark script; shared code belongs in tools/common.py")
