"""GET /admin/events: newest first, a status filter, cursor pages that new events do not
shift, bounded pages, and 400 for every query it does not understand."""

from __future__ import annotations

import asyncpg
import pytest

from harness.api import Api
from service.validation import cursor_of

FIELDS = {"id", "name", "status", "quantity", "remaining", "starts_at", "ends_at"}


async def listed(api: Api, query: str = "") -> dict:
    reply = await api.request("GET", f"/admin/events{query}", admin=True)
    assert reply.status == 200, reply
    return reply.body


async def test_events_are_listed_newest_first_with_the_remaining_stock_from_redis(api: Api) -> None:
    created = await api.create(10)
    opened = await api.open_event(5)
    for user in ("a", "b"):
        assert (await api.issue(opened, user)).status == 201
    closed = await api.open_event(3)
    assert (await api.close(closed)).status == 200

    page = await listed(api, "?limit=200")
    ids = [event["id"] for event in page["events"]]
    assert ids[:3] == [closed, opened, created]
    assert ids == sorted(ids, reverse=True) and len(ids) == len(set(ids))
    by_id = {event["id"]: event for event in page["events"]}
    assert all(set(event) == FIELDS for event in page["events"])
    assert by_id[opened] | {"starts_at": None} == {
        "id": opened,
        "name": "test event",
        "status": "open",
        "quantity": 5,
        "remaining": 3,
        "starts_at": None,
        "ends_at": None,
    }
    assert by_id[created]["status"] == "created" and by_id[created]["remaining"] == 10
    # Closed: Redis no longer holds it, and the list says it cannot tell.
    assert by_id[closed]["status"] == "closed" and by_id[closed]["remaining"] is None


async def test_the_status_filter_lists_only_events_of_that_status(api: Api, pg: asyncpg.Pool) -> None:
    created = await api.create(1)
    opened = await api.open_event(1)
    closed = await api.open_event(1)
    await api.close(closed)
    for status, ours, others in (
        ("created", created, {opened, closed}),
        ("open", opened, {created, closed}),
        ("closed", closed, {created, opened}),
    ):
        page = await listed(api, f"?status={status}&limit=200")
        ids = {event["id"] for event in page["events"]}
        assert ours in ids and not ids & others
        assert {event["status"] for event in page["events"]} == {status}
        stored = await pg.fetchval("SELECT count(*) FROM events WHERE status = $1", status)
        assert len(ids) == min(stored, 200)


async def test_pages_follow_each_other_while_events_are_created(api: Api) -> None:
    ours = [await api.create(1) for _ in range(7)]
    page = await listed(api, "?limit=3")
    seen = [event["id"] for event in page["events"]]
    assert seen == ours[::-1][:3]
    created_meanwhile = []
    while page["next_cursor"] is not None and min(seen) > ours[0]:
        created_meanwhile.append(await api.create(1))  # newer than any listed: never on a later page
        page = await listed(api, f"?limit=3&cursor={page['next_cursor']}")
        assert 1 <= len(page["events"]) <= 3
        seen += [event["id"] for event in page["events"]]
    assert seen == sorted(seen, reverse=True) and len(seen) == len(set(seen))
    assert [event_id for event_id in seen if event_id >= ours[0]] == ours[::-1]
    assert not set(created_meanwhile) & set(seen)
    # The newest page now starts with the events created meanwhile.
    first = await listed(api, "?limit=3")
    assert [event["id"] for event in first["events"]] == (created_meanwhile[::-1] + ours[::-1])[:3]


async def test_paging_to_the_end_lists_every_event_once_and_ends_without_a_cursor(
    api: Api, pg: asyncpg.Pool
) -> None:
    await api.create(1)
    seen: list[int] = []
    cursor = None
    while True:
        page = await listed(api, "?status=created&limit=7" + (f"&cursor={cursor}" if cursor else ""))
        seen += [event["id"] for event in page["events"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    expected = await pg.fetch("SELECT id FROM events WHERE status = 'created' ORDER BY id DESC")
    assert seen == [row["id"] for row in expected]


async def test_page_sizes_are_bounded(api: Api, pg: asyncpg.Pool) -> None:
    for _ in range(3):
        await api.create(1)
    total = await pg.fetchval("SELECT count(*) FROM events")
    assert len((await listed(api, "?limit=1"))["events"]) == 1
    assert len((await listed(api))["events"]) == min(50, total)  # the default
    assert len((await listed(api, "?limit=200"))["events"]) == min(200, total)
    assert (await listed(api, f"?limit=1&cursor={cursor_of(1)}")) == {"events": [], "next_cursor": None}


@pytest.mark.parametrize(
    "query",
    [
        "?status=sold_out",  # what a shopper sees, not a status an event is stored with
        "?status=",
        "?status=OPEN",
        "?limit=0",
        "?limit=201",
        "?limit=-1",
        "?limit=1.5",
        "?limit=abc",
        "?limit=",
        "?limit=00000000050",
        "?cursor=",
        "?cursor=abc",
        "?cursor=YmVmb3JlOjI=",  # padded: not as it was given
        "?cursor=YmVmb3JlOi0x",  # before:-1
        "?cursor=" + cursor_of(1)[:-1],
        "?cursor=%00",
        "?limit=1&limit=2",
        "?status=open&status=closed",
        "?sort=id",
        "?offset=10",
        "?page",
    ],
)
async def test_a_query_it_does_not_understand_gets_400_invalid_request(api: Api, query: str) -> None:
    reply = await api.request("GET", f"/admin/events{query}", admin=True)
    assert (reply.status, reply.code) == (400, "invalid_request"), reply


async def test_the_list_needs_the_admin_token(api: Api) -> None:
    reply = await api.request("GET", "/admin/events")
    assert (reply.status, reply.code) == (401, "unauthorized")
    reply = await api.request(
        "GET", "/admin/events", headers={"Authorization": "Bearer wrong-token-12345678"}
    )
    assert (reply.status, reply.code) == (401, "unauthorized")
