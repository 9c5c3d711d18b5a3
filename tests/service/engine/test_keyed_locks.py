"""Per-key FIFO locks (service/engine/keyed_locks.py): holders of one key run one at a time in arrival order, other
keys do not wait, and the table holds only the keys someone holds or waits for (a waiter cancelled included)."""

from __future__ import annotations

import asyncio

import pytest

from service.engine.keyed_locks import KeyedLocks


async def test_one_key_runs_in_arrival_order_and_other_keys_do_not_wait() -> None:
    locks = KeyedLocks()
    order: list[str] = []
    gate = asyncio.Event()

    async def hold(key: str, name: str, wait: bool) -> None:
        async with locks.hold(key):
            order.append(name)
            if wait:
                await gate.wait()

    first = asyncio.create_task(hold("a", "a1", wait=True))
    await asyncio.sleep(0)
    later = [asyncio.create_task(hold("a", f"a{i}", wait=False)) for i in (2, 3, 4)]
    await hold("b", "b1", wait=False)  # another key: not behind a1
    await asyncio.sleep(0)
    assert order == ["a1", "b1"] and len(locks) == 1  # "b" is gone, "a" is held and waited for
    gate.set()
    await asyncio.gather(first, *later)
    assert order == ["a1", "b1", "a2", "a3", "a4"]
    assert len(locks) == 0


async def test_a_waiter_cancelled_leaves_nothing_behind() -> None:
    locks = KeyedLocks()
    gate = asyncio.Event()

    async def hold() -> None:
        async with locks.hold("a"):
            await gate.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    gate.set()
    await holder
    assert len(locks) == 0
    async with locks.hold("a"):  # free again at once
        assert len(locks) == 1


async def test_an_error_inside_releases_the_key() -> None:
    locks = KeyedLocks()
    with pytest.raises(RuntimeError):
        async with locks.hold("a"):
            raise RuntimeError("inside")
    assert len(locks) == 0
    async with asyncio.timeout(1.0), locks.hold("a"):  # not left locked
        pass


async def test_a_waiter_cancelled_as_the_key_reaches_it_hands_it_on() -> None:
    locks = KeyedLocks()
    got: list[str] = []

    async def wait_for(name: str) -> None:
        async with locks.hold("a"):
            got.append(name)

    async with locks.hold("a"):
        first = asyncio.create_task(wait_for("first"))
        second = asyncio.create_task(wait_for("second"))
        await asyncio.sleep(0)  # both wait, in this order
    first.cancel()  # the release above handed "a" to `first`, which has not run yet
    with pytest.raises(asyncio.CancelledError):
        await first
    async with asyncio.timeout(1.0):
        await second  # the key went on to `second` instead of staying held by a request that is gone
    assert got == ["second"] and len(locks) == 0


async def test_a_free_key_is_taken_without_waiting_for_the_event_loop() -> None:
    locks = KeyedLocks()
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    task = asyncio.create_task(other())
    async with locks.hold("a"):
        assert ran == []  # taking a free key gave no other task a turn
    await task
