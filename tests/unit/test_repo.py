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
    owners = {"posix_ipc": {"segment"}, "psutil": {"liveness"}, "mmap": {"segment"}}
    for path in (ROOT / "shmring").rglob("*.py"):  # subpackages (cdp/) too
        used = imports_of(path)
        for library, allowed in owners.items():
            if library in used:
                assert path.stem in allowed, f"{path.stem} imports {library}"


def test_the_ring_core_makes_no_os_calls():
    # os: only to read the SHMRING_PURE_PYTHON switch; _hotpath: the same protocol, compiled.
    assert imports_of("ring") <= {"os", "platform", "threading", "errors", "layout", "_hotpath"}
    assert imports_of("layout") <= {"struct"}


def test_only_cli_prints():
    for path in (ROOT / "shmring").rglob("*.py"):
        if path.stem in ("cli",):
            continue
        tree = ast.parse(path.read_text())
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "print"]
        if path.stem == "flusher":  # its standalone main() prints its one-line errors
            continue
        assert not calls, f"{path.stem} prints"


LAYERS = {
    # bottom up: a module imports only modules of lower layers (README "Layout")
    "errors": 0,
    "layout": 1,
    "ring": 2, "waiting": 2,
    "segment": 3, "liveness": 3, "header": 3,
    "schema": 4,
    "filters": 5, "registry": 5,
    "session": 6, "reader": 6,
    "logdir": 5,
    "archive": 7, "flusher": 7, "ingest": 7, "producer": 7, "stats": 7, "cleanup": 7,
    "cdp": 8,
    "serve": 9, "demo": 9,
    "cli": 10, "__main__": 11, "__init__": 11,
}


def package_imports(path: pathlib.Path) -> set[str]:
    """The shmring modules (top-level names; cdp for its package) that `path` imports."""
    in_cdp = path.parent.name == "cdp"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            top_level = node.level == 1 and not in_cdp or node.level == 2 and in_cdp
            if not top_level:
                continue  # inside cdp/: its own modules
            found.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
    return {name for name in found if not name.startswith("_")}  # _hotpath, and `from . import __version__`


def test_every_module_has_a_layer_and_imports_only_downwards():
    for path in (ROOT / "shmring").rglob("*.py"):
        module = "cdp" if path.parent.name == "cdp" else path.stem
        assert module in LAYERS, f"shmring/{path.relative_to(ROOT / 'shmring')} has no layer in LAYERS (and README)"
        for imported in package_imports(path):
            assert LAYERS[imported] < LAYERS[module] or module == imported == "cdp", (
                f"{path.relative_to(ROOT)} (layer {LAYERS[module]}) imports {imported} (layer {LAYERS[imported]})")
