"""A test database made afresh: dropped if it exists, created and migrated."""

from __future__ import annotations

import asyncpg

from service.schema import create_database, migrate


async def fresh_database(url: str) -> None:
    name = url.rsplit("/", 1)[-1]
    admin = await asyncpg.connect(url.rsplit("/", 1)[0] + "/postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
    await create_database(url)
    await migrate(url)
