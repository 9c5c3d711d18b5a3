"""Per-key session counts come back with a snapshot: MAX_SESSIONS_PER_KEY holds across a restart (in process)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from service.session_ids import owner_of
from service.state.memory import MemoryStateStore
from service.state.snapshot import read_snapshot, write_snapshot
from tests.service.conftest import AppFactory

FP = "sha256:" + "ab" * 32
L, H = 2, 4


async def test_owner_counts_are_rebuilt_by_a_restore(tmp_path: Path) -> None:
    store = MemoryStateStore(L, H, 16)
    for owner, n in (("alice", 3), ("bob", 2), ("", 1)):
        for _ in range(n):
            await store.create(ttl_s=60, h=np.ones((L, H), np.float32), owner=owner)
    path = tmp_path / "s.snapshot"
    write_snapshot(store.to_snapshot(FP), path)

    fresh = MemoryStateStore(L, H, 16)
    fresh.load_snapshot(read_snapshot(path, FP, (L, H)), time.time())
    assert [await fresh.count_owned(o) for o in ("alice", "bob", "")] == [3, 2, 1]
    alice = [sid for sid in fresh.to_snapshot(FP).ids if owner_of(sid) == "alice"]
    await fresh.delete(alice[0])
    assert await fresh.count_owned("alice") == 2  # deletes keep the count exact, never below what is held
    await fresh.fork(alice[1])
    assert await fresh.count_owned("alice") == 3


async def test_per_key_limit_holds_after_a_restart(app_factory: AppFactory, tmp_path: Path) -> None:
    settings = {
        "api_keys": "key-a,key-b",
        "max_sessions_per_key": 3,
        "snapshot_path": tmp_path / "sessions.snapshot",
        "snapshot_interval_s": 0,
    }
    a, b = {"authorization": "Bearer key-a"}, {"authorization": "Bearer key-b"}
    async with app_factory(**settings) as client:
        owned = [(await client.post("/v1/sessions", json={}, headers=a)).json()["session_id"] for _ in range(3)]
        assert (await client.post("/v1/sessions", json={}, headers=b)).status_code == 201
    async with app_factory(**settings) as client:  # a restart: the sessions come back from the final snapshot
        assert (await client.get(f"/v1/sessions/{owned[0]}", headers=a)).status_code == 200
        r = await client.post("/v1/sessions", json={}, headers=a)
        assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_sessions", r.text
        assert r.json()["error"]["details"]["per_key"] is True
        assert (await client.post("/v1/sessions", json={}, headers=b)).status_code == 201  # b holds 2 of 3
        assert (await client.delete(f"/v1/sessions/{owned[0]}", headers=a)).status_code == 204
        assert (await client.post("/v1/sessions", json={}, headers=a)).status_code == 201  # one more after a delete
        assert (await client.post("/v1/sessions", json={}, headers=a)).status_code == 429  # and exactly one
