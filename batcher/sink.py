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
from typing import NamedTuple

import asyncpg

from .records import IssueRecord

# Any failure of a PostgreSQL call: the server refused or failed it, the connection broke, or
# the call's bound ran out. The writer retries on these; service/failures.py names them too.
POSTGRES_FAILURES: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)

logger = logging.getLogger(__name__)

STAGING_DDL = """
CREATE TEMPORARY TABLE IF NOT EXISTS issue_staging (
    event_id bigint NOT NULL,
    user_id text NOT NULL,
    ordinal bigint NOT NULL,
    issued_at_us bigint NOT NULL
) ON COMMIT DELETE ROWS
"""

# The last line of I1: a row goes in only if its ordinal is within its event's quantity.
_INSERT = """
INSERT INTO coupon_issues (event_id, user_id, ordinal, issued_at)
SELECT s.event_id, s.user_id, s.ordinal, timestamptz 'epoch' + s.issued_at_us * interval '1 microsecond'
FROM issue_staging s JOIN events e ON e.id = s.event_id
WHERE s.ordinal <= e.quantity
"""
_INSERT_SKIPPING_STORED = _INSERT + "ON CONFLICT DO NOTHING"

# Rows the INSERT left out that are not stored exactly as staged: above the quantity, for
# an unknown event, or a different issue holds the same user or ordinal (Redis and
# PostgreSQL disagree). Each is kept in refused_issues and reported, never dropped silently.
_REFUSE = """
WITH refused AS (
    SELECT s.event_id, s.user_id, s.ordinal, s.issued_at_us,
           CASE WHEN e.id IS NULL THEN 'unknown_event'
                WHEN s.ordinal > e.quantity THEN 'over_quantity'
                ELSE 'conflict' END AS reason
    FROM issue_staging s
    LEFT JOIN events e ON e.id = s.event_id
    LEFT JOIN coupon_issues c
      ON c.event_id = s.event_id AND c.user_id = s.user_id AND c.ordinal = s.ordinal
    WHERE c.event_id IS NULL
), kept AS (
    INSERT INTO refused_issues (event_id, user_id, ordinal, issued_at, reason)
    SELECT event_id, user_id, ordinal, timestamptz 'epoch' + issued_at_us * interval '1 microsecond', reason
    FROM refused
    ON CONFLICT DO NOTHING
)
SELECT event_id, reason, count(*) AS n, min(ordinal) AS first_ordinal FROM refused GROUP BY event_id, reason
"""


class Refusal(NamedTuple):
    event_id: int
    reason: str  # over_quantity, unknown_event or conflict
    rows: int


class Written(NamedTuple):
    inserted: int  # rows new to coupon_issues (a replayed row is not new)
    refused: tuple[Refusal, ...] = ()


async def prepare_connection(conn: asyncpg.Connection) -> None:
    """Create the session's staging table: once per connection (a pool's ``init``)."""
    await conn.execute(STAGING_DDL)


async def write(conn: asyncpg.Connection, records: Sequence[IssueRecord]) -> Written:
    """Store the records in one transaction; says how many rows were new and what was refused.

    The connection must have been through :func:`prepare_connection`.
    """
    if not records:
        return Written(0)
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
        refused: list[Refusal] = []
        if inserted < len(records):
            for row in await conn.fetch(_REFUSE):
                logger.error(
                    "refused to store %d issues of event %s (%s, first ordinal %s); kept in refused_issues",
                    row["n"],
                    row["event_id"],
                    row["reason"],
                    row["first_ordinal"],
                )
                refused.append(Refusal(row["event_id"], row["reason"], row["n"]))
    return Written(inserted, tuple(refused))
