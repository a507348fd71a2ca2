"""The input-topic event schema, without a broker."""

from __future__ import annotations

import json

import numpy as np
import pytest

from worker.kafka.events import EventError, EventParser, infer_channels, readings_matrix


def dumps(obj: object) -> bytes:
    return json.dumps(obj).encode()


def test_mapping_readings_follow_the_channel_order() -> None:
    parser = EventParser(("pressure", "flow"), allow_unknown=False, max_bytes=1000)
    event = parser.parse(dumps({"key": "pump-7", "timestamp": "2026-01-01T00:00:00Z",
                                "readings": {"pressure": 1.5, "flow": 31}}), None, None)
    assert event.key == "pump-7" and event.values == [1.5, 31]
    assert event.timestamp == "2026-01-01T00:00:00+00:00"
    again = parser.parse(dumps({"key": "pump-7", "readings": {"flow": 2.0, "pressure": 1.0}}), None, None)
    assert again.values == [1.0, 2.0]  # the configured order, whatever the event's order


def test_the_majority_of_the_first_events_fixes_the_channels_not_the_first_one() -> None:
    full = [dumps({"key": "k", "readings": {"b": 1.0, "a": 2.0, "c": 3.0}}) for _ in range(5)]
    first = dumps({"key": "k", "readings": {"b": 1.0, "a": 2.0}})  # one channel missing
    junk = [b"not json", None, dumps({"key": "k", "readings": {}}), dumps({"key": "k", "readings": [1.0]})]
    assert infer_channels([first, *junk, *full], 1000) == (("b", "a", "c"), 6)
    # a tie goes to the set seen first; the names keep the order of its first event
    assert infer_channels([first, full[0]], 1000) == (("b", "a"), 2)
    assert infer_channels(junk, 1000) == (None, 0)
    assert infer_channels(full, 10) == (None, 0)  # larger than max_event_bytes: no say


def test_without_channels_a_parser_refuses_events() -> None:
    with pytest.raises(EventError, match="not known yet") as exc:
        EventParser(None, False, 1000).parse(dumps({"key": "k", "readings": {"a": 1.0}}), None, None)
    assert exc.value.kind == "schema"


def test_list_readings_need_configured_channels() -> None:
    with pytest.raises(EventError, match="no channel names") as exc:
        EventParser(None, False, 1000).parse(dumps({"key": "k", "readings": [1.0, 2.0]}), None, None)
    assert exc.value.kind == "schema"
    parser = EventParser(("a", "b"), False, 1000)
    assert parser.parse(dumps({"key": "k", "readings": [1.0, 2.0]}), None, None).values == [1.0, 2.0]
    with pytest.raises(EventError, match="3 readings for 2 channels"):
        parser.parse(dumps({"key": "k", "readings": [1.0, 2.0, 3.0]}), None, None)


def test_key_and_timestamp_fall_back_to_the_record() -> None:
    parser = EventParser(("a",), False, 1000)
    event = parser.parse(dumps({"readings": {"a": 1.0}}), b"valve-3", 1_767_225_600_000)
    assert event.key == "valve-3" and event.timestamp == "2026-01-01T00:00:00+00:00"
    with pytest.raises(EventError, match="no key") as exc:
        parser.parse(dumps({"readings": {"a": 1.0}}), None, None)
    assert exc.value.kind == "missing_field"


@pytest.mark.parametrize(("readings", "kind"), [
    ({"a": True}, "wrong_type"),
    ({"a": "1.5"}, "wrong_type"),
    ({"a": None}, "wrong_type"),
    ({"a": 1e300}, "out_of_range"),
])
def test_readings_are_strict_finite_numbers(readings: dict, kind: str) -> None:
    with pytest.raises(EventError) as exc:
        EventParser(("a",), False, 1000).parse(dumps({"key": "k", "readings": readings}), None, None)
    assert exc.value.kind == kind and "readings.a" in exc.value.reason


def test_unknown_channels_are_refused_unless_allowed() -> None:
    value = dumps({"key": "k", "readings": {"a": 1.0, "extra": 2.0}})
    with pytest.raises(EventError, match="unknown channel 'extra'"):
        EventParser(("a",), False, 1000).parse(value, None, None)
    assert EventParser(("a",), True, 1000).parse(value, None, None).values == [1.0]


def test_oversize_and_tombstones() -> None:
    parser = EventParser(("a",), False, 64)
    with pytest.raises(EventError) as exc:
        parser.parse(dumps({"key": "k", "readings": {"a": 1.0}, "pad": "x" * 100}), None, None)
    assert exc.value.kind == "oversize"
    with pytest.raises(EventError) as exc:
        parser.parse(None, b"k", None)
    assert exc.value.kind == "empty"


def test_record_keys_too_long_to_be_a_device_id_are_refused() -> None:
    parser = EventParser(("a",), False, 65_536)
    value = json.dumps({"readings": {"a": 1.0}}).encode()
    with pytest.raises(EventError) as info:
        parser.parse(value, b"k" * 300, None)
    assert info.value.kind == "oversize_key"
    assert parser.parse(value, b"k" * 256, None).key == "k" * 256
    named = json.dumps({"key": "pump-1", "readings": {"a": 1.0}}).encode()
    assert parser.parse(named, b"k" * 300, None).key == "pump-1"  # the event's own key wins


def _outcome(result: object) -> tuple:
    """What a parse result means, down to the float bits and types of the values."""
    if isinstance(result, EventError):
        return ("error", result.kind, result.reason)
    return ("event", result.key, [repr(v) for v in result.values], result.event_time, result.record_ts_ms)


def _parse_one(parser: EventParser, value: bytes | None, key: bytes | None, ts: int | None) -> tuple:
    try:
        return _outcome(parser.parse(value, key, ts))
    except EventError as exc:
        return _outcome(exc)


AWKWARD_EVENTS: list[bytes | None] = [
    dumps({"key": "pump-1", "readings": {"a": 1.5, "b": -2.25}}),
    dumps({"key": "pump-1", "timestamp": "2026-01-01T00:00:00Z", "readings": {"b": 1, "a": -0.0}}),
    dumps({"key": "pump-2", "timestamp": 1_767_225_600_000, "readings": [0.1, 0.2]}),
    dumps({"key": "pump-2", "timestamp": 1_767_225_600, "readings": [3, 4]}),
    dumps({"key": "pump-2", "timestamp": 1_767_225_600.25, "readings": [1e15, -1e15]}),
    dumps({"key": "pump-2", "timestamp": None, "readings": [0.1, 0.2], "site": {"x": [1, 2]}}),
    dumps({"readings": {"a": 1.0, "b": 2.0}}),  # the record key, or none
    dumps({"key": None, "readings": {"a": 1.0, "b": 2.0}}),
    dumps({"key": "", "readings": {"a": 1.0, "b": 2.0}}),
    dumps({"key": "é" * 256, "readings": {"a": 1.0, "b": 2.0}}),
    dumps({"key": "é" * 257, "readings": {"a": 1.0, "b": 2.0}}),
    dumps({"key": 7, "readings": {"a": 1.0, "b": 2.0}}),
    dumps({"key": "k", "readings": {"a": True, "b": 2.0}}),
    dumps({"key": "k", "readings": {"a": "1", "b": 2.0}}),
    dumps({"key": "k", "readings": {"a": None, "b": 2.0}}),
    dumps({"key": "k", "readings": {"a": [1.0], "b": 2.0}}),
    dumps({"key": "k", "readings": {"a": 1e300, "b": 2.0}}),
    dumps({"key": "k", "readings": [1.0, 2 ** 70]}),
    b'{"key": "k", "readings": {"a": NaN, "b": 2.0}}',
    b'{"key": "k", "readings": {"a": Infinity, "b": 2.0}}',
    b'{"key": "k", "readings": {"a": 1e400, "b": 2.0}}',
    b'{"key": "k", "readings": {"a": 1.0, "a": 3.0, "b": 2.0}}',
    dumps({"key": "k", "readings": {"a": 1.0}}),
    dumps({"key": "k", "readings": {"a": 1.0, "b": 2.0, "c": 3.0}}),
    dumps({"key": "k", "readings": {"a": 1.0, "b": 2.0, "c": "x"}}),
    dumps({"key": "k", "readings": [1.0]}),
    dumps({"key": "k", "readings": []}),
    dumps({"key": "k", "readings": {}}),
    dumps({"key": "k", "readings": 3.0}),
    dumps({"key": "k"}),
    dumps([1.0, 2.0]),
    dumps("text"),
    b"not json",
    b'\xef\xbb\xbf{"key": "k", "readings": [1.0, 2.0]}',
    b'{"key": "\\ud800", "readings": [1.0, 2.0]}',
    b'{"key": "\xff", "readings": [1.0, 2.0]}',
    b'{"key": "k", "readings": [1.0, 2.0]} trailing',
    b'  {"key": "k", "readings": [1.0, 2.0]}\n',
    None,
    dumps({"key": "k", "readings": [1.0, 2.0], "pad": "x" * 2000}),  # over max_bytes
    dumps({"key": "k", "timestamp": "yesterday", "readings": [1.0, 2.0]}),
    dumps({"key": "k", "timestamp": True, "readings": [1.0, 2.0]}),
    dumps({"key": "k", "timestamp": [2026], "readings": [1.0, 2.0]}),
    dumps({"key": "k", "timestamp": 10 ** 30, "readings": [1.0, 2.0]}),
    dumps({"key": "k", "timestamp": "2026-01-01", "readings": [1.0, 2.0]}),
    b'{"key": "k", "readings": [1.0, 2.0], "deep": ' + b"[" * 160 + b"]" * 160 + b"}",
    b'{"key": "k", "readings": [1.0, 2.0], "deep": ' + b"[" * 210 + b"]" * 210 + b"}",
    b'{"key": "k", "readings": [1.0, 2.0], "timestamp": ' + b"[" * 210 + b"]" * 210 + b"}",
    b'{"key": "k", "readings": [' + b"[" * 210 + b"]" * 210 + b', 2.0]}',
]


@pytest.mark.parametrize("allow_unknown", [False, True])
def test_parsing_a_poll_at_once_gives_what_parsing_each_event_gives(allow_unknown: bool) -> None:
    """The fast path decides nothing of its own: values, types, timestamps and dead-letter
    reasons are those of parse(), whatever else shares the poll."""
    parser = EventParser(("a", "b"), allow_unknown, 1500)
    record_keys = [b"rk-1", None, b"", b"x" * 300]
    kinds, events = set(), 0
    for rotation in range(len(record_keys)):
        keys = [record_keys[(i + rotation) % len(record_keys)] for i in range(len(AWKWARD_EVENTS))]
        stamps = [1_767_225_600_000 + i for i in range(len(AWKWARD_EVENTS))]
        expected = [_parse_one(parser, v, k, t) for v, k, t in zip(AWKWARD_EVENTS, keys, stamps)]
        together = [_outcome(r) for r in parser.parse_many(AWKWARD_EVENTS, keys, stamps)]
        assert together == expected
        alone = [_outcome(parser.parse_many([v], [k], [t])[0]) for v, k, t in zip(AWKWARD_EVENTS, keys, stamps)]
        assert alone == expected
        kinds |= {o[1] for o in expected if o[0] == "error"}
        events += sum(o[0] == "event" for o in expected)
    # the corpus reaches every reason, and the fast path's share
    assert kinds == {"not_json", "wrong_type", "not_finite", "out_of_range", "missing_field", "schema", "empty",
                     "oversize", "oversize_key"} | ({"unknown_channel"} if not allow_unknown else set())
    assert events >= 4 * 10


def test_parsing_a_poll_without_channels_refuses_each_event_as_parse_does() -> None:
    parser = EventParser(None, False, 1000)
    values = [dumps({"key": "k", "readings": {"a": 1.0}}), dumps({"key": "k", "readings": [1.0]})]
    results = parser.parse_many(values, [None, None], [None, None])
    assert [(r.kind, r.reason) for r in results] == [
        (e.kind, e.reason) for e in (pytest.raises(EventError, parser.parse, v, None, None).value for v in values)]


def test_events_of_the_usual_shape_are_decoded_without_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = EventParser(("a", "b"), False, 1000)
    usual = [dumps({"key": "k", "timestamp": 1_767_225_600_000, "readings": {"a": 1.0, "b": 2}}),
             dumps({"readings": [3.0, 4.0]})]
    monkeypatch.setattr(parser, "parse", lambda *a: pytest.fail("the fast path sent a usual event to parse()"))
    first, second = parser.parse_many(usual, [None, b"valve-3"], [None, 5])
    assert (first.key, first.values, first.timestamp) == ("k", [1.0, 2.0], "2026-01-01T00:00:00+00:00")
    assert (second.key, second.values, second.record_ts_ms) == ("valve-3", [3.0, 4.0], 5)


def test_a_polls_readings_become_one_matrix_in_event_order() -> None:
    parser = EventParser(("a", "b", "c"), False, 1000)
    values = [dumps({"key": "k", "readings": {"c": 3, "a": 1.5, "b": -2.0}}), dumps({"readings": [4.0, 5, 6.25]}),
              b'\xef\xbb\xbf' + dumps({"key": "k", "readings": {"a": 7.0, "b": 8.0, "c": 9.0}})]  # (parse's path)
    events = parser.parse_many(values, [None, b"valve-3", None], [None, None, None])
    matrix = readings_matrix(events)
    assert matrix.dtype == np.float64 and matrix.shape == (3, 3)
    assert matrix.tolist() == [[1.5, -2.0, 3.0], [4.0, 5.0, 6.25], [7.0, 8.0, 9.0]]
    assert readings_matrix([]).shape == (0, 0)


def test_lists_are_refused_when_the_channels_were_found_not_configured() -> None:
    """A list's order is the configured one: channels found from the first events' names (in the
    order of one of them) are no order a list producer agreed to."""
    found = EventParser(None, False, 1000)
    found.channels = ("b", "a")  # as the partition sets them once its first events decide
    assert found.parse(dumps({"key": "k", "readings": {"a": 1.0, "b": 2.0}}), None, None).values == [2.0, 1.0]
    value = dumps({"key": "k", "readings": [1.0, 2.0]})
    with pytest.raises(EventError, match="AE_EVENTS__CHANNELS") as exc:
        found.parse(value, None, None)
    assert exc.value.kind == "schema"
    (quick,) = found.parse_many([value], [None], [None])
    assert isinstance(quick, EventError) and quick.kind == "schema"


def test_a_bom_before_the_json_is_accepted() -> None:
    parser = EventParser(("a", "b"), False, 1000)
    event = parser.parse(b'\xef\xbb\xbf{"key": "k", "readings": {"a": 1.0, "b": 2.0}}', None, None)
    assert event.values == [1.0, 2.0]
    assert infer_channels([b'\xef\xbb\xbf{"key": "k", "readings": {"a": 1.0, "b": 2.0}}'], 1000) == (("a", "b"), 1)


@pytest.mark.parametrize(("ms", "iso", "kept"), [
    (None, None, None),
    (-1, None, None),  # Kafka's "no timestamp"
    (0, "1970-01-01T00:00:00+00:00", None),
    (-5, "1969-12-31T23:59:59.995000+00:00", None),
    (253_402_300_799_999, "9999-12-31T23:59:59.999000+00:00", None),
    (253_402_300_800_000, None, 253_402_300_800_000),  # year 10000
    (-62_135_596_800_001, None, -62_135_596_800_001),  # before year 1
    (2**63 - 1, None, 2**63 - 1),
])
def test_record_timestamps_of_any_value(ms: int | None, iso: str | None, kept: int | None) -> None:
    event = EventParser(("a",), False, 1000).parse(dumps({"key": "k", "readings": {"a": 1.0}}), None, ms)
    assert event.timestamp == iso and event.unreadable_record_time == kept


def test_the_first_valid_events_decide_however_many_follow() -> None:
    """Only the first schema_sample valid events vote: a poll of 2,000 events decides what a poll of
    20 does, so a restart that polls differently decides the same channels."""
    first = [dumps({"key": "k", "readings": {"a": 1.0, "b": 2.0}}) for _ in range(16)]
    later = [dumps({"key": "k", "readings": {"x": 1.0, "y": 2.0, "z": 3.0}}) for _ in range(2000)]
    assert infer_channels(first + later, 1000, limit=16) == (("a", "b"), 16)
    assert infer_channels(first + later, 1000) == (("x", "y", "z"), 2016)  # all of them, unlimited
