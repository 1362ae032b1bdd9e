"""A small async client of the service's HTTP API, for tests and bursts."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

ADMIN_TOKEN = "test-admin-token-0123456789"


@dataclass
class Reply:
    status: int
    body: Any

    @property
    def code(self) -> str | None:
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            code = self.body["error"].get("code")
            return code if isinstance(code, str) else None
        return None


class Api:
    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.session = session

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        admin: bool = False,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        if admin:
            all_headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        data = raw if raw is not None else (None if body is None else orjson.dumps(body))
        async with self.session.request(method, self.url + path, data=data, headers=all_headers) as response:
            payload = await response.read()
            try:
                parsed = orjson.loads(payload) if payload else None
            except orjson.JSONDecodeError:
                parsed = payload
            return Reply(response.status, parsed)

    async def issue(self, event_id: int, user_id: Any) -> Reply:
        return await self.request("POST", f"/events/{event_id}/issue", {"user_id": user_id})

    async def create(self, quantity: int, **fields: Any) -> int:
        reply = await self.request(
            "POST", "/admin/events", {"name": "test event", "quantity": quantity, **fields}, admin=True
        )
        assert reply.status == 201, reply
        return int(reply.body["id"])

    async def open(self, event_id: int) -> Reply:
        return await self.request("POST", f"/admin/events/{event_id}/open", admin=True)

    async def close(self, event_id: int) -> Reply:
        return await self.request("POST", f"/admin/events/{event_id}/close", admin=True)

    async def sync(self, event_id: int) -> Reply:
        return await self.request("POST", f"/admin/events/{event_id}/sync", admin=True)

    async def stats(self, event_id: int) -> Reply:
        return await self.request("GET", f"/admin/events/{event_id}", admin=True)

    async def open_event(self, quantity: int, **fields: Any) -> int:
        event_id = await self.create(quantity, **fields)
        reply = await self.open(event_id)
        assert reply.status == 200, reply
        return event_id


async def answered(api: Api, event_id: int, user: Any, *, timeout_s: float) -> Reply:
    """The first answer to ``user``'s issue that is not 503 ``unavailable``, asked again every
    50 ms: while Redis is out, being verified, or a worker's breaker is open."""
    deadline = time.monotonic() + timeout_s
    while True:
        reply = await api.issue(event_id, user)
        if reply.status != 503:
            return reply
        assert reply.code == "unavailable", reply
        assert time.monotonic() < deadline, f"{user}: still 503 after {timeout_s} s: issuing did not resume"
        await asyncio.sleep(0.05)


async def burst(api: Api, event_id: int, users: list[Any]) -> list[Reply]:
    """Fire every request at once (open loop): all are in flight before any answer is read."""
    start = asyncio.Event()

    async def one(user: Any) -> Reply:
        await start.wait()
        try:
            return await api.issue(event_id, user)
        except aiohttp.ClientError as exc:
            return Reply(-1, repr(exc))

    tasks = [asyncio.create_task(one(user)) for user in users]
    await asyncio.sleep(0)
    start.set()
    return list(await asyncio.gather(*tasks))


def connector(limit: int = 4000) -> aiohttp.TCPConnector:
    return aiohttp.TCPConnector(limit=limit, force_close=False)
