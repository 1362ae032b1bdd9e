"""Connections to Redis or a Redis Cluster, with the scripts and the slot map they share.

``RedisLink`` is what the decision paths (service/redis_decisions.py) and the event
operations (service/redis_events.py) both stand on: one client, its registered scripts,
and, on a cluster, a slot map re-read once at a time after a failure.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

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

logger = logging.getLogger(__name__)

Client = Redis | RedisCluster

# hiredis packs a command in C. Its stub declares a one-element tuple; it takes any length.
pack_command = cast(Callable[[tuple[str | int, ...]], bytes], hiredis.pack_command)


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
        # issue path's calls, RedisEvents bounds the rest.
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


def closed_by_peer(connection: AbstractConnection) -> bool:
    """The event loop already saw the peer close this connection (no system call: the
    pool's own check reads the socket)."""
    reader = getattr(connection, "_reader", None)
    return reader is not None and reader.at_eof()


async def exchange(connection: AbstractConnection, commands: Sequence[tuple[str | int, ...]]) -> list[Any]:
    """Send the commands packed in one write and read their replies in order; an error
    reply is returned, not raised, so every reply is read and the connection stays in step."""
    await connection.send_packed_command(
        b"".join(pack_command(command) for command in commands), check_health=False
    )
    replies: list[Any] = []
    for _ in commands:
        try:
            replies.append(await connection.read_response())
        except ResponseError as exc:
            replies.append(exc)
    return replies


class RedisLink:
    """One client with the service's scripts registered on it and, on a cluster, its slot
    map kept fresh."""

    def __init__(self, redis: Client) -> None:
        self.redis = redis
        self.cluster: RedisCluster | None = redis if isinstance(redis, RedisCluster) else None
        self.issue = redis.register_script(source("issue"))
        self.hold = redis.register_script(source("hold"))
        self.finish_sync = redis.register_script(source("finish_sync"))
        self._refreshing: asyncio.Task[None] | None = None

    def shard(self, key: str) -> str:
        """The Redis serving ``key`` now: one name for one Redis, the primary serving the
        key's slot on a cluster."""
        if self.cluster is None:
            return "redis"
        try:
            node = self.cluster.get_node_from_key(key)
        except RedisError:
            node = None
        return "uncovered" if node is None else str(node.name)

    @property
    def _scripts(self) -> tuple[AsyncScript, ...]:
        return self.issue, self.hold, self.finish_sync

    async def load_scripts(self) -> None:
        # On a cluster SCRIPT LOAD goes to every primary; a promoted replica lacks them
        # (NOSCRIPT), which run() answers with EVAL.
        for script in self._scripts:
            script.sha = await self.redis.script_load(script.script)

    async def scripts_loaded(self) -> bool:
        return all(await self.redis.script_exists(*(script.sha for script in self._scripts)))

    async def run(self, script: AsyncScript, keys: list[str], args: Sequence[str | int]) -> Any:
        try:
            return await self.redis.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            # The cache was flushed (SCRIPT FLUSH, a restart, a failover). EVAL carries the
            # source and caches it again, so this answer cannot hit a second flush.
            return await self.redis.eval(str(script.script), len(keys), *keys, *args)
        except RuntimeError as exc:
            raise self.lost(exc) from exc

    def lost(self, exc: Exception) -> RedisConnectionError:
        """uvloop raises RuntimeError, not a connection error, when redis-py writes to a
        connection whose peer just died (seen when a cluster primary is killed)."""
        self.refresh_topology()
        return RedisConnectionError(f"connection lost: {exc}")

    def refresh_topology(self) -> None:
        """Re-read the cluster's slot map in the background, once at a time (after a failed
        node or a MOVED on a path that does not follow redirects)."""
        if self.cluster is None:
            return
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh(self.cluster))

    @staticmethod
    async def _refresh(cluster: RedisCluster) -> None:
        try:
            await cluster.nodes_manager.initialize()
        except RedisError as exc:
            logger.warning("cluster slot map not refreshed: %s", type(exc).__name__)


class Lane:
    """A few idle connections to one Redis for a hot path, used outside the client's pool.

    redis-py's pool and command wrappers cost more CPU per call than the call itself
    (py-spy, make bench); here a call takes an idle connection, writes its commands packed
    by hiredis in one write, and reads the replies. Same bounds as the pool: at most
    ``size`` calls at once, each (connect, send and replies) within the client's socket
    timeout, no retry. A connection that failed, timed out or was cancelled mid-reply is
    closed and never reused; one the peer closed while idle is reconnected first. New
    connections take the client's connect hook, so the trust gate admits each.
    """

    def __init__(self, link: RedisLink, size: int) -> None:
        if not isinstance(link.redis, Redis):
            raise ValueError("a lane serves one Redis, not a cluster")
        pool = link.redis.connection_pool
        self._link = link
        self._kwargs = {**pool.connection_kwargs, "socket_timeout": None}
        self._class = pool.connection_class
        # No per-socket-operation timeout: the whole call is bounded once, where redis-py
        # would wrap every send in asyncio.wait_for (a task per call).
        self._timeout_s: float | None = pool.connection_kwargs.get("socket_timeout")
        self._idle: list[AbstractConnection] = []
        self._size = size
        self._slots = asyncio.Semaphore(size)

    async def warm(self) -> None:
        """Open the connections now: one opened during a burst pays its handshake's round
        trips on a loaded event loop."""
        while len(self._idle) < self._size:
            connection = self._class(**self._kwargs)
            await connection.connect()
            self._idle.append(connection)

    async def close(self) -> None:
        idle, self._idle, self._size = self._idle, [], 0
        for connection in idle:
            await connection.disconnect()

    async def call(self, *commands: tuple[str | int, ...]) -> list[Any]:
        """The commands' replies in order (see ``exchange``)."""
        async with self._slots:
            connection = self._idle.pop() if self._idle else self._class(**self._kwargs)
            if closed_by_peer(connection):
                # Redis restarted or dropped it while idle: reconnect rather than fail.
                await connection.disconnect(nowait=True)
            try:
                async with asyncio.timeout(self._timeout_s):
                    replies = await exchange(connection, commands)
            except RuntimeError as exc:
                await connection.disconnect(nowait=True)
                raise self._link.lost(exc) from exc
            except BaseException:
                await connection.disconnect(nowait=True)
                raise
            if len(self._idle) < self._size:
                self._idle.append(connection)
            else:
                await connection.disconnect()
            return replies
