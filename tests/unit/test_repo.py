"""Repository rules: CI runs the README's commands verbatim, and the layers import only downwards."""

import ast
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


def imports_of(module: str) -> set[str]:
    tree = ast.parse((ROOT / "shmring" / f"{module}.py").read_text())
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
    owners = {"posix_ipc": {"segment"}, "psutil": {"liveness"}, "mmap": {"segment"}}
    for path in (ROOT / "shmring").glob("*.py"):
        used = imports_of(path.stem)
        for library, allowed in owners.items():
            if library in used:
                assert path.stem in allowed, f"{path.stem} imports {library}"


def test_the_ring_core_makes_no_os_calls():
    # os: only to read the SHMRING_PURE_PYTHON switch; _hotpath: the same protocol, compiled.
    assert imports_of("ring") <= {"os", "platform", "threading", "errors", "layout", "_hotpath"}
    assert imports_of("layout") <= {"struct"}


def test_only_cli_prints():
    for path in (ROOT / "shmring").glob("*.py"):
        if path.stem in ("cli",):
            continue
        tree = ast.parse(path.read_text())
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "print"]
        if path.stem == "flusher":  # its standalone main() prints its one-line errors
            continue
        assert not calls, f"{path.stem} prints"


def names_used(path: pathlib.Path) -> set[str]:
    """Names a module reads or writes in its code (its imports left out)."""
    return {n.id for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Name)}


def test_only_the_header_module_reads_or_writes_the_ring_header():
    header_fields = {"CONFIG", "HDR_CONFIG", "HDR_MAGIC", "HDR_VERSION", "HDR_SESSION_ID", "SESSION_ID", "MAGIC"}
    for path in (ROOT / "shmring").glob("*.py"):
        if path.stem not in ("header", "layout"):
            assert not names_used(path) & header_fields, f"{path.stem} parses the ring header itself"


def test_only_segment_names_dev_shm():
    for path in (ROOT / "shmring").glob("*.py"):
        if path.stem != "segment":
            strings = [n.value for n in ast.walk(ast.parse(path.read_text()))
                       if isinstance(n, ast.Constant) and isinstance(n.value, str)]
            assert not [s for s in strings if "/dev/shm" in s], f"{path.stem} builds /dev/shm paths"
