"""Every README example runs as pasted: the Python blocks, and the shell blocks marked runnable.

The README marks how a block runs with an HTML comment on the line before its fence (invisible on the
rendered page):

- every ```python block runs; a ```sh block runs only when it is marked;
- ``<!-- runnable -->``: the block runs to completion and must exit 0 (a shell block under
  ``bash -e -o pipefail``, so every command in it must succeed);
- ``<!-- runnable: background -->``: the block keeps running, as in a terminal of its own, while the
  later blocks of its section run. It is ready once it prints its first line (stdout or stderr). At the
  end of its section it gets Ctrl-C (SIGINT to its process group) and must exit 0;
- ``<!-- runnable: background, ends with the ring -->``: started the same way, but never interrupted:
  once the section's other background blocks have stopped, it must exit 0 by itself (a flusher, which
  ends when its ring closes).

A section ends at the next heading. Blocks run in the order they appear, in a fresh directory that has
``.venv`` standing for this interpreter's venv (so ``.venv/bin/python`` and ``.venv/bin/shmring`` are the
ones under test), with ``PYTHONUNBUFFERED=1`` (a pipe would otherwise hold a writer's first line back).
The one substitution: the ring name ``browser`` (wherever it stands as a word, so ``/tmp/browser.sock``
too) becomes a unique name per section, so that runs never collide; the text is otherwise as pasted.
FORBIDDEN: a block that fails, prints a traceback, or leaves a process, a ring or a socket behind.
"""

import os
import pathlib
import re
import signal
import subprocess
import sys
import threading

import psutil
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DEADLINE_S = 60
RING_WORD = re.compile(r"(?<![\w-])browser(?![\w-])")
MARKER = re.compile(r"<!--\s*runnable(?::\s*(?P<mode>[^>]*?))?\s*-->")
MODES = {None: "foreground", "background": "background", "background, ends with the ring": "ends-with-ring"}


class Block:
    def __init__(self, lang: str, code: str, mode: str, line: int):
        self.lang, self.code, self.mode, self.line = lang, code, mode, line

    def __repr__(self) -> str:
        return f"README.md:{self.line} ```{self.lang} ({self.mode})"


def readme_sections() -> list[tuple[str, list[Block]]]:
    """(heading, runnable blocks) of every section with any, in order; bad markers fail here."""
    sections: list[tuple[str, list[Block]]] = [("(top)", [])]
    lines = README.read_text().splitlines()
    fence = None
    marker = None
    for number, line in enumerate(lines, 1):
        if fence is not None:
            if line.startswith("```"):
                lang, start, mode = fence
                code = "\n".join(lines[start:number - 1]) + "\n"
                if lang == "python" or mode is not None:
                    sections[-1][1].append(Block(lang, code, mode or "foreground", start))
                fence = None
            continue
        if line.startswith("```"):
            lang = line[3:].strip()
            if marker is not None and lang not in ("python", "sh"):
                pytest.fail(f"README.md:{number}: a runnable marker before a ```{lang} block")
            fence = (lang, number, marker)
            marker = None
        elif match := MARKER.fullmatch(line.strip()):
            if match["mode"] not in MODES:
                pytest.fail(f"README.md:{number}: unknown marker {line.strip()!r}; use one of "
                            "<!-- runnable -->, <!-- runnable: background -->, "
                            "<!-- runnable: background, ends with the ring -->")
            marker = MODES[match["mode"]]
        elif "runnable" in line and line.lstrip().startswith("<!--"):
            pytest.fail(f"README.md:{number}: malformed marker {line.strip()!r}")
        elif line.strip():
            if marker is not None:
                pytest.fail(f"README.md:{number}: a runnable marker must be right before a fenced block")
            if line.startswith("#"):
                sections.append((line.lstrip("#").strip(), []))
    assert fence is None, "README.md ends inside a code block"
    return [(heading, blocks) for heading, blocks in sections if blocks]


SECTIONS = readme_sections()


def test_the_readme_has_the_examples_this_test_runs():
    blocks = [b for _, section in SECTIONS for b in section]
    assert sum(b.lang == "python" for b in blocks) >= 4  # writer, reader, flusher, producer
    assert any(b.lang == "sh" and b.mode == "foreground" for b in blocks)
    for heading, section in SECTIONS:
        # A background block needs a later block (or a waiting one) to be of any use, and a section
        # cannot be only blocks that end by themselves: nothing would stop them.
        assert any(b.mode != "ends-with-ring" for b in section), heading
        # No bare `python`, no root-only paths: as pasted, on a fresh machine, as a user.
        for block in section:
            assert not re.search(r"(^|[\s;&|(])python3?\s", block.code, re.M), (block, "bare python")
            assert "/run/" not in block.code, (block, "a path that needs root")


class Running:
    """A background block: its own process group (as a terminal job), output pumped by threads."""

    def __init__(self, block: Block, argv: list[str], cwd: pathlib.Path, env: dict):
        self.block = block
        self.popen = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, start_new_session=True)
        self.lines: list[str] = []
        self.errors: list[str] = []
        self._cond = threading.Condition()
        self._open = 2
        for stream, sink in ((self.popen.stdout, self.lines), (self.popen.stderr, self.errors)):
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True).start()

    def _pump(self, stream, sink) -> None:
        try:
            for raw in stream:
                with self._cond:
                    sink.append(raw.decode(errors="replace").rstrip("\n"))
                    self._cond.notify_all()
        finally:
            stream.close()
            with self._cond:
                self._open -= 1
                self._cond.notify_all()

    def wait_ready(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self.lines or self.errors or self._open == 0, DEADLINE_S)
            if not (self.lines or self.errors) or self.popen.poll() not in (None, 0):
                pytest.fail(f"{self.block}: not ready within {DEADLINE_S} s: {self.output()}")

    def interrupt(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGINT)  # Ctrl-C: the job's process group, leader alive

    def wait(self) -> int:
        try:
            code = self.popen.wait(DEADLINE_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.block}: still running {DEADLINE_S} s after its section ended: {self.output()}")
        with self._cond:
            self._cond.wait_for(lambda: self._open == 0, DEADLINE_S)
        return code

    def output(self) -> str:
        return f"stdout {self.lines[-5:]}, stderr {self.errors[-5:]}"

    def reap(self) -> None:
        """Teardown: a block still running (a failed test) is ended with its children, by pid."""
        if self.popen.poll() is not None:
            return
        try:
            children = psutil.Process(self.popen.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        self.popen.kill()
        self.popen.wait(10)
        for child in children:
            try:
                child.kill()
                child.wait(10)
            except psutil.NoSuchProcess:
                pass


@pytest.fixture
def workdir(tmp_path):
    """A fresh directory where ``.venv`` is this interpreter's venv (or stands in for one)."""
    venv = tmp_path / ".venv"
    if sys.prefix != sys.base_prefix:
        venv.symlink_to(sys.prefix, target_is_directory=True)
    else:  # not run from a venv: scripts that behave like its two commands
        (venv / "bin").mkdir(parents=True)
        for name, command in (("python", [sys.executable]), ("shmring", [sys.executable, "-m", "shmring"])):
            script = venv / "bin" / name
            script.write_text("#!/bin/sh\nexec " + " ".join(command) + ' "$@"\n')
            script.chmod(0o755)
    return tmp_path


def _argv(block: Block, path: pathlib.Path) -> list[str]:
    if block.lang == "python":
        return [str(path.parent / ".venv" / "bin" / "python"), str(path)]
    return ["bash", "-e", "-o", "pipefail", str(path)]


@pytest.mark.parametrize("heading,blocks", SECTIONS, ids=[heading for heading, _ in SECTIONS])
def test_readme_examples_run_as_pasted(heading, blocks, workdir, ring_name):
    sockets = {f"/tmp/{ring_name}.sock"}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("SHMRING_PURE_PYTHON", None)
    background: list[Running] = []
    try:
        for index, block in enumerate(blocks):
            path = workdir / f"block{blocks[0].line}-{index}.{'py' if block.lang == 'python' else 'sh'}"
            path.write_text(RING_WORD.sub(ring_name, block.code))
            if block.mode == "foreground":
                done = subprocess.run(_argv(block, path), cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                                      capture_output=True, timeout=DEADLINE_S)
                out, err = done.stdout.decode(), done.stderr.decode()
                assert done.returncode == 0 and "Traceback" not in err, (block, done.returncode, out, err)
            else:
                job = Running(block, _argv(block, path), workdir, env)
                background.append(job)
                job.wait_ready()
        for job in background:  # Ctrl-C, in the order they started; the flusher ends with its ring
            if job.block.mode == "background":
                job.interrupt()
                assert job.wait() == 0, (job.block, job.output())
        for job in background:
            assert job.wait() == 0, (job.block, job.output())
            assert not any("Traceback" in line for line in job.errors), (job.block, job.output())
    finally:
        for job in background:
            job.reap()
        left = [path for path in sockets if os.path.exists(path)]
        for path in left:
            os.unlink(path)
    assert not left, f"sockets left behind: {left}"
    assert not [e for e in os.listdir("/dev/shm") if ring_name in e]
