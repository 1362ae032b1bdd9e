"""The issue decision in Redis: one script call per batch, sent the cheapest way the
deployment allows (one Redis, a cluster primary, or with WAIT for replicas)."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Sequence
from typing import Any, cast

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError

from .keys import Keyspace
from .redis_link import Lane, RedisLink, exchange


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


class NotReplicated(RedisError):
    """Redis decided the batch, but fewer replicas than asked confirmed it in time.

    Its users are answered 503; the decisions stay on the primary, where reconcile finds
    and stores them if it survives, and go with it if it does not: no 201 rests on them.
    """

    def __init__(self, acknowledged: int, wanted: int, reply: list[int]) -> None:
        super().__init__(f"{acknowledged} of {wanted} replicas confirmed the batch")
        self.reply = reply


class RedisDecisions:
    """Decide batches of issues for an event, on one Redis or a cluster."""

    def __init__(
        self,
        link: RedisLink,
        keys: Keyspace,
        *,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 50,
        issue_lane: int = 4,
        admit: Callable[[str], None] | None = None,
    ) -> None:
        """``admit(shard)`` raises unless decisions may go to that cluster primary now
        (service/trust.py); it is asked after the connection to it is open."""
        self.link = link
        self.redis = link.redis
        self.keys = keys
        self._admit = admit
        self._wait_replicas = wait_replicas
        self._wait_timeout_ms = wait_timeout_ms
        # On one Redis, decisions go over a lane of their own: as many connections as
        # decisions the coalescer runs at once.
        self._lane = None if link.cluster is not None else Lane(link, issue_lane)
        self._warm_connections = issue_lane

    async def warm(self) -> None:
        """Open the issue path's connections now, at start: a connection opened during a
        burst pays its handshake's round trips on a loaded event loop, and a batch waiting
        on it can miss its deadline (503s that issued nothing, but 503s). On one Redis that
        is the issue lane; on a cluster, the pool of every primary."""
        if self._lane is not None:
            await self._lane.warm()
            return
        assert isinstance(self.redis, RedisCluster)
        await asyncio.gather(
            *(self.redis.ping(target_nodes=RedisCluster.PRIMARIES) for _ in range(self._warm_connections))
        )

    async def close(self) -> None:
        if self._lane is not None:
            await self._lane.close()

    def shard(self, event_id: int) -> str:
        """The Redis the event's decisions go to now (a circuit breaker is kept per shard)."""
        return self.link.shard(self.keys.event(event_id).meta)

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
        if self._lane is None:
            assert isinstance(self.redis, RedisCluster)
            return await self._run_on_node(self.redis, script_keys, args)
        return await self._decide_on_lane(script_keys, args)

    async def _decide_on_lane(self, keys: list[str], args: list[str | int]) -> list[int]:
        """The script on the issue lane (service/redis_link.py:Lane); a flushed script cache
        (NOSCRIPT) is answered with EVAL, which carries the source."""
        assert self._lane is not None
        (reply,) = await self._lane.call(("EVALSHA", str(self.link.issue.sha), len(keys), *keys, *args))
        if isinstance(reply, NoScriptError):
            (reply,) = await self._lane.call(("EVAL", str(self.link.issue.script), len(keys), *keys, *args))
        if isinstance(reply, Exception):
            raise reply
        return cast(list[int], reply)  # the script answers a list of integers

    async def _run_on_node(self, cluster: RedisCluster, keys: list[str], args: list[str | int]) -> list[int]:
        """The script straight to the primary the slot map names: the cluster client's own
        routing costs more CPU per call than the call itself (make bench-cluster). A
        MOVED, ASK or failed node is a 503 (nothing ran) and a refresh of the slot map."""
        (reply,) = await self._on_primary(
            cluster, keys[0], ("EVALSHA", str(self.link.issue.sha), len(keys), *keys, *args)
        )
        if isinstance(reply, NoScriptError):
            (reply,) = await self._on_primary(
                cluster, keys[0], ("EVAL", str(self.link.issue.script), len(keys), *keys, *args)
            )
        if isinstance(reply, Exception):
            self.link.refresh_topology()
            raise reply
        return cast(list[int], reply)  # the script answers a list of integers

    async def _on_primary(
        self, cluster: RedisCluster, key: str, *commands: tuple[str | int, ...]
    ) -> list[Any]:
        """Commands in one write on one connection to the primary serving ``key``'s slot,
        once the trust gate admits that primary: a connection opened here has been through
        the identity check before the check below reads its verdict. Error replies are
        returned, not raised, so every reply is read and the connection stays usable."""
        node = cluster.get_node_from_key(key)
        if node is None:
            self.link.refresh_topology()
            raise RedisConnectionError(f"no primary serves the slot of {key}")
        connection = node.acquire_connection()
        try:
            await connection.connect()
            if self._admit is not None:
                self._admit(node.name)
            replies = await exchange(connection, commands)
        except (RuntimeError, AttributeError) as exc:
            # RuntimeError: uvloop on a peer that just died. AttributeError: a slot-map
            # refresh closed this node's connections, this one mid-send (its writer gone).
            await connection.disconnect(nowait=True)
            raise self.link.lost(exc) from exc
        except RedisError:
            await connection.disconnect(nowait=True)
            self.link.refresh_topology()
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
            reply, acknowledged = await self._pipeline_wait("EVALSHA", str(self.link.issue.sha), keys, args)
            if isinstance(reply, NoScriptError):
                reply, acknowledged = await self._pipeline_wait(
                    "EVAL", str(self.link.issue.script), keys, args
                )
        except RedisError:
            self.link.refresh_topology()
            raise
        except RuntimeError as exc:
            raise self.link.lost(exc) from exc
        for result in (reply, acknowledged):
            if isinstance(result, Exception):
                self.link.refresh_topology()
                raise result
        if int(acknowledged) < self._wait_replicas:
            raise NotReplicated(int(acknowledged), self._wait_replicas, reply)
        return cast(list[int], reply)  # the script answers a list of integers

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
