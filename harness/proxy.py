"""TCP fault proxies (`faulty`) in front of Redis and PostgreSQL, on a thread of their own.

Starting the service blocks the test's event loop, so the proxies run on their own loop.
`CutMiddleware` extends faulty with the fault it lacks: a connection reset mid-stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import threading
import time
import warnings
from collections.abc import AsyncGenerator, Iterator
from urllib.parse import urlsplit, urlunsplit

from faulty.core import FaultyProxy
from faulty.middlewares import BaseMiddleware

from harness.ports import free_port


class CutMiddleware(BaseMiddleware):
    """Resets the connection before passing a chunk on, with the given probability."""

    def __init__(self, cut_rate: float) -> None:
        self.cut_rate = cut_rate
        self.cuts = 0

    async def process(self, chunk: bytes) -> AsyncGenerator[bytes, None]:
        if random.random() < self.cut_rate:
            self.cuts += 1
            # faulty's pipe closes its writer on a reset; the peer sees the link drop.
            raise ConnectionResetError("cut by the fault proxy")
        yield chunk


def proxy_to(url: str, default_port: int) -> FaultyProxy:
    target = urlsplit(url)
    return FaultyProxy("127.0.0.1", free_port(), target.hostname or "127.0.0.1", target.port or default_port)


def through(url: str, proxy: FaultyProxy) -> str:
    """``url`` with its host:port replaced by the proxy's."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit(":", 1)[0] if ":" in parts.netloc.split("@")[-1] else parts.netloc
    return urlunsplit(parts._replace(netloc=f"{netloc}:{proxy.listen_port}"))


@contextlib.contextmanager
def running(*proxies: FaultyProxy) -> Iterator[None]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    futures = [asyncio.run_coroutine_threadsafe(proxy.start(), loop) for proxy in proxies]
    time.sleep(0.2)
    try:
        yield
    finally:
        for proxy in proxies:
            asyncio.run_coroutine_threadsafe(proxy.stop(), loop).result(5)
        for future in futures:
            future.cancel()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        # faulty leaves the writers of connections it dropped unclosed; collect them here,
        # where their ResourceWarnings are the proxy's and are ignored.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            loop.close()
            gc.collect()
