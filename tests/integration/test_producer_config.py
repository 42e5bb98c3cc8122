"""Producer config apart from subscriptions: `serve --cdp` on a real headless Chromium, changed at run time.

Each test runs ``shmring serve NAME --socket S --cdp URL`` as a subprocess
(it spawns and supervises ``capture-cdp``), a page server on loopback whose
page logs and fetches every 100 ms, and reads the ring in this process.
Readiness is a handshake (serve's "serving ring" line, the producer's own
``targets``); every wait has a deadline. FORBIDDEN outcomes: an event of a
category that is off after the ``system.producer_config`` event that turned
it off; the browser still sending ``Network.*`` to the producer while
network is off; a subscription (a filtered ``tail`` or ``Reader``) changing
the producer's config; a failure that is not one line.
"""

import json
import time

import psutil
import pytest

from shmring import Filter, Reader
from shmring.cdp.browser import BrowserControl
from shmring.control import get_config, producer_stats, set_config
from shmring.errors import ConfigError, ProducerNotRunning
from shmring.producer_config import CATEGORIES, ProducerConfig
from shmring.segment import control_socket_path
from tests.integration.chromium import needs_chromium
from tests.integration.commands import assert_one_line_error, run
from tests.integration.producers import (
    Events,
    config_events,
    data,
    flowing,
    open_loop_tab,
    stats_when_ready,
    wait_until,
)


def producer_cli(name, *args):
    result = run("producer", name, "cdp", *args)
    assert result.returncode == 0 and b"Traceback" not in result.stderr, result
    return json.loads(result.stdout)


# -- the tests -----------------------------------------------------------------------


@pytest.mark.alone  # timed against a live browser
@needs_chromium
def test_network_off_stops_network_in_the_browser_and_on_returns_it_at_verbose(ring_name, serve, browser, site):
    srv = serve(ring_name, "--cdp", browser.cdp_url)
    stats_when_ready(ring_name)
    events = Events(ring_name)
    try:
        tab = open_loop_tab(browser.cdp_url, ring_name, site)
        events.until(flowing(tab, "console", "network"), "console and network events from the loop page")

        # Off: the command returns once every target has applied it.
        started_us = time.time_ns() // 1000
        assert producer_cli(ring_name, "--categories", "console") == {
            "enabled": True, "categories": ["console"], "detail_level": "standard"}
        network_after_off = producer_stats(ring_name)["received"]["Network"]
        hits_after_off = site.hits["/api/tick"]
        events.read_for(1.5)
        # The page went on fetching, and the browser sent the producer no Network message for it.
        assert site.hits["/api/tick"] >= hits_after_off + 5
        assert producer_stats(ring_name)["received"]["Network"] == network_after_off
        [off] = config_events(events.envelopes)
        assert data(off) == {"producer": "cdp",
                             "old": {"enabled": True, "categories": list(CATEGORIES), "detail_level": "standard"},
                             "new": {"enabled": True, "categories": ["console"], "detail_level": "standard"}}
        assert off.event.source.kind == "cdp" and off.event.category == "system"
        assert started_us <= off.event.ts <= started_us + 1_000_000  # in the ring within a second
        later = events.after(off.seq, tab)
        assert not [e for e in later if e.event.category == "network"]
        ticks = [data(e)["args"] for e in later if e.event.type == "console.log"]
        assert len(ticks) >= 5 and all(args[0] == "tick" for args in ticks)
        assert srv.popen.poll() is None and producer_stats(ring_name)["connections"] == 1  # the same connection

        # A tab opened later is set up for the config in force: its console comes, its network never starts.
        late = open_loop_tab(browser.cdp_url, ring_name, site, host="localhost")
        events.until(flowing(late, "console"), "the late tab's console lines")
        events.read_for(0.5)
        assert not [e for e in events.after(off.seq) if e.event.category == "network"]
        assert producer_stats(ring_name)["received"]["Network"] == network_after_off

        # Back on, at verbose: network returns, with headers, and the domain sends again.
        assert producer_cli(ring_name, "--categories", "console,network", "--detail-level", "verbose") == {
            "enabled": True, "categories": ["console", "network"], "detail_level": "verbose"}
        events.until(lambda envs: len(config_events(envs)) == 2 and any(
            e.event.type == "network.response" for e in events.after(config_events(envs)[1].seq, tab)),
            "network responses after the second change")
        on = config_events(events.envelopes)[1]
        assert data(on)["old"] == data(off)["new"]
        assert data(on)["new"] == {"enabled": True, "categories": ["console", "network"], "detail_level": "verbose"}
        returned = [e for e in events.after(on.seq, tab) if e.event.category == "network"]
        for e in returned:
            assert e.event.detail_level == "verbose"
            if e.event.type in ("network.request", "network.response"):
                assert isinstance(data(e)["headers"], dict)
        assert any(data(e).get("headers") for e in returned if e.event.type == "network.response")
        assert producer_stats(ring_name)["received"]["Network"] > network_after_off
        assert not [e for e in events.after(on.seq, tab) if e.event.category in ("page", "interaction")]
        assert producer_stats(ring_name)["connections"] == 1
    finally:
        events.close()


@needs_chromium
def test_subscriptions_never_reach_the_producer(ring_name, serve, procs, browser, site):
    serve(ring_name, "--cdp", browser.cdp_url, socket_path=False)  # its own ingest socket, next to the ring
    stats_when_ready(ring_name)
    before = get_config(ring_name)
    assert before == ProducerConfig()
    tail = procs("tail", ring_name, "--category", "console", "--type", "console.log", "--from-start")
    filtered = Reader.attach(ring_name, after_seq=0, filter=Filter(categories=["console"], detail_levels=["minimal"]))
    events = Events(ring_name)
    try:
        tab = open_loop_tab(browser.cdp_url, ring_name, site)
        tail.wait_until(lambda: sum('"tick"' in line for line in tail.out) >= 5, "tail's console lines")
        assert all('"category":"console"' in line for line in tail.out)
        assert filtered.read(timeout=0.5) is None  # nothing here is minimal; the filter asks the producer nothing
        events.until(flowing(tab, "console", "network", "page"), "every category, whatever the subscriptions")
        assert get_config(ring_name) == before
        assert producer_cli(ring_name) == before.to_dict()
        assert producer_stats(ring_name)["config"] == before.to_dict()
        assert not config_events(events.envelopes)
    finally:
        filtered.close()
        events.close()


@needs_chromium
def test_initial_config_disabled_then_enabled_and_kept_across_a_producer_restart(ring_name, serve, browser, site):
    srv = serve(ring_name, "--cdp", browser.cdp_url, "--cdp-disabled", "--cdp-categories", "console,page",
                "--cdp-detail-level", "minimal")
    stats = stats_when_ready(ring_name)
    assert stats["config"] == {"enabled": False, "categories": ["console", "page"], "detail_level": "minimal"}
    assert producer_cli(ring_name) == stats["config"]
    events = Events(ring_name)
    try:
        tab = open_loop_tab(browser.cdp_url, ring_name, site)
        hits = site.hits["/api/tick"]
        wait_until(lambda: site.hits["/api/tick"] >= hits + 5, "the page to fetch")
        events.read_for(0.3)
        assert {e.event.category for e in events.envelopes} == {"system"}  # disabled: connected, nothing captured
        assert producer_stats(ring_name)["received"].get("Network", 0) == 0  # never enabled

        change = set_config(ring_name, {"enabled": True})
        assert change.changed and not change.failed and change.old.enabled is False
        events.until(flowing(tab, "console"), "console lines once enabled")
        console = [e for e in events.envelopes if e.event.category == "console"]
        assert all(e.event.detail_level == "minimal" for e in console)

        # The producer dies; serve restarts it with the config last applied, not the one it started with.
        [child] = [p for p in psutil.Process(srv.pid).children() if "capture-cdp" in p.cmdline()]
        child.kill()
        child.wait(10)
        srv.wait_for_err("restarting it")
        wait_until(lambda: producer_stats(ring_name)["connected"] if _running(ring_name) else False,
                   "the restarted producer to connect")
        assert producer_stats(ring_name)["config"] == change.new.to_dict()
        assert get_config(ring_name) == change.new
        assert not set_config(ring_name, change.new).changed  # the same config: no change, no event
        events.read_for(0.3)
        assert len(config_events(events.envelopes)) == 1
    finally:
        events.close()


def _running(name):
    try:
        return producer_stats(name)
    except ProducerNotRunning:
        return None


@needs_chromium
def test_a_crashed_tab_is_named_and_the_others_change(ring_name, serve, browser, site):
    serve(ring_name, "--cdp", browser.cdp_url)
    stats_when_ready(ring_name)
    events = Events(ring_name)
    try:
        healthy = open_loop_tab(browser.cdp_url, ring_name, site)
        doomed = open_loop_tab(browser.cdp_url, ring_name, site, host="localhost")  # another site: its own renderer
        events.until(lambda envs: flowing(healthy, "network")(envs) and flowing(doomed, "network")(envs),
                     "both tabs' network events")
        with BrowserControl(browser.cdp_url) as control:
            session = control.attach(doomed)
            control._ws.send(json.dumps({"id": 999, "method": "Page.crash", "sessionId": session}))  # no answer
            events.until(lambda envs: any(e.event.type == "page.target_crashed" for e in envs), "the crash")
        result = run("producer", ring_name, "cdp", "--categories", "console")
        assert result.returncode == 0, result
        assert json.loads(result.stdout)["categories"] == ["console"]
        err = result.stderr.decode().splitlines()
        assert len(err) == 1 and doomed in err[0] and "crashed" in err[0], err
        assert healthy not in result.stderr.decode()
        events.read_for(1.0)
        [off] = config_events(events.envelopes)
        later = events.after(off.seq, healthy)
        assert not [e for e in later if e.event.category == "network"]
        assert [e for e in later if e.event.type == "console.log"]
    finally:
        events.close()


def test_errors_are_one_line(ring_name, serve, tmp_path):
    # No serve at all, then a serve without --cdp: nobody to configure.
    for serving in (False, True):
        if serving:
            serve(ring_name)
        result = run("producer", ring_name, "cdp", "--categories", "console")
        assert_one_line_error(result, "no CDP producer is running", ring_name)
        assert_one_line_error(run("producer", ring_name, "cdp"), "no CDP producer is running")
        with pytest.raises(ProducerNotRunning):
            get_config(ring_name)
    # Bad values: refused before anything is asked.
    assert_one_line_error(run("producer", ring_name, "cdp", "--categories", "console,sound"),
                          "unknown category 'sound'")
    assert_one_line_error(run("producer", ring_name, "cdp", "--detail-level", "loud"), "unknown detail level 'loud'")
    assert_one_line_error(run("producer", ring_name, "cdp", "--enable", "--disable"), "not allowed with")
    assert_one_line_error(run("serve", ring_name + "x", "--cdp-categories", "network,dom"), "unknown category 'dom'")
    assert_one_line_error(run("serve", ring_name + "x", "--cdp-disabled"), "give --cdp URL too")
    for bad in ({"categories": ["dom"]}, {"detail_level": "loud"}, {"enabled": "yes"}, {"colour": 1},
                {"categories": "console"}):
        with pytest.raises(ConfigError):
            set_config(ring_name, bad)
    with pytest.raises(ConfigError, match="needs"):
        set_config(ring_name, {"categories": ["console"]}, replace=True)


@needs_chromium
def test_the_control_socket_is_private_and_goes_with_serve(ring_name, serve, browser):
    import os
    import stat

    srv = serve(ring_name, "--cdp", browser.cdp_url)
    path = control_socket_path(ring_name)
    mode = os.stat(path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    stats_when_ready(ring_name)
    srv.signal(15)
    assert srv.wait() == 0
    assert not os.path.exists(path)
    assert_one_line_error(run("producer", ring_name, "cdp"), "no CDP producer is running")


@needs_chromium
def test_console_stacks_interaction_and_console_switch_in_open_documents(ring_name, serve, browser, site):
    serve(ring_name, "--cdp", browser.cdp_url, "--cdp-categories", "console")
    stats_when_ready(ring_name)
    events = Events(ring_name)
    try:
        tab = open_loop_tab(browser.cdp_url, ring_name, site)
        events.until(flowing(tab, "console"), "console lines")
        assert all("stack" not in data(e) for e in events.envelopes if e.event.type == "console.log")

        # Verbose: the document already open sends its console calls with stacks.
        producer_cli(ring_name, "--detail-level", "verbose")
        events.until(lambda envs: len(config_events(envs)) == 1 and any(
            e.event.type == "console.log" and data(e).get("stack") for e in events.after(config_events(envs)[0].seq)),
            "console lines with stacks")

        # Interaction off (from the start): a click reports nothing; on: the same document reports clicks.
        with BrowserControl(browser.cdp_url) as control:
            session = control.attach(tab)
            control.click(session, 20, 20)
            events.read_for(0.5)
            assert not [e for e in events.envelopes if e.event.category == "interaction"]
            producer_cli(ring_name, "--categories", "console,interaction")
            control.click(session, 20, 20)
            events.until(lambda envs: any(e.event.type == "interaction.click" for e in envs), "the click")
            control.call("Target.detachFromTarget", {"sessionId": session})

        # Console off: the hooked calls stop leaving the page (the producer receives no more of them).
        producer_cli(ring_name, "--categories", "interaction")
        runtime = producer_stats(ring_name)["received"]["Runtime"]
        events.read_for(1.0)
        assert producer_stats(ring_name)["received"]["Runtime"] == runtime
        last = config_events(events.envelopes)[-1]
        assert data(last)["new"]["categories"] == ["interaction"]
        assert not [e for e in events.after(last.seq) if e.event.category == "console"]
        producer_cli(ring_name, "--categories", "console")
        events.until(lambda envs: any(e.event.type == "console.log"
                                      for e in events.after(config_events(envs)[-1].seq, tab)), "console back")
    finally:
        events.close()


@needs_chromium
def test_a_standalone_capture_cdp_is_controlled_as_serves_producer_is(ring_name, serve, procs, browser, site):
    srv = serve(ring_name)  # a plain serve: the producer runs beside it, not under it
    with pytest.raises(ProducerNotRunning):
        get_config(ring_name)
    capture = procs("capture-cdp", ring_name, "--cdp", browser.cdp_url, "--socket", srv.socket,
                    "--categories", "console,network")
    stats_when_ready(ring_name)
    assert producer_cli(ring_name) == {"enabled": True, "categories": ["console", "network"],
                                       "detail_level": "standard"}
    events = Events(ring_name)
    try:
        tab = open_loop_tab(browser.cdp_url, ring_name, site)
        events.until(flowing(tab, "console", "network"), "console and network events from the standalone producer")
        network_before = producer_stats(ring_name)["received"]["Network"]
        assert producer_cli(ring_name, "--categories", "console", "--detail-level", "verbose") == {
            "enabled": True, "categories": ["console"], "detail_level": "verbose"}
        network_after_off = producer_stats(ring_name)["received"]["Network"]
        assert network_after_off >= network_before
        events.until(lambda envs: config_events(envs) and len([
            e for e in events.after(config_events(envs)[0].seq, tab) if e.event.type == "console.log"]) >= 3,
            "console lines after the change")
        [change] = config_events(events.envelopes)
        assert data(change) == {"producer": "cdp",
                                "old": {"enabled": True, "categories": ["console", "network"],
                                        "detail_level": "standard"},
                                "new": {"enabled": True, "categories": ["console"], "detail_level": "verbose"}}
        later = events.after(change.seq, tab)
        assert not [e for e in later if e.event.category == "network"]
        assert all(e.event.detail_level == "verbose" for e in later if e.event.type == "console.log")
        assert producer_stats(ring_name)["received"]["Network"] == network_after_off  # the browser stopped sending
        # The same config through the library, and a bad one refused in one line with nothing asked.
        assert get_config(ring_name) == ProducerConfig(True, ["console"], "verbose")
        assert_one_line_error(run("producer", ring_name, "cdp", "--categories", "bogus!"), "categor")
        # One producer per ring serves its control socket: a second capture-cdp is refused in one line.
        second = run("capture-cdp", ring_name, "--cdp", browser.cdp_url, "--socket", srv.socket)
        assert_one_line_error(second, "already serves the control socket", ring_name)
        assert capture.popen.poll() is None and get_config(ring_name).categories == ("console",)
    finally:
        events.close()
    capture.signal(15)
    assert capture.wait() == 0
    with pytest.raises(ProducerNotRunning):  # its control socket went with it
        get_config(ring_name)
