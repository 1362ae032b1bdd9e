"""Every status code of the public and admin API, against the running service."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
from redis.asyncio import Redis

from harness.api import Api
from harness.invariants import keyspace, wait_stored
from harness.service_process import ServiceProcess


def _at(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


async def test_issue_answers_201_with_the_ordinal_and_time(api: Api) -> None:
    event_id = await api.open_event(5)
    reply = await api.issue(event_id, 42)
    assert reply.status == 201
    assert reply.body["event_id"] == event_id
    assert reply.body["user_id"] == "42"
    assert reply.body["ordinal"] == 1
    assert datetime.fromisoformat(reply.body["issued_at"].replace("Z", "+00:00")) <= datetime.now(UTC)


async def test_a_user_gets_one_coupon_and_integer_and_text_ids_are_the_same_user(api: Api) -> None:
    event_id = await api.open_event(5)
    assert (await api.issue(event_id, 7)).status == 201
    again = await api.issue(event_id, "7")
    assert (again.status, again.code) == (409, "already_issued")


async def test_sold_out_answers_410_and_duplicates_still_409(api: Api) -> None:
    event_id = await api.open_event(2)
    assert (await api.issue(event_id, "a")).status == 201
    assert (await api.issue(event_id, "b")).status == 201
    sold = await api.issue(event_id, "c")
    assert (sold.status, sold.code) == (410, "sold_out")
    event = await api.request("GET", f"/events/{event_id}")
    assert event.body["remaining"] == 0 and event.body["status"] == "sold_out"


async def test_unknown_event_answers_404(api: Api) -> None:
    for path_id in ("999999999", "0", "-1", "abc", "99999999999999999999", "9223372036854775808"):
        reply = await api.request("POST", f"/events/{path_id}/issue", {"user_id": 1})
        assert (reply.status, reply.code) == (404, "event_not_found"), path_id


async def test_created_but_not_opened_event_answers_403_not_started(api: Api) -> None:
    event_id = await api.create(5)
    reply = await api.issue(event_id, 1)
    assert (reply.status, reply.code) == (403, "not_started")


async def test_window_before_start_and_after_end(api: Api, pg: asyncpg.Pool) -> None:
    later = await api.open_event(5, starts_at=_at(3600))
    reply = await api.issue(later, 1)
    assert (reply.status, reply.code) == (403, "not_started")

    short = await api.open_event(5, ends_at=_at(1.0))
    assert (await api.issue(short, 1)).status == 201
    await asyncio.sleep(1.2)
    reply = await api.issue(short, 2)
    assert (reply.status, reply.code) == (403, "ended")
    assert (await api.request("GET", f"/events/{short}")).body["status"] == "ended"
    assert await pg.fetchval("SELECT count(*) FROM coupon_issues WHERE event_id = $1", later) == 0


async def test_bad_requests_answer_400_and_change_nothing(api: Api, pg: asyncpg.Pool, redis: Redis) -> None:
    event_id = await api.open_event(5)
    bodies: list[bytes] = [
        b"",
        b"not json",
        b"[1, 2]",
        b'{"user_id": null}',
        b'{"user_id": 0}',
        b'{"user_id": -5}',
        b'{"user_id": true}',
        b'{"user_id": 1.5}',
        b'{"user_id": ""}',
        b'{"user_id": "has space"}',
        b'{"user_id": "nul\\u0000"}',
        b'{"user_id": "\xc3\xa9t\xc3\xa9"}',
        b'{"user_id": "' + b"x" * 65 + b'"}',
        b'{"user_id": ["a"]}',
        b'{"user_id": {"a": 1}}',
        b'{"other": 1}',
        b'{"user_id": 123456789012345678901234567890}',
    ]
    for body in bodies:
        reply = await api.request("POST", f"/events/{event_id}/issue", raw=body)
        assert (reply.status, reply.code) == (400, "invalid_request"), body
    keys = (await keyspace(pg)).event(event_id)
    assert await redis.get(keys.seq) == "0"
    assert not await redis.exists(keys.users)
    assert await pg.fetchval("SELECT count(*) FROM coupon_issues WHERE event_id = $1", event_id) == 0


async def test_oversize_body_answers_413(api: Api) -> None:
    event_id = await api.open_event(5)
    reply = await api.request(
        "POST", f"/events/{event_id}/issue", raw=b'{"user_id": "' + b"a" * 100_000 + b'"}'
    )
    assert (reply.status, reply.code) == (413, "payload_too_large")


async def test_unknown_routes_and_methods(api: Api) -> None:
    reply = await api.request("GET", "/nowhere")
    assert (reply.status, reply.code) == (404, "not_found")
    reply = await api.request("DELETE", "/events/1/issue")
    assert (reply.status, reply.code) == (405, "method_not_allowed")


async def test_admin_routes_need_the_token(api: Api) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}):
        reply = await api.request("POST", "/admin/events", {"name": "x", "quantity": 1}, headers=headers)
        assert (reply.status, reply.code) == (401, "unauthorized"), headers
    reply = await api.request("GET", "/admin/events/1")
    assert reply.status == 401


async def test_absurd_events_are_refused(api: Api) -> None:
    for fields in (
        {"quantity": 0},
        {"quantity": -1},
        {"quantity": 10**12},
        {"quantity": "10"},
        {"quantity": 10, "starts_at": _at(100), "ends_at": _at(50)},
        {"quantity": 10, "ends_at": _at(-60)},
        {"quantity": 10, "starts_at": "yesterday"},
        {"quantity": 10, "starts_at": "2030-01-01T00:00:00"},
        {"quantity": 10, "surprise": True},
        {"quantity": 10, "coupon": "text"},
    ):
        reply = await api.request("POST", "/admin/events", {"name": "absurd", **fields}, admin=True)
        assert (reply.status, reply.code) == (400, "invalid_request"), fields
    reply = await api.request("POST", "/admin/events", {"quantity": 10}, admin=True)
    assert reply.status == 400


async def test_event_and_issue_reads(api: Api, pg: asyncpg.Pool, redis: Redis) -> None:
    event_id = await api.open_event(3, coupon={"name": "10% off", "discount_percent": 10})
    event = await api.request("GET", f"/events/{event_id}")
    assert event.status == 200
    assert event.body["status"] == "open" and event.body["remaining"] == 3 and event.body["quantity"] == 3
    assert event.body["coupon"]["discount_percent"] == 10
    issued = await api.issue(event_id, "reader")
    mine = await api.request("GET", f"/events/{event_id}/issues/reader")
    assert mine.status == 200 and mine.body["ordinal"] == issued.body["ordinal"]
    nobody = await api.request("GET", f"/events/{event_id}/issues/nobody")
    assert (nobody.status, nobody.code) == (404, "issue_not_found")
    missing = await api.request("GET", "/events/987654321/issues/reader")
    assert (missing.status, missing.code) == (404, "event_not_found")
    # Once closed, the answer comes from PostgreSQL.
    await wait_stored(pg, redis, event_id)
    assert (await api.close(event_id)).status == 200
    mine = await api.request("GET", f"/events/{event_id}/issues/reader")
    assert mine.status == 200 and mine.body["issued_at"] == issued.body["issued_at"]


async def test_admin_report_counts_redis_and_postgres(api: Api, pg: asyncpg.Pool, redis: Redis) -> None:
    event_id = await api.open_event(10)
    for user in range(4):
        await api.issue(event_id, user + 1)
    await wait_stored(pg, redis, event_id)
    report = (await api.stats(event_id)).body
    assert report["issued_redis"] == 4 and report["rows_stored"] == 4
    assert report["remaining"] == 6 and report["drift"] == 0 and report["redis_status"] == "open"


async def test_health_and_ready(api: Api) -> None:
    assert (await api.request("GET", "/health")).status == 200
    ready = await api.request("GET", "/ready")
    assert ready.status == 200 and ready.body["checks"] == {
        "redis": True,
        "scripts": True,
        "verified": True,
        "noeviction": True,
        "postgres": True,
    }


async def test_event_whose_redis_state_is_lost_answers_503_then_is_rebuilt_unasked(
    api: Api, pg: asyncpg.Pool, redis: Redis
) -> None:
    event_id = await api.open_event(5)
    assert (await api.issue(event_id, 1)).status == 201
    await wait_stored(pg, redis, event_id)
    keys = (await keyspace(pg)).event(event_id)
    await redis.delete(keys.meta, keys.seq, keys.users)
    # Never "unknown event", never "full stock": 503 while it is rebuilt from PostgreSQL.
    reply = await api.issue(event_id, 2)
    assert (reply.status, reply.code) == (503, "unavailable")
    deadline = time.monotonic() + 10
    while (reply := await api.issue(event_id, 2)).status == 503:
        assert time.monotonic() < deadline, "the event was not rebuilt"
        await asyncio.sleep(0.05)
    assert (reply.status, reply.body["ordinal"]) == (201, 2)
    assert (await api.issue(event_id, 1)).code == "already_issued"
    assert (await api.request("GET", f"/events/{event_id}")).body["remaining"] == 3


async def test_with_user_authentication_the_token_says_who_asks(
    start_service: Callable[..., ServiceProcess], http: aiohttp.ClientSession
) -> None:
    import jwt

    secret = "test-jwt-secret-of-at-least-32-chars"
    api = Api(start_service(AUTH_JWT_SECRET=secret, WORKERS="1").url, http)
    event_id = await api.open_event(5)

    def bearer(sub: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {jwt.encode({'sub': sub}, secret, algorithm='HS256')}"}

    path = f"/events/{event_id}/issue"
    reply = await api.request("POST", path, {}, headers=bearer("alice"))
    assert reply.status == 201 and reply.body["user_id"] == "alice"
    reply = await api.request("POST", path, {"user_id": "bob"}, headers=bearer("carol"))
    assert (reply.status, reply.code) == (403, "user_mismatch")
    reply = await api.request("POST", path, {"user_id": "dave"})
    assert (reply.status, reply.code) == (401, "unauthorized")
    reply = await api.request("POST", path, {"user_id": "alice"}, headers=bearer("alice"))
    assert (reply.status, reply.code) == (409, "already_issued")
    assert (await api.stats(event_id)).body["issued_redis"] == 1
