"""The CDP producer's parts around the mapper, without a browser or a ring.

The connection's dispatch, the capture's URL check and retry, the injected
scripts as shipped (package data, called with their settings), which Chromium
binary is chosen and the one-line error for a missing one, and what
``shmring.cdp`` exports.
"""

import asyncio
import json
import shutil
import subprocess
import threading
import time
import tomllib
from importlib import resources
from pathlib import Path

import pytest

import shmring.cdp
from shmring import ConfigError, ShmringError
from shmring.cdp import browser
from shmring.cdp.browser import CHROMIUM_ENV, chromium_available, find_free_port, launch_chromium, resolve_chromium
from shmring.cdp.capture import CdpCapture, capture
from shmring.cdp.connection import _Connection, resolve_browser_ws
from shmring.cdp.scripts import (
    BINDING,
    CONSOLE_BINDING,
    CONSOLE_HOOK_BATCH,
    INTERACTION_SCRIPT,
    console_hook_script,
)
from shmring.layout import MAX_RECORD_BYTES

ROOT = Path(__file__).resolve().parents[2]


def js(name: str) -> str:
    return resources.files("shmring.cdp").joinpath("js", name).read_text()


def settings_of(script: str, source: str) -> dict:
    """The settings `script` calls the function in `source` with (and nothing else around it)."""
    assert script.startswith("(" + source + "\n)(") and script.endswith(");\n")
    return json.loads(script[len(source) + 4:-3])


def test_the_scripts_are_the_js_files_called_with_their_settings():
    # (They run in a real Chromium in tests/integration/test_cdp.py.)
    assert settings_of(INTERACTION_SCRIPT, js("interaction.js")) == {"binding": BINDING}
    for verbose in (True, False):
        assert settings_of(console_hook_script(verbose), js("console_hook.js")) == {
            "binding": CONSOLE_BINDING, "withStack": verbose, "maxText": MAX_RECORD_BYTES + 1,
            "maxBatch": CONSOLE_HOOK_BATCH}


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed: no JavaScript syntax check")
@pytest.mark.parametrize("script", [INTERACTION_SCRIPT, console_hook_script(True), console_hook_script(False)])
def test_the_injected_scripts_are_valid_javascript(tmp_path, script):
    path = tmp_path / "script.js"
    path.write_text(script)
    done = subprocess.run(["node", "--check", str(path)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


def test_the_js_files_are_package_data():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "shmring.cdp" in config["packages"]
    patterns = config["package-data"]["shmring.cdp"]
    shipped = {p.relative_to(ROOT / "shmring" / "cdp") for pattern in patterns
               for p in (ROOT / "shmring" / "cdp").glob(pattern)}
    assert {Path("js/interaction.js"), Path("js/console_hook.js")} <= shipped
    assert shipped == {p.relative_to(ROOT / "shmring" / "cdp") for p in (ROOT / "shmring" / "cdp" / "js").iterdir()}


def test_the_package_exports_what_the_module_did():
    before_the_split = {
        "CHROMIUM", "CHROMIUM_FLAGS", "DEMO_PAGE", "BrowserControl", "BrowserDemo", "CdpCapture", "CdpMapper",
        "PageServer", "capture", "capture_command", "chromium_available", "close_tab", "encode_for_ingest",
        "find_free_port", "launch_chromium", "open_tab", "resolve_browser_ws", "stop_process", "wait_for_devtools",
    }
    assert set(shmring.cdp.__all__) == before_the_split
    for name in shmring.cdp.__all__:
        assert getattr(shmring.cdp, name) is not None, name


def test_connection_skips_malformed_messages_and_resolves_replies():
    seen, bad = [], []

    async def on_message(method, params, session_id):
        seen.append((method, session_id))

    async def main():
        conn = _Connection(ws=None, on_message=on_message, on_malformed=bad.append)
        future = asyncio.get_running_loop().create_future()
        conn._pending[7] = future
        for raw in ["not json", "[1, 2]", '{"method": 5}', '{"method": "X.y", "params": []}',
                    '{"method": "X.y", "params": {}, "sessionId": 3}', b'\xff\xfe',
                    '{"method": "Runtime.consoleAPICalled", "params": {}, "sessionId": "S"}',
                    '{"id": 7, "result": {"ok": true}}', '{"id": 99, "result": {}}']:
            await conn._dispatch(raw)
        return await future

    assert asyncio.run(main()) == {"ok": True}
    assert seen == [("Runtime.consoleAPICalled", "S")]
    assert len(bad) == 6


def test_bad_urls_and_a_missing_browser():
    with pytest.raises(ConfigError, match="CDP URL"):
        CdpCapture("ftp://x", "/tmp/none.sock")
    with pytest.raises(OSError, match="nothing answers"):
        resolve_browser_ws(f"http://127.0.0.1:{find_free_port()}", timeout_s=1)
    with pytest.raises(ShmringError, match="apt-get install -y chromium"):
        launch_chromium(find_free_port(), "/tmp/unused", binary="/nonexistent/chromium")


def test_no_browser_is_reported_once_while_retrying_and_stop_ends_it():
    logs, stop = [], threading.Event()
    timer = threading.Timer(1.6, stop.set)
    timer.start()
    started = time.monotonic()
    result = capture(f"http://127.0.0.1:{find_free_port()}", "/tmp/shmring-no-such.sock", stop=stop,
                     log=logs.append, max_backoff_s=0.4)
    assert time.monotonic() - started < 5
    assert len(logs) == 1 and "no browser at" in logs[0] and "retrying" in logs[0], logs
    assert result["connections"] == 0 and result["events"] == 0


# -- which Chromium ----------------------------------------------------------------------


@pytest.fixture
def fakes(tmp_path, monkeypatch):
    """Three executables standing for --chromium, $SHMRING_CHROMIUM and the default; nothing from the caller's env."""
    paths = {}
    for name in ("flag", "env", "default"):
        path = tmp_path / f"chromium-{name}"
        path.write_text("#!/bin/sh\nexit 0\n")
        path.chmod(0o755)
        paths[name] = str(path)
    monkeypatch.delenv(CHROMIUM_ENV, raising=False)
    monkeypatch.setattr(browser, "CHROMIUM", paths["default"])
    return paths


def test_the_chromium_is_the_flag_then_the_environment_then_the_default(fakes, monkeypatch):
    assert resolve_chromium() == fakes["default"]
    monkeypatch.setenv(CHROMIUM_ENV, fakes["env"])
    assert resolve_chromium() == fakes["env"]
    assert resolve_chromium(fakes["flag"]) == fakes["flag"]
    assert chromium_available() and chromium_available(fakes["flag"])


@pytest.mark.parametrize("where, origin", [("flag", "--chromium"), ("env", CHROMIUM_ENV), ("default", "the default")])
@pytest.mark.parametrize("broken, why", [("missing", "does not exist"), ("not executable", "is not an executable file"),
                                         ("a directory", "is not an executable file")])
def test_a_missing_chromium_is_one_line_that_says_what_to_pass(fakes, monkeypatch, tmp_path, where, origin, broken,
                                                              why):
    bad = tmp_path / "bad-chromium"
    if broken == "not executable":
        bad.write_text("#!/bin/sh\n")
        bad.chmod(0o644)
    elif broken == "a directory":
        bad.mkdir()
    if where == "env":
        monkeypatch.setenv(CHROMIUM_ENV, str(bad))
    elif where == "default":
        monkeypatch.setattr(browser, "CHROMIUM", str(bad))
    with pytest.raises(ConfigError) as info:
        resolve_chromium(str(bad) if where == "flag" else None)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"Chromium not found: {bad} ({origin}) {why}; ")
    assert "pass --chromium PATH or set SHMRING_CHROMIUM" in message and "apt-get install -y chromium" in message
    assert not chromium_available(str(bad) if where == "flag" else None)


def test_a_temporary_directory_too_long_for_chromiums_socket_is_refused_before_launching(fakes, tmp_path):
    long_profile = str(tmp_path / ("x" * 100))
    with pytest.raises(ConfigError, match="too long for its socket path"):
        launch_chromium(find_free_port(), long_profile, binary=fakes["flag"])
    assert not (tmp_path / ("x" * 100)).exists()
