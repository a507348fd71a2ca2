"""The input-topic event schema, without a broker."""

from __future__ import annotations

import json

import pytest

from worker.events import EventError, EventParser, infer_channels


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
