"""The schema: Go-exact JSON for fixed examples, normalisation, and every validation error."""

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shmring import Envelope, Event, EventTooLarge, InvalidEvent, Source
from shmring.layout import MAX_RECORD_BYTES
from shmring.schema import EventPreparer, apply_size_rule, decode_envelope, encode_envelope

GO_METADATA = {
    "target_id": "target-1",
    "cdp_session_id": "cdp-session-1",
    "frame_id": "frame-1",
    "parent_frame_id": "parent-frame-1",
}


def console_event(**overrides) -> Event:
    fields = dict(type="console.log", category="console", source=Source(kind="cdp"))
    fields.update(overrides)
    return Event(**fields)


# -- byte-exact output, cases from the Go pipeline's tests -------------------


def test_event_serialization_matches_go():
    event = Event(
        ts=1234567890000,
        type="console.log",
        category="console",
        source=Source(kind="cdp", event="Runtime.consoleAPICalled", metadata=GO_METADATA),
        data=msgspec.Raw(b'{"message":"hello"}'),
    )
    assert msgspec.json.encode(event) == (
        b'{"ts":1234567890000,"type":"console.log","category":"console",'
        b'"source":{"kind":"cdp","event":"Runtime.consoleAPICalled","metadata":{"cdp_session_id":"cdp-session-1",'
        b'"frame_id":"frame-1","parent_frame_id":"parent-frame-1","target_id":"target-1"}},'
        b'"detail_level":"","data":{"message":"hello"}}'
    )


def test_envelope_serialization_matches_go():
    envelope = Envelope(capture_session_id="", seq=1, event=console_event(ts=1000))
    assert encode_envelope(envelope) == (
        b'{"capture_session_id":"","seq":1,"event":{"ts":1000,"type":"console.log","category":"console",'
        b'"source":{"kind":"cdp"},"detail_level":""}}'
    )


def test_embedded_data_is_json_not_a_string():
    event = Event(ts=1000, type="page.navigation", category="page", source=Source(kind="cdp"),
                  data=msgspec.Raw(b'{"key":"value","num":42}'))
    encoded = msgspec.json.encode(event)
    assert b'"data":{"key":"value","num":42}' in encoded
    assert b'"data":"{' not in encoded


def test_omit_when_empty():
    assert msgspec.json.encode(console_event(ts=1000)) == (
        b'{"ts":1000,"type":"console.log","category":"console","source":{"kind":"cdp"},"detail_level":""}'
    )


def test_ts_and_detail_level_are_always_written():
    assert msgspec.json.encode(console_event()) == (
        b'{"ts":0,"type":"console.log","category":"console","source":{"kind":"cdp"},"detail_level":""}'
    )


def test_all_fields_in_go_order():
    event = Event(ts=7, type="network.response", category="network",
                  source=Source("cdp", "Network.responseReceived", {"b": "2", "a": "1"}),
                  detail_level="verbose", url="http://127.0.0.1/x", data=msgspec.Raw(b"[1,2]"), truncated=True)
    assert msgspec.json.encode(Envelope("sess", 42, event)) == (
        b'{"capture_session_id":"sess","seq":42,"event":{"ts":7,"type":"network.response","category":"network",'
        b'"source":{"kind":"cdp","event":"Network.responseReceived","metadata":{"a":"1","b":"2"}},'
        b'"detail_level":"verbose","url":"http://127.0.0.1/x","data":[1,2],"truncated":true}}'
    )


def test_decode_round_trip():
    event = Event(ts=7, type="console.warn", category="console", source=Source("extension", metadata={"x": "y"}),
                  detail_level="raw", url="u", data=msgspec.Raw(b'{"a":[1,{"b":null}]}'))
    encoded = encode_envelope(Envelope("s", 3, event))
    decoded = decode_envelope(encoded)
    assert encode_envelope(decoded) == encoded
    assert bytes(decoded.event.data) == b'{"a":[1,{"b":null}]}'


# -- normalisation at publish --------------------------------------------------


def test_prepare_stamps_ts_and_detail_level_without_touching_the_caller():
    event = console_event()
    prepared = EventPreparer().prepare(event)
    assert prepared.ts > 1_600_000_000_000_000  # Unix microseconds
    assert prepared.detail_level == "standard"
    assert event.ts == 0 and event.detail_level == ""


def test_prepare_keeps_given_ts_and_detail_level():
    prepared = EventPreparer().prepare(console_event(ts=123, detail_level="minimal"))
    assert (prepared.ts, prepared.detail_level) == (123, "minimal")


@pytest.mark.parametrize(
    "data, expected",
    [
        (msgspec.Raw(b'{"a": 1,  "b" : [1, 2]}'), b'{"a":1,"b":[1,2]}'),
        (b'\n {"a":\t"x y"}\r\n', b'{"a":"x y"}'),
        ('{"a": "caf\u00e9"}', '{"a":"caf\u00e9"}'.encode()),
        ({"k": [1, 2], "s": "v"}, b'{"k":[1,2],"s":"v"}'),
        ([1, "two"], b'[1,"two"]'),
        (None, None),
        (b"", None),
    ],
)
def test_data_is_validated_and_compacted(data, expected):
    prepared = EventPreparer().prepare(console_event(data=data))
    encoded = msgspec.json.encode(prepared)
    if expected is None:
        assert b'"data"' not in encoded
    else:
        assert b'"data":' + expected + b"}" in encoded
        assert b"\n" not in encoded


# -- every validation error -----------------------------------------------------


@pytest.mark.parametrize("category", ["../x", "", "A B", "Console", "9lives", "a" * 33, "a-b", "x/y", None, 5])
def test_bad_category_is_rejected(category):
    with pytest.raises(InvalidEvent, match="category"):
        EventPreparer().prepare(console_event(category=category))


@pytest.mark.parametrize("category", ["console", "network", "page", "interaction", "liveview", "captcha", "system",
                                      "custom", "a", "a" * 32, "my_cat_2"])
def test_good_categories_are_accepted(category):
    assert EventPreparer().prepare(console_event(category=category)).category == category


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(type=""), "type"),
        (dict(type=None), "type"),
        (dict(source=Source(kind="browser")), "source kind"),
        (dict(source={"kind": "cdp"}), "source"),
        (dict(source=Source(kind="cdp", event=3)), "source event"),
        (dict(source=Source(kind="cdp", metadata={"a": 1})), "metadata"),
        (dict(source=Source(kind="cdp", metadata=["a"])), "metadata"),
        (dict(detail_level="default"), "detail level"),
        (dict(detail_level="VERBOSE"), "detail level"),
        (dict(data=msgspec.Raw(b'{"a":')), "not valid JSON"),
        (dict(data=b"{'a': 1}"), "not valid JSON"),
        (dict(data="nope"), "not valid JSON"),
        (dict(data=b'{"a":1} trailing'), "not valid JSON"),
        (dict(data={1j}), "cannot be encoded"),
        (dict(ts=-1), "ts"),
        (dict(ts=1.5), "ts"),
        (dict(url=5), "url"),
        (dict(truncated="yes"), "truncated"),
    ],
)
def test_invalid_events_are_rejected(overrides, match):
    with pytest.raises(InvalidEvent, match=match):
        EventPreparer().prepare(console_event(**overrides))


def test_publish_takes_only_events():
    with pytest.raises(InvalidEvent, match="Event"):
        EventPreparer().prepare({"type": "console.log"})


def test_invalid_event_is_a_value_error():
    with pytest.raises(ValueError):
        EventPreparer().prepare(console_event(type=""))


# -- the size rule ----------------------------------------------------------------


def big_data(size: int) -> msgspec.Raw:
    return msgspec.Raw(b'{"blob":"' + b"x" * size + b'"}')


def test_envelope_at_the_limit_passes_intact():
    prepared = EventPreparer().prepare(console_event(ts=1, data=big_data(0)))
    overhead = len(encode_envelope(Envelope("s", 1, prepared)))
    prepared = EventPreparer().prepare(console_event(ts=1, data=big_data(MAX_RECORD_BYTES - overhead)))
    envelope, encoded = apply_size_rule(Envelope("s", 1, prepared))
    assert len(encoded) == MAX_RECORD_BYTES
    assert not envelope.event.truncated
    assert bytes(envelope.event.data) == bytes(prepared.data)


def test_oversized_data_is_truncated_as_go_does():
    prepared = EventPreparer().prepare(console_event(ts=1, url="http://x", data=big_data(MAX_RECORD_BYTES)))
    envelope, encoded = apply_size_rule(Envelope("s", 9, prepared))
    assert envelope.event.truncated
    assert encoded == (
        b'{"capture_session_id":"s","seq":9,"event":{"ts":1,"type":"console.log","category":"console",'
        b'"source":{"kind":"cdp"},"detail_level":"standard","url":"http://x","data":null,"truncated":true}}'
    )


def test_oversized_without_data_raises():
    prepared = EventPreparer().prepare(console_event(url="http://x/" + "a" * MAX_RECORD_BYTES))
    with pytest.raises(EventTooLarge, match="url"):
        apply_size_rule(Envelope("s", 1, prepared))


@pytest.mark.parametrize("ts", [2**63, 2**64, -5])
def test_ts_outside_go_int64_is_rejected(ts):
    with pytest.raises(InvalidEvent, match="ts"):
        EventPreparer().prepare(console_event(ts=ts))


def test_deeply_nested_ingest_line_is_an_invalid_event():
    from shmring.schema import decode_event

    with pytest.raises(InvalidEvent):
        nested = b"[" * 100000 + b"]" * 100000
        decode_event(b'{"type":"x","category":"console","source":{"kind":"cdp"},"data":' + nested + b"}")


# -- what every decode runs: Source.__post_init__ and the GC ----------------------------------

metadata_dicts = st.dictionaries(st.text(max_size=4), st.text(max_size=3), max_size=6)


@settings(max_examples=300, deadline=None)
@given(metadata=metadata_dicts)
def test_a_source_holds_its_metadata_sorted_on_either_path(metadata):
    compiled = Source.__post_init__
    reference = getattr(compiled, "__wrapped__", compiled)  # the Python rule, where the accelerator wraps it
    for post_init in {compiled, reference}:
        source = Source(kind="cdp")
        source.metadata = dict(metadata)  # assigned: no __post_init__ ran
        post_init(source)
        assert list(source.metadata) == sorted(metadata)
        assert source.metadata == metadata
    decoded = decode_envelope(encode_envelope(Envelope("s", 1, Event(type="t", category="console",
                                                                     source=Source(kind="cdp", metadata=metadata)))))
    assert list(decoded.event.source.metadata) == sorted(metadata)


def test_metadata_that_is_not_a_dict_of_strings_is_left_to_prepare_on_either_path():
    for metadata in ({"b": 1, "a": 2}, ["a"], {2: "x", 1: "y"}):
        source = Source(kind="cdp", metadata=metadata)  # no error here: publish reports it
        with pytest.raises(InvalidEvent, match="metadata"):
            EventPreparer().prepare(Event(type="t", category="console", source=source))


def test_decoded_envelopes_and_results_are_not_tracked_by_the_gc():
    import gc

    from shmring import RawRecord, ReadResult

    envelope = decode_envelope(encode_envelope(Envelope("s", 1, Event(
        type="t", category="console", source=Source(kind="cdp", metadata={"a": "b"}), data=msgspec.Raw(b"[1]")))))
    for obj in (envelope, envelope.event, envelope.event.source, ReadResult(envelope), RawRecord(1, "console", b"{}")):
        assert not gc.is_tracked(obj), type(obj).__name__
