"""/metrics sums every worker's counters, and they equal what was served."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable

import aiohttp
import asyncpg
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from harness.api import Api, burst
from harness.invariants import wait_stored
from harness.service_process import ServiceProcess
from service.metrics.tally import Tally


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_counters_summed_over_workers_equal_the_answers_served(
    start_service: Callable[..., ServiceProcess], http: aiohttp.ClientSession, pg: asyncpg.Pool, redis: Redis
) -> None:
    # Its own metrics directory: every counter starts at 0. No sold-out flags: every request
    # is then decided in Redis, whatever the timing (a flag answers 410 without a decision).
    service = start_service(SOLD_OUT_CACHE_MS="0")
    assert len(service.worker_pids()) == 2
    api = Api(service.url, http)
    quantity = 300
    event_id = await api.open_event(quantity)
    users = [f"m{n}" for n in range(500)]
    users += random.Random(3).sample(users, 100)  # repeats: 409 or 410
    replies = await burst(api, event_id, users)
    replies += [await api.request("POST", f"/events/{event_id}/issue", raw=b"{not json") for _ in range(5)]
    replies += [await api.issue(987_654_321, "m1") for _ in range(3)]  # no such event
    statuses = Counter(reply.status for reply in replies)
    assert statuses[201] == quantity and statuses[400] == 5 and statuses[404] == 3, statuses
    await wait_stored(pg, redis, event_id)

    # Each worker writes its hot-path samples every Tally.FLUSH_S: scrape until the last
    # answer is in (bounded), then every figure must match exactly.
    deadline = time.monotonic() + 10 * Tally.FLUSH_S
    while True:
        async with http.get(service.url + "/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            samples = _samples(await response.text())
        counted = samples.get(("coupon_issue_duration_seconds_count", ()), 0.0)
        buffered = samples.get(("coupon_buffer_rows", ()), 0.0)
        if (counted >= len(replies) and buffered == 0) or time.monotonic() > deadline:
            break
        await asyncio.sleep(Tally.FLUSH_S / 2)

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    outcomes = {
        "issued": statuses[201],
        "already_issued": statuses[409],
        "sold_out": statuses[410],
        "not_open": statuses[404],
        "invalid": statuses[400],
        "unavailable": 0,
        "error": 0,
    }
    for outcome, served in outcomes.items():
        assert value("coupon_issue_requests_total", outcome=outcome) == served, outcome
    for status, served in statuses.items():
        assert value("coupon_http_requests_total", route="issue", status=str(status)) == served, status
    assert value("coupon_issue_duration_seconds_count") == len(replies)
    assert value("coupon_rows_written_total") == quantity
    assert value("coupon_buffer_rows") == 0
    # Every well-formed request was decided once (the unknown event too: Redis says "missing").
    assert value("coupon_redis_decide_batch_size_sum") == len(users) + 3
    event = str(event_id)
    assert value("coupon_event_quantity", event=event) == quantity
    assert value("coupon_event_issued", event=event) == quantity
    assert value("coupon_event_remaining", event=event) == 0
    assert value("coupon_event_stored_rows", event=event) == quantity
    assert value("coupon_lifecycle_operations_total", operation="open", result="ok") == 1
    # One series per live worker, labelled by pid, no user id anywhere in a label.
    pids = {dict(labels)["pid"] for name, labels in samples if name == "coupon_worker_resident_memory_bytes"}
    assert pids == {str(pid) for pid in service.worker_pids()}
    label_values = {value for _, labels in samples for _, value in labels}
    assert not any(user in label_values for user in users)
