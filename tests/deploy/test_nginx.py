"""What nginx answers itself: the per-IP issue limit, refused admin and metrics, big bodies."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
import asyncpg
import pytest
from redis.asyncio import Redis

from harness.api import Api, burst
from harness.invariants import wait_stored
from loadtest.blue_green import Stack

pytestmark = pytest.mark.slow


async def test_issue_requests_past_the_per_ip_burst_get_429_json_and_issue_nothing(
    nginx_stack: Callable[..., Stack], api: Api, http: aiohttp.ClientSession, pg: asyncpg.Pool, redis: Redis
) -> None:
    stack = nginx_stack(issue_rate=1, issue_burst=5)
    event_id = await api.open_event(100)
    users = [f"limited-{event_id}-{n}" for n in range(40)]

    replies = await burst(Api(stack.nginx_url, http), event_id, users)

    statuses = [reply.status for reply in replies]
    # The burst (5) plus the one request the rate allows now; at 1 request/s one or two more
    # may pass while the 40 are sent on a busy machine.
    assert 6 <= statuses.count(201) <= 8, statuses
    assert statuses.count(201) + statuses.count(429) == len(users), statuses
    limited = [reply for reply in replies if reply.status == 429]
    assert all(reply.code == "rate_limited" for reply in limited), limited[0]
    assert isinstance(limited[0].body["error"]["message"], str)
    # I6: a refused request changes nothing; only the 201s became coupons.
    assert await wait_stored(pg, redis, event_id) == statuses.count(201)
    stored = {
        row["user_id"]
        for row in await pg.fetch("SELECT user_id FROM coupon_issues WHERE event_id = $1", event_id)
    }
    assert stored == {user for user, reply in zip(users, replies, strict=True) if reply.status == 201}


async def test_reads_are_not_limited(
    nginx_stack: Callable[..., Stack], api: Api, http: aiohttp.ClientSession
) -> None:
    stack = nginx_stack(issue_rate=1, issue_burst=1)
    event_id = await api.open_event(10)
    through = Api(stack.nginx_url, http)
    replies = [await through.request("GET", f"/events/{event_id}") for _ in range(30)]
    assert {reply.status for reply in replies} == {200}


async def test_admin_and_metrics_are_refused_from_outside_with_json(
    nginx_stack: Callable[..., Stack], api: Api, http: aiohttp.ClientSession
) -> None:
    stack = nginx_stack()
    through = Api(stack.nginx_url, http)
    event_id = await api.create(10)

    for method, path in (
        ("POST", "/admin/events"),
        ("POST", f"/admin/events/{event_id}/open"),
        ("GET", f"/admin/events/{event_id}"),
    ):
        reply = await through.request(method, path, {"name": "x", "quantity": 1}, admin=True)
        assert (reply.status, reply.code) == (403, "forbidden"), (path, reply)
    reply = await through.request("GET", "/metrics")
    assert (reply.status, reply.code) == (404, "not_found")
    # Nothing reached the service: the event is still only created.
    assert (await api.request("GET", f"/events/{event_id}")).body["status"] == "created"


async def test_a_body_over_16_kib_gets_413_json_from_nginx(
    nginx_stack: Callable[..., Stack], api: Api, http: aiohttp.ClientSession
) -> None:
    stack = nginx_stack()
    event_id = await api.open_event(10)
    reply = await Api(stack.nginx_url, http).request(
        "POST", f"/events/{event_id}/issue", raw=b'{"user_id": "' + b"a" * 20_000 + b'"}'
    )
    assert (reply.status, reply.code) == (413, "payload_too_large")
    assert (await api.stats(event_id)).body["issued_redis"] == 0


async def test_ready_through_nginx_names_the_colour(
    nginx_stack: Callable[..., Stack], http: aiohttp.ClientSession
) -> None:
    stack = nginx_stack()
    async with http.get(stack.nginx_url + "/ready") as response:
        assert response.status == 200
        assert response.headers["X-Coupon-Colour"] == "blue"
        assert response.headers["X-Request-Id"]
