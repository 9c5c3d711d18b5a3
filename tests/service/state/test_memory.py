"""The in-memory state store: layout, compare-and-set, TTL, capacity eviction, fork, and memory per session."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from service.errors import (
    SessionExpired,
    SessionNotFound,
    StateMismatch,
    TooManySessions,
    VersionConflict,
)
from service.state.memory import MemoryStateStore
from service.state.store import SessionRecord

L, H = 2, 4


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def make(max_sessions: int = 8, clock: Clock | None = None, **kw: float) -> MemoryStateStore:
    return MemoryStateStore(L, H, max_sessions, clock=clock or Clock(), **kw)  # type: ignore[arg-type]


def state(value: float) -> np.ndarray:
    return np.full((L, H), value, dtype=np.float32)


async def test_create_load_save_roundtrip() -> None:
    store = make()
    a = await store.create(ttl_s=60)
    b = await store.create(ttl_s=60, h=state(1), c=state(2), position=5)
    assert (a.position, b.position) == (0, 5)
    assert len(a.session_id) >= 22 and a.session_id != b.session_id
    loaded = await store.load_many([b.session_id, a.session_id])
    assert loaded.h.shape == (L, 2, H) and loaded.h.dtype == np.float32
    np.testing.assert_array_equal(loaded.h[:, 0], state(1))
    np.testing.assert_array_equal(loaded.c[:, 0], state(2))
    np.testing.assert_array_equal(loaded.h[:, 1], state(0))
    recs = loaded.records
    assert all(isinstance(r, SessionRecord) for r in recs)
    new_h = np.stack([state(3), state(4)], axis=1)  # (L, 2, H)
    out = await store.save_many([b.session_id, a.session_id], new_h, new_h * 2, [9, 1], [r.version for r in recs])  # type: ignore[union-attr]
    assert [r.position for r in out] == [9, 1]  # type: ignore[union-attr]
    _, h, c = await store.get_state(a.session_id)
    np.testing.assert_array_equal(h, state(4))
    np.testing.assert_array_equal(c, state(8))


async def test_save_is_compare_and_set_on_the_version_read() -> None:
    store = make()
    rec = await store.create(ttl_s=60)
    read = (await store.load_many([rec.session_id])).records[0]
    assert isinstance(read, SessionRecord)
    await store.reset(rec.session_id)  # another writer gets there first
    one = np.ones((L, 1, H), np.float32)
    out = await store.save_many([rec.session_id], one, one, [3], [read.version])
    assert isinstance(out[0], VersionConflict)
    _, h, _ = await store.get_state(rec.session_id)
    assert not h.any() and (await store.get_record(rec.session_id)).position == 0
    # ... and a write with the current version goes through, once.
    current = (await store.get_record(rec.session_id)).version
    first = await store.save_many([rec.session_id], one, one, [3], [current])
    again = await store.save_many([rec.session_id], one, one, [6], [current])
    assert isinstance(first[0], SessionRecord) and isinstance(again[0], VersionConflict)


async def test_missing_rows_are_flagged_and_zero() -> None:
    store = make()
    rec = await store.create(ttl_s=60, h=state(1), c=state(1))
    loaded = await store.load_many(["nope", rec.session_id])
    assert isinstance(loaded.records[0], SessionNotFound)
    assert not loaded.h[:, 0].any() and loaded.h[:, 1].all()


async def test_ttl_expiry_is_lazy_and_swept_and_told_apart_from_unknown() -> None:
    clock = Clock()
    store = make(clock=clock)
    seen: list[tuple[str, int]] = []
    store.add_eviction_listener(lambda reason, n: seen.append((reason, n)))
    a = await store.create(ttl_s=10)
    b = await store.create(ttl_s=10)
    c = await store.create(ttl_s=100)
    clock.now += 5
    await store.reset(a.session_id)  # use restarts the TTL
    clock.now += 6
    assert (await store.get_record(a.session_id)).position == 0
    with pytest.raises(SessionExpired) as info:
        await store.get_record(b.session_id)  # lazily expired on access
    assert info.value.reason == "ttl"
    clock.now += 10
    assert await store.sweep_expired() == 1  # a
    assert await store.count() == 1
    with pytest.raises(SessionExpired):
        await store.get_record(a.session_id)
    loaded = await store.load_many([a.session_id, c.session_id, "never-existed"])
    assert isinstance(loaded.records[0], SessionExpired)
    assert isinstance(loaded.records[1], SessionRecord)
    assert isinstance(loaded.records[2], SessionNotFound)
    assert store.evictions["ttl"] == 2 and seen == [("ttl", 1), ("ttl", 1)]


async def test_full_store_evicts_the_lru_idle_session() -> None:
    clock = Clock()
    store = make(max_sessions=3, clock=clock, evict_idle_after_s=30)
    ids = []
    for _ in range(3):
        ids.append((await store.create(ttl_s=1000)).session_id)
        clock.now += 1
    clock.now += 40
    await store.reset(ids[0])  # ids[1] is now the least recently used
    new = await store.create(ttl_s=1000)
    with pytest.raises(SessionExpired) as info:
        await store.get_record(ids[1])
    assert info.value.reason == "capacity"
    assert store.evictions["capacity"] == 1
    assert await store.count() == 3
    assert (await store.get_record(new.session_id)).position == 0


async def test_full_store_refuses_when_every_session_is_in_use() -> None:
    clock = Clock()
    store = make(max_sessions=2, clock=clock, evict_idle_after_s=30)
    await store.create(ttl_s=1000)
    clock.now += 10
    await store.create(ttl_s=1000)
    with pytest.raises(TooManySessions) as info:
        await store.create(ttl_s=1000)
    assert info.value.retry_after == 20  # the older session becomes evictable in 20 s
    assert await store.count() == 2 and store.evictions["capacity"] == 0


async def test_full_store_sweeps_expired_before_evicting() -> None:
    clock = Clock()
    store = make(max_sessions=2, clock=clock, evict_idle_after_s=1e9)
    old = await store.create(ttl_s=5)
    await store.create(ttl_s=1000)
    clock.now += 6
    await store.create(ttl_s=1000)
    assert store.evictions == {"ttl": 1, "capacity": 0, "deleted": 0}
    with pytest.raises(SessionExpired):
        await store.get_record(old.session_id)


async def test_a_reused_slot_starts_from_zeros() -> None:
    store = make(max_sessions=1)
    a = await store.create(ttl_s=60, h=state(7), c=state(7), position=3)
    await store.delete(a.session_id)
    b = await store.create(ttl_s=60)
    _, h, c = await store.get_state(b.session_id)
    assert not h.any() and not c.any() and b.position == 0


async def test_delete_reset_fork() -> None:
    clock = Clock()
    store = make(max_sessions=2, clock=clock, evict_idle_after_s=0)
    src = await store.create(ttl_s=50, h=state(1), c=state(2), position=4)
    fork = await store.fork(src.session_id)
    assert fork.session_id != src.session_id and fork.position == 4 and fork.ttl_s == 50
    _, h, c = await store.get_state(fork.session_id)
    np.testing.assert_array_equal(h, state(1))
    np.testing.assert_array_equal(c, state(2))
    # The fork is a copy, not a view: changing it leaves the source alone.
    await store.reset(fork.session_id)
    _, h, _ = await store.get_state(src.session_id)
    np.testing.assert_array_equal(h, state(1))
    assert (await store.get_record(src.session_id)).position == 4
    # Forking from a full store may evict, but never the source itself.
    await store.delete(fork.session_id)
    await store.create(ttl_s=50)
    clock.now += 1
    again = await store.fork(src.session_id, ttl_s=5)
    assert again.ttl_s == 5
    assert (await store.get_record(src.session_id)).position == 4
    await store.delete(src.session_id)
    with pytest.raises(SessionNotFound):  # deleted by the client: not found, not "expired"
        await store.get_record(src.session_id)
    assert store.evictions["deleted"] == 2


async def test_state_shape_is_checked() -> None:
    store = make()
    with pytest.raises(StateMismatch):
        await store.create(ttl_s=1, h=np.zeros((L + 1, H), np.float32), c=np.zeros((L + 1, H), np.float32))
    assert await store.count() == 0


async def test_remembered_ids_are_bounded() -> None:
    clock = Clock()
    store = MemoryStateStore(L, H, 8, clock=clock, remember_gone=2)
    ids = [(await store.create(ttl_s=1)).session_id for _ in range(3)]
    clock.now += 2
    await store.sweep_expired()
    errors = [(await store.load_many([i])).records[0] for i in ids]
    assert [type(e) for e in errors] == [SessionNotFound, SessionExpired, SessionExpired]


# Run in a fresh interpreter: in the test process, heap freed by earlier tests is reused without raising RSS.
_RSS_PROBE = """
import asyncio, gc, sys
import numpy as np, psutil
from service.state.memory import MemoryStateStore

async def main(layers, hidden, n):
    proc = psutil.Process()
    gc.collect()
    before = proc.memory_info().rss
    store = MemoryStateStore(layers, hidden, n, evict_idle_after_s=0)
    h = np.random.default_rng(0).standard_normal((layers, hidden)).astype(np.float32)
    for _ in range(n):
        await store.create(ttl_s=600, h=h, c=h)
    gc.collect()
    print((proc.memory_info().rss - before) / n, store.nbytes / n)

asyncio.run(main(*map(int, sys.argv[1:])))
"""


def test_memory_per_session_is_close_to_the_raw_state() -> None:
    """A bundled-size state (2 layers x 512 hidden) costs its 8 KiB plus a little bookkeeping, measured as RSS."""
    layers, hidden, n = 2, 512, 4000
    raw = layers * 2 * hidden * 4  # h and C, float32
    out = subprocess.run(
        [sys.executable, "-c", _RSS_PROBE, str(layers), str(hidden), str(n)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split()
    per_session, array_bytes = float(out[0]), float(out[1])
    # Every byte of every slot was written, so the arrays are resident; allow 15% for dict, ids and pages.
    assert raw <= per_session < raw * 1.15, per_session
    assert array_bytes < raw * 1.02


async def test_a_position_out_of_range_leaves_no_half_made_session() -> None:
    store = MemoryStateStore(L, H, 2)
    with pytest.raises(StateMismatch, match="out of range"):
        await store.create(ttl_s=10, position=2**63)
    assert await store.count() == 0
    await store.create(ttl_s=10)
    await store.create(ttl_s=10)  # both slots are still there
    assert await store.count() == 2
