"""The batcher: exact staircase runs over mixed lengths, shared batches, one step per session per batch,
compare-and-set writes, an event loop that stays free while ONNX Runtime runs, and draining."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from service.engine.batcher import MAX_CONFLICT_RETRIES, Batcher, WorkItem, staircase
from service.engine.ort import OnnxRuntime
from service.errors import Draining, PositionConflict, SessionNotFound
from service.metrics import Metrics
from service.state.memory import MemoryStateStore
from service.state.store import SessionRecord

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def runtime(tiny_model_path: Path) -> OnnxRuntime:
    return OnnxRuntime(tiny_model_path, "cpu")


def ids(n: int) -> np.ndarray:
    return RNG.integers(0, 76, n).astype(np.int64)


def alone(rt: OnnxRuntime, row: np.ndarray, h: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, ...]:
    """The row run on its own: (T, V) logits and its final (L, H) states."""
    logits, hn, cn = rt.run(row[None], h[:, None], c[:, None])
    return logits[0], hn[:, 0], cn[:, 0]


def make_batcher(
    rt: OnnxRuntime, store: MemoryStateStore | None = None, size: int = 64, delay: float = 0.02
) -> Batcher:
    store = store or MemoryStateStore(rt.layers, rt.hidden, 256)
    return Batcher(rt, store, Metrics(), max_batch_size=size, max_batch_delay_s=delay)


def test_staircase_equals_each_row_run_alone(runtime: OnnxRuntime) -> None:
    lengths = [1, 7, 3, 7, 12, 1, 5]
    rows = [ids(n) for n in lengths]
    b = len(rows)
    h = RNG.standard_normal((runtime.layers, b, runtime.hidden)).astype(np.float32)
    c = RNG.standard_normal((runtime.layers, b, runtime.hidden)).astype(np.float32)
    flags = [i % 2 == 0 for i in range(b)]
    before = runtime.runs
    logits, hn, cn = staircase(runtime, rows, h, c, flags)
    assert runtime.runs - before == len(set(lengths))  # one run per distinct length
    for i, row in enumerate(rows):
        ref_logits, ref_h, ref_c = alone(runtime, row, h[:, i], c[:, i])
        expected = ref_logits if flags[i] else ref_logits[-1]
        np.testing.assert_allclose(logits[i], expected, atol=1e-5)
        np.testing.assert_allclose(hn[:, i], ref_h, atol=1e-5)
        np.testing.assert_allclose(cn[:, i], ref_c, atol=1e-5)


async def test_concurrent_steps_of_different_sessions_share_runs(runtime: OnnxRuntime) -> None:
    store = MemoryStateStore(runtime.layers, runtime.hidden, 256)
    batcher = make_batcher(runtime, store)
    batcher.start()
    sessions = [(await store.create(ttl_s=60)).session_id for _ in range(40)]
    rows = [ids(1 + i % 3) for i in range(40)]  # three distinct lengths
    runs, batches = runtime.runs, batcher.batches
    results = await asyncio.gather(
        *(batcher.submit(WorkItem(ids=r, session_id=s)) for r, s in zip(rows, sessions, strict=True))
    )
    assert batcher.batches - batches == 1
    assert runtime.runs - runs == 3  # 40 requests, 3 ONNX Runtime calls
    zero = np.zeros((runtime.layers, runtime.hidden), np.float32)
    for row, sid, res in zip(rows, sessions, results, strict=True):
        ref_logits, ref_h, _ = alone(runtime, row, zero, zero)
        np.testing.assert_allclose(res.logits, ref_logits[-1], atol=1e-5)
        assert res.record is not None and res.record.position == len(row)
        _, h, _ = await store.get_state(sid)
        np.testing.assert_allclose(h, ref_h, atol=1e-5)
    await batcher.stop()


async def test_two_steps_of_one_session_never_share_a_batch(runtime: OnnxRuntime) -> None:
    store = MemoryStateStore(runtime.layers, runtime.hidden, 16)
    batcher = make_batcher(runtime, store)
    batcher.start()
    sid = (await store.create(ttl_s=60)).session_id
    pieces = [ids(2), ids(3), ids(1)]
    batches = batcher.batches
    # Submitted together, straight to the batcher (no engine lock): the batcher alone must serialise them.
    results = await asyncio.gather(*(batcher.submit(WorkItem(ids=p, session_id=sid)) for p in pieces))
    assert batcher.batches - batches == 3
    assert [r.position for r in results] == [2, 5, 6]  # applied in arrival order, none lost or doubled
    zero = np.zeros((runtime.layers, runtime.hidden), np.float32)
    ref_logits, ref_h, _ = alone(runtime, np.concatenate(pieces), zero, zero)
    np.testing.assert_allclose(results[-1].logits, ref_logits[-1], atol=1e-5)
    _, h, _ = await store.get_state(sid)
    np.testing.assert_allclose(h, ref_h, atol=1e-5)
    await batcher.stop()


async def test_a_write_that_lost_the_race_fails_and_changes_nothing(runtime: OnnxRuntime) -> None:
    class RacingStore(MemoryStateStore):
        """Another writer (a second server on a shared store) resets the session while the batch runs."""

        async def save_many(self, session_ids, h, c, positions, expected_versions):  # type: ignore[no-untyped-def]
            await self.reset(session_ids[0])
            return await super().save_many(session_ids, h, c, positions, expected_versions)

    store = RacingStore(runtime.layers, runtime.hidden, 4)
    batcher = make_batcher(runtime, store)
    batcher.start()
    sid = (
        await store.create(
            ttl_s=60,
            h=np.ones((runtime.layers, runtime.hidden), np.float32),
            c=np.ones((runtime.layers, runtime.hidden), np.float32),
            position=3,
        )
    ).session_id
    with pytest.raises(PositionConflict) as info:  # the client stated its expectation: refused, as it asked
        await batcher.submit(WorkItem(ids=ids(4), session_id=sid, expected_position=3))
    assert (info.value.expected, info.value.actual) == (3, 0)
    record, h, _ = await store.get_state(sid)
    assert record.position == 0 and not h.any()  # the other writer's reset stands
    # Without a stated position the step is re-run on the new state; a writer that wins every race exhausts the
    # bounded retries, and the 409 says what happened instead of claiming an expectation.
    with pytest.raises(PositionConflict) as info:
        await batcher.submit(WorkItem(ids=ids(4), session_id=sid))
    assert info.value.expected is None and "another writer" in info.value.message
    assert f"tried {MAX_CONFLICT_RETRIES + 1} times" in info.value.message
    record, h, _ = await store.get_state(sid)
    assert record.position == 0 and not h.any()
    await batcher.stop()


async def test_a_step_without_expected_position_is_rerun_after_another_writer(runtime: OnnxRuntime) -> None:
    """Finding: two replicas on one Redis answered 409 "not the expected 24" to predicts that stated no position.
    Another writer moves the session once while the step runs: the step is applied on top of its write."""
    raced = False

    class OnceRacingStore(MemoryStateStore):
        async def save_many(self, session_ids, h, c, positions, expected_versions):  # type: ignore[no-untyped-def]
            nonlocal raced
            if not raced:
                raced = True  # the other replica's step of 2 tokens lands first
                loaded = await self.load_many(session_ids[:1])
                record = loaded.records[0]
                assert isinstance(record, SessionRecord)
                await super().save_many(session_ids[:1], loaded.h, loaded.c, [record.position + 2], [record.version])
            return await super().save_many(session_ids, h, c, positions, expected_versions)

    store = OnceRacingStore(runtime.layers, runtime.hidden, 4)
    batcher = make_batcher(runtime, store)
    batcher.start()
    sid = (await store.create(ttl_s=60, position=3)).session_id
    result = await batcher.submit(WorkItem(ids=ids(4), session_id=sid))
    assert raced and result.position == 3 + 2 + 4  # applied after the other writer's step, not lost, not refused
    await batcher.stop()


async def test_expected_position_and_missing_sessions_fail_alone(runtime: OnnxRuntime) -> None:
    store = MemoryStateStore(runtime.layers, runtime.hidden, 4)
    batcher = make_batcher(runtime, store)
    batcher.start()
    sid = (await store.create(ttl_s=60)).session_id
    ok, conflict, missing, stateless = await asyncio.gather(
        batcher.submit(WorkItem(ids=ids(2), session_id=sid, expected_position=0)),
        batcher.submit(WorkItem(ids=ids(2), session_id=(await store.create(ttl_s=60)).session_id, expected_position=5)),
        batcher.submit(WorkItem(ids=ids(2), session_id="no-such-session")),
        batcher.submit(WorkItem(ids=ids(2))),
        return_exceptions=True,
    )
    assert not isinstance(ok, BaseException) and ok.position == 2
    assert isinstance(conflict, PositionConflict) and conflict.actual == 0
    assert isinstance(missing, SessionNotFound)
    assert not isinstance(stateless, BaseException) and stateless.record is None and stateless.position == 2
    await batcher.stop()


async def test_stateless_steps_carry_their_own_state(runtime: OnnxRuntime) -> None:
    batcher = make_batcher(runtime)
    batcher.start()
    text = ids(9)
    whole = await batcher.submit(WorkItem(ids=text, all_logits=True))
    first = await batcher.submit(WorkItem(ids=text[:4]))
    rest = await batcher.submit(WorkItem(ids=text[4:], state=(first.h, first.c), start_position=4))
    assert whole.logits.shape == (9, runtime.vocab_size)
    np.testing.assert_allclose(rest.logits, whole.logits[-1], atol=1e-5)
    assert rest.position == 9
    await batcher.stop()


async def test_the_event_loop_stays_free_while_onnx_runtime_runs(tiny_model_path: Path) -> None:
    class SlowRuntime(OnnxRuntime):
        def run(self, ids, h, c):  # type: ignore[no-untyped-def]
            time.sleep(0.3)  # a long batch: the real run, made slower
            return super().run(ids, h, c)

    rt = SlowRuntime(tiny_model_path, "cpu")
    batcher = make_batcher(rt, delay=0.0)
    batcher.start()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.get_running_loop().create_task(ticker())
    await batcher.submit(WorkItem(ids=ids(3)))
    task.cancel()
    assert ticks >= 10  # the loop kept running while the 0.3 s batch ran in the worker thread
    await batcher.stop()


async def test_stop_finishes_queued_work_then_refuses(runtime: OnnxRuntime) -> None:
    batcher = make_batcher(runtime, size=2, delay=0.05)
    batcher.start()
    pending = [asyncio.ensure_future(batcher.submit(WorkItem(ids=ids(2)))) for _ in range(7)]
    await asyncio.sleep(0)
    await batcher.stop()
    assert all(p.done() and p.exception() is None for p in pending)
    with pytest.raises(Draining):
        await batcher.submit(WorkItem(ids=ids(1)))


async def test_a_cancelled_step_is_not_applied(runtime: OnnxRuntime) -> None:
    store = MemoryStateStore(runtime.layers, runtime.hidden, 4)
    batcher = make_batcher(runtime, store, delay=0.2)
    batcher.start()
    sid = (await store.create(ttl_s=60)).session_id
    task = asyncio.ensure_future(batcher.submit(WorkItem(ids=ids(3), session_id=sid)))
    await asyncio.sleep(0.01)  # queued, waiting for its batch to fill
    task.cancel()
    ok = await batcher.submit(WorkItem(ids=ids(1), session_id=sid))
    assert ok.position == 1  # only the second step was applied
    await batcher.stop()
