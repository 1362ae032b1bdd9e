"""Sanic's manager acts on SIGTERM and SIGINT between calls, not inside the signal handler.

Sanic's `WorkerManager.shutdown_signal` terminates the workers from inside the handler:
it writes each worker's state into the shared worker-state dict, a multiprocessing proxy.
The handler runs between two bytecodes of the manager's main thread, which polls that same
proxy ten times a second; landing inside one of those calls, the handler's own call reads
the interrupted call's reply, and the manager dies with a TypeError or an AttributeError
and exits 1, its workers stopping on their own (seen with Sanic 25.12.1, 1 run in 30 with
SIGTERM 0-1.5 s after the service was ready). A signal during start-up (before every
worker's acknowledgement) was worse: its message was re-queued, and the workers were
never told to stop.

Here the handler only records the signal; the manager's monitor loop, which wakes at least
every 0.1 s, acts on it between its calls, after start-up. A second signal still kills the
workers at once, as Sanic's does.
"""

from __future__ import annotations

import contextlib
import signal
from types import FrameType
from typing import Any

from sanic.exceptions import ServerKilled
from sanic.log import logger
from sanic.worker.manager import MonitorCycle, WorkerManager

_poll_monitor = WorkerManager._poll_monitor
_pending: dict[int, int] = {}  # id(manager): the signal it received, not yet acted on


def _record_signal(self: WorkerManager, signum: int, frame: FrameType | None) -> None:
    if id(self) in _pending or self._shutting_down:
        logger.info("Shutdown interrupted. Killing.")
        with contextlib.suppress(ServerKilled):
            self.kill()
        return
    _pending[id(self)] = signum


def _poll_monitor_or_stop(self: WorkerManager) -> Any:
    signum = _pending.get(id(self))
    if signum is not None and not self._shutting_down:
        logger.info("Received signal %s. Shutting down.", signal.Signals(signum).name)
        self.shutdown()
        return MonitorCycle.BREAK
    return _poll_monitor(self)


def install() -> None:
    """Before `Sanic.serve`: the manager it creates registers the handler below."""
    replaced = {"shutdown_signal": _record_signal, "_poll_monitor": _poll_monitor_or_stop}
    for name, method in replaced.items():
        setattr(WorkerManager, name, method)
