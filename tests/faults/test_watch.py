"""`couponctl watch` in a real terminal (tmux) against a real service: the counts rise during a
burst and end on the figures the admin API reports; a Redis outage is shown, not fatal."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from redis.asyncio import Redis

from harness.api import ADMIN_TOKEN, Api, burst
from harness.invariants import wait_stored
from harness.redis_server import RedisServer
from harness.service_process import ServiceProcess
from harness.terminal import Terminal

pytestmark = pytest.mark.slow

COUPONCTL = str(Path(sys.executable).parent / "couponctl")
_ISSUED = re.compile(r"^issued .*?(\?|[\d,]+) / ([\d,]+)", re.MULTILINE)
_STORED = re.compile(r"stored ([\d,]+)  buffered ([\d,]+)  drift (\S+)")


def issued_on(screen: str) -> int | None:
    found = _ISSUED.search(screen)
    if found is None or found.group(1) == "?":
        return None
    return int(found.group(1).replace(",", ""))


def stored_on(screen: str) -> int:
    found = _STORED.search(screen)
    assert found is not None, screen
    return int(found.group(1).replace(",", ""))


@pytest.fixture
def terminal() -> Iterator[Callable[..., Terminal]]:
    opened: list[Terminal] = []

    def open_terminal(service: ServiceProcess, *args: str) -> Terminal:
        env = {"COUPON_URL": service.url, "ADMIN_TOKEN": ADMIN_TOKEN}
        opened.append(Terminal([COUPONCTL, *args], env))
        return opened[-1]

    yield open_terminal
    for term in opened:
        term.close()


async def test_watch_shows_the_counts_rising_and_ends_on_the_admin_api_figures(
    private_redis: Callable[..., RedisServer],
    redis_of: Callable[[RedisServer], Redis],
    start_service: Callable[..., ServiceProcess],
    terminal: Callable[..., Terminal],
    http: aiohttp.ClientSession,
    pg: asyncpg.Pool,
) -> None:
    server = private_redis()
    service = start_service(REDIS_URL=server.url)
    api = Api(service.url, http)
    event_id = await api.open_event(1200)
    term = terminal(service, "watch", str(event_id), "--until-sold-out", "--interval", "0.2")
    await asyncio.to_thread(term.wait_for, lambda s: issued_on(s) == 0, 15, "the first screen")

    # Waves of 200 users, a wave every 0.4 s, past the quantity: the watch sees them arrive.
    seen: list[int] = []
    for wave in range(8):
        replies = await burst(api, event_id, [f"w{wave}-{n}" for n in range(200)])
        assert {reply.status for reply in replies} <= {201, 410}
        await asyncio.sleep(0.4)
        figure = issued_on(await asyncio.to_thread(term.screen))
        if figure is not None:
            seen.append(figure)
    rising = sorted(set(seen))
    assert seen == sorted(seen) and len(rising) >= 3 and 0 < rising[0] < 1200, seen

    # --until-sold-out: it stops by itself once every coupon is stored, on the final figures.
    final = await asyncio.to_thread(term.wait_for, lambda s: "exit=" in s, 30, "the watch ending")
    assert term.exit_status() == 0, final
    await wait_stored(pg, redis_of(server), event_id)
    report = (await api.stats(event_id)).body
    assert (report["issued_redis"], report["rows_stored"]) == (1200, 1200)
    assert issued_on(final) == report["issued_redis"] and stored_on(final) == report["rows_stored"], final
    sold_out = re.compile(r"sold out\s+\d\d:\d\d:\d\d\.\d{3} UTC, \d+\.\d{3} s after the first issue")
    assert sold_out.search(final), final
    outcomes = re.compile(r"answers/s +issued  already issued  sold out  not open  unavailable\n +[\d,]+ ")
    assert outcomes.search(final), final
    assert re.search(r"issue route +p50 \d+\.\d+ ms  p99 \d+\.\d+ ms", final), final
    assert "Traceback" not in final


async def test_watch_shows_a_redis_outage_and_recovers_and_ctrl_c_exits_cleanly(
    private_redis: Callable[..., RedisServer],
    start_service: Callable[..., ServiceProcess],
    terminal: Callable[..., Terminal],
    http: aiohttp.ClientSession,
) -> None:
    server = private_redis()
    service = start_service(REDIS_URL=server.url, REDIS_BREAKER_OPEN_MS="200")
    api = Api(service.url, http)
    event_id = await api.open_event(500)
    served = await burst(api, event_id, [f"u{n}" for n in range(40)])
    assert {reply.status for reply in served} == {201}
    term = terminal(service, "watch", str(event_id), "--interval", "0.2")
    await asyncio.to_thread(
        term.wait_for, lambda s: issued_on(s) == 40 and "Redis ready" in s, 15, "40 issued, Redis ready"
    )

    await asyncio.to_thread(server.kill)
    # One poll can hold a count read just before the kill beside a readiness check made
    # just after it; the next shows the outage whole.
    down = await asyncio.to_thread(
        term.wait_for, lambda s: "Redis DOWN" in s and issued_on(s) is None, 15, "the outage shown"
    )
    assert issued_on(down) is None and "PostgreSQL ready" in down, down
    listed = await api.request("GET", "/admin/events?limit=200", admin=True)
    assert listed.status == 200  # the list is served without Redis, its remaining unknown
    assert next(e for e in listed.body["events"] if e["id"] == event_id)["remaining"] is None
    await asyncio.sleep(1.0)
    assert term.exit_status() is None, term.screen()  # still watching

    # Back empty (no AOF): the service verifies it and rebuilds the event; the watch follows.
    await asyncio.to_thread(server.start)
    back = await asyncio.to_thread(
        term.wait_for,
        lambda s: "Redis ready" in s and issued_on(s) == 40,
        30,
        "Redis ready again with the 40 issued",
    )
    assert "SERVICE:" not in back, back

    term.send("C-c")
    ended = await asyncio.to_thread(term.wait_for, lambda s: "exit=" in s, 10, "Ctrl-C ending the watch")
    assert term.exit_status() == 0 and "Traceback" not in ended and "KeyboardInterrupt" not in ended, ended


async def test_watch_shows_the_service_down_and_follows_it_back(
    start_service: Callable[..., ServiceProcess],
    terminal: Callable[..., Terminal],
    http: aiohttp.ClientSession,
) -> None:
    service = start_service()
    api = Api(service.url, http)
    event_id = await api.open_event(10)
    term = terminal(service, "watch", str(event_id), "--interval", "0.2")
    await asyncio.to_thread(term.wait_for, lambda s: issued_on(s) == 0, 15, "the first screen")

    await asyncio.to_thread(service.stop)
    await asyncio.to_thread(
        term.wait_for, lambda s: "SERVICE: cannot reach the service" in s, 15, "the service outage shown"
    )
    await asyncio.to_thread(service.start)
    await asyncio.to_thread(
        term.wait_for, lambda s: "SERVICE:" not in s and "Redis ready" in s, 30, "the service back"
    )
    term.send("C-c")
    ended = await asyncio.to_thread(term.wait_for, lambda s: "exit=" in s, 10, "Ctrl-C ending the watch")
    assert term.exit_status() == 0 and "Traceback" not in ended, ended
