"""The state store contract: every behaviour the engine relies on, checked against both backends (the in-memory
store and the Redis store on a real redis-server) by the same tests. The backend-specific tests are beside this
file: test_memory.py (bounded memory of gone ids, bytes per session, ...) and test_redis.py (key layout, native
TTL, round trips, replicas, Redis going away)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

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
from service.state.redis import RedisStateStore
from service.state.store import SessionRecord, StateStore
from tests.redis_server import RedisServer

L, H = 2, 4
FINGERPRINT = "sha256:" + "ab" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def state(value: float) -> np.ndarray:
    return np.full((L, H), value, dtype=np.float32)


StoreFactory = Callable[..., StateStore]


@pytest.fixture(params=["memory", "redis"])
async def make_store(request: pytest.FixtureRequest) -> AsyncIterator[StoreFactory]:
    """`make_store(max_sessions=8, clock=None, **backend options)`: a store of the parametrised backend. Redis
    stores share the test's redis-server, each with its own connection pool, and are closed at the end."""
    if request.param == "memory":

        def make_memory(max_sessions: int = 8, clock: Callable[[], float] | None = None, **kw: Any) -> StateStore:
            return MemoryStateStore(L, H, max_sessions, clock=clock or Clock(), **kw)

        yield make_memory
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    made: list[RedisStateStore] = []

    def make_redis(max_sessions: int = 8, clock: Callable[[], float] | None = None, **kw: Any) -> StateStore:
        kw.setdefault("model_fingerprint", FINGERPRINT)
        store = RedisStateStore.from_url(server.url, L, H, max_sessions, clock=clock or Clock(), **kw)
        made.append(store)
        return store

    yield make_redis
    for store in made:
        await store.close()


async def test_create_load_save_roundtrip(make_store: StoreFactory) -> None:
    store = make_store()
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
    assert h.dtype == np.float32 and h.flags.writeable


async def test_save_is_compare_and_set_on_the_version_read(make_store: StoreFactory) -> None:
    store = make_store()
    rec = await store.create(ttl_s=60)
    read = (await store.load_many([rec.session_id])).records[0]
    assert isinstance(read, SessionRecord)
    await store.reset(rec.session_id)  # another writer gets there first
    one = np.ones((L, 1, H), np.float32)
    out = await store.save_many([rec.session_id], one, one, [3], [read.version])
    assert isinstance(out[0], VersionConflict) and out[0].actual_position == 0
    _, h, _ = await store.get_state(rec.session_id)
    assert not h.any() and (await store.get_record(rec.session_id)).position == 0
    # ... and a write with the current version goes through, once.
    current = (await store.get_record(rec.session_id)).version
    first = await store.save_many([rec.session_id], one, one, [3], [current])
    again = await store.save_many([rec.session_id], one, one, [6], [current])
    assert isinstance(first[0], SessionRecord) and isinstance(again[0], VersionConflict)
    assert (await store.get_record(rec.session_id)).position == 3


async def test_a_batch_applies_each_row_on_its_own(make_store: StoreFactory) -> None:
    store = make_store()
    a, b = await store.create(ttl_s=60), await store.create(ttl_s=60)
    two = np.stack([state(5), state(6)], axis=1)
    out = await store.save_many([a.session_id, b.session_id], two, two, [1, 1], [a.version, b.version + 99])
    assert isinstance(out[0], SessionRecord) and isinstance(out[1], VersionConflict)
    _, ha, _ = await store.get_state(a.session_id)
    _, hb, _ = await store.get_state(b.session_id)
    np.testing.assert_array_equal(ha, state(5))
    assert not hb.any() and (await store.get_record(b.session_id)).position == 0


async def test_a_large_batch_applies_each_row_on_its_own(make_store: StoreFactory) -> None:
    """Many rows in one call (the memory store takes its array path past a few rows): written rows, a stale
    version, an unknown id and a session named twice each get what they would get one call per row."""
    store = make_store(max_sessions=16)
    recs = [await store.create(ttl_s=60 + i) for i in range(10)]
    ids = [r.session_id for r in recs] + ["nope", recs[0].session_id]
    versions = [r.version for r in recs] + [1, recs[0].version]
    versions[3] += 99  # stale
    n = len(ids)
    h = np.stack([state(i + 1) for i in range(n)], axis=1)  # (L, n, H)
    out = await store.save_many(ids, h, h * 2, list(range(1, n + 1)), versions)
    assert isinstance(out[3], VersionConflict) and out[3].actual_position == 0
    assert isinstance(out[10], SessionNotFound)
    # The second write of session 0 compares on the version the first one read: the first wins, it conflicts.
    assert isinstance(out[11], VersionConflict) and out[11].actual_position == 1
    written = [i for i in range(10) if i != 3]
    for i in written:
        record = out[i]
        assert isinstance(record, SessionRecord)
        assert record.session_id == recs[i].session_id and record.position == i + 1
        assert record.ttl_s == recs[i].ttl_s and record.created_at == recs[i].created_at
        assert record.expires_at == record.last_used_at + record.ttl_s
        assert record == await store.get_record(recs[i].session_id)
        _, hs, cs = await store.get_state(recs[i].session_id)
        np.testing.assert_array_equal(hs, state(i + 1))
        np.testing.assert_array_equal(cs, state(i + 1) * 2)
        assert record.version != recs[i].version
    _, h3, _ = await store.get_state(recs[3].session_id)
    assert not h3.any() and (await store.get_record(recs[3].session_id)).position == 0


async def test_missing_rows_are_flagged_and_zero(make_store: StoreFactory) -> None:
    store = make_store()
    rec = await store.create(ttl_s=60, h=state(1), c=state(1))
    loaded = await store.load_many(["nope", rec.session_id])
    assert isinstance(loaded.records[0], SessionNotFound)
    assert not loaded.h[:, 0].any() and loaded.h[:, 1].all()
    out = await store.save_many(["nope"], np.ones((L, 1, H), np.float32), np.ones((L, 1, H), np.float32), [1], [1])
    assert isinstance(out[0], SessionNotFound)


async def test_ttl_expiry_is_lazy_and_swept_and_told_apart_from_unknown(make_store: StoreFactory) -> None:
    clock = Clock()
    store = make_store(clock=clock)
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


async def test_sessions_are_counted_per_owner_through_every_removal(make_store: StoreFactory) -> None:
    """count_owned follows creation, fork (the copy has the source's owner), delete, lazy expiry, sweep and
    capacity eviction; sessions made without an owner are nobody's."""
    clock = Clock()
    store = make_store(max_sessions=5, clock=clock, evict_idle_after_s=0)
    made = []
    for owner, ttl in (("ka", 10), ("ka", 100), ("kb", 100), ("", 100)):
        made.append(await store.create(ttl_s=ttl, owner=owner))
        clock.now += 1  # distinct last uses: the eviction order below does not hang on ties
    a1, _, b1, anon = made
    assert a1.session_id.startswith("ka.") and "." not in anon.session_id
    fork = await store.fork(b1.session_id)
    assert fork.session_id.startswith("kb.")
    assert [await store.count_owned(o) for o in ("ka", "kb", "kc")] == [2, 2, 0]
    await store.delete(fork.session_id)
    clock.now += 7
    with pytest.raises(SessionExpired):
        await store.get_record(a1.session_id)  # expired on access
    assert [await store.count_owned(o) for o in ("ka", "kb")] == [1, 1]
    for _ in range(4):  # fill the store: the least recently used (a2, then b1) are evicted for capacity
        clock.now += 1
        await store.create(ttl_s=100, owner="kc")
    assert [await store.count_owned(o) for o in ("ka", "kb", "kc")] == [0, 0, 4]
    clock.now += 200
    await store.sweep_expired()
    assert await store.count_owned("kc") == 0


async def test_full_store_evicts_the_lru_idle_session(make_store: StoreFactory) -> None:
    clock = Clock()
    store = make_store(max_sessions=3, clock=clock, evict_idle_after_s=30)
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


async def test_full_store_refuses_when_every_session_is_in_use(make_store: StoreFactory) -> None:
    clock = Clock()
    store = make_store(max_sessions=2, clock=clock, evict_idle_after_s=30)
    await store.create(ttl_s=1000)
    clock.now += 10
    await store.create(ttl_s=1000)
    with pytest.raises(TooManySessions) as info:
        await store.create(ttl_s=1000)
    assert info.value.retry_after == 20  # the older session becomes evictable in 20 s
    assert await store.count() == 2 and store.evictions["capacity"] == 0


async def test_full_store_sweeps_expired_before_evicting(make_store: StoreFactory) -> None:
    clock = Clock()
    store = make_store(max_sessions=2, clock=clock, evict_idle_after_s=1e9)
    old = await store.create(ttl_s=5)
    await store.create(ttl_s=1000)
    clock.now += 6
    await store.create(ttl_s=1000)
    assert store.evictions == {"ttl": 1, "capacity": 0, "deleted": 0}
    with pytest.raises(SessionExpired):
        await store.get_record(old.session_id)


async def test_a_reused_slot_starts_from_zeros(make_store: StoreFactory) -> None:
    """The place a deleted session freed (the memory store's slot) holds nothing of it for the next one."""
    store = make_store(max_sessions=1)
    a = await store.create(ttl_s=60, h=state(7), c=state(7), position=3)
    await store.delete(a.session_id)
    b = await store.create(ttl_s=60)
    _, h, c = await store.get_state(b.session_id)
    assert not h.any() and not c.any() and b.position == 0


async def test_delete_reset_fork(make_store: StoreFactory) -> None:
    clock = Clock()
    store = make_store(max_sessions=2, clock=clock, evict_idle_after_s=0)
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
    with pytest.raises(SessionNotFound):
        await store.delete(src.session_id)
    with pytest.raises(SessionNotFound):
        await store.fork(src.session_id)
    assert store.evictions["deleted"] == 2


async def test_state_shape_is_checked(make_store: StoreFactory) -> None:
    store = make_store()
    with pytest.raises(StateMismatch):
        await store.create(ttl_s=1, h=np.zeros((L + 1, H), np.float32), c=np.zeros((L + 1, H), np.float32))
    assert await store.count() == 0


async def test_the_per_key_limit_is_checked_and_applied_in_one_step(
    make_store: StoreFactory, request: pytest.FixtureRequest
) -> None:
    """200 concurrent creates for one key with max_owned=50: exactly 50 succeed, the rest get the per-key 429
    (for Redis across two store instances, as two replicas would be); forks count against the same limit, other
    keys and ownerless sessions do not."""
    replicas = 2 if request.node.callspec.params["make_store"] == "redis" else 1
    stores = [make_store(max_sessions=500) for _ in range(replicas)]
    first = stores[0]
    in_flight = [asyncio.Semaphore(8) for _ in stores]  # many at once, within Redis timeouts on a busy machine

    async def create(i: int) -> SessionRecord:
        async with in_flight[i % replicas]:
            return await stores[i % replicas].create(ttl_s=60, owner="kx", max_owned=50)

    results = await asyncio.gather(*(create(i) for i in range(200)), return_exceptions=True)
    made = [r for r in results if isinstance(r, SessionRecord)]
    refused = [r for r in results if isinstance(r, TooManySessions)]
    assert (len(made), len(refused)) == (50, 150), [r for r in results if not isinstance(r, SessionRecord)][:3]
    assert all(r.per_key and r.max_sessions == 50 and r.retry_after == 1.0 for r in refused)
    assert await first.count_owned("kx") == 50 and await first.count() == 50
    forks = await asyncio.gather(
        *(stores[i % len(stores)].fork(made[0].session_id, max_owned=50) for i in range(4)), return_exceptions=True
    )
    assert all(isinstance(f, TooManySessions) and f.per_key for f in forks)
    await first.delete(made[1].session_id)
    forks = await asyncio.gather(
        *(stores[i % len(stores)].fork(made[0].session_id, max_owned=50) for i in range(4)), return_exceptions=True
    )
    assert sum(isinstance(f, SessionRecord) for f in forks) == 1
    assert await first.count_owned("kx") == 50
    await first.create(ttl_s=60, owner="ky", max_owned=50)
    await first.create(ttl_s=60, owner="", max_owned=1)  # ids without an owner have no per-key limit
    await first.create(ttl_s=60, owner="", max_owned=1)
    await first.create(ttl_s=60, owner="kx")  # max_owned=0: no limit
    assert await first.count_owned("kx") == 51
