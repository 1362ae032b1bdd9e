"""Several service hosts: two `coupon-service` instances, 2 workers each, behind one
native nginx rendered from the shipped configuration, sharing one Redis and one PostgreSQL.

Redis decides for every host, so the counts stay exact whichever host a request lands on,
and the admin stats (Redis's counts, PostgreSQL's rows, each host's own buffer) agree on
every host once the writers have drained.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from harness.api import Api, burst, connector
from harness.invariants import assert_invariants, wait_stored
from harness.service_process import ServiceProcess
from loadtest.blue_green import Stack
from service.metrics.tally import Tally

pytestmark = pytest.mark.slow

# A flash sale in small: more users than coupons, some of them asking twice.
QUANTITY = 1000
DISTINCT_USERS = 2000
REQUESTS = 3000
# Answers an issue request may get when every host works: 201, 409 already_issued, 410 sold_out.
DECIDED = {201, 409, 410}
# What each answer is counted as in a host's coupon_issue_requests_total.
OUTCOME_OF_STATUS = {201: "issued", 409: "already_issued", 410: "sold_out"}


@dataclass
class Hosts:
    instances: list[ServiceProcess]
    stack: Stack

    @property
    def nginx_url(self) -> str:
        return self.stack.nginx_url


@pytest.fixture(scope="module")
def hosts(service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    """Two instances on their own ports and one nginx whose blue upstream lists both."""
    assert shutil.which("nginx"), "nginx is not installed: make tools installs it (apt-get install -y nginx)"
    work = Path(tmp_path_factory.mktemp("multi-host"))
    instances = [
        ServiceProcess({**service_env, "WORKERS": "2"}, work / f"host-{name}.log") for name in ("a", "b")
    ]
    stack: Stack | None = None
    try:
        for instance in instances:
            instance.start()
        servers = ",".join(f"127.0.0.1:{instance.port}" for instance in instances)
        # ops/bluegreen/native-nginx.sh renders nginx/ with both instances in the blue upstream;
        # no per-IP issue limit: every request of the burst comes from 127.0.0.1.
        stack = Stack(
            work, {**service_env, "BLUE_SERVERS": servers}, lambda message: None, blue_port=instances[0].port
        )
        stack.start_nginx()
        yield Hosts(instances, stack)
    finally:
        if stack is not None:
            stack.close()
        for instance in instances:
            instance.stop()
        for instance in instances:
            instance.stop()


def _users_with_repeats(prefix: str) -> list[str]:
    rng = random.Random(8)
    users = [f"{prefix}-{n}" for n in range(DISTINCT_USERS)]
    users += [rng.choice(users) for _ in range(REQUESTS - DISTINCT_USERS)]
    rng.shuffle(users)
    return users


async def _issue_outcomes(http: aiohttp.ClientSession, instance: ServiceProcess) -> Counter[str]:
    """The host's own count of issue answers by outcome, summed over its workers (/metrics)."""
    async with http.get(instance.url + "/metrics") as response:
        assert response.status == 200
        text = await response.text()
    outcomes: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "coupon_issue_requests_total":
                outcomes[sample.labels["outcome"]] += int(sample.value)
    return outcomes


async def _settled_stats(apis: list[Api], event_id: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """Each host's admin stats once none reports a buffered row or a drift (bounded wait)."""
    deadline = time.monotonic() + timeout_s
    while True:
        replies = [await api.stats(event_id) for api in apis]
        assert all(reply.status == 200 for reply in replies), replies
        stats = [reply.body for reply in replies]
        if all(s["rows_buffered"] == 0 and s["drift"] == 0 for s in stats) or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.1)


@pytest.mark.timeout(120)
async def test_two_hosts_behind_nginx_issue_the_exact_stock_once_per_user(
    hosts: Hosts, http: aiohttp.ClientSession, pg: asyncpg.Pool, redis: Redis
) -> None:
    direct = [Api(instance.url, http) for instance in hosts.instances]
    # nginx refuses /admin from outside (403): an operator opens the event on one host directly.
    event_id = await direct[0].open_event(QUANTITY)
    users = _users_with_repeats(f"hosts-{event_id}")
    distinct = len(set(users))
    before = [await _issue_outcomes(http, instance) for instance in hosts.instances]

    async with aiohttp.ClientSession(
        connector=connector(), timeout=aiohttp.ClientTimeout(total=60)
    ) as client:
        replies = await burst(Api(hosts.nginx_url, client), event_id, users)

    statuses = Counter(reply.status for reply in replies)
    assert set(statuses) <= DECIDED, (statuses, [r.body for r in replies if r.status not in DECIDED][:3])
    issued = min(QUANTITY, distinct)
    assert statuses[201] == issued, statuses
    winners = {reply.body["user_id"]: reply.body["ordinal"] for reply in replies if reply.status == 201}
    assert len(winners) == issued, "a user got two coupons"
    assert sorted(winners.values()) == list(range(1, issued + 1))

    # Both hosts took part, and between them they answered every request nginx passed on
    # (each worker writes its counts every Tally.FLUSH_S: wait for the last of them).
    await asyncio.sleep(3 * Tally.FLUSH_S)
    served = [
        await _issue_outcomes(http, instance) - earlier
        for instance, earlier in zip(hosts.instances, before, strict=True)
    ]
    assert all(sum(outcomes.values()) > 0 for outcomes in served), served
    assert served[0] + served[1] == Counter(
        {OUTCOME_OF_STATUS[status]: count for status, count in statuses.items()}
    ), served

    # Every 201 became exactly one row, whichever host's writer holds it.
    assert await wait_stored(pg, redis, event_id) == issued
    rows = await assert_invariants(pg, event_id, QUANTITY, redis=redis)
    assert {row["user_id"]: row["ordinal"] for row in rows} == winners

    stats = await _settled_stats(direct, event_id)
    assert stats[0] == stats[1], stats
    counts = (stats[0]["issued_redis"], stats[0]["records_redis"], stats[0]["rows_stored"])
    assert counts == (issued, issued, issued), stats[0]
    settled = (stats[0]["remaining"], stats[0]["drift"], stats[0]["rows_buffered"])
    assert settled == (QUANTITY - issued, 0, 0), stats[0]


@pytest.mark.parametrize("seller", [0, 1], ids=["sold-out-on-a", "sold-out-on-b"])
async def test_a_sell_out_on_one_host_holds_on_the_other(
    seller: int, hosts: Hosts, http: aiohttp.ClientSession, pg: asyncpg.Pool, redis: Redis
) -> None:
    quantity = 5
    selling = Api(hosts.instances[seller].url, http)
    other = Api(hosts.instances[1 - seller].url, http)
    event_id = await selling.open_event(quantity)
    buyers = [f"early-{event_id}-{n}" for n in range(quantity)]

    assert [(await selling.issue(event_id, user)).status for user in buyers] == [201] * quantity
    late = await selling.issue(event_id, f"late-{event_id}-here")
    assert (late.status, late.code) == (410, "sold_out")

    # The other host never saw this event's sell-out: its answers come from the shared Redis.
    again = await other.issue(event_id, buyers[0])
    assert (again.status, again.code) == (409, "already_issued")
    elsewhere = await other.issue(event_id, f"late-{event_id}-there")
    assert (elsewhere.status, elsewhere.code) == (410, "sold_out")
    through = [await Api(hosts.nginx_url, http).issue(event_id, f"late-{event_id}-{n}") for n in range(6)]
    assert [(reply.status, reply.code) for reply in through] == [(410, "sold_out")] * 6

    assert await wait_stored(pg, redis, event_id) == quantity
    rows = await assert_invariants(pg, event_id, quantity, redis=redis)
    assert {row["user_id"] for row in rows} == set(buyers)
    stats = await _settled_stats([selling, other], event_id)
    assert stats[0] == stats[1], stats
    settled = (stats[0]["issued_redis"], stats[0]["remaining"], stats[0]["rows_stored"])
    assert settled == (quantity, 0, quantity), stats[0]
