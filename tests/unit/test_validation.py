from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from service import validation
from service.errors import EventNotFound, InvalidRequest

NOW = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "stored"),
    [(1, "1"), (2**62, str(2**62)), ("a", "a"), ("A.b_c:d-9", "A.b_c:d-9"), ("x" * 64, "x" * 64)],
)
def test_valid_user_ids(value: object, stored: str) -> None:
    assert validation.user_id(value) == stored


@pytest.mark.parametrize(
    "value", [0, -1, 2**63, True, False, 1.0, None, "", "x" * 65, "a b", "é", "a\x00", "a/b", [], {}]
)
def test_invalid_user_ids(value: object) -> None:
    with pytest.raises(InvalidRequest):
        validation.user_id(value)


@pytest.mark.parametrize(("raw", "value"), [("1", 1), ("9223372036854775807", 2**63 - 1)])
def test_event_ids(raw: str, value: int) -> None:
    assert validation.event_id(raw) == value


@pytest.mark.parametrize("raw", ["0", "01", "-1", "1.0", "abc", "9223372036854775808", "1" * 30, "\u0661"])
def test_event_ids_that_name_no_event(raw: str) -> None:
    with pytest.raises(EventNotFound):
        validation.event_id(raw)


def test_issue_body_requires_a_json_object() -> None:
    assert validation.issue_body(b'{"user_id": 5, "extra": 1}') == "5"
    for body in (b"", b"[]", b"5", b"{", b'"user_id"'):
        with pytest.raises(InvalidRequest):
            validation.issue_body(body)


def _spec(**fields: object) -> validation.EventSpec:
    import orjson

    return validation.event_spec(orjson.dumps({"name": "sale", "quantity": 10, **fields}), NOW)


def test_event_spec_defaults_and_window() -> None:
    spec = _spec()
    assert (spec.name, spec.quantity, spec.starts_at, spec.ends_at) == ("sale", 10, None, None)
    spec = _spec(starts_at="2030-01-01T09:00:00+09:00", ends_at="2030-01-02T00:00:00Z")
    assert spec.starts_at == NOW and spec.ends_at == NOW + timedelta(days=1)


@pytest.mark.parametrize(
    "fields",
    [
        {"quantity": 0},
        {"quantity": 10**10},
        {"quantity": True},
        {"name": ""},
        {"name": "x" * 201},
        {"starts_at": "2030-01-01T00:00:00"},
        {"starts_at": "2030-13-01T00:00:00Z"},
        {"starts_at": "9999-01-01T00:00:00Z"},
        {"ends_at": "2029-12-31T00:00:00Z"},
        {"starts_at": "2030-01-02T00:00:00Z", "ends_at": "2030-01-01T12:00:00Z"},
        {"coupon": []},
        {"coupon": {"blob": "x" * 5000}},
        {"coupon": {"name": 5}},
        {"unknown": 1},
    ],
)
def test_absurd_event_specs_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(InvalidRequest):
        _spec(**fields)


@pytest.mark.parametrize("event_id", [1, 9, 10, 12345, 2**63 - 1])
def test_a_cursor_stands_for_the_event_id_it_was_made_from(event_id: int) -> None:
    cursor = validation.cursor_of(event_id)
    assert validation.cursor_id(cursor) == event_id
    assert validation.event_listing([("cursor", cursor)]).before_id == event_id


def test_the_listing_defaults_to_every_status_from_the_newest_50() -> None:
    assert validation.event_listing([]) == validation.EventListing(None, None, 50)
    assert validation.event_listing([("status", "open"), ("limit", "200")]) == validation.EventListing(
        "open", None, 200
    )


@pytest.mark.parametrize(
    "query",
    [
        [("status", "sold_out")],
        [("limit", "0")],
        [("limit", "201")],
        [("limit", " 5")],
        [("limit", "٣")],  # a digit, but not an ASCII one
        [("cursor", validation.cursor_of(5) + "=")],
        [("cursor", validation.cursor_of(5).upper())],
        [("cursor", "a")],
        [("cursor", "YmVmb3JlOjA")],  # before:0
        [("cursor", "YmVmb3JlOjAx")],  # before:01, not as made
        [("cursor", "x" * 41)],
        [("limit", "1"), ("limit", "1")],
        [("Status", "open")],
    ],
)
def test_a_listing_query_it_does_not_understand_is_refused(query: list[tuple[str, str]]) -> None:
    with pytest.raises(InvalidRequest):
        validation.event_listing(query)
