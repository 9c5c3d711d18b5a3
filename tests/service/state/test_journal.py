"""The durable mode's journal (service/state/journal.py) and the memory store on it: the file format round trip,
a torn tail, a CRC failure mid-file, compaction into the snapshot, and a "crash" (the store dropped without a
snapshot or a close) whose replay gives every session back bit for bit (in process)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest

from service.config import Settings
from service.errors import SessionNotFound
from service.state import journal as jn
from service.state.memory import MemoryStateStore
from service.state.snapshot import Snapshot, Snapshotter

L, H = 2, 4
FP = "sha256:" + "ab" * 32


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def rand(rng: np.random.Generator, batch: int | None = None) -> np.ndarray:
    shape = (L, H) if batch is None else (L, batch, H)
    return rng.standard_normal(shape).astype(np.float32)


def entries_file(path: Path, frames: list[list[bytes]]) -> bytes:
    data = jn.file_header((L, H), FP) + b"".join(jn.frame(f) for f in frames)
    path.write_bytes(data)
    return data


def test_round_trip_of_every_entry_kind(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    h, c = rand(rng), rand(rng)
    record = (7, 12, 1.5, 2.5, 62.5, 60.0)
    frames = [
        [jn.put_entry(jn.CREATE, 12, "ka.abc", record, h, c), jn.put_entry(jn.SAVE, 13, "xyz", record, c, h)],
        [jn.removal_entry(jn.DELETE, 14, "ka.abc"), jn.removal_entry(jn.EVICT, 15, "xyz")],
    ]
    entries_file(tmp_path / "j", frames)
    entries, problem = jn.read_file(tmp_path / "j", (L, H), FP)
    assert problem is None
    assert [(e.kind, e.seq, e.session_id) for e in entries] == [
        (jn.CREATE, 12, "ka.abc"),
        (jn.SAVE, 13, "xyz"),
        (jn.DELETE, 14, "ka.abc"),
        (jn.EVICT, 15, "xyz"),
    ]
    first = entries[0]
    assert (first.position, first.version, first.created, first.last_used, first.expires, first.ttl) == record
    assert first.h is not None and first.c is not None
    assert first.h.tobytes() == h.tobytes() and first.c.tobytes() == c.tobytes()
    with pytest.raises(jn.JournalError, match="another model"):
        jn.read_file(tmp_path / "j", (L, H), "sha256:" + "cd" * 32)


@pytest.mark.parametrize("cut", [1, 5, 9, 40])
def test_a_torn_tail_is_ignored(tmp_path: Path, cut: int) -> None:
    rng = np.random.default_rng(1)
    record = (1, 2, 0.0, 0.0, 1e12, 60.0)
    frames = [[jn.put_entry(jn.CREATE, 2 + i, f"s{i}", record, rand(rng), rand(rng))] for i in range(3)]
    data = entries_file(tmp_path / "j", frames)
    (tmp_path / "j").write_bytes(data[:-cut])
    entries, problem = jn.read_file(tmp_path / "j", (L, H), FP)
    assert [e.session_id for e in entries] == ["s0", "s1"]
    assert problem is not None and ("cut short" in problem or "CRC" in problem)


def test_a_crc_failure_mid_file_stops_the_replay_with_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(2)
    record = (1, 2, 0.0, 0.0, 1e12, 60.0)
    frames = [[jn.put_entry(jn.CREATE, 2 + i, f"s{i}", record, rand(rng), rand(rng))] for i in range(3)]
    base = tmp_path / "sessions.snapshot"
    path = base.with_name(base.name + ".journal.00000001")
    data = bytearray(entries_file(path, frames))
    second = len(jn.file_header((L, H), FP)) + len(jn.frame(frames[0]))
    data[second + jn.FRAME.size + 20] ^= 0xFF  # a flipped bit inside the second frame, a whole frame after it
    path.write_bytes(bytes(data))
    with pytest.raises(jn.JournalError, match="CRC"):
        jn.read_file(path, (L, H), FP)
    with caplog.at_level(logging.ERROR):
        entries = jn.Journal(base, (L, H), FP).read_all(after_seq=0)
    assert [e.session_id for e in entries] == []  # the whole file is moved aside, none of it applied
    assert "replay stopped" in caplog.text
    assert not path.exists() and path.with_name(path.name + ".corrupt").exists()


async def exercise(store: MemoryStateStore, clock: Clock, rng: np.random.Generator) -> None:
    """Every kind of write: creates (one with an owner, one with a state), batches, a reset, a fork, a delete, a
    capacity eviction."""
    made = [await store.create(ttl_s=600, owner="ka" if i % 2 else "") for i in range(4)]
    made.append(await store.create(ttl_s=600, h=rand(rng), c=rand(rng), position=9, owner="kb"))
    ids = [r.session_id for r in made]
    for step in range(5):
        clock.now += 1
        loaded = await store.load_many(ids)
        versions = [r.version for r in loaded.records]  # type: ignore[union-attr]
        positions = [r.position + 1 for r in loaded.records]  # type: ignore[union-attr]
        await store.save_many(ids, rand(rng, len(ids)), rand(rng, len(ids)), positions, versions)
        if step == 2:
            await store.reset(ids[1])
    fork = await store.fork(ids[4])
    await store.delete(ids[0])
    clock.now += 100
    for _ in range(3):  # the store is full now (max_sessions 8): the LRU idle session is evicted for capacity
        await store.create(ttl_s=600)
    assert fork.session_id.startswith("kb.")


def assert_same_store(a: MemoryStateStore, b: MemoryStateStore) -> None:
    sa, sb = a.to_snapshot(FP, now=0.0), b.to_snapshot(FP, now=0.0)
    order_a, order_b = np.argsort(sa.ids), np.argsort(sb.ids)
    assert sorted(sa.ids) == sorted(sb.ids)
    for name in ("position", "version", "created", "last_used", "expires", "ttl", "h", "c"):
        x, y = getattr(sa, name)[order_a], getattr(sb, name)[order_b]
        assert x.tobytes() == y.tobytes(), name  # bit for bit
    assert sorted(zip(sa.gone_ids, sa.gone_reasons, strict=True)) == sorted(
        zip(sb.gone_ids, sb.gone_reasons, strict=True)
    )
    assert a._owned - b._owned == b._owned - a._owned
    assert a._next_version <= b._next_version


async def restart(path: Path, clock: Clock) -> MemoryStateStore:
    fresh = MemoryStateStore(L, H, 8, evict_idle_after_s=50, clock=clock)
    await Snapshotter(fresh, path, 0, FP).restore()
    await fresh.open_journal(path, FP)
    return fresh


async def test_a_crash_loses_nothing_the_store_returned(tmp_path: Path) -> None:
    """Writes, a snapshot half way, more writes, then the store is dropped with no final snapshot and no close:
    the snapshot plus the journal give every session back bit for bit."""
    path = tmp_path / "sessions.snapshot"
    clock, rng = Clock(), np.random.default_rng(3)
    store = MemoryStateStore(L, H, 8, evict_idle_after_s=50, clock=clock)
    await store.open_journal(path, FP)
    await exercise(store, clock, rng)
    await Snapshotter(store, path, 0, FP).write()
    clock.now += 1
    ids = list(store.to_snapshot(FP).ids)[:3]
    loaded = await store.load_many(ids)
    await store.save_many(
        ids,
        rand(rng, 3),
        rand(rng, 3),
        [5, 6, 7],
        [r.version for r in loaded.records],  # type: ignore[union-attr]
    )
    await store.delete(ids[2])
    # the "crash": nothing more is written; the journal's file descriptors die with the process
    fresh = await restart(path, clock)
    assert_same_store(store, fresh)
    with pytest.raises(SessionNotFound):
        await fresh.get_record(ids[2])
    assert fresh.evictions["capacity"] == 0  # replayed removals are not new evictions


async def test_without_any_snapshot_the_journal_alone_restores_everything(tmp_path: Path) -> None:
    path = tmp_path / "sessions.snapshot"
    clock, rng = Clock(), np.random.default_rng(4)
    store = MemoryStateStore(L, H, 8, evict_idle_after_s=50, clock=clock)
    await store.open_journal(path, FP)
    await exercise(store, clock, rng)
    assert store._journal is not None and store._journal.fsyncs >= 12
    assert_same_store(store, await restart(path, clock))


async def test_a_snapshot_compacts_the_journal(tmp_path: Path) -> None:
    path = tmp_path / "sessions.snapshot"
    clock, rng = Clock(), np.random.default_rng(5)
    store = MemoryStateStore(L, H, 8, evict_idle_after_s=50, clock=clock)
    await store.open_journal(path, FP)
    await exercise(store, clock, rng)
    journal = store._journal
    assert journal is not None
    before = journal.files()
    assert len(before) == 1 and before[0][1].stat().st_size > 1000
    snapshots = Snapshotter(store, path, 0, FP)
    await snapshots.write()
    after = journal.files()
    assert [g for g, _ in after] == [before[0][0] + 1]  # the old generation deleted, a fresh one open
    assert after[0][1].stat().st_size == len(jn.file_header((L, H), FP))
    # the journal's entries were older than the snapshot: a restart replays none of them, and gives the same store
    fresh = MemoryStateStore(L, H, 8, evict_idle_after_s=50, clock=clock)
    await Snapshotter(fresh, path, 0, FP).restore()
    assert await fresh.open_journal(path, FP) == 0
    assert_same_store(store, fresh)
    # a failed snapshot write keeps the journal: nothing is compacted that is not safely in a snapshot
    await store.create(ttl_s=600)
    failing = Snapshotter(store, tmp_path / "missing-dir" / "s.snapshot", 0, FP)
    with pytest.raises(OSError):
        await failing.write()
    assert sum(p.stat().st_size for _, p in journal.files()) > 2 * len(jn.file_header((L, H), FP))
    assert_same_store(store, await restart(path, clock))


async def test_a_torn_last_write_restores_everything_before_it(tmp_path: Path) -> None:
    path = tmp_path / "sessions.snapshot"
    clock, rng = Clock(), np.random.default_rng(6)
    store = MemoryStateStore(L, H, 8, clock=clock)
    await store.open_journal(path, FP)
    kept = await store.create(ttl_s=600, h=rand(rng), c=rand(rng))
    acknowledged: Snapshot = store.to_snapshot(FP, now=0.0)  # rotates: the next write goes to a new file
    await store.create(ttl_s=600)
    journal = store._journal
    assert journal is not None
    last = journal.files()[-1][1]
    last.write_bytes(last.read_bytes()[:-10])  # the process died in the middle of writing that frame
    fresh = await restart(path, clock)
    assert fresh.to_snapshot(FP).ids == [kept.session_id] == acknowledged.ids


def test_durable_needs_the_memory_backend_and_a_snapshot_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="durable needs"):
        Settings(durable=True)
    with pytest.raises(ValueError, match="durable needs"):
        Settings(durable=True, state_backend="redis", snapshot_path=tmp_path / "s")
    assert Settings(durable=True, snapshot_path=tmp_path / "s").durable
