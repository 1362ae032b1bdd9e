"""The Redis side of the service: the issue decision and the event state it rests on."""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import hiredis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError

from lua import source

from .keys import Keyspace

logger = logging.getLogger(__name__)

_MERGE_CHUNK = 5000

Client = Redis | RedisCluster


class Outcome(enum.IntEnum):
    """The issue script's codes for a user it did not issue to (lua/issue.lua)."""

    ALREADY_ISSUED = -1
    SOLD_OUT = -2
    NOT_STARTED = -3
    ENDED = -4
    CLOSED = -5
    MISSING = -6
    SYNCING = -7
    EXPIRED = -8  # Redis ran the batch after its deadline: the caller had given up
    BROKEN = -9  # the event's keys are not whole (evicted, expired or deleted in part)


@dataclass(frozen=True, slots=True)
class EventTimes:
    """The fields an event's Redis state is built from (PostgreSQL is their source)."""

    quantity: int
    starts_at_us: int
    ends_at_us: int  # 0: open-ended
    expire_at_ms: int

    def args(self) -> list[int]:
        return [self.quantity, self.starts_at_us, self.ends_at_us, self.expire_at_ms]


@dataclass(frozen=True, slots=True)
class RedisEventState:
    status: str | None
    quantity: int | None
    starts_at_us: int | None
    ends_at_us: int | None
    issued: int
    records: int


class NotReplicated(RedisError):
    """Redis decided the batch, but fewer replicas than asked confirmed it in time.

    Its users are answered 503; the decisions stay on the primary, where reconcile finds
    and stores them if it survives, and go with it if it does not: no 201 rests on them.
    """

    def __init__(self, acknowledged: int, wanted: int, reply: list[int]) -> None:
        super().__init__(f"{acknowledged} of {wanted} replicas confirmed the batch")
        self.reply = reply


def connect_cluster(
    seeds: Sequence[tuple[str, int]],
    *,
    max_connections: int,
    timeout_s: float,
    on_connect: Callable[[AbstractConnection], Awaitable[None]] | None = None,
    retries: int = 0,
) -> RedisCluster:
    """A Redis Cluster client: each event's keys share a hash tag, so each decision goes
    to the one primary serving the event's slot. ``on_connect`` replaces the handshake of
    every connection to every node (service/trust.py)."""
    cluster = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in seeds],
        # Per node. The pool does not wait for a free connection: the coalescer bounds the
        # issue path's calls, EventStore bounds the rest.
        max_connections=max_connections,
        # No retries, as for one Redis: MOVED and ASK are still followed (nothing ran), a
        # failed node costs a 503 and a refresh of the slot map before the next command.
        retry=Retry(NoBackoff(), retries),
        # Shards whose primary is up keep serving while another shard fails over.
        require_full_coverage=False,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        decode_responses=True,
    )
    if on_connect is not None:
        # RedisCluster takes no connect hook of its own: it goes into the connection
        # settings every node is made with, before any node has connected.
        manager = cluster.nodes_manager
        for kwargs in (cluster.connection_kwargs, manager.connection_kwargs):
            kwargs["redis_connect_func"] = on_connect
        for node in (*manager.startup_nodes.values(), *manager.nodes_cache.values()):
            node.connection_kwargs["redis_connect_func"] = on_connect
    return cluster


def connect(
    url: str,
    *,
    max_connections: int,
    timeout_s: float,
    on_connect: Callable[[AbstractConnection], Awaitable[None]] | None = None,
    retries: int = 0,
) -> Redis:
    """One Redis; ``on_connect`` replaces redis-py's handshake on every new connection
    (service/trust.py admits a connection only to a verified Redis). ``retries``: only for
    clients whose every command may run twice (the verification's), never the issue path."""
    # A blocking pool waits for a free connection instead of raising "Too many connections"
    # when thousands of requests are in flight; the wait and every command are bounded (I5).
    pool = BlockingConnectionPool.from_url(
        url,
        # No retries: a retried decision whose first attempt did run would answer its
        # users 409, and a down Redis must cost a fast 503 (I5), not attempts and backoff.
        retry=Retry(NoBackoff(), retries),
        max_connections=max_connections,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        decode_responses=True,
        redis_connect_func=on_connect,
    )
    return Redis.from_pool(pool)  # closing the client closes its connections


def _closed_by_peer(connection: AbstractConnection) -> bool:
    """The event loop already saw the peer close this connection (no system call: the
    pool's own check reads the socket)."""
    reader = getattr(connection, "_reader", None)
    return reader is not None and reader.at_eof()


class EventStore:
    """Event state in Redis: decide issues, hold and rebuild events, read records."""

    def __init__(
        self,
        redis: Client,
        keys: Keyspace,
        *,
        other_calls: int = 8,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 50,
        issue_lane: int = 4,
        admit: Callable[[str], None] | None = None,
    ) -> None:
        """``admit(shard)`` raises unless decisions may go to that cluster primary now
        (service/trust.py); it is asked after the connection to it is open."""
        self.redis = redis
        self.keys = keys
        self._admit = admit
        self.cluster = isinstance(redis, RedisCluster)
        # Calls outside the issue path (reads, admin): at most this many at once per worker,
        # so a burst of reads cannot exhaust a cluster node's non-blocking pool.
        self._others = asyncio.Semaphore(other_calls)
        self._wait_replicas = wait_replicas
        self._wait_timeout_ms = wait_timeout_ms
        self._refreshing: asyncio.Task[None] | None = None
        # Idle connections kept for issue decisions on one Redis (see _decide_on_lane): as
        # many as decisions the coalescer runs at once, opened by warm() or on first use.
        self._lane: list[AbstractConnection] = []
        self._lane_size = issue_lane
        self._lane_timeout_s: float | None = None
        self._issue = redis.register_script(source("issue"))
        self._hold = redis.register_script(source("hold"))
        self._finish_sync = redis.register_script(source("finish_sync"))

    async def load_scripts(self) -> None:
        # On a cluster SCRIPT LOAD goes to every primary; a promoted replica lacks them
        # (NOSCRIPT), which _run answers with EVAL.
        for script in (self._issue, self._hold, self._finish_sync):
            script.sha = await self.redis.script_load(script.script)

    async def warm(self) -> None:
        """Open the issue path's connections now, at start: a connection opened during a
        burst pays its handshake's round trips on a loaded event loop, and a batch waiting
        on it can miss its deadline (503s that issued nothing, but 503s). On one Redis that
        is the issue lane; on a cluster, the pool of every primary."""
        if isinstance(self.redis, RedisCluster):
            await asyncio.gather(
                *(self.redis.ping(target_nodes=RedisCluster.PRIMARIES) for _ in range(self._lane_size))
            )
            return
        for _ in range(self._lane_size - len(self._lane)):
            connection = self._new_lane_connection()
            await connection.connect()  # type: ignore[no-untyped-call]
            self._lane.append(connection)

    def _new_lane_connection(self) -> AbstractConnection:
        assert isinstance(self.redis, Redis)
        pool = self.redis.connection_pool
        # No per-socket-operation timeout: _decide_on_lane bounds the whole call once, where
        # redis-py would wrap every send in asyncio.wait_for (a task per call).
        self._lane_timeout_s = pool.connection_kwargs.get("socket_timeout")
        return pool.connection_class(**{**pool.connection_kwargs, "socket_timeout": None})

    async def close(self) -> None:
        lane, self._lane, self._lane_size = self._lane, [], 0
        for connection in lane:
            await connection.disconnect()

    async def scripts_loaded(self) -> bool:
        shas = [s.sha for s in (self._issue, self._hold, self._finish_sync)]
        return all(await self.redis.script_exists(*shas))

    async def _run(self, script: AsyncScript, keys: list[str], args: Sequence[str | int]) -> Any:
        try:
            return await self.redis.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            # The cache was flushed (SCRIPT FLUSH, a restart, a failover). EVAL carries the
            # source and caches it again, so this answer cannot hit a second flush.
            return await self.redis.eval(str(script.script), len(keys), *keys, *args)
        except RuntimeError as exc:
            raise self._closed_transport(exc) from exc

    def _closed_transport(self, exc: Exception) -> RedisConnectionError:
        # uvloop raises RuntimeError, not a connection error, when redis-py writes to a
        # connection whose peer just died (seen when a cluster primary is killed).
        self.refresh_topology()
        return RedisConnectionError(f"connection lost: {exc}")

    def shard(self, event_id: int) -> str:
        """The Redis the event's decisions go to now: one name for one Redis, the primary
        serving the event's slot on a cluster (a circuit breaker is kept per shard)."""
        if not isinstance(self.redis, RedisCluster):
            return "redis"
        try:
            node = self.redis.get_node_from_key(self.keys.event(event_id).meta)
        except RedisError:
            node = None
        return "uncovered" if node is None else str(node.name)

    async def decide(self, event_id: int, users: Sequence[str], deadline_us: int = 0) -> list[int]:
        """One atomic decision for a batch: [now_us, outcome per user].

        ``deadline_us`` (wall clock, µs): if Redis only gets to the batch after it, it issues
        nothing (every outcome EXPIRED), so a batch its caller gave up on cannot issue later.
        With ``wait_replicas``, raises NotReplicated unless that many replicas confirm it.
        """
        keys = self.keys.event(event_id)
        script_keys = [keys.meta, keys.seq, keys.users]
        args: list[str | int] = [deadline_us, *users]
        if self._wait_replicas:
            return await self._run_replicated(script_keys, args)
        if isinstance(self.redis, RedisCluster):
            return await self._run_on_node(self.redis, script_keys, args)
        return await self._decide_on_lane(script_keys, args)

    async def _decide_on_lane(self, keys: list[str], args: list[str | int]) -> list[int]:
        """The script on a connection of the issue lane, outside the client's pool.

        The coalescer runs at most ``issue_inflight_max`` decisions at once, so a small list
        of idle connections serves them; redis-py's pool and command wrappers cost more CPU
        per decision than sending it (py-spy, make bench); hiredis packs the command in C.
        Same bounds as the pool: the call (connect, send and reply) within
        REDIS_TIMEOUT_MS, no retry. A connection that failed, timed out or was cancelled
        mid-reply is closed and never reused.
        """
        lane = self._lane
        connection = lane.pop() if lane else self._new_lane_connection()
        if _closed_by_peer(connection):
            # Redis restarted or dropped it while idle: reconnect rather than fail a batch.
            await connection.disconnect(nowait=True)
        try:
            async with asyncio.timeout(self._lane_timeout_s):
                try:
                    await connection.send_packed_command(
                        hiredis.pack_command(("EVALSHA", str(self._issue.sha), len(keys), *keys, *args)),  # type: ignore[arg-type]
                        check_health=False,
                    )
                    reply = await connection.read_response()
                except NoScriptError:
                    await connection.send_command("EVAL", str(self._issue.script), len(keys), *keys, *args)
                    reply = await connection.read_response()
        except RuntimeError as exc:
            await connection.disconnect(nowait=True)
            raise self._closed_transport(exc) from exc
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
        if len(lane) < self._lane_size:
            lane.append(connection)
        else:
            await connection.disconnect()
        return reply  # type: ignore[no-any-return]

    async def _run_on_node(self, cluster: RedisCluster, keys: list[str], args: list[str | int]) -> list[int]:
        """The script straight to the primary the slot map names: the cluster client's own
        routing costs more CPU per call than the call itself (make bench-cluster). A
        MOVED, ASK or failed node is a 503 (nothing ran) and a refresh of the slot map."""
        (reply,) = await self._on_primary(
            cluster, keys[0], ("EVALSHA", str(self._issue.sha), len(keys), *keys, *args)
        )
        if isinstance(reply, NoScriptError):
            (reply,) = await self._on_primary(
                cluster, keys[0], ("EVAL", str(self._issue.script), len(keys), *keys, *args)
            )
        if isinstance(reply, Exception):
            self.refresh_topology()
            raise reply
        return reply  # type: ignore[no-any-return]

    async def _on_primary(
        self, cluster: RedisCluster, key: str, *commands: tuple[str | int, ...]
    ) -> list[Any]:
        """Commands in one write on one connection to the primary serving ``key``'s slot,
        once the trust gate admits that primary: a connection opened here has been through
        the identity check before the check below reads its verdict. Error replies are
        returned, not raised, so every reply is read and the connection stays usable."""
        node = cluster.get_node_from_key(key)
        if node is None:
            self.refresh_topology()
            raise RedisConnectionError(f"no primary serves the slot of {key}")
        connection = node.acquire_connection()
        try:
            await connection.connect()  # type: ignore[no-untyped-call]
            if self._admit is not None:
                self._admit(node.name)
            await connection.send_packed_command(
                b"".join(hiredis.pack_command(command) for command in commands),  # type: ignore[arg-type]
                check_health=False,
            )
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(await connection.read_response())
                except ResponseError as exc:
                    replies.append(exc)
        except (RuntimeError, AttributeError) as exc:
            # RuntimeError: uvloop on a peer that just died. AttributeError: a slot-map
            # refresh closed this node's connections, this one mid-send (its writer gone).
            await connection.disconnect(nowait=True)
            raise self._closed_transport(exc) from exc
        except RedisError:
            await connection.disconnect(nowait=True)
            self.refresh_topology()
            raise
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
        finally:
            node.release(connection)
        return replies

    async def _run_replicated(self, keys: list[str], args: list[str | int]) -> list[int]:
        """The script and WAIT in one write on one connection: WAIT counts the replicas
        that have this connection's last write."""
        try:
            reply, acknowledged = await self._pipeline_wait("EVALSHA", str(self._issue.sha), keys, args)
            if isinstance(reply, NoScriptError):
                reply, acknowledged = await self._pipeline_wait("EVAL", str(self._issue.script), keys, args)
        except RedisError:
            self.refresh_topology()
            raise
        except RuntimeError as exc:
            raise self._closed_transport(exc) from exc
        for result in (reply, acknowledged):
            if isinstance(result, Exception):
                self.refresh_topology()
                raise result
        if int(acknowledged) < self._wait_replicas:
            raise NotReplicated(int(acknowledged), self._wait_replicas, reply)
        return reply  # type: ignore[no-any-return]

    async def _pipeline_wait(
        self, command: str, script: str, keys: list[str], args: list[str | int]
    ) -> tuple[Any, Any]:
        wait = ("WAIT", self._wait_replicas, self._wait_timeout_ms)
        if isinstance(self.redis, RedisCluster):
            # Both to the node the slot map names; a MOVED is an error, not a redirect
            # (followed alone, the script would leave WAIT on the old node).
            reply, acknowledged = await self._on_primary(
                self.redis, keys[0], (command, script, len(keys), *keys, *args), wait
            )
            return reply, acknowledged
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.execute_command(command, script, len(keys), *keys, *args)
            pipe.execute_command(*wait)
            reply, acknowledged = await pipe.execute(raise_on_error=False)
            return reply, acknowledged

    def refresh_topology(self) -> None:
        """Re-read the cluster's slot map in the background, once at a time (after a failed
        node or a MOVED on a path that does not follow redirects)."""
        if not isinstance(self.redis, RedisCluster):
            return
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh(self.redis))

    @staticmethod
    async def _refresh(cluster: RedisCluster) -> None:
        try:
            await cluster.nodes_manager.initialize()
        except RedisError as exc:
            logger.warning("cluster slot map not refreshed: %s", type(exc).__name__)

    async def hold(self, event_id: int, status: str, times: EventTimes) -> str | None:
        keys = self.keys.event(event_id)
        previous = await self._run(self._hold, [keys.meta], [status, *times.args()])
        return previous or None

    async def merge_records(self, event_id: int, records: Sequence[tuple[str, int, int]]) -> None:
        """Add (user, ordinal, issued_at_us) records Redis lacks; never overwrites one."""
        users_key = self.keys.event(event_id).users
        for start in range(0, len(records), _MERGE_CHUNK):
            async with self.redis.pipeline(transaction=False) as pipe:
                for user, ordinal, issued_at_us in records[start : start + _MERGE_CHUNK]:
                    pipe.hsetnx(users_key, user, f"{ordinal}:{issued_at_us}")
                await pipe.execute()

    async def finish_sync(
        self, event_id: int, status: str, times: EventTimes, max_ordinal: int
    ) -> tuple[int, int]:
        keys = self.keys.event(event_id)
        seq, records = await self._run(
            self._finish_sync, [keys.meta, keys.seq, keys.users], [status, *times.args(), max_ordinal]
        )
        return int(seq), int(records)

    async def set_status(self, event_id: int, status: str) -> None:
        await self.redis.hset(self.keys.event(event_id).meta, "status", status)

    async def delete(self, event_id: int) -> None:
        keys = self.keys.event(event_id)
        await self.redis.delete(keys.meta, keys.seq, keys.users)

    async def state(self, event_id: int) -> RedisEventState:
        keys = self.keys.event(event_id)
        async with self._others, self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(keys.meta, "status", "quantity", "starts_at", "ends_at")
            pipe.get(keys.seq)
            pipe.hlen(keys.users)
            (status, quantity, starts_at, ends_at), seq, records = await pipe.execute()
        return RedisEventState(
            status=status,
            quantity=_int(quantity),
            starts_at_us=_int(starts_at),
            ends_at_us=_int(ends_at),
            issued=int(seq or 0),
            records=int(records),
        )

    async def record(self, event_id: int, user_id: str) -> tuple[int, int] | None:
        async with self._others:
            value = await self.redis.hget(self.keys.event(event_id).users, user_id)
        return None if value is None else parse_record(str(value))

    async def records(self, event_id: int) -> AsyncIterator[tuple[str, int, int]]:
        """Every (user, ordinal, issued_at_us) Redis holds for the event."""
        async for user, value in self.redis.hscan_iter(self.keys.event(event_id).users, count=5000):
            ordinal, issued_at_us = parse_record(str(value))
            yield str(user), ordinal, issued_at_us

    def lock(self, name: str, timeout_s: float):  # type: ignore[no-untyped-def]
        return self.redis.lock(name, timeout=timeout_s, blocking=False)


def parse_record(value: str) -> tuple[int, int]:
    ordinal, _, issued_at_us = value.partition(":")
    return int(ordinal), int(issued_at_us)


def _int(value: str | None) -> int | None:
    return None if value is None else int(value)
