"""ops/bluegreen/switch.sh natively: a no-op when nothing changes, a refusal when the new colour
is not ready, a rollback when it fails right after the switch. Blue is the shared test service."""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from harness.api import Api
from loadtest.blue_green import Stack

pytestmark = pytest.mark.slow

FLAKY = Path(__file__).with_name("flaky_colour.py")


def stopped(stack: Stack, colour: str) -> bool:
    """The colour the switch started was stopped: its pidfile is gone and nothing listens."""
    try:
        socket.create_connection(
            ("127.0.0.1", stack.green_port if colour == "green" else stack.blue_port), 1
        ).close()
    except ConnectionRefusedError:
        return not (stack.prefix / "run" / f"{colour}.pid").exists()
    return False


async def colour_through_nginx(http: aiohttp.ClientSession, stack: Stack) -> tuple[int, str | None]:
    async with http.get(stack.nginx_url + "/ready") as response:
        return response.status, response.headers.get("X-Coupon-Colour")


async def test_switching_to_the_active_ready_colour_is_a_no_op(
    nginx_stack: Callable[..., Stack], http: aiohttp.ClientSession
) -> None:
    stack = nginx_stack()
    done = stack.switch("blue")
    assert done.returncode == 0, done.stderr
    assert "nothing to do" in done.stdout
    assert not (stack.prefix / "run" / "blue.pid").exists()
    assert await colour_through_nginx(http, stack) == (200, "blue")


async def test_a_colour_that_never_gets_ready_is_refused_and_traffic_stays(
    nginx_stack: Callable[..., Stack], api: Api, http: aiohttp.ClientSession
) -> None:
    stack = nginx_stack()
    done = stack.switch("green", START_COMMAND="sleep 60")

    assert done.returncode == 1
    assert "refused: green is not ready after 5s; traffic stays on blue" in done.stderr
    assert not (stack.prefix / "conf" / "upstream" / "active-green").exists()
    assert await colour_through_nginx(http, stack) == (200, "blue")
    # The refused colour was stopped, so the next attempt starts it afresh.
    assert stopped(stack, "green")
    event_id = await api.open_event(5)
    reply = await Api(stack.nginx_url, http).issue(event_id, "after-refusal")
    assert reply.status == 201


async def test_a_colour_that_fails_right_after_the_switch_is_rolled_back(
    nginx_stack: Callable[..., Stack], http: aiohttp.ClientSession
) -> None:
    stack = nginx_stack()
    done = stack.switch("green", START_COMMAND=f"{sys.executable} {FLAKY}")

    assert done.returncode == 1
    assert "pointing nginx at green" in done.stdout
    assert "rolled back to blue: green failed /ready through nginx after the switch" in done.stderr
    assert not (stack.prefix / "conf" / "upstream" / "active-green").exists()
    assert await colour_through_nginx(http, stack) == (200, "blue")
    assert stopped(stack, "green")


async def test_a_switch_nginx_refuses_to_test_changes_nothing(
    nginx_stack: Callable[..., Stack], http: aiohttp.ClientSession
) -> None:
    stack = nginx_stack()
    (stack.prefix / "conf" / "mode" / "upstreams.conf").write_text("upstream coupon_blue { broken }\n")
    done = stack.switch("green", START_COMMAND=f"{sys.executable} {FLAKY}", READY_OK="100")

    assert done.returncode == 1
    assert "refused: nginx -t fails; traffic stays on blue" in done.stderr
    assert not (stack.prefix / "conf" / "upstream" / "active-green").exists()
    assert await colour_through_nginx(http, stack) == (200, "blue")
    assert stopped(stack, "green")
