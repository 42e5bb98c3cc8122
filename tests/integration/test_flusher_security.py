"""The flusher's log directory under attack: other users' directories, planted links, file modes.

Real rings (CaptureSession) and the real Flusher, in this process; the CLI
through ``python -m shmring`` subprocesses. A victim is a root-owned 0600 file
outside the log directory whose last line has no newline (so even a
recovery's repair would show on it). FORBIDDEN outcomes: a victim's bytes or
mtime changing, a planted link replaced or removed, a refused directory
modified in any way, a file readable by others, an error of more than one
line or a traceback, a ring left behind by a refused ``serve``.
"""

import json
import os
import queue
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from shmring import CaptureSession, Flusher, FlushError, Producer
from shmring.flusher import CHECKPOINT_FILE, GAPS_FILE
from shmring.stats import ring_stats
from tests.procs import TIMEOUT_S, make_event

SHMRING = [sys.executable, "-m", "shmring"]
NOBODY = 65534


# -- helpers ---------------------------------------------------------------------------


@pytest.fixture
def victims(tmp_path):
    """make(name) -> path of a new victim file; check() asserts that none of them changed."""
    home = tmp_path / "victims"
    home.mkdir(mode=0o700)
    made = {}

    def make(name: str) -> Path:
        path = home / name
        path.write_bytes(b"root secret\n" + name.encode())  # no newline at the end
        path.chmod(0o600)
        st = path.stat()
        made[path] = (path.read_bytes(), st.st_mtime_ns, stat.S_IMODE(st.st_mode))
        return path

    def check() -> None:
        for path, before in made.items():
            st = path.stat()
            assert (path.read_bytes(), st.st_mtime_ns, stat.S_IMODE(st.st_mode)) == before, path

    make.check = check
    return make


def snapshot(directory: Path) -> dict:
    """Every entry of `directory` (not following links): its type, link target or bytes, and mode."""
    out = {}
    for path in sorted(directory.iterdir()):
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            out[path.name] = ("link", os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            out[path.name] = ("dir", stat.S_IMODE(st.st_mode))
        else:
            out[path.name] = ("file", path.read_bytes(), stat.S_IMODE(st.st_mode), st.st_mtime_ns)
    return out


def refusal(name: str, directory: Path, **kwargs) -> str:
    """The one-line FlushError a Flusher into `directory` is refused with."""
    try:
        flusher = Flusher(name, directory, **kwargs)
    except FlushError as exc:
        message = str(exc)
        assert "\n" not in message and str(directory).rstrip("/") in message, message
        return message
    with flusher:  # not refused: let it checkpoint, as a real one would, so the harm shows too
        stopped = threading.Event()
        stopped.set()
        flusher.run(stopped)
    pytest.fail(f"a Flusher into {directory} was not refused")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def run_closing(session, flusher: Flusher) -> dict:
    """Close `session` while `flusher` drains it here; return run()'s stats."""
    closer = threading.Thread(target=session.close)
    closer.start()
    try:
        return flusher.run()
    finally:
        closer.join(TIMEOUT_S)
        assert not closer.is_alive()


def run_bounded(flusher: Flusher) -> None:
    """flusher.run(), bounded: a flusher that does not stop by itself is stopped after TIMEOUT_S."""
    stop = threading.Event()
    timer = threading.Timer(TIMEOUT_S, stop.set)
    timer.start()
    try:
        flusher.run(stop)
    finally:
        timer.cancel()


# -- directories the flusher must refuse ---------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="making a directory of another user needs root")
def test_a_directory_of_another_user_with_planted_links_is_refused_and_left_untouched(ring_name, tmp_path, victims):
    out = tmp_path / "logs"
    out.mkdir(mode=0o755)
    appended, overwritten = victims("appended"), victims("overwritten")
    (out / "console.jsonl").symlink_to(appended)
    (out / (CHECKPOINT_FILE + ".tmp")).symlink_to(overwritten)
    for path in (out, out / "console.jsonl", out / (CHECKPOINT_FILE + ".tmp")):
        os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
    before = snapshot(out)
    with CaptureSession.create(ring_name, capacity=64, data_bytes=1 << 20) as session:
        session.publish(make_event(1, "console"))
        message = refusal(ring_name, out)
    assert str(NOBODY) in message and "not to this user" in message, message
    victims.check()
    assert snapshot(out) == before
    assert os.readlink(out / "console.jsonl") == str(appended)


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770, 0o702])
def test_a_directory_that_group_or_others_can_write_is_refused(ring_name, tmp_path, mode):
    out = tmp_path / "logs"
    out.mkdir()
    out.chmod(mode)
    with CaptureSession.create(ring_name, capacity=64, data_bytes=1 << 20):
        message = refusal(ring_name, out)
    assert "writable by group or others" in message and f"{mode:04o}" in message, message
    assert mode_of(out) == mode and list(out.iterdir()) == []


def test_a_symlinked_directory_is_refused(ring_name, tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "logs"
    link.symlink_to(real)
    with CaptureSession.create(ring_name, capacity=64, data_bytes=1 << 20):
        assert "symbolic link" in refusal(ring_name, link)
        assert "symbolic link" in refusal(ring_name, str(link) + "/")  # not followed for a trailing slash
    assert list(real.iterdir()) == []


@pytest.mark.parametrize("planted", ["console.jsonl", "console.1.jsonl", GAPS_FILE, CHECKPOINT_FILE,
                                     CHECKPOINT_FILE + ".tmp", "network.jsonl/"])
def test_a_link_or_non_file_where_a_flusher_file_belongs_is_refused_before_anything_is_touched(
        ring_name, tmp_path, victims, planted):
    out = tmp_path / "logs"
    out.mkdir(mode=0o700)
    if planted.endswith("/"):  # a directory where a category file belongs
        (out / planted).mkdir()
    else:
        (out / planted).symlink_to(victims(planted))
    # A crash's partial last line, which a recovery would cut: it must still be there after the refusal.
    (out / "page.jsonl").write_bytes(b'{"capture_session_id":"x","seq":1,"event":{}}\n{"capture_session_id":"x"')
    before = snapshot(out)
    with CaptureSession.create(ring_name, capacity=64, data_bytes=1 << 20) as session:
        session.publish(make_event(1, "console"))
        message = refusal(ring_name, out)
    assert "symbolic link or another non-regular file" in message and planted.rstrip("/") in message, message
    victims.check()
    assert snapshot(out) == before


def test_a_link_planted_while_running_is_never_written_through(ring_name, tmp_path, victims):
    out = tmp_path / "logs"
    with (CaptureSession.create(ring_name, capacity=64, data_bytes=1 << 20, flusher_grace_s=0.2) as session,
          Flusher(ring_name, out) as flusher):
        (out / "network.jsonl").symlink_to(victims("network"))  # its file is opened lazily, on its first event
        session.publish(make_event(1, "network"))
        with pytest.raises(FlushError, match="symbolic link") as raised:
            run_bounded(flusher)
    assert str(out / "network.jsonl") in str(raised.value)
    victims.check()
    assert (out / "network.jsonl").is_symlink()


def test_rotation_never_replaces_a_file_planted_under_the_next_name(ring_name, tmp_path, victims):
    out = tmp_path / "logs"
    victim = victims("rotated")
    with (CaptureSession.create(ring_name, capacity=64, data_bytes=1 << 20, flusher_grace_s=0.2) as session,
          Flusher(ring_name, out, max_file_bytes=1000) as flusher):
        (out / "console.1.jsonl").symlink_to(victim)
        for i in range(1, 21):  # ~2 KB of console lines: the first file must rotate to console.1.jsonl
            session.publish(make_event(i, "console", pad=50))
        with pytest.raises(FlushError, match="already exists"):
            run_bounded(flusher)
    victims.check()
    assert os.readlink(out / "console.1.jsonl") == str(victim)


# -- modes ------------------------------------------------------------------------------------


@pytest.fixture
def umask():
    """set(mask): the process umask for this test, restored after it."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("group_readable, mask, dir_mode, file_mode", [
    (False, 0o000, 0o700, 0o600),  # no umask to narrow them: the modes asked for are the modes
    (False, 0o022, 0o700, 0o600),
    (True, 0o022, 0o750, 0o640),
    (True, 0o077, 0o750, 0o640),  # exact even where the umask would take the group bits off
])
def test_modes_of_what_the_flusher_creates(ring_name, tmp_path, umask, group_readable, mask, dir_mode, file_mode):
    umask(mask)
    out = tmp_path / "logs"
    session = CaptureSession.create(ring_name, capacity=64, data_bytes=1 << 20)
    for i in range(1, 101):  # 36 more than the ring holds: seqs 1..36 become a gap line
        session.publish(make_event(i, "console", pad=50))
    with Flusher(ring_name, out, max_file_bytes=2000, group_readable=group_readable) as flusher:
        stats = run_closing(session, flusher)
    assert stats["ending"] == "closed" and stats["gap_events"] == 36, stats
    assert mode_of(out) == dir_mode
    names = sorted(p.name for p in out.iterdir())
    assert {"console.jsonl", "console.1.jsonl", GAPS_FILE, CHECKPOINT_FILE} <= set(names), names
    assert {name: mode_of(out / name) for name in names} == dict.fromkeys(names, file_mode)


def test_an_existing_directory_of_ours_keeps_its_mode(ring_name, tmp_path):
    out = tmp_path / "logs"
    out.mkdir()
    out.chmod(0o755)
    session = CaptureSession.create(ring_name, capacity=64, data_bytes=1 << 20)
    session.publish(make_event(1, "console"))
    with Flusher(ring_name, out) as flusher:
        assert run_closing(session, flusher)["lines"] == 1
    assert mode_of(out) == 0o755
    assert mode_of(out / "console.jsonl") == mode_of(out / CHECKPOINT_FILE) == 0o600


# -- the command ----------------------------------------------------------------------------------------


def run_cli(*args, timeout=TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run ``shmring ARGS``; one that does not end by itself is sent SIGTERM (it drains and exits)."""
    proc = subprocess.Popen([*SHMRING, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=TIMEOUT_S)
        pytest.fail(f"shmring {' '.join(args)} did not end by itself; stderr: {err.decode()}")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def shm_entries(name: str) -> list[str]:
    return sorted(e for e in os.listdir("/dev/shm") if name in e)


def wait_for_flusher(name: str, proc: subprocess.Popen) -> None:
    """Until process `proc` is attached to ring `name` as its gating flusher."""
    deadline = time.monotonic() + TIMEOUT_S
    while not any(r["pid"] == proc.pid and r["role"] == "flusher" and r["gating"]
                  for r in ring_stats(name)["readers"]):
        assert proc.poll() is None, f"it exited with status {proc.returncode}: {proc.stderr.read().decode()}"
        assert time.monotonic() < deadline, f"pid {proc.pid} did not attach to {name} as its flusher"
        time.sleep(0.01)


def first_line(stream) -> str:
    """The first line of `stream`, or '' if none comes within TIMEOUT_S."""
    lines = queue.Queue()
    threading.Thread(target=lambda: lines.put(stream.readline().decode()), daemon=True).start()
    try:
        return lines.get(timeout=TIMEOUT_S)
    except queue.Empty:
        return ""


def reap(proc: subprocess.Popen) -> None:
    """Teardown: end `proc` and the children it started (serve's flusher has its own session), by pid."""
    if proc.poll() is None:
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.kill()
        proc.wait(TIMEOUT_S)
        for child in children:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
    proc.stderr.close()


def test_serve_refuses_a_bad_log_directory_up_front_and_leaves_no_ring(ring_name, tmp_path):
    writable = tmp_path / "writable"
    writable.mkdir()
    writable.chmod(0o777)
    linked = tmp_path / "linked"
    linked.symlink_to(tmp_path)
    for bad, needle in ((writable, "writable by group or others"), (linked, "symbolic link")):
        result = run_cli("serve", ring_name, "--log-dir", str(bad), "--capacity", "64",
                         "--data-bytes", str(1 << 20), timeout=10)
        err = result.stderr.decode()
        assert result.returncode != 0 and "Traceback" not in err, err
        assert len(err.splitlines()) == 1 and err.startswith("shmring: ") and needle in err, err
        assert str(bad) in err and result.stdout == b""
        assert shm_entries(ring_name) == []
    assert list(writable.iterdir()) == []


def test_flush_and_serve_with_group_readable(ring_name, more_ring_names, tmp_path):
    # shmring flush: a ring written here, flushed by the command until it closes.
    flushed = tmp_path / "flushed"
    session = CaptureSession.create(ring_name, capacity=64, data_bytes=1 << 20, flusher_grace_s=30)
    for i in range(1, 11):
        session.publish(make_event(i, "console"))
    flush = subprocess.Popen([*SHMRING, "flush", ring_name, str(flushed), "--group-readable"],
                             stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_flusher(ring_name, flush)
        session.close()  # waits until the attached flusher has written all ten
        assert flush.wait(TIMEOUT_S) == 0, flush.stderr.read().decode()
    finally:
        reap(flush)
    assert len((flushed / "console.jsonl").read_bytes().splitlines()) == 10
    assert mode_of(flushed) == 0o750
    assert mode_of(flushed / "console.jsonl") == mode_of(flushed / CHECKPOINT_FILE) == 0o640

    # shmring serve: its flusher process gets the option too.
    name, served, sock = more_ring_names(), tmp_path / "served", tmp_path / "serve.sock"
    serve = subprocess.Popen([*SHMRING, "serve", name, "--socket", str(sock), "--log-dir", str(served),
                              "--group-readable", "--capacity", "64", "--data-bytes", str(1 << 20)],
                             stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        ready = first_line(serve.stderr)  # it says it is serving (or why not)
        assert "serving ring" in ready, ready
        with Producer.connect(str(sock)) as producer:
            assert producer.publish({"type": "console.log", "category": "console", "source": {"kind": "cdp"},
                                     "data": {"i": 1}}) == 1
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(TIMEOUT_S) == 0, serve.stderr.read().decode()
    finally:
        reap(serve)
    assert json.loads((served / "console.jsonl").read_bytes())["seq"] == 1
    assert mode_of(served) == 0o750
    assert mode_of(served / "console.jsonl") == mode_of(served / CHECKPOINT_FILE) == 0o640
    assert shm_entries(name) == []
