"""Snapshots of the in-memory store: the round trip, what is skipped at restore, atomic writes, unusable files,
and the app restoring its sessions across a restart with identical predictions."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.errors import SessionExpired, SessionNotFound
from service.state import snapshot as snapshot_module
from service.state.memory import MemoryStateStore
from service.state.snapshot import (
    SnapshotError,
    Snapshotter,
    read_snapshot,
    write_snapshot,
)
from service.state.store import SessionRecord
from tests.service.conftest import AppFactory

L, H = 2, 4
FP = "sha256:" + "12" * 32


def state(value: float) -> np.ndarray:
    return np.full((L, H), value, dtype=np.float32)


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def filled(n: int = 3, **kw: Any) -> tuple[MemoryStateStore, list[SessionRecord]]:
    store = MemoryStateStore(L, H, 8, **kw)
    recs = [await store.create(ttl_s=600, h=state(i), c=state(-i), position=i) for i in range(n)]
    return store, recs


async def test_round_trip_keeps_ids_records_states_and_versions(tmp_path: Path) -> None:
    store, recs = await filled()
    one = np.ones((L, 1, H), np.float32)
    saved = await store.save_many([recs[1].session_id], one, one * 2, [10], [recs[1].version])
    recs[1] = saved[0]  # type: ignore[assignment]
    path = tmp_path / "sessions.snapshot"
    write_snapshot(store.to_snapshot(FP), path)
    assert names(tmp_path) == ["sessions.snapshot"]  # no temporary file left behind

    fresh = MemoryStateStore(L, H, 8)
    result = fresh.load_snapshot(read_snapshot(path, FP, (L, H)), time.time())
    assert (result.restored, result.expired, result.dropped) == (3, 0, 0)
    for rec in recs:
        got, h, c = await fresh.get_state(rec.session_id)
        assert got == rec
        _, h0, c0 = await store.get_state(rec.session_id)
        np.testing.assert_array_equal(h, h0)
        np.testing.assert_array_equal(c, c0)
    # Compare-and-set carries on from the restored versions; new versions never repeat an old one.
    out = await fresh.save_many([recs[1].session_id], one, one, [11], [recs[1].version])
    assert isinstance(out[0], SessionRecord) and out[0].version > max(r.version for r in recs)
    new = await fresh.create(ttl_s=60)
    assert new.session_id not in {r.session_id for r in recs} and await fresh.count() == 4


async def test_restore_skips_expired_and_keeps_the_most_recent_within_max_sessions(tmp_path: Path) -> None:
    now = [1_000_000.0]
    store = MemoryStateStore(L, H, 8, clock=lambda: now[0])
    short = await store.create(ttl_s=8)
    ids = []
    for _ in range(3):
        now[0] += 1
        ids.append((await store.create(ttl_s=600)).session_id)
    gone = await store.create(ttl_s=1)
    now[0] += 2
    await store.sweep_expired()  # `gone` is remembered as expired
    path = tmp_path / "s.npz"
    write_snapshot(store.to_snapshot(FP), path)
    now[0] += 10  # the downtime: `short` expires meanwhile
    small = MemoryStateStore(L, H, 2, clock=lambda: now[0])
    result = small.load_snapshot(read_snapshot(path, FP, (L, H)), now[0])
    assert (result.restored, result.expired, result.dropped) == (2, 1, 1)
    assert {r for r in small._slot_of} == set(ids[1:])  # the two most recently used
    for sid, reason in ((short.session_id, "ttl"), (ids[0], "capacity"), (gone.session_id, "ttl")):
        with pytest.raises(SessionExpired) as info:
            await small.get_record(sid)
        assert info.value.reason == reason
    with pytest.raises(SessionNotFound):
        await small.get_record("never")


async def test_a_failed_write_leaves_the_previous_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, recs = await filled()
    path = tmp_path / "sessions.snapshot"
    write_snapshot(store.to_snapshot(FP), path)
    before = path.read_bytes()
    await store.create(ttl_s=60)

    def broken(file: Any, **arrays: Any) -> None:
        file.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError):
        write_snapshot(store.to_snapshot(FP), path)
    assert path.read_bytes() == before
    assert names(tmp_path) == ["sessions.snapshot"]
    monkeypatch.undo()
    assert len(read_snapshot(path, FP, (L, H))) == len(recs)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "inconsistent"])
async def test_a_corrupt_snapshot_is_moved_aside_and_the_store_starts_empty(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    store, _ = await filled()
    path = tmp_path / "sessions.snapshot"
    write_snapshot(store.to_snapshot(FP), path)
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"\x00not a zip at all" * 10)
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # readable, but the arrays disagree
        snap = store.to_snapshot(FP)
        write_snapshot(
            snapshot_module.Snapshot(
                **{**{f: getattr(snap, f) for f in snap.__slots__}, "position": snap.position[:1]}
            ),
            path,
        )
    with pytest.raises(SnapshotError) as info:
        read_snapshot(path, FP, (L, H))
    assert info.value.kind == "corrupt"
    fresh = MemoryStateStore(L, H, 8)
    with caplog.at_level(logging.ERROR, logger="service.state.snapshot"):
        assert await Snapshotter(fresh, path, 0, FP).restore() is None
    assert await fresh.count() == 0
    assert not path.exists() and (tmp_path / "sessions.snapshot.corrupt").exists()
    assert any("not restored (corrupt)" in r.getMessage() for r in caplog.records)


async def test_a_snapshot_of_another_model_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store, _ = await filled()
    path = tmp_path / "sessions.snapshot"
    write_snapshot(store.to_snapshot(FP), path)
    for fingerprint, shape in (("sha256:" + "34" * 32, (L, H)), (FP, (L, H + 1))):
        with pytest.raises(SnapshotError) as info:
            read_snapshot(path, fingerprint, shape)
        assert info.value.kind == "other-model"
    other = MemoryStateStore(L, H, 8)
    with caplog.at_level(logging.ERROR, logger="service.state.snapshot"):
        assert await Snapshotter(other, path, 0, "sha256:" + "34" * 32).restore() is None
    assert await other.count() == 0 and (tmp_path / "sessions.snapshot.other-model").exists()
    assert any("other-model" in r.getMessage() and "sha256:3434" in r.getMessage() for r in caplog.records)


async def test_periodic_snapshots_only_when_something_changed(tmp_path: Path) -> None:
    store, _ = await filled()
    snaps = Snapshotter(store, tmp_path / "s.snapshot", 0.05, FP)
    snaps.start()
    try:
        deadline = time.monotonic() + 5
        while snaps.writes < 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        assert snaps.writes == 1  # nothing changed since
        await store.create(ttl_s=60)
        deadline = time.monotonic() + 5
        while snaps.writes < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
    finally:
        await snaps.stop()
    assert snaps.writes == 3  # stop() always writes the final one
    assert len(read_snapshot(tmp_path / "s.snapshot", FP, (L, H))) == 4


async def test_the_app_restores_its_sessions_after_a_restart(app_factory: AppFactory, tmp_path: Path) -> None:
    path = tmp_path / "sessions.snapshot"
    async with app_factory(snapshot_path=path, snapshot_interval_s=0) as client:
        first = await client.post("/v1/sessions", json={"text": "To be, or "})
        sid = first.json()["session_id"]
        other = (await client.post("/v1/sessions", json={})).json()["session_id"]
        await client.delete(f"/v1/sessions/{other}")
        assert not path.exists()  # interval 0: only at shutdown
    assert path.exists()
    async with app_factory(snapshot_path=path) as client:
        info = (await client.get(f"/v1/sessions/{sid}")).json()
        assert info["position"] == 10
        assert (await client.get(f"/v1/sessions/{other}")).status_code == 404
        after_restart = (await client.post(f"/v1/sessions/{sid}/predict", json={"text": "not to"})).json()
        metrics = (await client.get("/metrics")).text
        assert "lstm_serve_active_sessions 1.0" in metrics
    async with app_factory() as client:  # the same conversation without a restart
        sid2 = (await client.post("/v1/sessions", json={"text": "To be, or "})).json()["session_id"]
        continuous = (await client.post(f"/v1/sessions/{sid2}/predict", json={"text": "not to"})).json()
    assert after_restart["position"] == continuous["position"] == 16
    assert after_restart["next"] == continuous["next"]


async def test_temporaries_of_an_interrupted_write_are_removed_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, records = await filled()
    path = tmp_path / "sessions.snapshot"
    await Snapshotter(store, path, 0, FP).write()
    stale = tmp_path / f".{path.name}.4242.0badf00d.tmp"  # what a process killed mid-write leaves
    stale.write_bytes(b"half a snapshot")
    other = tmp_path / ".unrelated.tmp"
    other.write_bytes(b"not ours")
    fresh = MemoryStateStore(L, H, 10)
    with caplog.at_level(logging.WARNING):
        await Snapshotter(fresh, path, 0, FP).restore()
    assert not stale.exists() and other.exists()
    assert "removed 1 temporary snapshot file" in caplog.text
    assert await fresh.count() == len(records)  # the snapshot itself was restored


async def test_stop_reports_a_failed_final_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, _ = await filled()
    snapshotter = Snapshotter(store, tmp_path / "sessions.snapshot", 0, FP)
    assert await snapshotter.stop() is True

    def disk_full(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(snapshot_module, "write_snapshot", disk_full)
    assert await snapshotter.stop() is False
