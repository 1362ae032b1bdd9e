"""Logs are JSON lines with a request id, and never carry a user id, a token or a secret."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable

import aiohttp
import jwt

from harness.api import ADMIN_TOKEN, Api
from harness.service_process import ServiceProcess

JWT_SECRET = "log-test-jwt-secret-0123456789abcdef-xyz"
USER = "probe-user-93f1"
OTHER_USER = "other-user-5521"
WRONG_ADMIN_TOKEN = "wrong-admin-token-xyz-123456"


async def test_logs_are_json_with_request_ids_and_hold_no_user_or_secret(
    start_service: Callable[..., ServiceProcess], http: aiohttp.ClientSession
) -> None:
    service = start_service(
        LOG_LEVEL="DEBUG", LOG_FORMAT="json", ACCESS_LOG="true", AUTH_JWT_SECRET=JWT_SECRET
    )
    api = Api(service.url, http)
    token = jwt.encode({"sub": USER, "exp": int(time.time()) + 600}, JWT_SECRET, algorithm="HS256")
    bearer = {"Authorization": f"Bearer {token}"}
    event_id = await api.open_event(10)

    traced = await api.request(
        "POST",
        f"/events/{event_id}/issue",
        {"user_id": USER},
        headers={**bearer, "X-Request-ID": "trace-me-42"},
    )
    assert traced.status == 201
    mismatch = await api.request("POST", f"/events/{event_id}/issue", {"user_id": OTHER_USER}, headers=bearer)
    assert mismatch.code == "user_mismatch"
    denied = await api.request(
        "POST",
        "/admin/events",
        {"name": "x", "quantity": 1},
        headers={"Authorization": f"Bearer {WRONG_ADMIN_TOKEN}"},
    )
    assert denied.code == "unauthorized"
    assert (await api.request("GET", f"/events/{event_id}/issues/{USER}")).status == 200
    async with http.get(
        service.url + "/health", headers={"X-Request-ID": "forged id {with} spaces"}
    ) as response:
        generated = response.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)  # an unsafe id is replaced, not echoed
    assert service.stop() == 0

    text = service.log_path.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert all({"time", "level", "logger", "pid", "message"} <= line.keys() for line in lines)
    access = [line for line in lines if line["logger"] == "coupon.access"]
    assert {
        "method": "POST",
        "route": "issue",
        "status": 201,
        "request_id": "trace-me-42",
    }.items() <= next(line for line in access if line.get("request_id") == "trace-me-42").items()
    assert any(line.get("request_id") == generated for line in access)
    assert len({line["request_id"] for line in access}) == len(access)
    for secret in (USER, OTHER_USER, token, JWT_SECRET, ADMIN_TOKEN, WRONG_ADMIN_TOKEN, "forged"):
        assert secret not in text, f"{secret!r} reached the log"
