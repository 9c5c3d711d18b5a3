"""What only the Redis state store does, against a real redis-server: the key layout and native TTL, one round trip
per batch, compare-and-set between replicas, and Redis going away and coming back (503 state_store_unavailable,
readiness, recovery); and the app on Redis answering as on memory. The behaviour both backends share is checked on
both in test_store_contract.py."""

from __future__ import annotations

import asyncio
import shutil
import struct
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import AsyncIterator, Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis

from service.errors import (
    SessionExpired,
    SessionNotFound,
    StateStoreUnavailable,
    VersionConflict,
)
from service.state.redis import HEADER, LUA_HEADER, SCRIPTS, RedisStateStore
from service.state.store import SessionRecord
from tests.redis_server import RedisServer
from tests.service.conftest import AppFactory

ROOT = Path(__file__).resolve().parents[3]
L, H = 2, 4
FINGERPRINT = "sha256:" + "ab" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


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


# ---- the Lua scripts as packaged ----------------------------------------------------------------------------


async def test_every_script_the_store_loads_is_a_packaged_lua_file() -> None:
    """Each script is prelude.lua then its own file under service/state/lua/, found with importlib.resources; no
    .lua file there is left unused; the prelude reads the header as Python writes it."""
    lua = resources.files("service.state") / "lua"
    files = sorted(f.name for f in lua.iterdir() if f.name.endswith(".lua"))
    assert files == sorted(["prelude.lua", *(f"{name}.lua" for name in SCRIPTS)])
    store = RedisStateStore(aioredis.Redis(), L, H, 8, model_fingerprint=FINGERPRINT)  # connects to nothing
    try:
        loaded = [store._save, store._create, store._fork, store._reset, store._delete, store._reap, store._sweep]
        expected = [(lua / "prelude.lua").read_text() + (lua / f"{name}.lua").read_text() for name in SCRIPTS]
        assert [script.script for script in loaded] == expected
    finally:
        await store.close()
    prelude = (lua / "prelude.lua").read_text()
    assert f"local FMT = '{LUA_HEADER}'\n" in prelude and f"local HLEN = {HEADER.size}\n" in prelude
    as_python = LUA_HEADER.replace("c4", "4s").replace("I4", "I")  # Lua struct's c4/I4: 4 chars, a 4-byte uint
    assert as_python == "<4sIIdddddd" and struct.calcsize(as_python) == HEADER.size
    assert struct.unpack(as_python, HEADER.pack(b"LSS1", 1, 2, *range(6))) == (b"LSS1", 1, 2, *map(float, range(6)))


def test_the_wheel_ships_the_lua_scripts(tmp_path: Path) -> None:
    """A wheel built from this pyproject (by its own build backend, no network) holds every .lua file."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for licence in ROOT.glob("LICENSE*"):
        shutil.copy(licence, src / licence.name)
    shutil.copytree(ROOT / "service", src / "service", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "model", src / "model", ignore=shutil.ignore_patterns("__pycache__", "artifacts"))
    backend = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["build-backend"]
    build = f"import sys, {backend} as b; print(b.build_wheel(sys.argv[1]))"
    out = subprocess.run(
        [sys.executable, "-c", build, str(tmp_path)], cwd=src, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    with zipfile.ZipFile(tmp_path / out.stdout.split()[-1]) as wheel:
        shipped = {n for n in wheel.namelist() if n.startswith("service/state/lua/")}
    assert shipped == {f"service/state/lua/{f.name}" for f in (ROOT / "service/state/lua").glob("*.lua")}
    assert len(shipped) == len(SCRIPTS) + 1


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
