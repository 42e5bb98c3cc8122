"""ProducerConfig (shape, validation, patches) and what a config means for a target's CDP domains: no browser."""

import pickle

import pytest

from shmring.cdp.domains import change_commands, console_hook_stacks, setup_commands
from shmring.cdp.mapper import CdpMapper
from shmring.cdp.scripts import BINDING, CONSOLE_BINDING
from shmring.errors import ConfigError
from shmring.producer_config import CATEGORIES, ProducerConfig, parse_categories


def test_the_shape_is_the_same_everywhere_and_canonical():
    config = ProducerConfig()
    assert config.to_dict() == {"enabled": True, "categories": list(CATEGORIES), "detail_level": "standard"}
    unordered = ProducerConfig(True, ["page", "console", "page"], "verbose")
    assert unordered.categories == ("console", "page")
    assert unordered == ProducerConfig.from_dict({"enabled": True, "categories": ["console", "page"],
                                                  "detail_level": "verbose"})
    assert pickle.loads(pickle.dumps(unordered)) == unordered
    assert hash(unordered) == hash(ProducerConfig(True, ("console", "page"), "verbose"))
    with pytest.raises(AttributeError):
        config.enabled = False


def test_patches_replace_only_their_fields_and_a_whole_config_needs_every_field():
    config = ProducerConfig().patched({"categories": ["console"]})
    assert config.to_dict() == {"enabled": True, "categories": ["console"], "detail_level": "standard"}
    assert config.patched({"enabled": False}).active() == frozenset()
    assert config.active() == {"console"}
    with pytest.raises(ConfigError, match="needs detail_level"):
        ProducerConfig.from_dict({"enabled": True, "categories": []})


@pytest.mark.parametrize("bad, message", [
    ({"categories": ["console", "dom"]}, "unknown category 'dom'"),
    ({"categories": "console"}, "must be a list"),
    ({"detail_level": "loud"}, "unknown detail level 'loud'"),
    ({"enabled": 1}, "enabled must be true or false"),
    ({"colour": "red"}, "unknown producer config field 'colour'"),
])
def test_bad_values_are_one_line_config_errors(bad, message):
    with pytest.raises(ConfigError, match=message) as info:
        ProducerConfig().patched(bad)
    assert "\n" not in str(info.value)


def test_categories_from_the_command_line():
    assert parse_categories("network, console") == ("console", "network")
    assert parse_categories("") == ()
    with pytest.raises(ConfigError, match="unknown category 'sound'"):
        parse_categories("console,sound")


def methods(commands):
    return [m for m, _ in commands]


def test_a_new_target_gets_only_the_domains_its_config_captures():
    everything = setup_commands(ProducerConfig(), console_hook=True)
    assert "Network.enable" in methods(everything)
    assert ("Runtime.addBinding", {"name": CONSOLE_BINDING}) in everything
    console_only = setup_commands(ProducerConfig(categories=["console"]), console_hook=True)
    assert "Network.enable" not in methods(console_only)
    assert ("Page.setLifecycleEventsEnabled", {"enabled": False}) in console_only
    assert not [p for m, p in console_only if m == "Runtime.addBinding" and p["name"] == BINDING]
    disabled = setup_commands(ProducerConfig(enabled=False), console_hook=True)
    assert "Network.enable" not in methods(disabled) and "Runtime.addBinding" not in methods(disabled)
    # The scripts are always installed, so a category turned on later works in documents made meanwhile.
    assert methods(disabled).count("Page.addScriptToEvaluateOnNewDocument") == 2
    assert methods(everything)[-1] == "Target.setAutoAttach"


def test_a_change_sends_exactly_the_domain_switches_it_needs():
    full, console = ProducerConfig(), ProducerConfig(categories=["console"])
    assert change_commands(full, console, console_hook=True) == [
        ("Network.disable", {}), ("Page.setLifecycleEventsEnabled", {"enabled": False}),
        ("Runtime.removeBinding", {"name": BINDING})]
    verbose = ProducerConfig(categories=["console", "network"], detail_level="verbose")
    assert change_commands(console, verbose, console_hook=True) == [
        ("Network.enable", {}), ("Runtime.setMaxCallStackSizeToCapture", {"size": 200})]
    assert change_commands(full, full.patched({"enabled": False}), console_hook=True)[-1] == (
        "Runtime.removeBinding", {"name": CONSOLE_BINDING})
    assert change_commands(full, full, console_hook=True) == []
    # Through the inspector, console cannot be switched in the browser: the producer drops it.
    assert change_commands(full, ProducerConfig(categories=list(CATEGORIES)[1:]), console_hook=False) == []
    assert console_hook_stacks(console, verbose, console_hook=True) is True
    assert console_hook_stacks(verbose, console, console_hook=True) is False
    assert console_hook_stacks(console, console.patched({"detail_level": "minimal"}), console_hook=True) is None


def test_the_mapper_drops_categories_that_are_off_but_keeps_their_state():
    mapper = CdpMapper()
    mapper.map("Target.attachedToTarget", {"sessionId": "S", "targetInfo": {"targetId": "T", "type": "page",
                                                                            "url": "http://a/"}})
    mapper.configure(ProducerConfig(categories=["console"], detail_level="minimal"))
    navigated = {"frame": {"id": "T", "url": "http://b/"}, "type": "Navigation"}
    assert mapper.map("Page.frameNavigated", navigated, "S") == []
    request = {"requestId": "1", "request": {"url": "http://b/x", "method": "GET"}, "timestamp": 1.0,
               "wallTime": 1700000000.0}
    assert mapper.map("Network.requestWillBeSent", request, "S") == []
    payload = '[["log", 1700000000000, ["hi"]]]'
    [line] = mapper.map("Runtime.bindingCalled", {"name": CONSOLE_BINDING, "payload": payload}, "S")
    assert line["url"] == "http://b/" and line["detail_level"] == "minimal"  # the dropped navigation still counted
    assert mapper.system_event("system.producer_config", {})["category"] == "system"
    mapper.configure(ProducerConfig())
    [finished] = mapper.map("Network.loadingFinished", {"requestId": "1", "timestamp": 2.0}, "S")
    assert finished["data"]["url"] == "http://b/x"  # the request seen while network was off is paired
