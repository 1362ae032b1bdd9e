from __future__ import annotations

from types import SimpleNamespace

import orjson
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from sanic.exceptions import MethodNotAllowed, NotFound, PayloadTooLarge

from service import errors
from service.http import handle
from service.keys import event_keys, expire_at_ms


def test_an_events_keys_share_one_hash_tag() -> None:
    keys = event_keys(42)
    assert keys.meta == "ev:{42}:meta" and keys.seq == "ev:{42}:seq" and keys.users == "ev:{42}:users"
    assert all("{42}" in key for key in keys)
    assert event_keys(4).meta != event_keys(42).meta


def test_keys_expire_past_the_end_or_long_after_now_when_open_ended() -> None:
    assert expire_at_ms(ends_at_us=10_000_000, now_us=0, grace_s=5, open_ended_s=100) == 15_000
    assert expire_at_ms(ends_at_us=0, now_us=2_000_000, grace_s=5, open_ended_s=100) == 102_000


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (errors.InvalidRequest(), 400, "invalid_request"),
        (errors.Unauthorized(), 401, "unauthorized"),
        (errors.NotStarted(), 403, "not_started"),
        (errors.Ended(), 403, "ended"),
        (errors.Closed(), 403, "closed"),
        (errors.EventNotFound(), 404, "event_not_found"),
        (errors.AlreadyIssued(), 409, "already_issued"),
        (errors.SoldOut(), 410, "sold_out"),
        (errors.Unavailable(), 503, "unavailable"),
        (NotFound("x"), 404, "not_found"),
        (MethodNotAllowed("x", "GET", ["POST"]), 405, "method_not_allowed"),
        (PayloadTooLarge("x"), 413, "payload_too_large"),
        (RedisConnectionError("down"), 503, "unavailable"),
        (RuntimeError("bug"), 500, "internal"),
    ],
)
def test_every_error_becomes_one_json_shape(exc: Exception, status: int, code: str) -> None:
    class FakeRequest:
        method, path, route, headers = "POST", "/x", None, {}
        ctx = SimpleNamespace()

    response = handle(FakeRequest(), exc)  # type: ignore[arg-type]
    assert response.status == status
    body = orjson.loads(response.body)
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"]
