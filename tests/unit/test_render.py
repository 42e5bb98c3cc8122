"""tail's formats over plain envelope dicts: templates and the pretty line (no I/O)."""

import pytest

from shmring.errors import ConfigError
from shmring.render import PREVIEW_CHARS, Template, parse_format, pretty_line

ENVELOPE = {
    "capture_session_id": "c1",
    "seq": 7,
    "event": {"ts": 1732410000123456, "type": "network.request", "category": "network",
              "source": {"kind": "cdp", "event": "Network.requestWillBeSent"}, "detail_level": "standard",
              "url": "http://page/", "data": {"url": "http://x/a", "args": ["a", {"b": 1}], "n": 3, "t": True}},
}


@pytest.mark.parametrize("template,expected", [
    ("{seq} {event.type} {event.data.url}", "7 network.request http://x/a"),
    ("{event.data.args.0}|{event.data.args.1}|{event.data.args.9}", 'a|{"b":1}|'),
    ("{event.data.n} {event.data.t} {event.missing} {nope.deeper.still}", "3 true  "),
    ("{event.source}", '{"kind":"cdp","event":"Network.requestWillBeSent"}'),
    (r"{{{seq}}}\t{capture_session_id}\n\\", "{7}\tc1\n\\"),
    ("seq={seq}", "seq=7"),
])
def test_templates(template, expected):
    assert Template(template).render(ENVELOPE) == expected


@pytest.mark.parametrize("text,needle", [
    ("{seq", "unmatched '{'"), ("seq}", "unmatched '}'"), ("{}", "bad field"), ("{a..b}", "bad field"),
    ("{a b}", "bad field"), ("no fields", "neither json nor pretty"), ("", "neither json nor pretty"),
])
def test_bad_templates_say_what_is_wrong(text, needle):
    with pytest.raises(ConfigError, match=needle.replace("'", ".")):
        parse_format(text)


def test_json_and_pretty_are_names_not_templates():
    assert parse_format("json") == "json" and parse_format("pretty") == "pretty"


def test_pretty_line():
    line = pretty_line(ENVELOPE)
    assert line.split()[1:5] == ["7", "network", "network.request", "http://x/a"]  # the request's own url
    assert "\033[" not in line
    coloured = pretty_line(ENVELOPE, colour=True)
    assert "\033[" in coloured
    page_only = {**ENVELOPE, "event": {**ENVELOPE["event"], "data": {"level": "log", "args": ["x" * 500]}}}
    line = pretty_line(page_only)
    assert line.split()[4] == "http://page/"  # no data.url: the page's
    assert len(line.split(maxsplit=5)[5]) == PREVIEW_CHARS and line.endswith("…")
    truncated = {**ENVELOPE, "event": {**ENVELOPE["event"], "data": None, "truncated": True}}
    assert pretty_line(truncated).endswith("(data truncated)")
