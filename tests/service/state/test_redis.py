"""The Redis state store against a real redis-server: the memory store's behaviour (both backends run the same
checks), the key layout and native TTL, one round trip per batch, compare-and-set between replicas, and Redis
going away and coming back (503 state_store_unavailable, readiness, recovery)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest

from service.errors import (
    SessionExpired,
    SessionNotFound,
    StateMismatch,
    StateStoreUnavailable,
    TooManySessions,
    VersionConflict,
)
from service.state.memory import MemoryStateStore
from service.state.redis import HEADER, RedisStateStore
from service.state.store import SessionRecord, StateStore
from tests.redis_server import RedisServer
from tests.service.conftest import AppFactory

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


@pytest.fixture
async def redis_stores(redis_server: RedisServer) -> AsyncIterator[Callable[..., RedisStateStore]]:
    """Makes Redis stores on the test's redis-server, each with its own connection pool (= one replica)."""
    made: list[RedisStateStore] = []

    def make(max_sessions: int = 8, clock: Callable[[], float] | None = None, **kw: Any) -> RedisStateStore:
        kw.setdefault("model_fingerprint", FINGERPRINT)
        store = RedisStateStore.from_url(redis_server.url, L, H, max_sessions, clock=clock or Clock(), **kw)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


@pytest.fixture(params=["memory", "redis"])
def make_store(request: pytest.FixtureRequest) -> StoreFactory:
    """The same behavioural checks run against both backends."""
    if request.param == "memory":

        def make_memory(max_sessions: int = 8, clock: Callable[[], float] | None = None, **kw: Any) -> StateStore:
            return MemoryStateStore(L, H, max_sessions, clock=clock or Clock(), **kw)

        return make_memory
    factory: StoreFactory = request.getfixturevalue("redis_stores")
    return factory


# ---- the memory store's behaviour, on both backends -----------------------------------------------------------


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


async def test_delete_reset_fork(make_store: StoreFactory) -> None:
    clock = Clock()
    store = make_store(max_sessions=2, clock=clock, evict_idle_after_s=0)
    src = await store.create(ttl_s=50, h=state(1), c=state(2), position=4)
    fork = await store.fork(src.session_id)
    assert fork.session_id != src.session_id and fork.position == 4 and fork.ttl_s == 50
    _, h, c = await store.get_state(fork.session_id)
    np.testing.assert_array_equal(h, state(1))
    np.testing.assert_array_equal(c, state(2))
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


# ---- Redis only ---------------------------------------------------------------------------------------------


async def test_one_binary_key_per_session_with_native_ttl(
    redis_stores: Callable[..., RedisStateStore], redis_server: RedisServer
) -> None:
    store = redis_stores(clock=time.time)
    h = np.arange(L * H, dtype=np.float32).reshape(L, H)
    rec = await store.create(ttl_s=60, h=h, c=-h, position=7)
    client = redis_server.client()
    try:
        key = f"lstm-serve:{'ab' * 8}:s:{rec.session_id}"
        value = client.get(key)
        assert isinstance(value, bytes) and len(value) == HEADER.size + 2 * L * H * 4
        raw = np.frombuffer(value, dtype="<f4", offset=HEADER.size)
        np.testing.assert_array_equal(raw, np.concatenate([h.ravel(), -h.ravel()]))
        assert 58_000 < int(client.pttl(key)) <= 60_000
        marker_ttl = int(client.pttl(f"lstm-serve:{'ab' * 8}:seen:{rec.session_id}"))
        assert (60 + 86_400 - 2) * 1000 < marker_ttl <= (60 + 86_400) * 1000
        # A write refreshes the native TTL.
        client.pexpire(key, 5_000)
        one = np.ones((L, 1, H), np.float32)
        await store.save_many([rec.session_id], one, one, [8], [rec.version])
        assert int(client.pttl(key)) > 58_000
        # Another model's store (other fingerprint) never sees this model's states.
        other = redis_stores(clock=time.time, model_fingerprint="sha256:" + "cd" * 32)
        assert isinstance((await other.load_many([rec.session_id])).records[0], SessionNotFound)
    finally:
        client.close()


async def test_one_round_trip_per_batch(
    redis_stores: Callable[..., RedisStateStore], redis_server: RedisServer
) -> None:
    store = redis_stores(max_sessions=64)
    ids = [(await store.create(ttl_s=60)).session_id for _ in range(16)]
    client = redis_server.client()

    def commands() -> dict[str, int]:
        stats = client.info("commandstats")
        calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
        return {name: n for name, n in calls.items() if name not in ("config|resetstat", "info", "config")}

    try:
        loaded = await store.load_many(ids)
        client.config_resetstat()
        loaded = await store.load_many(ids)
        assert commands() == {"mget": 1}
        versions = [r.version for r in loaded.records]  # type: ignore[union-attr]
        await store.save_many(ids[:1], loaded.h[:, :1], loaded.c[:, :1], [1], versions[:1])  # loads the script
        versions[0] += 1
        client.config_resetstat()
        out = await store.save_many(ids, loaded.h + 1, loaded.c, [1] * 16, versions)
        assert all(isinstance(r, SessionRecord) for r in out)
        # ONE EVALSHA from the client; Redis also counts the commands the script ran: per row a GETRANGE (the
        # header), two SETs (state, marker), a SETRANGE (the new header) and two ZADDs (expiry and LRU indexes).
        assert commands() == {"evalsha": 1, "getrange": 16, "set": 32, "setrange": 16, "zadd": 32}
    finally:
        client.close()


async def test_two_replicas_writing_one_version_exactly_one_wins(redis_stores: Callable[..., RedisStateStore]) -> None:
    a, b = redis_stores(clock=time.time), redis_stores(clock=time.time)  # two connection pools: two replicas
    sid = (await a.create(ttl_s=60)).session_id
    for round_ in range(20):
        read_a = (await a.load_many([sid])).records[0]
        read_b = (await b.load_many([sid])).records[0]
        assert isinstance(read_a, SessionRecord) and read_a == read_b
        ha = np.full((L, 1, H), round_, np.float32)
        hb = np.full((L, 1, H), -round_ - 1, np.float32)
        out_a, out_b = await asyncio.gather(
            a.save_many([sid], ha, ha, [round_ + 1], [read_a.version]),
            b.save_many([sid], hb, hb, [round_ + 1], [read_b.version]),
        )
        results = [out_a[0], out_b[0]]
        winners = [r for r in results if isinstance(r, SessionRecord)]
        assert len(winners) == 1, results
        assert sum(isinstance(r, VersionConflict) for r in results) == 1
        position = round_ + 1
        _, h, _ = await b.get_state(sid)
        expected = ha if isinstance(out_a[0], SessionRecord) else hb
        np.testing.assert_array_equal(h, expected[:, 0])
        assert winners[0].position == position and (await a.get_record(sid)).version == winners[0].version


async def test_expired_evicted_and_deleted_are_told_apart_across_replicas(
    redis_stores: Callable[..., RedisStateStore],
) -> None:
    clock = Clock()
    a = redis_stores(max_sessions=2, clock=clock, evict_idle_after_s=0)
    b = redis_stores(max_sessions=2, clock=clock, evict_idle_after_s=0)
    x = await a.create(ttl_s=10)
    clock.now += 11
    with pytest.raises(SessionExpired) as info:
        await b.get_record(x.session_id)
    assert info.value.reason == "ttl" and b.evictions["ttl"] == 1 and a.evictions["ttl"] == 0
    y = await a.create(ttl_s=100)
    clock.now += 1
    await b.create(ttl_s=100)
    clock.now += 1
    z = await b.create(ttl_s=100)  # full: b evicts y, a's session
    with pytest.raises(SessionExpired) as info:
        await a.get_record(y.session_id)
    assert info.value.reason == "capacity" and b.evictions["capacity"] == 1
    await a.delete(z.session_id)
    with pytest.raises(SessionNotFound):
        await b.get_record(z.session_id)
    # The capacity check is shared: both replicas see the same count.
    assert await a.count() == await b.count() == 1


async def test_native_ttl_and_markers_expire_in_redis(redis_stores: Callable[..., RedisStateStore]) -> None:
    store = redis_stores(clock=time.time, remember_gone_s=0.6)
    rec = await store.create(ttl_s=0.3)
    await asyncio.sleep(0.5)  # Redis expired the state itself; the marker remains
    with pytest.raises(SessionExpired):
        await store.get_record(rec.session_id)
    assert store.evictions["ttl"] == 1 and await store.count() == 0
    await asyncio.sleep(0.6)  # the marker has gone too
    with pytest.raises(SessionNotFound):
        await store.get_record(rec.session_id)


async def test_unreachable_redis_is_unavailable_and_recovers(
    redis_stores: Callable[..., RedisStateStore], redis_server: RedisServer
) -> None:
    store = redis_stores(clock=time.time, health_interval_s=0.1)
    await store.start()
    assert store.available
    rec = await store.create(ttl_s=60)
    redis_server.stop()
    one = np.ones((L, 1, H), np.float32)
    calls: list[Callable[[], Any]] = [
        lambda: store.create(ttl_s=60),
        lambda: store.load_many([rec.session_id]),
        lambda: store.save_many([rec.session_id], one, one, [1], [rec.version]),
        lambda: store.get_record(rec.session_id),
        lambda: store.reset(rec.session_id),
        lambda: store.fork(rec.session_id),
        lambda: store.delete(rec.session_id),
        store.count,
        store.sweep_expired,
    ]
    for call in calls:
        t0 = time.monotonic()
        with pytest.raises(StateStoreUnavailable):
            await call()
        assert time.monotonic() - t0 < 2.0  # short timeouts, no retry loop
    assert not store.available
    redis_server.restart()  # empty: --save ''
    deadline = time.monotonic() + 5
    while not store.available:
        assert time.monotonic() < deadline, "the store did not notice Redis was back"
        await asyncio.sleep(0.05)
    # Scripts are loaded again (NOSCRIPT after the restart) and stale pooled connections are replaced.
    fresh = await store.create(ttl_s=60)
    assert (await store.get_record(fresh.session_id)).position == 0
    with pytest.raises(SessionNotFound):  # Redis lost it: it kept nothing
        await store.get_record(rec.session_id)


# ---- the app on Redis ---------------------------------------------------------------------------------------

PIECES = ["To be, ", "or not ", "to be", ":"]


async def _conversation(client: Any) -> list[Any]:
    created = await client.post("/v1/sessions", json={"text": PIECES[0], "top_k": 5})
    assert created.status_code == 201, created.text
    sid = created.json()["session_id"]
    answers: list[Any] = [created.json()["next"]]
    for piece in PIECES[1:]:
        r = await client.post(f"/v1/sessions/{sid}/predict", json={"text": piece, "top_k": 5})
        assert r.status_code == 200, r.text
        answers.append((r.json()["position"], r.json()["next"]))
    exported = (await client.get(f"/v1/sessions/{sid}/state")).json()
    answers.append((exported["position"], exported["h"], exported["c"]))
    fork = await client.post(f"/v1/sessions/{sid}/fork", json={})
    assert fork.status_code == 201, fork.text
    reset = await client.post(f"/v1/sessions/{sid}/reset")
    assert reset.status_code == 200 and reset.json()["position"] == 0
    forked = (await client.get(f"/v1/sessions/{fork.json()['session_id']}")).json()
    answers.append(forked["position"])
    assert (await client.delete(f"/v1/sessions/{sid}")).status_code == 204
    gone = await client.get(f"/v1/sessions/{sid}")
    answers.append((gone.status_code, gone.json()["error"]["code"]))
    return answers


async def test_the_api_on_redis_answers_as_on_memory(app_factory: AppFactory, redis_server: RedisServer) -> None:
    async with app_factory(state_backend="memory") as client:
        on_memory = await _conversation(client)
    async with app_factory(state_backend="redis", redis_url=redis_server.url) as client:
        on_redis = await _conversation(client)
        info = (await client.get("/v1/model")).json()
        assert info["sessions"]["backend"] == "redis" and info["sessions"]["active"] == 1  # the fork
    assert on_redis == on_memory


async def test_readiness_and_503_follow_redis(app_factory: AppFactory, redis_server: RedisServer) -> None:
    async def wait_ready(client: Any, want: int) -> Any:
        deadline = time.monotonic() + 8
        while True:
            r = await client.get("/readyz")
            if r.status_code == want:
                return r
            assert time.monotonic() < deadline, r.text
            await asyncio.sleep(0.1)

    async with app_factory(state_backend="redis", redis_url=redis_server.url) as client:
        await wait_ready(client, 200)
        sid = (await client.post("/v1/sessions", json={})).json()["session_id"]
        redis_server.stop()
        down = await wait_ready(client, 503)
        assert down.json()["error"]["code"] == "state_store_unavailable" and down.headers["retry-after"] == "1"
        for r in (
            await client.post("/v1/sessions", json={"text": "a"}),
            await client.post(f"/v1/sessions/{sid}/predict", json={"text": "a"}),
            await client.get(f"/v1/sessions/{sid}"),
        ):
            assert r.status_code == 503 and r.json()["error"]["code"] == "state_store_unavailable", r.text
        assert (await client.post("/v1/predict", json={"text": "a"})).status_code == 200  # needs no store
        redis_server.restart()
        await wait_ready(client, 200)
        created = await client.post("/v1/sessions", json={"text": "a"})
        assert created.status_code == 201, created.text
        gone = await client.post(f"/v1/sessions/{sid}/predict", json={"text": "a"})
        assert gone.status_code == 404  # this Redis kept nothing across its restart
