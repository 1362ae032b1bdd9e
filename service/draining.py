"""Graceful stop: keep-alive connections are closed as soon as they go idle.

Sanic closes the connections idle at the moment a worker stops, then waits up to the
graceful timeout for the rest. A connection busy at that moment stays open after its
answer (keep-alive), and a client that keeps it idle holds the worker, and so the drain
of its buffer, until the timeout. While a worker stops, this closes every connection
the moment it has no request in flight; an answer already started is always finished.

A connection whose request has arrived but is not parsed yet is not idle: Sanic's stage
says IDLE until the header is read, and closing it then dropped the connection while its
request went on to be decided (and its row stored) with nobody left to answer. Seen when
the stop signal and new requests landed in the same instant (a signal to the whole
process group).
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from sanic.server.protocols.http_protocol import HttpProtocol

_INTERVAL_S = 0.05


class DrainingHttpProtocol(HttpProtocol):
    """Sanic's HTTP/1.1 protocol, remembering the worker's set of live connections."""

    live: ClassVar[set[Any] | None] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        HttpProtocol.connection_made(self, transport)
        DrainingHttpProtocol.live = self.connections

    def close_if_idle(self) -> bool:
        if self.recv_buffer:  # a request has arrived, not read yet: it will be answered
            return False
        return bool(HttpProtocol.close_if_idle(self))


async def close_idle_connections() -> None:
    """Runs while the worker stops; cancelled once it has."""
    while True:
        for connection in list(DrainingHttpProtocol.live or ()):
            connection.close_if_idle()
        await asyncio.sleep(_INTERVAL_S)
