"""Every Redis key the service uses, built in one place.

Every key carries the deployment's namespace: one Redis database may serve several
deployments (staging beside production, several shops), and a database may be dropped and
re-created while Redis keeps its keys, so event ids alone would collide. The namespace is
created with the database (``deployment.redis_namespace``, a random id written by a
migration) unless an operator pins one with REDIS_KEY_PREFIX.

An event's keys share the hash tag ``{ID}`` so one script call touches one slot (Redis
Cluster keeps them on one shard and the script stays atomic).
"""

from __future__ import annotations

import re
from typing import NamedTuple

import asyncpg
from redis.crc import key_slot

# A namespace is part of every key: no braces (they would move the hash tag), no spaces.
NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_EVENT_CACHE_MAX = 10_000


class EventKeys(NamedTuple):
    meta: str  # hash: status, quantity, starts_at, ends_at (µs), expire_at (ms)
    seq: str  # the last ordinal handed out
    users: str  # hash: user id -> "ordinal:issued_at_us"
    lock: str  # held while a lifecycle operation (open, close, sync) runs


class Keyspace:
    """The keys of one deployment."""

    def __init__(self, namespace: str) -> None:
        if not NAMESPACE.fullmatch(namespace):
            raise ValueError(f"a Redis namespace is 1-64 of [A-Za-z0-9._-], got {namespace!r}")
        self.namespace = namespace
        prefix = f"coupon:{namespace}"
        self._prefix = prefix
        # One worker at a time reconciles (service/reconcile.py).
        self.reconcile_lock = f"{prefix}:lock:reconcile"
        # The run id of the Redis this deployment last verified against PostgreSQL, and the
        # lock one process holds while verifying a Redis it does not know (service/trust.py).
        self.verified = f"{prefix}:verified"
        self.verify_lock = f"{prefix}:lock:verify"
        # Hash: writer (host:pid) -> "accepted:stored:unix_ms", each writer's buffer
        # watermarks, so a verification can wait for every host's buffered rows.
        self.writers = f"{prefix}:writers"
        self._events: dict[int, EventKeys] = {}

    def verified_on(self, tag: str) -> tuple[str, str]:
        """A cluster primary's mark and verification lock: keys in a slot it serves (``tag``
        hashes to it), so each primary carries its own."""
        return f"{self._prefix}:verified:{{{tag}}}", f"{self._prefix}:lock:verify:{{{tag}}}"

    def event(self, event_id: int) -> EventKeys:
        keys = self._events.get(event_id)
        if keys is None:
            tag = f"{self._prefix}:ev:{{{event_id}}}"
            keys = EventKeys(f"{tag}:meta", f"{tag}:seq", f"{tag}:users", f"{tag}:lock")
            if len(self._events) >= _EVENT_CACHE_MAX:
                self._events.clear()
            self._events[event_id] = keys
        return keys

    def __repr__(self) -> str:
        return f"Keyspace({self.namespace!r})"


_TAGS: dict[int, str] = {}


def tag_for_slot(slot: int) -> str:
    """A short hash tag whose keys land in ``slot`` (found by trying "0", "1", …; cached)."""
    tag = _TAGS.get(slot)
    if tag is None:
        candidate = 0
        while key_slot(str(candidate).encode()) != slot:
            candidate += 1
        tag = _TAGS[slot] = str(candidate)
    return tag


def legacy_event_keys(event_id: int) -> EventKeys:
    """Where versions without a namespace kept an event (read only by `couponctl upgrade-keys`)."""
    tag = f"ev:{{{event_id}}}"
    return EventKeys(f"{tag}:meta", f"{tag}:seq", f"{tag}:users", f"{tag}:lock")


async def stored_namespace(conn: asyncpg.Connection | asyncpg.Pool) -> str:
    """The namespace the database was created with (migration 0004)."""
    namespace = await conn.fetchval("SELECT redis_namespace FROM deployment")
    if namespace is None:
        raise LookupError("the database has no deployment row; run `couponctl migrate`")
    return str(namespace)


def expire_at_ms(ends_at_us: int, now_us: int, grace_s: int, open_ended_s: int) -> int:
    """When an event's keys expire: past its end, or a long while from now if open-ended."""
    if ends_at_us:
        return ends_at_us // 1000 + grace_s * 1000
    return now_us // 1000 + open_ended_s * 1000
