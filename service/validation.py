"""Checks on everything a client sends; a failure raises before anything is touched (I6)."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from .errors import EventNotFound, InvalidRequest
from .events import EVENT_STATUSES, EventSpec

MAX_INT64 = 2**63 - 1
MAX_EVENT_ID = MAX_INT64
MAX_QUANTITY = 1_000_000_000
MAX_NAME_CHARS = 200
MAX_COUPON_BYTES = 4096
_USER_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_EVENT_ID = re.compile(r"[1-9][0-9]{0,18}")
LIST_LIMIT_DEFAULT = 50
LIST_LIMIT_MAX = 200
_CURSOR_PREFIX = "before:"
_CURSOR = re.compile(r"[A-Za-z0-9_-]{2,40}")
# Timestamps beyond this are absurd for a sale and would overflow µs arithmetic in Lua.
_LATEST = datetime(2200, 1, 1, tzinfo=UTC)


def event_id(raw: str) -> int:
    """A path's event id: a positive 64-bit integer, else no such event can exist."""
    if not _EVENT_ID.fullmatch(raw):
        raise EventNotFound()
    value = int(raw)
    if value > MAX_EVENT_ID:
        raise EventNotFound()
    return value


def user_id(value: object) -> str:
    """A user id as stored: a positive integer's decimal text, or a 1-64 char token."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 < value <= MAX_INT64:
            raise InvalidRequest("an integer user_id must be from 1 to 2^63-1")
        return str(value)
    if isinstance(value, str) and _USER_ID.fullmatch(value):
        return value
    raise InvalidRequest("user_id must be a positive integer or 1-64 characters of [A-Za-z0-9._:-]")


def user_id_path(raw: str) -> str:
    if not _USER_ID.fullmatch(raw):
        raise InvalidRequest("user_id must be 1-64 characters of [A-Za-z0-9._:-]")
    return raw


def json_object(body: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest("the body is not valid JSON") from None
    if not isinstance(value, dict):
        raise InvalidRequest("the body must be a JSON object")
    return value


def issue_body(body: bytes) -> str:
    return user_id(json_object(body).get("user_id"))


def issue_body_optional(body: bytes) -> str | None:
    """With user authentication on, the body may leave user_id out (the token says who)."""
    data = json_object(body) if body else {}
    return None if "user_id" not in data else user_id(data["user_id"])


def event_spec(body: bytes, now: datetime) -> EventSpec:
    data = json_object(body)
    unknown = set(data) - {"name", "quantity", "starts_at", "ends_at", "coupon"}
    if unknown:
        raise InvalidRequest(f"unknown fields: {', '.join(sorted(unknown))}")
    name = data.get("name")
    if not isinstance(name, str) or not 1 <= len(name.strip()) <= MAX_NAME_CHARS:
        raise InvalidRequest(f"name must be a string of 1-{MAX_NAME_CHARS} characters")
    if "\x00" in name:
        raise InvalidRequest("name must not contain NUL")
    quantity = data.get("quantity")
    if not isinstance(quantity, int) or isinstance(quantity, bool) or not 1 <= quantity <= MAX_QUANTITY:
        raise InvalidRequest(f"quantity must be an integer from 1 to {MAX_QUANTITY}")
    starts_at = _timestamp(data.get("starts_at"), "starts_at")
    ends_at = _timestamp(data.get("ends_at"), "ends_at")
    if ends_at is not None:
        if ends_at <= (starts_at or now):
            raise InvalidRequest("ends_at must be after starts_at")
        if ends_at <= now:
            raise InvalidRequest("ends_at must be in the future")
    coupon = data.get("coupon")
    if coupon is not None:
        if not isinstance(coupon, dict):
            raise InvalidRequest("coupon must be a JSON object")
        encoded = orjson.dumps(coupon)
        if len(encoded) > MAX_COUPON_BYTES or b"\\u0000" in encoded:
            raise InvalidRequest(f"coupon must be at most {MAX_COUPON_BYTES} bytes of JSON without NUL")
        coupon_name = coupon.get("name", name)
        if not isinstance(coupon_name, str) or not 1 <= len(coupon_name) <= MAX_NAME_CHARS:
            raise InvalidRequest(f"coupon.name must be a string of 1-{MAX_NAME_CHARS} characters")
    return EventSpec(name.strip(), quantity, starts_at, ends_at, coupon)


def _timestamp(value: object, field: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 40:
        raise InvalidRequest(f"{field} must be an ISO 8601 timestamp with a time zone")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(f"{field} must be an ISO 8601 timestamp with a time zone") from None
    if parsed.tzinfo is None:
        raise InvalidRequest(f"{field} must carry a time zone (for example Z or +09:00)")
    parsed = parsed.astimezone(UTC)
    if parsed >= _LATEST:
        raise InvalidRequest(f"{field} is too far in the future")
    return parsed


@dataclass(frozen=True, slots=True)
class EventListing:
    """A page of the event list: of one status or all, ids below ``before_id``, ``limit`` at most."""

    status: str | None
    before_id: int | None
    limit: int


def event_listing(query: list[tuple[str, str]]) -> EventListing:
    """``GET /admin/events``'s query: ``status``, ``limit`` and ``cursor``, each at most once."""
    seen: dict[str, str] = {}
    for name, value in query:
        if name not in ("status", "limit", "cursor"):
            raise InvalidRequest(f"unknown query parameter {name[:40]!r}; known: status, limit, cursor")
        if name in seen:
            raise InvalidRequest(f"{name} is given more than once")
        seen[name] = value
    status = seen.get("status")
    if status is not None and status not in EVENT_STATUSES:
        raise InvalidRequest(f"status must be one of {', '.join(EVENT_STATUSES)}")
    raw_limit = seen.get("limit", str(LIST_LIMIT_DEFAULT))
    if not re.fullmatch(r"[0-9]{1,4}", raw_limit) or not 1 <= int(raw_limit) <= LIST_LIMIT_MAX:
        raise InvalidRequest(f"limit must be an integer from 1 to {LIST_LIMIT_MAX}")
    cursor = seen.get("cursor")
    return EventListing(status, None if cursor is None else cursor_id(cursor), int(raw_limit))


def cursor_of(last_id: int) -> str:
    """The opaque cursor of the page after the one ending with event ``last_id``."""
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{last_id}".encode()).decode().rstrip("=")


def cursor_id(cursor: str) -> int:
    """The event id a cursor made by ``cursor_of`` stands for; anything else is refused."""
    if _CURSOR.fullmatch(cursor) and len(cursor) % 4 != 1:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("latin-1")
        raw = text.removeprefix(_CURSOR_PREFIX)
        if (
            raw != text
            and _EVENT_ID.fullmatch(raw)
            and int(raw) <= MAX_EVENT_ID
            and cursor_of(int(raw)) == cursor
        ):
            return int(raw)
    raise InvalidRequest("cursor is malformed: pass next_cursor as it was given")
