"""Writes issue records to PostgreSQL, idempotently: a replayed row changes nothing.

COPY into a per-connection temporary staging table, then INSERT … SELECT. The UNIQUE
constraints on (event_id, user_id) and (event_id, ordinal) make a second write of the same
issue harmless, so every repair may simply write again. The INSERT is tried plainly first,
inside a savepoint: ON CONFLICT's speculative insertion costs about 0.5 s per 100,000 rows
(docs/performance.md), and a replayed row is rare (a repair racing a flush); when one
collides, the savepoint is rolled back and the batch goes in with ON CONFLICT DO NOTHING.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import asyncpg

from .records import IssueRecord

logger = logging.getLogger(__name__)

STAGING_DDL = """
CREATE TEMPORARY TABLE IF NOT EXISTS issue_staging (
    event_id bigint NOT NULL,
    user_id text NOT NULL,
    ordinal bigint NOT NULL,
    issued_at_us bigint NOT NULL
) ON COMMIT DELETE ROWS
"""

_INSERT = """
INSERT INTO coupon_issues (event_id, user_id, ordinal, issued_at)
SELECT event_id, user_id, ordinal, timestamptz 'epoch' + issued_at_us * interval '1 microsecond'
FROM issue_staging
"""
_INSERT_SKIPPING_STORED = _INSERT + "ON CONFLICT DO NOTHING"

# Rows the INSERT skipped that are not already stored exactly as staged: a different
# issue holds the same user or ordinal. That breaks I2/I3 upstream; it is logged loudly.
_CONFLICTS = """
SELECT s.event_id, s.ordinal FROM issue_staging s
LEFT JOIN coupon_issues c
  ON c.event_id = s.event_id AND c.user_id = s.user_id AND c.ordinal = s.ordinal
WHERE c.event_id IS NULL
"""


async def prepare_connection(conn: asyncpg.Connection) -> None:
    """Create the session's staging table: once per connection (a pool's ``init``)."""
    await conn.execute(STAGING_DDL)


async def write(conn: asyncpg.Connection, records: Sequence[IssueRecord]) -> int:
    """Store the records in one transaction; returns how many rows were new.

    The connection must have been through :func:`prepare_connection`.
    """
    if not records:
        return 0
    async with conn.transaction():
        await conn.copy_records_to_table(
            "issue_staging",
            records=records,
            columns=("event_id", "user_id", "ordinal", "issued_at_us"),
        )
        try:
            async with conn.transaction():
                status = await conn.execute(_INSERT)
        except asyncpg.UniqueViolationError:
            status = await conn.execute(_INSERT_SKIPPING_STORED)
        inserted = int(status.rsplit(" ", 1)[-1])
        if inserted < len(records):
            conflicts = await conn.fetch(_CONFLICTS)
            if conflicts:
                logger.error(
                    "%d staged issues conflict with different stored issues (first: event %s ordinal %s)",
                    len(conflicts),
                    conflicts[0]["event_id"],
                    conflicts[0]["ordinal"],
                )
    return inserted
