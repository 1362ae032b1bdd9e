"""A worker's memory of sold-out events: it answers 410 without Redis, for a bounded time."""

from __future__ import annotations

import asyncio

from service.issuing import SoldOutFlags


def test_a_flag_holds_for_its_event_only() -> None:
    flags = SoldOutFlags(60, lambda: 0)
    flags.set(1)
    assert flags.is_set(1) and not flags.is_set(2)


async def test_a_flag_lapses_after_its_ttl() -> None:
    flags = SoldOutFlags(0.05, lambda: 0)
    flags.set(1)
    assert flags.is_set(1)
    await asyncio.sleep(0.06)
    assert not flags.is_set(1)
    flags.set(1)  # set again, it holds again
    assert flags.is_set(1)


def test_a_lifecycle_operation_clears_every_flag_at_once() -> None:
    epoch = [0]
    flags = SoldOutFlags(60, lambda: epoch[0])
    flags.set(1)
    flags.set(2)
    epoch[0] += 1
    assert not flags.is_set(1) and not flags.is_set(2)
    flags.set(1)  # a flag set after the bump holds
    assert flags.is_set(1)


def test_a_ttl_of_zero_remembers_nothing() -> None:
    never = SoldOutFlags(0, lambda: 0)
    never.set(1)
    assert not never.is_set(1)
