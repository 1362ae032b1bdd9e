"""The worker board: each worker's slot and watermarks, and the epoch, in shared memory."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator

import pytest

from service.workers import WorkerBoard, shared_objects


def _boards(count: int) -> list[WorkerBoard]:
    """Boards over one set of shared objects, as the workers of one host see it."""
    objects = shared_objects()
    return [
        WorkerBoard(objects["board_cells"], objects["board_lock"], objects["board_epoch"])
        for _ in range(count)
    ]


def _live_process() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(["sleep", "60"])
    yield process
    process.kill()
    process.wait()


@pytest.fixture
def other_worker() -> Iterator[subprocess.Popen[bytes]]:
    """A live process standing in for another worker of the host."""
    yield from _live_process()


@pytest.fixture
def successor() -> Iterator[subprocess.Popen[bytes]]:
    """A live process standing in for the worker started in place of a dead one."""
    yield from _live_process()


def test_each_worker_claims_its_own_slot_and_a_released_one_is_reused(
    other_worker: subprocess.Popen[bytes],
) -> None:
    mine, theirs = _boards(2)
    assert mine.claim() == 0
    assert theirs.claim(other_worker.pid) == 1
    assert {slot: view.pid for slot, view in mine.slots().items()} == {0: os.getpid(), 1: other_worker.pid}
    mine.release()
    assert set(theirs.slots()) == {1}
    assert mine.claim() == 0


def test_a_restarted_worker_gets_its_slot_back_with_its_watermarks_reset() -> None:
    (board,) = _boards(1)
    assert board.claim() == 0
    board.publish(accepted=5, stored=3)
    assert board.claim() == 0
    view = board.slots()[0]
    assert (view.accepted, view.stored) == (0, 0)


def test_the_slot_of_a_worker_that_exited_is_free() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    first, second = _boards(2)
    assert first.claim(gone.pid) == 0
    assert first.slots() == {}  # a dead worker holds nothing
    assert second.claim() == 0


def test_published_watermarks_add_up_to_the_rows_buffered(other_worker: subprocess.Popen[bytes]) -> None:
    mine, theirs = _boards(2)
    mine.claim()
    theirs.claim(other_worker.pid)
    mine.publish(accepted=10, stored=4)
    theirs.publish(accepted=3, stored=3)
    assert (mine.slots()[0].accepted, mine.slots()[0].stored) == (10, 4)
    assert mine.buffered_rows() == theirs.buffered_rows() == 6


def test_an_unclaimed_board_publishes_nothing() -> None:
    board = WorkerBoard.local()
    board.publish(accepted=10, stored=0)
    assert board.slots() == {} and board.buffered_rows() == 0
    board.claim()
    board.release()
    board.publish(accepted=10, stored=0)
    assert board.slots() == {}


def test_a_bumped_epoch_is_seen_by_every_worker() -> None:
    mine, theirs = _boards(2)
    assert mine.epoch == theirs.epoch == 0
    mine.bump_epoch()
    theirs.bump_epoch()
    assert mine.epoch == theirs.epoch == 2


async def test_waiting_for_the_stored_rows_ends_when_each_worker_caught_up(
    other_worker: subprocess.Popen[bytes],
) -> None:
    mine, theirs = _boards(2)
    mine.claim()
    theirs.claim(other_worker.pid)
    mine.publish(accepted=2, stored=2)
    theirs.publish(accepted=5, stored=1)
    waiting = asyncio.create_task(mine.wait_stored(timeout_s=5, poll_s=0.001))
    await asyncio.sleep(0.01)
    theirs.publish(accepted=9, stored=4)  # rows accepted after the wait began are not waited for
    await asyncio.sleep(0.01)
    assert not waiting.done()
    theirs.publish(accepted=9, stored=5)
    await asyncio.wait_for(waiting, 1)


async def test_a_worker_that_dies_while_waited_for_holds_nothing_up(
    other_worker: subprocess.Popen[bytes],
) -> None:
    mine, theirs = _boards(2)
    theirs.claim(other_worker.pid)
    theirs.publish(accepted=5, stored=0)
    waiting = asyncio.create_task(mine.wait_stored(timeout_s=5, poll_s=0.001))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    other_worker.kill()
    other_worker.wait()
    await asyncio.wait_for(waiting, 1)


async def test_a_worker_replaced_while_waited_for_holds_nothing_up(
    other_worker: subprocess.Popen[bytes], successor: subprocess.Popen[bytes]
) -> None:
    mine, theirs, replacement = _boards(3)
    assert theirs.claim(other_worker.pid) == 0
    theirs.publish(accepted=5, stored=0)
    waiting = asyncio.create_task(mine.wait_stored(timeout_s=5, poll_s=0.001))
    await asyncio.sleep(0)  # the wait takes its targets
    other_worker.kill()
    other_worker.wait()
    assert replacement.claim(successor.pid) == 0  # the dead worker's slot, watermarks reset
    replacement.publish(accepted=1, stored=0)  # what it accepted since is not waited for
    await asyncio.wait_for(waiting, 1)


async def test_waiting_for_the_stored_rows_gives_up_after_its_timeout(
    other_worker: subprocess.Popen[bytes],
) -> None:
    mine, theirs = _boards(2)
    theirs.claim(other_worker.pid)
    theirs.publish(accepted=5, stored=2)
    with pytest.raises(TimeoutError, match="3 rows still buffered"):
        await mine.wait_stored(timeout_s=0.02, poll_s=0.001)
