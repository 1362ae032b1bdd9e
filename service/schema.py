"""Versioned SQL migrations: service/migrations/NNNN_name.sql, applied once each, in order."""

from __future__ import annotations

import logging
import re
from importlib import resources
from urllib.parse import urlsplit, urlunsplit

import asyncpg

logger = logging.getLogger(__name__)

_MIGRATION = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")
# Any constant will do; it keeps two starting hosts from migrating at once.
_LOCK_KEY = 0x636F75706F6E


def migrations() -> list[tuple[int, str, str]]:
    folder = resources.files("service.migrations")
    found = []
    for entry in folder.iterdir():
        match = _MIGRATION.fullmatch(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


async def migrate(database_url: str) -> list[str]:
    """Apply the migrations the database lacks; returns the names applied."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        applied = []
        for version, name, sql in migrations():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                )
            logger.info("applied migration %s", name)
            applied.append(name)
        return applied
    finally:
        await conn.close()


async def create_database(database_url: str) -> bool:
    """Create the URL's database if it is missing (connecting to 'postgres' to do so)."""
    parts = urlsplit(database_url)
    name = parts.path.lstrip("/")
    if not name:
        raise ValueError("DATABASE_URL names no database")
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    conn = await asyncpg.connect(admin_url)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            return False
        # Identifiers cannot be parameters; quote it as PostgreSQL would.
        quoted = '"' + name.replace('"', '""') + '"'
        await conn.execute(f"CREATE DATABASE {quoted}")
        return True
    finally:
        await conn.close()
