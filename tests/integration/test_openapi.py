"""The OpenAPI document is served, and schemathesis finds no 5xx and no contract breach."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import asyncpg
from redis.asyncio import Redis

from harness.api import ADMIN_TOKEN, Api
from harness.service_process import ServiceProcess
from service.schema import create_database, migrate

HERE = Path(__file__).resolve().parent


async def test_the_contract_is_served(api: Api) -> None:
    reply = await api.request("GET", "/openapi.json")
    assert reply.status == 200 and reply.body["openapi"].startswith("3.0")
    assert "/events/{event_id}/issue" in reply.body["paths"]


def test_schemathesis_finds_no_server_error_and_no_contract_breach(
    start_service: Callable[..., ServiceProcess], database_url: str, redis_url: str
) -> None:
    # Its own database and Redis db: every event in them is one schemathesis made, so a 5xx
    # can only be a defect (the shared test database holds events whose Redis state a test
    # deleted on purpose, which rightly answer 503).
    own_database = database_url.rsplit("/", 1)[0] + "/coupons_schemathesis"
    own_redis = redis_url.rsplit("/", 1)[0] + "/14"

    async def fresh() -> None:
        admin = await asyncpg.connect(database_url.rsplit("/", 1)[0] + "/postgres")
        await admin.execute('DROP DATABASE IF EXISTS "coupons_schemathesis" WITH (FORCE)')
        await admin.close()
        await create_database(own_database)
        await migrate(own_database)
        client = Redis.from_url(own_redis)
        await client.flushdb()
        await client.aclose()

    asyncio.run(fresh())
    service = start_service(DATABASE_URL=own_database, REDIS_URL=own_redis)
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "--config-file",
            str(HERE.parent / "schemathesis.toml"),
            "run",
            f"{service.url}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            "40",
            "--header",
            f"Authorization: Bearer {ADMIN_TOKEN}",
            "--generation-deterministic",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
