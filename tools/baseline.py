"""Another revision of shmring beside the working tree: built into a throwaway virtual environment, then benchmarked
alternately with it (``tools/bench.py --baseline REV``).

Rules:
- The build lives in a temporary directory outside the checkout and is removed afterwards, also after a
  failure or an interrupt. The checkout itself is only read (``git archive``).
- The revision is installed as a user installs it (``pip install`` of its source tree, the accelerator
  compiled), with every dependency pinned to the version this interpreter runs, so that the two builds
  differ only in shmring.
- The working tree is measured with this interpreter, which must import shmring from this checkout, with an
  accelerator built from the current ``csrc/`` (else the comparison would be of something else: it refuses).
- Runs alternate which build goes first, so a drift of the machine during the session falls on both.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata

from common import BenchError

__all__ = ["Build", "baseline_build", "working_tree_build", "alternate"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD_TIMEOUT_S = 900.0


class Build:
    """An interpreter whose ``import shmring`` is one revision: `label` names it in the tables."""

    def __init__(self, label: str, python: str, description: str):
        self.label = label
        self.python = python
        self.description = description


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", "-C", ROOT, *args], check=True, capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:
        raise BenchError("--baseline needs git, and a git checkout of shmring") from None
    except subprocess.CalledProcessError as exc:
        raise BenchError(f"git {' '.join(args)}: {exc.stderr.strip() or exc}") from None


def _pins() -> list[str]:
    """name==version of every distribution this interpreter has, but shmring itself."""
    pins = set()
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower() != "shmring":
            pins.add(f"{name}=={dist.version}")
    return sorted(pins)


class baseline_build:
    """``with baseline_build(rev) as build:``: `rev` built and installed into a temporary virtual environment."""

    def __init__(self, rev: str):
        self.rev = rev
        self.workdir = None

    def __enter__(self) -> Build:
        sha = _git("rev-parse", "--verify", "--quiet", f"{self.rev}^{{commit}}")
        if not sha:
            raise BenchError(f"--baseline: {self.rev!r} is not a commit of this checkout")
        subject = _git("log", "-1", "--format=%h %cs %s", sha)
        self.workdir = tempfile.mkdtemp(prefix="shmring-baseline-")
        try:
            return self._build(sha, subject)
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def _build(self, sha: str, subject: str) -> Build:
        src, venv = os.path.join(self.workdir, "src"), os.path.join(self.workdir, "venv")
        os.mkdir(src)
        archive = subprocess.Popen(["git", "-C", ROOT, "archive", "--format=tar", sha], stdout=subprocess.PIPE)
        try:
            subprocess.run(["tar", "-x", "-C", src], stdin=archive.stdout, check=True)
        finally:
            archive.stdout.close()
            if archive.wait() != 0:
                raise BenchError(f"git archive {sha} failed")
        constraints = os.path.join(self.workdir, "constraints.txt")
        with open(constraints, "w") as f:
            f.write("\n".join(_pins()) + "\n")
        print(f"  building {subject} into {venv} ...", file=sys.stderr)
        t0 = time.monotonic()
        python = os.path.join(venv, "bin", "python")
        steps = [[sys.executable, "-m", "venv", venv],
                 [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-c", constraints,
                  "./src"]]
        for step in steps:
            done = subprocess.run(step, cwd=self.workdir, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
            if done.returncode != 0:
                tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
                raise BenchError(f"building {sha[:10]} failed ({' '.join(step[:4])} ...):\n{tail}")
        probe = subprocess.run([python, "-c", _PROBE], cwd=self.workdir, capture_output=True, text=True)
        if probe.returncode != 0:
            raise BenchError(f"the build of {sha[:10]} does not import: {probe.stderr.strip()[-500:]}")
        print(f"  built in {time.monotonic() - t0:.0f} s: {probe.stdout.strip()}", file=sys.stderr)
        return Build(sha[:10], python, f"{subject} ({probe.stdout.strip()})")

    def __exit__(self, *exc) -> None:
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


_PROBE = """
import shmring
try:
    import shmring._hotpath
    print("accelerator built")
except ImportError:
    print("no accelerator: the pure-Python path")
"""


def working_tree_build() -> Build:
    """This interpreter, after checking that it runs this checkout's shmring with an up-to-date accelerator."""
    import shmring

    package = os.path.dirname(os.path.abspath(shmring.__file__))
    if package != os.path.join(ROOT, "shmring"):
        raise BenchError(f"this interpreter imports shmring from {package}, not from this checkout: "
                         f"run `pip install -e .` in {ROOT} (or use its .venv/bin/python)")
    try:
        import shmring._hotpath as hotpath
    except ImportError:
        state = "no accelerator: the pure-Python path"
    else:
        built = os.path.getmtime(hotpath.__file__)
        csrc = os.path.join(ROOT, "csrc")
        stale = [name for name in os.listdir(csrc) if os.path.getmtime(os.path.join(csrc, name)) > built]
        if stale:
            raise BenchError(f"the accelerator is older than csrc/{stale[0]}: rebuild it (pip install -e .)")
        state = "accelerator built"
    head = _git("log", "-1", "--format=%h %cs %s")
    dirty = " + uncommitted changes" if _git("status", "--porcelain", "--untracked-files=no") else ""
    return Build("working tree", sys.executable, f"{head}{dirty} ({state})")


def alternate(builds: list[Build], bench_args: list[str], runs: int) -> dict[str, list[dict]]:
    """`runs` runs of ``tools/bench.py bench_args`` under each build, alternating which goes first: each build's
    runs, as bench.py's one_run gives them."""
    out: dict[str, list[dict]] = {b.label: [] for b in builds}
    script = os.path.join(ROOT, "tools", "bench.py")
    with tempfile.TemporaryDirectory(prefix="shmring-baseline-runs-") as tmp:
        for i in range(runs):
            order = builds if i % 2 == 0 else builds[::-1]
            for build in order:
                print(f"  run {i + 1}/{runs}: {build.label}", file=sys.stderr)
                path = os.path.join(tmp, f"run-{i}-{len(out[build.label])}-{builds.index(build)}.json")
                done = subprocess.run([build.python, script, *bench_args, "--emit-run", path], cwd=ROOT)
                if done.returncode != 0:
                    raise BenchError(f"the bench under {build.label} failed (exit {done.returncode})")
                with open(path) as f:
                    out[build.label].append(json.load(f))
    return out
