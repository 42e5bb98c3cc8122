"""CDP -> Event mapping with canned CDP messages: no browser, no ring.

Checks semantic types with the CDP method as provenance, metadata, snake_case
data, clock conversion, detail levels, bounded state, and that malformed
messages raise MalformedCdp (which the capture logs and skips).
"""

import ast
import json
from pathlib import Path

import msgspec
import pytest

from shmring import ConfigError, Event
from shmring.cdp.mapper import (
    BINDING,
    CONSOLE_BINDING,
    CONSOLE_HOOK_BATCH,
    MAX_REQUESTS_PER_TARGET,
    CdpMapper,
    MalformedCdp,
    encode_for_ingest,
)
from shmring.cdp.text import remote_object_text, snake
from shmring.layout import MAX_RECORD_BYTES

PAGE = "http://127.0.0.1:8000/"
TARGET, SESSION, FRAME, CHILD_FRAME = "T1", "S1", "T1", "F2"


ATTACHED_US = 1_600_000_000_000_000  # before the canned messages: none of them is a replay


def mapper(detail="standard") -> CdpMapper:
    m = CdpMapper(detail, now_us=lambda: ATTACHED_US)
    m.map("Target.targetCreated", {"targetInfo": {"targetId": TARGET, "type": "page", "url": "about:blank"}})
    m.map("Target.attachedToTarget", {"sessionId": SESSION, "waitingForDebugger": True,
                                      "targetInfo": {"targetId": TARGET, "type": "page", "url": "about:blank"}})
    m.map("Page.frameNavigated", {"frame": {"id": FRAME, "url": PAGE, "mimeType": "text/html"}}, SESSION)
    m.map("Page.frameNavigated", {"frame": {"id": CHILD_FRAME, "parentId": FRAME, "url": PAGE + "frame"}}, SESSION)
    m.map("Runtime.executionContextCreated", {"context": {"id": 1, "auxData": {"frameId": FRAME}}}, SESSION)
    m.map("Runtime.executionContextCreated", {"context": {"id": 2, "auxData": {"frameId": CHILD_FRAME}}}, SESSION)
    return m


def one(events):
    assert len(events) == 1, events
    event = events[0]
    # Every event is a valid ingest line.
    msgspec.json.decode(encode_for_ingest(event)[0], type=Event)
    return event


def console(args, kind="log", context=1, **extra):
    return {"type": kind, "args": args, "executionContextId": context, "timestamp": 1_700_000_000_123.5, **extra}


def test_console_call_type_provenance_metadata_and_frame():
    event = one(mapper().map("Runtime.consoleAPICalled",
                             console([{"type": "string", "value": "hello"}, {"type": "number", "value": 42,
                                                                             "description": "42"}]), SESSION))
    assert event["type"] == "console.log" and event["category"] == "console"
    assert event["source"] == {"kind": "cdp", "event": "Runtime.consoleAPICalled",
                               "metadata": {"target_id": TARGET, "cdp_session_id": SESSION, "frame_id": FRAME}}
    assert event["url"] == PAGE and event["ts"] == 1_700_000_000_123_500
    assert event["detail_level"] == "standard"
    assert event["data"] == {"level": "log", "args": ["hello", "42"]}


def test_console_in_a_subframe_takes_the_frame_of_its_execution_context():
    event = one(mapper().map("Runtime.consoleAPICalled", console([{"type": "string", "value": "x"}], context=2),
                             SESSION))
    assert event["source"]["metadata"]["frame_id"] == CHILD_FRAME and event["url"] == PAGE + "frame"


@pytest.mark.parametrize("cdp_type, type_, level", [
    ("log", "console.log", "log"), ("info", "console.info", "info"), ("warning", "console.warn", "warn"),
    ("error", "console.error", "error"), ("debug", "console.debug", "debug"), ("assert", "console.error", "error"),
    ("table", "console.log", "table"), ("trace", "console.log", "trace"),
])
def test_console_levels(cdp_type, type_, level):
    event = one(mapper().map("Runtime.consoleAPICalled", console([], kind=cdp_type), SESSION))
    assert (event["type"], event["data"]["level"]) == (type_, level)


@pytest.mark.parametrize("obj, text", [
    ({"type": "string", "value": "s"}, "s"),
    ({"type": "number", "value": 1.0, "description": "1"}, "1"),
    ({"type": "number", "unserializableValue": "NaN"}, "NaN"),
    ({"type": "boolean", "value": True}, "true"),
    ({"type": "undefined"}, "undefined"),
    ({"type": "object", "subtype": "null", "value": None}, "null"),
    ({"type": "object", "description": "Object", "preview": {"type": "object", "overflow": False, "properties": [
        {"name": "a", "type": "number", "value": "1"}, {"name": "b", "type": "string", "value": "x"}]}},
     "{a: 1, b: 'x'}"),
    ({"type": "object", "subtype": "array", "description": "Array(2)", "preview": {
        "type": "object", "subtype": "array", "overflow": True, "properties": [
            {"name": "0", "type": "number", "value": "1"}, {"name": "1", "type": "number", "value": "2"}]}},
     "[1, 2, …]"),
    ({"type": "function", "description": "function f() {}"}, "function f() {}"),
    ({"type": "object", "subtype": "error", "description": "Error: x\n    at f", "preview": {}}, "Error: x\n    at f"),
])
def test_remote_object_text_previews(obj, text):
    assert remote_object_text(obj) == text


def test_exception_carries_message_and_stack():
    params = {"timestamp": 1_700_000_000_000.0, "exceptionDetails": {
        "text": "Uncaught", "executionContextId": 1, "url": PAGE, "lineNumber": 3, "columnNumber": 7,
        "exception": {"type": "object", "subtype": "error", "description": "Error: boom\n    at f (x.js:1:1)"},
        "stackTrace": {"callFrames": [{"functionName": "f", "url": PAGE + "x.js", "lineNumber": 0,
                                       "columnNumber": 4}]}}}
    event = one(mapper().map("Runtime.exceptionThrown", params, SESSION))
    assert event["type"] == "console.exception"
    assert event["data"] == {"level": "error", "args": ["Error: boom"], "text": "Uncaught",
                             "stack": [f"f ({PAGE}x.js:1:5)"]}
    assert one(mapper("minimal").map("Runtime.exceptionThrown", params, SESSION))["data"] == {
        "level": "error", "args": ["Error: boom"]}


REQUEST = {"requestId": "R1", "loaderId": "L1", "documentURL": PAGE, "frameId": FRAME, "type": "Fetch",
           "timestamp": 100.0, "wallTime": 1_700_000_000.0, "initiator": {"type": "script"},
           "request": {"url": PAGE + "api", "method": "POST", "headers": {"X-A": "1"}, "hasPostData": True}}
RESPONSE = {"requestId": "R1", "timestamp": 100.25, "type": "Fetch", "frameId": FRAME, "response": {
    "url": PAGE + "api", "status": 201, "statusText": "Created", "mimeType": "application/json",
    "headers": {"Content-Type": "application/json"}, "encodedDataLength": 120, "protocol": "http/1.1",
    "remoteIPAddress": "127.0.0.1", "timing": {"requestTime": 100.01, "dnsStart": -1, "sendStart": 0.5,
                                                "receiveHeadersEnd": 3.25}}}


def test_network_pairing_snake_case_and_clock_conversion():
    m = mapper()
    request = one(m.map("Network.requestWillBeSent", REQUEST, SESSION))
    response = one(m.map("Network.responseReceived", RESPONSE, SESSION))
    finished = one(m.map("Network.loadingFinished", {"requestId": "R1", "timestamp": 100.5,
                                                     "encodedDataLength": 345}, SESSION))
    assert [e["type"] for e in (request, response, finished)] == ["network.request", "network.response",
                                                                  "network.finished"]
    assert [e["source"]["event"] for e in (request, response, finished)] == [
        "Network.requestWillBeSent", "Network.responseReceived", "Network.loadingFinished"]
    assert {e["data"]["request_id"] for e in (request, response, finished)} == {"R1"}
    assert all(e["url"] == PAGE for e in (request, response, finished))  # the page, not the request
    # Monotonic CDP times become Unix µs through the wallTime anchor of requestWillBeSent.
    assert request["ts"] == 1_700_000_000_000_000
    assert response["ts"] == 1_700_000_000_250_000 and finished["ts"] == 1_700_000_000_500_000
    assert request["data"] == {"request_id": "R1", "method": "POST", "url": PAGE + "api", "resource_type": "Fetch",
                               "initiator_type": "script", "has_post_data": True}
    data = response["data"]
    assert (data["status"], data["mime_type"], data["method"], data["encoded_data_length"]) == (
        201, "application/json", "POST", 120)
    assert data["timing"] == {"request_ts": 1_700_000_000_010_000, "send_start": 0.5, "receive_headers_end": 3.25}
    assert "headers" not in data
    assert finished["data"] == {"request_id": "R1", "encoded_data_length": 345, "url": PAGE + "api",
                                "method": "POST", "duration_ms": 500.0}
    assert m.sessions[SESSION].requests == {}


def test_network_failure_and_redirect():
    m = mapper()
    m.map("Network.requestWillBeSent", REQUEST, SESSION)
    failed = one(m.map("Network.loadingFailed", {"requestId": "R1", "timestamp": 101.0, "type": "Fetch",
                                                 "errorText": "net::ERR_CONNECTION_REFUSED", "canceled": False},
                       SESSION))
    assert failed["type"] == "network.failed" and failed["data"]["error_text"] == "net::ERR_CONNECTION_REFUSED"
    assert failed["data"]["url"] == PAGE + "api" and failed["data"]["duration_ms"] == 1000.0
    m.map("Network.requestWillBeSent", dict(REQUEST, requestId="R2"), SESSION)
    redirected = m.map("Network.requestWillBeSent", dict(
        REQUEST, requestId="R2", request=dict(REQUEST["request"], url=PAGE + "new"),
        redirectResponse={"url": PAGE + "api", "status": 302, "mimeType": ""}), SESSION)
    assert [(e["type"], e["data"]["url"]) for e in redirected] == [("network.response", PAGE + "api"),
                                                                    ("network.request", PAGE + "new")]
    assert redirected[0]["data"]["status"] == 302 and redirected[1]["data"]["redirected_from"] == PAGE + "api"


def test_detail_levels_shape_data():
    minimal, verbose, raw = mapper("minimal"), mapper("verbose"), mapper("raw")
    for m in (minimal, verbose, raw):
        m.map("Network.requestWillBeSent", REQUEST, SESSION)
    assert set(one(minimal.map("Network.responseReceived", RESPONSE, SESSION))["data"]) == {
        "request_id", "url", "status", "mime_type"}
    response = one(verbose.map("Network.responseReceived", RESPONSE, SESSION))
    assert response["data"]["headers"] == {"Content-Type": "application/json"}
    assert response["detail_level"] == "verbose"
    stack = {"callFrames": [{"functionName": "", "url": PAGE, "lineNumber": 1, "columnNumber": 2}]}
    assert one(verbose.map("Runtime.consoleAPICalled", console([], stackTrace=stack), SESSION))["data"]["stack"] == [
        f"(anonymous) ({PAGE}:2:3)"]
    raw_event = one(raw.map("Network.responseReceived", RESPONSE, SESSION))
    assert raw_event["data"] is RESPONSE and raw_event["detail_level"] == "raw"
    assert raw_event["type"] == "network.response"


def test_page_events_and_target_lifecycle():
    m = mapper()
    dom = one(m.map("Page.domContentEventFired", {"timestamp": 50.0}, SESSION))
    load = one(m.map("Page.loadEventFired", {"timestamp": 50.5}, SESSION))
    assert (dom["type"], load["type"]) == ("page.dom_content_loaded", "page.load")
    assert dom["source"]["metadata"]["frame_id"] == FRAME and load["url"] == PAGE
    # The main frame's lifecycle duplicates are not re-emitted; a subframe's are.
    assert m.map("Page.lifecycleEvent", {"frameId": FRAME, "name": "load", "timestamp": 50.5}, SESSION) == []
    sub = one(m.map("Page.lifecycleEvent", {"frameId": CHILD_FRAME, "name": "load", "timestamp": 50.6}, SESSION))
    assert sub["source"]["event"] == "Page.lifecycleEvent" and sub["url"] == PAGE + "frame"
    spa = one(m.map("Page.navigatedWithinDocument", {"frameId": FRAME, "url": PAGE + "#cart"}, SESSION))
    assert spa["type"] == "page.navigation" and spa["data"]["same_document"] is True
    closed = one(m.map("Target.targetDestroyed", {"targetId": TARGET}))
    assert closed["type"] == "page.target_closed"
    assert closed["source"] == {"kind": "cdp", "event": "Target.targetDestroyed", "metadata": {"target_id": TARGET}}
    m.map("Target.detachedFromTarget", {"sessionId": SESSION, "targetId": TARGET})
    assert m.sessions == {} and m.pages == {}
    # Events of a session that is gone (or never followed) are ignored.
    assert m.map("Runtime.consoleAPICalled", console([]), SESSION) == []


def test_targets_of_other_types_are_not_followed():
    m = CdpMapper()
    assert m.map("Target.targetCreated", {"targetInfo": {"targetId": "W", "type": "service_worker"}}) == []
    m.map("Target.attachedToTarget", {"sessionId": "SW", "targetInfo": {"targetId": "W", "type": "service_worker"}})
    assert m.sessions == {} and m.pages == {}


def test_requests_that_never_finish_are_bounded():
    m = mapper()
    for i in range(MAX_REQUESTS_PER_TARGET + 50):
        m.map("Network.requestWillBeSent", dict(REQUEST, requestId=f"R{i}"), SESSION)
    assert len(m.sessions[SESSION].requests) == MAX_REQUESTS_PER_TARGET


def test_interactions_from_the_binding():
    m = mapper()

    def call(payload, context=1, name=BINDING):
        return m.map("Runtime.bindingCalled", {"name": name, "payload": json.dumps(payload),
                                               "executionContextId": context}, SESSION)

    click = one(call({"kind": "click", "target": "button#buy", "x": 10.4, "y": 20, "button": 0, "trusted": True,
                      "ts": 1_700_000_000_001.5}))
    assert click["type"] == "interaction.click" and click["category"] == "interaction"
    assert click["source"]["event"] == "Runtime.bindingCalled" and click["ts"] == 1_700_000_000_001_500
    assert click["data"] == {"target": "button#buy", "x": 10, "y": 20, "button": 0, "trusted": True}
    key = one(call({"kind": "key", "key": "character", "shift": True, "target": "input#q"}, context=2))
    assert key["type"] == "interaction.key" and key["data"]["key"] == "character" and key["data"]["shift"] is True
    assert key["source"]["metadata"]["frame_id"] == CHILD_FRAME
    scroll = one(call({"kind": "scroll", "target": "document", "x": 0, "y": 300}))
    assert scroll["type"] == "interaction.scroll" and scroll["data"] == {"x": 0, "y": 300, "target": "document"}
    assert call({"kind": "click"}, name="someone elses binding") == []


def hook_batch(m, entries, context=1):
    return m.map("Runtime.bindingCalled", {"name": CONSOLE_BINDING, "payload": json.dumps(entries),
                                           "executionContextId": context}, SESSION)


def test_console_hook_batches_become_one_console_event_per_call():
    m = mapper()
    events = hook_batch(m, [["log", 1_700_000_000_001.5, ["hello", "42", '{"answer":42}']],
                            ["warn", 1_700_000_000_002.0, ["careful"]],
                            ["error", 1_700_000_000_003.0, ["Error: bad\n    at f (x.js:1:2)"]]], context=2)
    assert [e["type"] for e in events] == ["console.log", "console.warn", "console.error"]
    first = events[0]
    assert first["category"] == "console" and first["ts"] == 1_700_000_000_001_500
    assert first["source"] == {"kind": "cdp", "event": "Runtime.bindingCalled",
                               "metadata": {"target_id": TARGET, "cdp_session_id": SESSION, "frame_id": CHILD_FRAME}}
    assert first["url"] == PAGE + "frame"
    assert first["data"] == {"level": "log", "args": ["hello", "42", '{"answer":42}']}
    assert events[1]["data"] == {"level": "warn", "args": ["careful"]}
    for event in events:
        msgspec.json.decode(encode_for_ingest(event)[0], type=Event)


def test_console_hook_detail_levels():
    entry = ["info", 1_700_000_000_000.0, ["x"], ["f (http://127.0.0.1:8000/:3:9)"]]
    assert one(hook_batch(mapper("standard"), [entry]))["data"] == {"level": "info", "args": ["x"]}
    verbose = one(hook_batch(mapper("verbose"), [entry]))
    assert verbose["data"]["stack"] == ["f (http://127.0.0.1:8000/:3:9)"]
    raw = one(hook_batch(mapper("raw"), [entry]))
    assert raw["data"] == {"name": CONSOLE_BINDING, "executionContextId": 1, "entry": entry}


@pytest.mark.parametrize("payload", ["{not json", json.dumps({"level": "log"}), json.dumps([["shout", 1, []]]),
                                     json.dumps([["log", 1, "not a list"]]), json.dumps([["log"]])])
def test_malformed_console_hook_batches_raise_malformed_cdp(payload):
    with pytest.raises(MalformedCdp, match="Runtime"):
        mapper().map("Runtime.bindingCalled", {"name": CONSOLE_BINDING, "payload": payload,
                                               "executionContextId": 1}, SESSION)


@pytest.mark.parametrize("payload", [
    '[["log", 1e999, []]]',  # inf: a time that is no time
    '[["log", -5, []]]',
    '[["log", 1e300, []]]',
])
def test_a_console_batch_with_an_impossible_time_is_stamped_on_receipt(payload):
    event = one(mapper().map("Runtime.bindingCalled", {"name": CONSOLE_BINDING, "payload": payload,
                                                       "executionContextId": 1}, SESSION))
    assert event["ts"] == ATTACHED_US


@pytest.mark.parametrize("payload", [
    "[" * 100_000 + "]" * 100_000,  # deeper than the JSON decoder goes
    json.dumps([["log", 1, []]] * (CONSOLE_HOOK_BATCH + 1)),  # more calls than a payload may carry
    5,
    "x" * (64 * 1024 * 1024 + 1),
])
def test_a_hostile_console_batch_is_malformed_not_a_crash(payload):
    with pytest.raises(MalformedCdp):
        mapper().map("Runtime.bindingCalled", {"name": CONSOLE_BINDING, "payload": payload,
                                               "executionContextId": 1}, SESSION)


@pytest.mark.parametrize("method, params", [
    ("Runtime.consoleAPICalled", {"args": []}),  # no type
    ("Runtime.consoleAPICalled", {"type": "log", "args": "not a list"}),
    ("Runtime.consoleAPICalled", {"type": 7, "args": []}),
    ("Network.responseReceived", {"requestId": "R", "response": "not an object"}),
    ("Network.requestWillBeSent", {"requestId": "R"}),
    ("Page.frameNavigated", {"frame": None}),
    ("Runtime.bindingCalled", {"name": BINDING, "payload": "{not json"}),
    ("Runtime.bindingCalled", {"name": BINDING, "payload": json.dumps({"kind": "steal", "value": "pw"})}),
    ("Runtime.bindingCalled", {"name": BINDING, "payload": 5}),
    ("Target.attachedToTarget", {"sessionId": 5, "targetInfo": {}}),
])
def test_malformed_messages_raise_malformed_cdp(method, params):
    with pytest.raises(MalformedCdp, match=method.split(".")[0]):
        mapper().map(method, params, SESSION)


def test_non_object_params_are_malformed_and_unknown_methods_ignored():
    with pytest.raises(MalformedCdp):
        mapper().map("Runtime.consoleAPICalled", ["x"], SESSION)
    assert mapper().map("Network.dataReceived", {"requestId": "R"}, SESSION) == []


def test_system_events_and_bad_detail_level():
    event = CdpMapper("verbose").system_event("system.cdp_connected", {"browser": "Chrome/1"})
    assert event["category"] == "system" and event["source"] == {"kind": "cdp"} and event["detail_level"] == "verbose"
    with pytest.raises(ConfigError, match="detail level"):
        CdpMapper("everything")


def test_size_rule_is_applied_before_the_socket():
    small = {"ts": 1, "type": "console.log", "category": "console", "source": {"kind": "cdp"},
             "data": {"args": ["x" * 1000]}}
    line, cut = encode_for_ingest(small)
    assert not cut and json.loads(line) == small
    big = dict(small, data={"args": ["x" * (MAX_RECORD_BYTES + 10)]})
    line, cut = encode_for_ingest(big)
    decoded = json.loads(line)
    assert cut and decoded["data"] is None and decoded["truncated"] is True and len(line) < 1000
    assert big["data"]["args"][0]  # the caller's event is untouched


def test_snake():
    assert [snake(k) for k in ("requestTime", "dnsStart", "receiveHeadersEnd", "sslEnd")] == [
        "request_time", "dns_start", "receive_headers_end", "ssl_end"]


def test_console_messages_older_than_the_attach_are_marked_replayed():
    now = [1_700_000_000_000_000]
    m = CdpMapper(now_us=lambda: now[0])
    m.map("Target.attachedToTarget", {"sessionId": SESSION, "targetInfo": {"targetId": TARGET, "type": "page"}})
    old = one(m.map("Runtime.consoleAPICalled", dict(console([]), timestamp=1_699_999_999_000.0), SESSION))
    new = one(m.map("Runtime.consoleAPICalled", dict(console([]), timestamp=1_700_000_000_500.0), SESSION))
    assert old["data"]["replayed"] is True and "replayed" not in new["data"]


def test_the_mapper_does_no_io():
    # Only pure modules: no sockets, files, threads or processes (the capture, connection and publisher do those).
    root = Path(__file__).resolve().parents[2] / "shmring" / "cdp"
    for module in ("mapper.py", "text.py", "domains.py"):
        imported = set()
        for node in ast.walk(ast.parse((root / module).read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                imported.add(node.module)
        assert imported <= {"json", "re", "time", "msgspec", "errors", "layout", "scripts", "text", "producer_config"}, (
            module, imported)
