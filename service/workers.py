"""What the workers of one host publish for each other, in shared memory.

Each worker owns a slot holding its pid and its buffer's watermarks (rows accepted, rows
stored). A sync reads them to wait until every row decided before it began is stored
(docs/design.md, "Sync / open"). A shared epoch, bumped by lifecycle operations, clears the
worker-local caches (sold-out flags, the event directory) at once on every worker.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import time
from dataclasses import dataclass
from typing import Any

from .metrics import exposition

logger = logging.getLogger(__name__)

MAX_SLOTS = 256
_PID, _ACCEPTED, _STORED = 0, 1, 2
_FIELDS = 3


def shared_objects() -> dict[str, Any]:
    """Created once in the main process, before the workers start (Sanic's shared_ctx)."""
    ctx = multiprocessing.get_context("spawn")
    return {
        "board_cells": ctx.RawArray("q", MAX_SLOTS * _FIELDS),
        "board_lock": ctx.Lock(),
        "board_epoch": ctx.RawValue("q", 0),
    }


@dataclass(frozen=True, slots=True)
class SlotView:
    pid: int
    accepted: int
    stored: int


class WorkerBoard:
    def __init__(self, cells: Any, lock: Any, epoch: Any) -> None:
        self._cells = cells
        self._lock = lock
        self._epoch = epoch
        self._slot: int | None = None

    @classmethod
    def local(cls) -> WorkerBoard:
        """A board for a single process (tests, tools) with nothing shared."""
        objects = shared_objects()
        return cls(objects["board_cells"], objects["board_lock"], objects["board_epoch"])

    def claim(self, pid: int | None = None) -> int:
        pid = pid or os.getpid()
        with self._lock:
            for slot in range(MAX_SLOTS):
                base = slot * _FIELDS
                owner = self._cells[base + _PID]
                if owner == 0 or owner == pid or not _alive(owner):
                    self._cells[base + _PID] = pid
                    self._cells[base + _ACCEPTED] = 0
                    self._cells[base + _STORED] = 0
                    self._slot = slot
                    return slot
        raise RuntimeError(f"all {MAX_SLOTS} worker slots are taken")

    def release(self) -> None:
        if self._slot is not None:
            with self._lock:
                self._cells[self._slot * _FIELDS + _PID] = 0
            self._slot = None

    def publish(self, accepted: int, stored: int) -> None:
        if self._slot is None:
            return
        base = self._slot * _FIELDS
        self._cells[base + _ACCEPTED] = accepted
        self._cells[base + _STORED] = stored

    def slots(self) -> dict[int, SlotView]:
        found = {}
        for slot in range(MAX_SLOTS):
            base = slot * _FIELDS
            pid = self._cells[base + _PID]
            if pid and _alive(pid):
                found[slot] = SlotView(pid, self._cells[base + _ACCEPTED], self._cells[base + _STORED])
        return found

    def buffered_rows(self) -> int:
        return sum(view.accepted - view.stored for view in self.slots().values())

    async def wait_stored(self, timeout_s: float, poll_s: float = 0.01) -> None:
        """Return once every live worker has stored all it had accepted when called."""
        targets = {slot: (view.pid, view.accepted) for slot, view in self.slots().items()}
        deadline = time.monotonic() + timeout_s
        while True:
            now_slots = self.slots()
            behind = 0
            for slot, (pid, accepted) in targets.items():
                view = now_slots.get(slot)
                # A worker that died or was replaced holds nothing any more: what it had
                # decided is in Redis and reconcile writes it (docs/design.md, "Reconcile").
                if view is not None and view.pid == pid and view.stored < accepted:
                    behind += accepted - view.stored
            if behind == 0:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{behind} rows still buffered in workers after {timeout_s:.1f}s")
            await asyncio.sleep(poll_s)

    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    def bump_epoch(self) -> None:
        with self._lock:
            self._epoch.value += 1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


async def replace_failed_siblings(multiplexer: Any, *, interval_s: float = 1.0) -> None:
    """Ask Sanic's manager to restart a server worker that died (kill -9, OOM).

    The manager marks such a worker FAILED but does not start another (Sanic 25.12), so the
    host would serve on fewer workers until restarted. One worker speaks for all: the
    lowest-named live one, so a death is reported once. The replacement's start-up
    reconcile writes what the dead worker had buffered (docs/design.md, "Reconcile").
    """
    requested: dict[str, int | None] = {}
    while True:
        await asyncio.sleep(interval_s)
        try:
            workers = {
                name: info
                for name, info in multiplexer.workers.items()
                if isinstance(info, dict) and info.get("server")
            }
        except (OSError, EOFError):  # the main process is shutting down
            return
        live = sorted(name for name, info in workers.items() if info.get("state") != "FAILED")
        if not live or live[0] != multiplexer.name:
            continue
        for name, info in workers.items():
            pid = info.get("pid")
            if info.get("state") == "FAILED" and requested.get(name) != pid:
                logger.warning("worker %s (pid %s) died; asking the manager for a replacement", name, pid)
                multiplexer.restart(name)
                requested[name] = pid
                if isinstance(pid, int):
                    exposition.mark_dead(pid)
