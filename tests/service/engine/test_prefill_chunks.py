"""Chunked prefill: a long input is fed a chunk per batch turn, so other sessions' short steps run in between; the
result is the same as feeding it whole (the model side is proven by the parity tests; this proves the carrying)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from service.engine.batcher import Batcher, WorkItem
from service.engine.ort import OnnxRuntime
from service.metrics import Metrics
from service.state.memory import MemoryStateStore


@pytest.fixture(scope="module")
def runtime(tiny_model_path: Path) -> OnnxRuntime:
    return OnnxRuntime(tiny_model_path, "cpu")


def ids(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 20, n).astype(np.int64)


def make(rt: OnnxRuntime, chunk: int, store: MemoryStateStore | None = None) -> Batcher:
    store = store or MemoryStateStore(rt.layers, rt.hidden, 16)
    return Batcher(rt, store, Metrics(), max_batch_size=8, max_batch_delay_s=0.0, prefill_chunk=chunk)


async def test_chunked_feed_equals_the_whole_feed(runtime: OnnxRuntime) -> None:
    text = ids(53)
    whole, chunked = make(runtime, 0), make(runtime, 8)
    whole.start()
    chunked.start()
    a = await whole.submit(WorkItem(ids=text, all_logits=True, top_k=3))
    b = await chunked.submit(WorkItem(ids=text, all_logits=True, top_k=3))
    assert b.logits.shape == a.logits.shape == (53, runtime.vocab_size)
    np.testing.assert_allclose(b.logits, a.logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b.h, a.h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.c, a.c, rtol=1e-5, atol=1e-6)
    assert b.position == a.position == 53
    assert a.top is not None and b.top is not None and [t.id for t in a.top] == [t.id for t in b.top]
    assert chunked.batches == 7 and whole.batches == 1  # ceil(53 / 8) batch turns
    await whole.stop()
    await chunked.stop()


async def test_a_session_fed_in_chunks_is_written_once_at_the_end(runtime: OnnxRuntime) -> None:
    store = MemoryStateStore(runtime.layers, runtime.hidden, 16)
    batcher = make(runtime, 4, store)
    batcher.start()
    sid = (await store.create(ttl_s=60)).session_id
    version = (await store.get_record(sid)).version
    result = await batcher.submit(WorkItem(ids=ids(10), session_id=sid))
    record, h, _ = await store.get_state(sid)
    assert record.position == result.position == 10 and record.version == version + 1  # one write, not three
    np.testing.assert_array_equal(h, result.h)
    await batcher.stop()


async def test_short_steps_run_between_the_chunks_of_a_long_prompt(runtime: OnnxRuntime) -> None:
    """Finding: one long input occupied the model for its whole length while other sessions' steps waited."""
    batcher = make(runtime, 16)
    batcher.start()
    done: list[str] = []

    async def run(name: str, item: WorkItem) -> None:
        await batcher.submit(item)
        done.append(name)

    long = asyncio.create_task(run("long", WorkItem(ids=ids(16 * 40))))
    await asyncio.sleep(0)  # queued first
    short = [asyncio.create_task(run(f"short{i}", WorkItem(ids=ids(1, i)))) for i in range(4)]
    await asyncio.gather(long, *short)
    assert done[-1] == "long"  # every short step finished while the long one was still being fed
    await batcher.stop()


async def test_a_cancelled_chunked_step_stops_and_writes_nothing(runtime: OnnxRuntime) -> None:
    store = MemoryStateStore(runtime.layers, runtime.hidden, 16)
    batcher = make(runtime, 2, store)
    batcher.start()
    sid = (await store.create(ttl_s=60)).session_id
    task = asyncio.create_task(batcher.submit(WorkItem(ids=ids(400), session_id=sid)))
    while batcher.batches < 3:  # noqa: ASYNC110 - polls the batcher's counter, which has no event
        await asyncio.sleep(0.001)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    ran = batcher.batches
    await batcher.submit(WorkItem(ids=ids(1)))
    assert batcher.batches <= ran + 2  # the rest of it was dropped, not fed
    assert (await store.get_record(sid)).position == 0
    await batcher.stop()
