"""A stream row's hand-out on the event loop (service/engine/streams.py): tokens go to a waiting consumer in groups,
its first token, its end and its error at once, none held past the group delay."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from pydantic import ValidationError

from service.config import Settings
from service.engine.sampling import StopMatcher
from service.engine.steps import SampleNext
from service.engine.streams import MAX_GROUP_TOKENS, STREAM_WINDOW, Emitted, Grouping, RowStep, StreamRow

STATE = np.zeros((2, 8), dtype=np.float32)  # (layers, hidden)


def row(grouping: Grouping) -> StreamRow:
    return StreamRow(
        session_id=None,
        next_token=1,
        h=STATE,
        c=STATE,
        position=0,
        version=None,
        draw=SampleNext(1.0, 0, 1.0, 0, 1),
        max_tokens=100,
        stop=StopMatcher([]),
        chars=[chr(65 + i) for i in range(26)],
        grouping=grouping,
    )


def written(r: StreamRow, token: int, finish: str | None = None) -> None:
    """What the commit stage does once a step's token is written."""
    r.advance(RowStep(r, token, STATE, STATE, finish), r.position + 1, None)  # type: ignore[arg-type]


async def waiting_consumer(r: StreamRow) -> asyncio.Task[list[Emitted]]:
    """A consumer that has taken what was ready and now waits for its next tokens."""
    task = asyncio.create_task(r.take())
    await asyncio.sleep(0)
    return task


async def tokens_of(task: asyncio.Task[list[Emitted]], timeout_s: float) -> list[int]:
    return [e.token for e in await asyncio.wait_for(task, timeout_s)]


async def taken_within(r: StreamRow, timeout_s: float) -> list[int] | None:
    """The tokens a waiting consumer gets within timeout_s; None if it is still waiting then."""
    try:
        return [e.token for e in await asyncio.wait_for(r.take(), timeout_s)]
    except TimeoutError:
        return None


async def test_the_first_token_goes_at_once_then_groups_of_the_set_size() -> None:
    r = row(Grouping(tokens=3, delay_s=30.0))
    written(r, 5)
    assert await taken_within(r, 1.0) == [5]  # time to first token is never held
    consumer = await waiting_consumer(r)  # the consumer is waiting for its next tokens
    written(r, 6)
    written(r, 7)
    await asyncio.sleep(0.05)
    assert not consumer.done()  # two of three: held
    written(r, 8)
    assert await tokens_of(consumer, 1.0) == [6, 7, 8]


async def test_a_held_token_goes_out_after_the_delay() -> None:
    r = row(Grouping(tokens=MAX_GROUP_TOKENS, delay_s=0.05))
    written(r, 5)
    await r.take()
    consumer = await waiting_consumer(r)
    started = time.monotonic()
    written(r, 6)
    assert await tokens_of(consumer, 2.0) == [6]
    assert 0.04 <= time.monotonic() - started < 1.0


async def test_the_end_and_an_error_go_at_once() -> None:
    r = row(Grouping(tokens=MAX_GROUP_TOKENS, delay_s=30.0))
    written(r, 5)
    await r.take()
    consumer = await waiting_consumer(r)
    written(r, 6)
    written(r, 7, finish="length")
    assert await tokens_of(consumer, 1.0) == [6, 7]
    assert await taken_within(r, 1.0) == []  # finished, everything taken
    failing = row(Grouping(tokens=MAX_GROUP_TOKENS, delay_s=30.0))
    written(failing, 5)
    await failing.take()
    consumer = await waiting_consumer(failing)
    written(failing, 6)
    failing.fail(RuntimeError("store gone"))
    assert await tokens_of(consumer, 1.0) == [6]  # the tokens before the error first
    with pytest.raises(RuntimeError, match="store gone"):
        await asyncio.wait_for(failing.take(), 1.0)


async def test_groups_of_one_hand_out_every_token_at_once() -> None:
    r = row(Grouping(tokens=1, delay_s=30.0))
    for token in range(5, 9):
        written(r, token)
        assert await taken_within(r, 1.0) == [token]


async def test_a_consumer_that_comes_back_takes_whatever_is_ready() -> None:
    """Holding applies to a consumer waiting for tokens; one that was busy (a slow client's send) gets every token
    that is ready when it asks, as before."""
    r = row(Grouping(tokens=MAX_GROUP_TOKENS, delay_s=30.0))
    written(r, 5)
    await r.take()
    written(r, 6)
    assert await taken_within(r, 1.0) == [6]


def test_the_group_size_must_fit_half_the_window() -> None:
    assert MAX_GROUP_TOKENS * 2 == STREAM_WINDOW  # a parked row always has a whole group ready
    for bad in (0, MAX_GROUP_TOKENS + 1):
        with pytest.raises(ValidationError, match="stream_group_tokens"):
            Settings(stream_group_tokens=bad)
    with pytest.raises(ValidationError, match="stream_group_delay_ms"):
        Settings(stream_group_delay_ms=-1)
    assert Settings(stream_group_tokens=2, stream_group_delay_ms=5).engine_config().stream_group_delay_s == 0.005
