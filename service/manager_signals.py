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

A signal to the whole process group (Ctrl-C in a terminal, `timeout`, `kill -TERM -PGID`,
systemd's default KillMode) reaches every process at once. Two things then cut the drain
short, and both are handled here and in the workers (service/app.py):
- Sanic's state process (a multiprocessing manager holding the shared worker-state dict)
  ignores SIGINT but died on SIGTERM; the manager's next poll of the dict then raised
  BrokenPipeError, the manager exited 1 and its workers were stopped mid-drain. Here that
  process ignores SIGTERM too and ends when Sanic shuts it down, or when its parent is gone.
- Each worker, already stopping on its own signal, got a second one from the manager;
  ``ignore_further_stop_signals`` is the workers' part.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.managers import SyncManager
from types import FrameType
from typing import Any

from sanic.exceptions import ServerKilled
from sanic.log import logger
from sanic.mixins import startup
from sanic.worker.manager import MonitorCycle, WorkerManager

_PARENT_POLL_S = 1.0

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


def ignore_further_stop_signals() -> None:
    """In a worker that has begun to stop: a later SIGINT or SIGTERM is ignored, so the
    drain runs to its end. Sanic restores their default actions once its loop stops, and a
    second signal (the manager's, after a signal to the whole group) then interrupted the
    wait for in-flight requests and skipped the drain. The manager's kill (SIGKILL, on a
    second signal to it) still ends a worker that does not stop."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def _state_process_start() -> None:
    """In Sanic's state process: outlive a SIGTERM to the group (it already ignores SIGINT),
    so that the manager can read the workers' states until they have stopped; end when
    the parent is gone (killed), since a SIGTERM no longer ends it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parent = os.getppid()

    def watch_parent() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL_S)
        os._exit(0)

    threading.Thread(target=watch_parent, name="watch-parent", daemon=True).start()


def _state_manager() -> SyncManager:
    """What `multiprocessing.Manager()` makes for Sanic, with the start above."""
    manager = SyncManager(ctx=multiprocessing.get_context())
    manager.start(_state_process_start)
    return manager


def install() -> None:
    """Before `Sanic.serve`: the manager it creates registers the handler below, and its
    state process starts as ``_state_process_start`` says."""
    replaced: list[tuple[object, str, object]] = [
        (WorkerManager, "shutdown_signal", _record_signal),
        (WorkerManager, "_poll_monitor", _poll_monitor_or_stop),
        (startup, "Manager", _state_manager),  # what Sanic.serve calls for its state process
    ]
    for owner, name, value in replaced:
        setattr(owner, name, value)
