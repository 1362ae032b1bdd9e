from __future__ import annotations

from types import SimpleNamespace

import asyncpg
import orjson
import pytest
from redis.exceptions import ClusterDownError as RedisClusterDownError
from redis.exceptions import ConnectionError as RedisConnectionError
from sanic.exceptions import MethodNotAllowed, NotFound, PayloadTooLarge

from service import errors
from service.http import handle
from service.keys import Keyspace, expire_at_ms, legacy_event_keys


def test_an_events_keys_share_one_hash_tag() -> None:
    keys = Keyspace("prod").event(42)
    assert keys.meta == "coupon:prod:ev:{42}:meta"
    assert keys.seq == "coupon:prod:ev:{42}:seq"
    assert keys.users == "coupon:prod:ev:{42}:users"
    assert keys.lock == "coupon:prod:ev:{42}:lock"
    assert all("{42}" in key for key in keys)
    # One hash tag per key (the first {...} decides the slot): the event id, nothing else.
    assert all(key.count("{") == key.count("}") == 1 for key in keys)
    assert Keyspace("prod").event(4).meta != keys.meta
    assert len(set(keys)) == len(keys)


def test_two_namespaces_never_share_a_key() -> None:
    first, second = Keyspace("shop-a"), Keyspace("shop-b")

    def every_key(space: Keyspace) -> set[str]:
        return {
            *space.event(42),
            *space.event(7),
            space.reconcile_lock,
            space.verified,
            space.verify_lock,
            space.writers,
        }

    assert every_key(first).isdisjoint(every_key(second))
    assert all(key.startswith("coupon:shop-a:") for key in every_key(first))
    # A namespace that is a prefix of another still never shares a key with it.
    assert every_key(Keyspace("shop")).isdisjoint(every_key(first))
    assert len(every_key(first)) == 4 * 2 + 4


@pytest.mark.parametrize(
    "namespace", ["", "a{b}", "{42}", "has space", "-leading", ".leading", "x" * 65, "a:b", "é"]
)
def test_a_bad_namespace_is_refused(namespace: str) -> None:
    with pytest.raises(ValueError):
        Keyspace(namespace)


def test_a_namespace_of_allowed_characters_is_kept() -> None:
    for namespace in ("a", "A.b_c-9", "0" + "x" * 63):
        assert Keyspace(namespace).namespace == namespace
        assert Keyspace(namespace).event(1).meta.startswith(f"coupon:{namespace}:")


def test_legacy_keys_are_the_layout_before_namespaces() -> None:
    keys = legacy_event_keys(42)
    assert tuple(keys) == ("ev:{42}:meta", "ev:{42}:seq", "ev:{42}:users", "ev:{42}:lock")
    assert legacy_event_keys(4).meta != keys.meta
    assert set(keys).isdisjoint(Keyspace("prod").event(42))


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
        (RedisClusterDownError("CLUSTERDOWN"), 503, "unavailable"),
        (asyncpg.ConnectionDoesNotExistError("gone"), 503, "unavailable"),
        (asyncpg.AdminShutdownError("shutting down"), 503, "unavailable"),
        (asyncpg.CannotConnectNowError("starting up"), 503, "unavailable"),
        (TimeoutError(), 503, "unavailable"),
        (asyncpg.UniqueViolationError("a query the service got wrong"), 500, "internal"),
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
