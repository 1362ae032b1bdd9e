"""The read routes under concurrency: readers of one event share Redis reads, and each still
gets their own answer."""

from __future__ import annotations

import asyncio

from harness.api import Api, burst


async def test_concurrent_readers_of_one_event_each_get_their_own_coupon_or_404(api: Api) -> None:
    event_id = await api.open_event(30)
    issued = await burst(api, event_id, [f"holder{n}" for n in range(20)])
    ordinals = {reply.body["user_id"]: reply.body["ordinal"] for reply in issued if reply.status == 201}
    assert len(ordinals) == 20

    users = [f"holder{n}" for n in range(20)] + [f"nobody{n}" for n in range(20)]
    replies = await asyncio.gather(
        *(api.request("GET", f"/events/{event_id}/issues/{user}") for user in users * 3)
    )
    for user, reply in zip(users * 3, replies, strict=True):
        if user in ordinals:
            assert reply.status == 200 and reply.body["ordinal"] == ordinals[user], (user, reply)
        else:
            assert reply.status == 404 and reply.body["error"]["code"] == "issue_not_found", (user, reply)

    pages = await asyncio.gather(*(api.request("GET", f"/events/{event_id}") for _ in range(60)))
    assert {(page.status, page.body["remaining"]) for page in pages} == {(200, 10)}
    unknown = await asyncio.gather(
        *(api.request("GET", f"/events/{event_id + 10_000}/issues/x") for _ in range(5))
    )
    assert {reply.body["error"]["code"] for reply in unknown} == {"event_not_found"}
