"""Redis state that cannot belong to an event is refused, never merged into it.

Redis decides, but PostgreSQL is the truth it is checked against. Before `open`, `sync`,
reconcile or a verification stores Redis's records or rebuilds from them, the records must
be ones this event could have made: within its quantity, each ordinal once, agreeing with
every row already stored, and none at all for an event that was never opened. Anything
else (another deployment's keys, a dropped database's, a Redis restored from elsewhere) is
refused loudly and nothing is written (I1, I2).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from .errors import ForeignState
from .metrics import counted

logger = logging.getLogger(__name__)


def refuse_foreign(
    *,
    event_id: int,
    where: str,
    event_status: str,
    quantity: int,
    redis_quantity: int | None,
    issued: int,
    records: Iterable[tuple[str, int]],
    stored: Mapping[str, int] | None = None,
) -> None:
    """Raise ForeignState if Redis's view of the event cannot be its own.

    ``issued`` is Redis's seq, ``records`` its (user, ordinal) records, ``stored`` the rows
    PostgreSQL holds (user -> ordinal), where the caller has read them.
    """
    problem = _problem(event_status, quantity, redis_quantity, issued, records, stored)
    if problem is None:
        return
    counted.foreign_state.labels(where).inc()
    logger.error("refused Redis state for event %d (%s): %s; nothing was written", event_id, where, problem)
    raise ForeignState(
        f"Redis holds state for event {event_id} that cannot be its own: {problem}. Nothing was "
        "written. Check REDIS_URL and REDIS_KEY_PREFIX; see docs/reliability.md"
    )


def _problem(
    event_status: str,
    quantity: int,
    redis_quantity: int | None,
    issued: int,
    records: Iterable[tuple[str, int]],
    stored: Mapping[str, int] | None,
) -> str | None:
    if redis_quantity is not None and redis_quantity != quantity:
        return f"its quantity there is {redis_quantity}, PostgreSQL's is {quantity}"
    if issued > quantity:
        return f"{issued} ordinals handed out for a quantity of {quantity}"
    holders: dict[int, str] = {}
    count = 0
    for user, ordinal in records:
        count += 1
        if not 1 <= ordinal <= quantity:
            return f"user {user!r} holds ordinal {ordinal}, outside 1..{quantity}"
        other = holders.setdefault(ordinal, user)
        if other != user:
            return f"ordinal {ordinal} is held by two users ({other!r}, {user!r})"
        if stored is not None:
            kept = stored.get(user)
            if kept is not None and kept != ordinal:
                return f"user {user!r} holds ordinal {ordinal} there and {kept} in PostgreSQL"
    if count > quantity:
        return f"{count} records for a quantity of {quantity}"
    if event_status == "created" and (count or issued):
        return f"the event was never opened, yet Redis holds {count} records (seq {issued})"
    if issued and not count and not stored:
        # Nobody holds any of those ordinals, here or in PostgreSQL: nothing to rebuild from.
        return f"seq {issued} with no record of any issue, in Redis or in PostgreSQL"
    if stored is not None:
        by_ordinal = {ordinal: user for user, ordinal in stored.items()}
        for ordinal, user in holders.items():
            kept_by = by_ordinal.get(ordinal)
            if kept_by is not None and kept_by != user:
                return f"ordinal {ordinal} is {user!r}'s there and {kept_by!r}'s in PostgreSQL"
    return None
