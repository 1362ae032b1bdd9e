"""`couponctl` against a real service: `create --quiet` gives the id alone, `list` prints a
table on a terminal and JSON otherwise, and every failure is one line and a non-zero exit."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.api import ADMIN_TOKEN, Api
from harness.ports import free_port
from harness.service_process import ServiceProcess

COUPONCTL = str(Path(sys.executable).parent / "couponctl")


def couponctl(url: str, *args: str, token: str = ADMIN_TOKEN) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COUPON_URL": url, "ADMIN_TOKEN": token}
    return subprocess.run([COUPONCTL, *args], env=env, capture_output=True, text=True, timeout=60)


def on_a_terminal(url: str, *args: str) -> str:
    """couponctl with its stdout on a pseudo-terminal 120 columns wide, as a person runs it."""
    controller, terminal = os.openpty()
    env = {**os.environ, "COUPON_URL": url, "ADMIN_TOKEN": ADMIN_TOKEN, "COLUMNS": "120"}
    try:
        done = subprocess.run(
            [COUPONCTL, *args], env=env, stdout=terminal, stderr=subprocess.PIPE, timeout=60
        )
        os.close(terminal)
        assert done.returncode == 0, done.stderr
        chunks = []
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the terminal's other end is closed and everything was read
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(controller)
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode())  # styles dropped


async def test_create_quiet_prints_the_id_alone_and_list_finds_it(service: ServiceProcess, api: Api) -> None:
    done = couponctl(service.url, "create", "CLI sale", "25", "--open", "--quiet")
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.strip().isdigit() and done.stdout == done.stdout.strip() + "\n"
    event_id = int(done.stdout)
    assert (await api.stats(event_id)).body["redis_status"] == "open"
    assert (await api.issue(event_id, 1)).status == 201

    # Not a terminal: JSON, as the API gives it.
    listed = couponctl(service.url, "list", "--status", "open", "--limit", "3")
    assert listed.returncode == 0, listed.stderr
    page = json.loads(listed.stdout)
    assert page["events"][0] | {"starts_at": None} == {
        "id": event_id,
        "name": "CLI sale",
        "status": "open",
        "quantity": 25,
        "remaining": 24,
        "starts_at": None,
        "ends_at": None,
    }
    assert len(page["events"]) <= 3 and all(event["status"] == "open" for event in page["events"])
    newest = couponctl(service.url, "list", "--status", "open", "--limit", "2", "--quiet")
    assert newest.stdout.splitlines() == [str(event["id"]) for event in page["events"][:2]]


async def test_list_limit_pages_past_the_largest_api_page(service: ServiceProcess, api: Api) -> None:
    for _ in range(3):
        await api.create(1)
    many = json.loads(couponctl(service.url, "list", "--limit", "250", "--json").stdout)["events"]
    total = json.loads(couponctl(service.url, "list", "--limit", "100000").stdout)["events"]
    assert len(many) == min(250, len(total)) and many == total[: len(many)]
    assert [event["id"] for event in total] == sorted((event["id"] for event in total), reverse=True)


async def test_list_on_a_terminal_is_a_table(service: ServiceProcess, api: Api) -> None:
    event_id = await api.open_event(1234, name="[bold]Big[/bold] sale")  # shown as written, not as markup
    screen = on_a_terminal(service.url, "list", "--limit", "5")
    lines = [line for line in screen.splitlines() if line.strip()]
    assert lines[0].split() == ["id", "name", "status", "quantity", "remaining", "starts", "at", "ends", "at"]
    assert lines[1].split()[:6] == [str(event_id), "[bold]Big[/bold]", "sale", "open", "1,234", "1,234"]
    assert not screen.lstrip().startswith("{")


def test_every_failure_is_one_line_and_a_non_zero_exit(service: ServiceProcess) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    for url, args, token, says in (
        (nobody, ("list",), ADMIN_TOKEN, "cannot reach the service"),
        (nobody, ("watch", "1"), ADMIN_TOKEN, "cannot reach the service"),
        (nobody, ("create", "x", "1", "--quiet"), ADMIN_TOKEN, "cannot reach the service"),
        (service.url, ("list",), "not-the-admin-token", "401 unauthorized"),
        (service.url, ("watch", "1"), "not-the-admin-token", "401 unauthorized"),
        (service.url, ("stats", "1"), "not-the-admin-token", "401 unauthorized"),
        (service.url, ("stats", str(2**62)), ADMIN_TOKEN, "404 event_not_found"),
        (service.url, ("watch", str(2**62)), ADMIN_TOKEN, "404 event_not_found"),
        (service.url, ("open", str(2**62)), ADMIN_TOKEN, "404 event_not_found"),
        (service.url, ("create", "x", "0"), ADMIN_TOKEN, "400 invalid_request"),
        (service.url, ("create", "x", "1", "--coupon", "{not json"), ADMIN_TOKEN, "--coupon is not JSON"),
        ("ftp://example", ("list",), ADMIN_TOKEN, "--url must be http"),
        (service.url, ("list",), "", "the admin token is required"),
    ):
        done = couponctl(url, *args, token=token)
        assert done.returncode != 0, (args, done)
        assert done.stdout == "", (args, done)
        assert done.stderr.count("\n") == 1 and done.stderr.startswith("couponctl: "), (args, done.stderr)
        assert says in done.stderr, (args, done.stderr)


@pytest.mark.parametrize("limit", ["0", "-3", "many"])
def test_list_refuses_a_limit_that_is_not_a_positive_integer(service: ServiceProcess, limit: str) -> None:
    done = couponctl(service.url, "list", "--limit", limit)
    assert done.returncode == 2 and "--limit" in done.stderr and done.stdout == ""
