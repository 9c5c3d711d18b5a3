"""The embedded in-memory state store: preallocated NumPy arrays, one slot per session.

Layout: h and C are each (max_sessions, layers, hidden) float32, allocated once at start (np.zeros, so the
operating system commits a slot's pages only when it is first written); record fields are one NumPy array per
field; a dict maps session id -> slot. A session therefore costs its raw state (layers x 2 x hidden x 4 bytes)
plus about 200 bytes of bookkeeping, not a Python object per number. Measured for the bundled shape (2 layers,
hidden 512: 8192 raw bytes): 8248 bytes of arrays per slot, 140-190 bytes of Python bookkeeping (tracemalloc),
8.5-8.9 KB of RSS per session with 10k-50k sessions written (1.04-1.08x raw; tests/service/state asserts < 1.15x).

When the store is full, `create` first sweeps expired sessions, then evicts the least-recently-used session if
it has been idle at least `evict_idle_after_s` (reason `capacity`); otherwise it refuses with TooManySessions and
a Retry-After of when a slot will free up. So abandoned sessions make room for new ones, but a flood of new
sessions cannot push out sessions that are in active use. `evict_idle_after_s=0` gives plain LRU eviction.

Ids of sessions removed by the server (TTL or capacity) are remembered in a bounded FIFO so that a later request
for one is answered `session_expired`, not `session_not_found`. Not thread-safe: the engine calls it from the
event loop only.

Persistence is the store's own: `to_snapshot`/`load_snapshot` for the periodic snapshots (service/state/snapshot.py
writes the file), and in durable mode (`open_journal`) a journal (service/state/journal.py): every mutating call
appends its changes and waits for one fsync before it returns, so what it returned survives a SIGKILL.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path

import numpy as np

from service.errors import (
    EngineError,
    SessionExpired,
    SessionNotFound,
    StateMismatch,
    TooManySessions,
    VersionConflict,
)
from service.session_ids import is_client_tag, new_session_id, owner_of
from service.state import journal as jn
from service.state.snapshot import RestoreResult, Snapshot
from service.state.store import (
    EvictionReason,
    LoadedStates,
    SessionRecord,
    StateStore,
)

log = logging.getLogger(__name__)


class MemoryStateStore(StateStore):
    def __init__(
        self,
        layers: int,
        hidden: int,
        max_sessions: int,
        *,
        evict_idle_after_s: float = 60.0,
        remember_gone: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be >= 1")
        super().__init__(layers, hidden, max_sessions)
        self.evict_idle_after_s = evict_idle_after_s
        self._remember_gone = remember_gone
        self._clock = clock
        n = max_sessions
        self._h = np.zeros((n, layers, hidden), dtype=np.float32)  # (slots, layers, hidden)
        self._c = np.zeros((n, layers, hidden), dtype=np.float32)  # (slots, layers, hidden)
        self._position = np.zeros(n, dtype=np.int64)
        self._version = np.zeros(n, dtype=np.int64)
        self._created = np.zeros(n, dtype=np.float64)
        # Free slots hold +inf here so argmin finds the least-recently-used live slot and sweeps skip them.
        self._last_used = np.full(n, np.inf, dtype=np.float64)
        self._expires = np.full(n, np.inf, dtype=np.float64)
        self._ttl = np.zeros(n, dtype=np.float64)
        self._slot_of: dict[str, int] = {}
        self._id_of: list[str | None] = [None] * n
        self._free = np.arange(n - 1, -1, -1, dtype=np.int64)  # a stack: slot 0 is handed out first
        self._n_free = n
        self._gone: OrderedDict[str, EvictionReason] = OrderedDict()  # recently expired/evicted id -> reason
        self._next_version = 1
        self._owned: Counter[str] = Counter()  # owner -> live sessions, for per-key limits
        self._journal: jn.Journal | None = None  # durable mode only
        self._pending: list[bytes] = []  # journal entries of the call in progress

    # ---- bookkeeping -------------------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes of the preallocated arrays (states and records), the bulk of the store's memory."""
        arrays = (
            self._h,
            self._c,
            self._position,
            self._version,
            self._created,
            self._last_used,
            self._expires,
            self._ttl,
            self._free,
        )
        return sum(a.nbytes for a in arrays)

    def _bump(self) -> int:
        self._next_version += 1
        return self._next_version

    def _record(self, slot: int) -> SessionRecord:
        sid = self._id_of[slot]
        assert sid is not None
        return SessionRecord(
            session_id=sid,
            position=int(self._position[slot]),
            version=int(self._version[slot]),
            created_at=float(self._created[slot]),
            last_used_at=float(self._last_used[slot]),
            expires_at=float(self._expires[slot]),
            ttl_s=float(self._ttl[slot]),
        )

    def _missing(self, session_id: str) -> EngineError:
        reason = self._gone.get(session_id)
        if reason is None:
            return SessionNotFound(session_id)
        return SessionExpired(session_id, reason)

    def _lookup(self, session_id: str, now: float) -> int | EngineError:
        """The live slot of a session, or the error saying why there is none; expires it lazily if due."""
        slot = self._slot_of.get(session_id)
        if slot is None:
            return self._missing(session_id)
        if self._expires[slot] <= now:
            self._remove(slot, "ttl")
            self._record_evictions("ttl", 1)
            return SessionExpired(session_id, "ttl")
        return slot

    def _slot(self, session_id: str, now: float) -> int:
        found = self._lookup(session_id, now)
        if isinstance(found, EngineError):
            raise found
        return found

    def _remove(self, slot: int, reason: EvictionReason) -> None:
        sid = self._id_of[slot]
        assert sid is not None
        del self._slot_of[sid]
        self._owned[owner_of(sid)] -= 1
        self._id_of[slot] = None
        self._last_used[slot] = np.inf
        self._expires[slot] = np.inf
        self._free[self._n_free] = slot
        self._n_free += 1
        if reason != "deleted":  # a client that deleted its session is told "not found", as for any unknown id
            self._forget(sid, reason)
        if self._journal is not None and reason != "ttl":  # a TTL removal follows from the times journaled
            kind = jn.DELETE if reason == "deleted" else jn.EVICT
            self._pending.append(jn.removal_entry(kind, self._bump(), sid))

    def _forget(self, session_id: str, reason: EvictionReason) -> None:
        """Remember a removed id (bounded, oldest out first) so a later request for it is told why it is gone."""
        self._gone[session_id] = reason
        self._gone.move_to_end(session_id)
        while len(self._gone) > self._remember_gone:
            self._gone.popitem(last=False)

    def _allocate(self, now: float, protect: int | None = None) -> int:
        """A free slot, sweeping or evicting for capacity if needed; `protect` is never evicted (a fork's source)."""
        if self._n_free == 0:
            self._sweep(now)
        if self._n_free == 0:
            last_used = self._last_used
            if protect is not None:
                last_used = last_used.copy()
                last_used[protect] = np.inf
            lru = int(np.argmin(last_used))
            idle_since = float(last_used[lru])
            if math.isfinite(idle_since) and now - idle_since >= self.evict_idle_after_s:
                self._remove(self._fair_victim(last_used, now, lru), "capacity")
                self._record_evictions("capacity", 1)
            else:
                # The earliest a slot frees: the LRU session becomes evictable, or some session expires.
                frees_at = min(idle_since + self.evict_idle_after_s, float(np.min(self._expires)))
                retry = frees_at - now if math.isfinite(frees_at) else self.evict_idle_after_s
                raise TooManySessions(self.max_sessions, retry_after=max(1.0, math.ceil(retry)))
        self._n_free -= 1
        return int(self._free[self._n_free])

    def _fair_victim(self, last_used: np.ndarray, now: float, lru: int) -> int:
        """The slot to evict: the least recently used evictable session of an anonymous client (its tag, see
        service/session_ids.py) holding more than its share (max_sessions / owners holding sessions), so that one
        client flooding the store evicts its own sessions before anyone else's; the plain LRU session when no client
        is over its share or none of theirs is evictable yet. API keys have their own per-key limit instead."""
        live = [owner for owner, n in self._owned.items() if n > 0]
        if len(live) < 2:
            return lru
        share = self.max_sessions // len(live)
        over = {owner for owner in live if self._owned[owner] > share and is_client_tag(owner)}
        if not over:
            return lru
        evictable_before = now - self.evict_idle_after_s
        for slot in np.argsort(last_used, kind="stable"):  # least recent first; stops at the first busy one
            if not last_used[slot] <= evictable_before:
                break
            sid = self._id_of[int(slot)]
            if sid is not None and owner_of(sid) in over:
                return int(slot)
        return lru

    def _occupy(self, slot: int, now: float, ttl_s: float, position: int, owner: str) -> SessionRecord:
        # The numeric fields first: a position the int64 array cannot hold fails here, before the id is recorded,
        # so a failed create leaves no half-made session (the slot goes back to the free stack).
        try:
            self._position[slot] = position
        except OverflowError:
            self._free[self._n_free] = slot
            self._n_free += 1
            raise StateMismatch(f"position {position} is out of range") from None
        sid = new_session_id(owner)
        while sid in self._slot_of or sid in self._gone:  # 128 random bits: never in practice
            sid = new_session_id(owner)
        self._slot_of[sid] = slot
        self._owned[owner] += 1
        self._id_of[slot] = sid
        self._version[slot] = self._bump()
        self._created[slot] = now
        self._last_used[slot] = now
        self._ttl[slot] = ttl_s
        self._expires[slot] = now + ttl_s
        return self._record(slot)

    def _check_owned(self, owner: str, max_owned: int) -> None:
        """The per-key limit, checked in the same step as the creation (nothing awaits in between)."""
        if owner and max_owned > 0 and self._owned[owner] >= max_owned:
            raise TooManySessions(max_owned, retry_after=1.0, per_key=True)

    def _check_state(self, a: np.ndarray, name: str) -> np.ndarray:
        if a.shape != self.state_shape:
            raise StateMismatch(f"{name} has shape {list(a.shape)}, the model needs {list(self.state_shape)}")
        return a.astype(np.float32, copy=False)

    def _sweep(self, now: float) -> int:
        due = np.flatnonzero(self._expires <= now)  # free slots hold +inf, so only live ones
        for slot in due:
            self._remove(int(slot), "ttl")
        self._record_evictions("ttl", len(due))
        return len(due)

    # ---- the journal (durable mode) ----------------------------------------------------------------------
    def _journal_put(self, kind: int, slot: int) -> None:
        if self._journal is None:
            return
        sid = self._id_of[slot]
        assert sid is not None
        record = (
            int(self._position[slot]),
            int(self._version[slot]),
            float(self._created[slot]),
            float(self._last_used[slot]),
            float(self._expires[slot]),
            float(self._ttl[slot]),
        )
        self._pending.append(jn.put_entry(kind, record[1], sid, record, self._h[slot], self._c[slot]))

    async def _commit(self) -> None:
        """Durable mode: this call's entries in one frame, fsynced before the call returns (a batch's group commit).
        The frame is written before the first await, so frames are in the order of the changes."""
        if self._journal is None or not self._pending:
            return
        entries, self._pending = self._pending, []
        await self._journal.append(entries, self._next_version)

    @property
    def durable(self) -> bool:
        return self._journal is not None

    async def open_journal(self, base: Path, fingerprint: str) -> int:
        """Durable mode: replay the journal files beside `base` (the snapshot path) on top of what was restored,
        then journal every change from now on. Call after the snapshot is restored; returns the entries replayed."""
        if self._journal is not None:
            raise RuntimeError("the journal is already open")
        journal = jn.Journal(base, self.state_shape, fingerprint)
        entries = await asyncio.to_thread(journal.read_all, self._next_version)
        now = self._clock()
        top = self._next_version
        for entry in entries:
            top = max(top, entry.seq, entry.version)
            if entry.kind in jn.PUT_KINDS:
                self._replay_put(entry)
            else:
                slot = self._slot_of.get(entry.session_id)
                if slot is not None:
                    self._remove(slot, "deleted" if entry.kind == jn.DELETE else "capacity")
                elif entry.kind == jn.EVICT:
                    self._forget(entry.session_id, "capacity")
        self._next_version = top
        expired = np.flatnonzero(self._expires <= now)  # expired while the server was down: remembered as such
        for slot in expired.tolist():
            self._remove(int(slot), "ttl")
        await asyncio.to_thread(journal.open)
        self._journal = journal
        if entries:
            log.info(
                "session journal replayed",
                extra={"entries": len(entries), "sessions": len(self._slot_of), "path": str(base)},
            )
        return len(entries)

    def _replay_put(self, e: jn.Entry) -> None:
        slot = self._slot_of.get(e.session_id)
        if slot is None:
            if self._n_free == 0:  # only with a smaller max_sessions than the journal was written with
                lru = int(np.argmin(self._last_used))
                self._remove(lru, "capacity")
            self._n_free -= 1
            slot = int(self._free[self._n_free])
            self._slot_of[e.session_id] = slot
            self._id_of[slot] = e.session_id
            self._owned[owner_of(e.session_id)] += 1
            self._gone.pop(e.session_id, None)
        self._h[slot] = e.h
        self._c[slot] = e.c
        self._position[slot] = e.position
        self._version[slot] = e.version
        self._created[slot] = e.created
        self._last_used[slot] = e.last_used
        self._expires[slot] = e.expires
        self._ttl[slot] = e.ttl

    async def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    # ---- the StateStore interface ------------------------------------------------------------------------
    async def create(
        self,
        *,
        ttl_s: float,
        h: np.ndarray | None = None,
        c: np.ndarray | None = None,
        position: int = 0,
        owner: str = "",
        max_owned: int = 0,
    ) -> SessionRecord:
        h = None if h is None else self._check_state(h, "h")
        c = None if c is None else self._check_state(c, "c")
        self._check_owned(owner, max_owned)
        now = self._clock()
        try:
            slot = self._allocate(now)
            # A reused slot still holds its last owner's state: overwrite it whole.
            self._h[slot] = 0.0 if h is None else h
            self._c[slot] = 0.0 if c is None else c
            record = self._occupy(slot, now, ttl_s, position, owner)
            self._journal_put(jn.CREATE, slot)
        finally:
            await self._commit()  # with any capacity eviction it made, even if it failed after that
        return record

    async def load_many(self, session_ids: Sequence[str]) -> LoadedStates:
        now = self._clock()
        batch = len(session_ids)
        records: list[SessionRecord | EngineError] = []
        rows: list[int] = []
        slots: list[int] = []
        for row, sid in enumerate(session_ids):
            found = self._lookup(sid, now)
            if isinstance(found, EngineError):
                records.append(found)
                continue
            records.append(self._record(found))
            rows.append(row)
            slots.append(found)
        if len(rows) == batch:  # every session found: the gather is the answer, (n, L, H) seen as (L, n, H)
            return LoadedStates(
                h=self._h[slots].transpose(1, 0, 2), c=self._c[slots].transpose(1, 0, 2), records=records
            )
        h = np.zeros((self.layers, batch, self.hidden), dtype=np.float32)  # (layers, batch, hidden)
        c = np.zeros((self.layers, batch, self.hidden), dtype=np.float32)
        if rows:
            # (n, layers, hidden) -> (layers, n, hidden): the gather and the transpose in one copy
            h[:, rows] = self._h[slots].transpose(1, 0, 2)
            c[:, rows] = self._c[slots].transpose(1, 0, 2)
        return LoadedStates(h=h, c=c, records=records)

    async def save_many(
        self,
        session_ids: Sequence[str],
        h: np.ndarray,
        c: np.ndarray,
        positions: Sequence[int],
        expected_versions: Sequence[int],
    ) -> list[SessionRecord | EngineError]:
        batch = len(session_ids)
        if h.shape != (self.layers, batch, self.hidden) or c.shape != h.shape:
            raise ValueError(f"save_many got h {h.shape}, c {c.shape} for {batch} sessions")
        now = self._clock()
        out: list[SessionRecord | EngineError] = []
        rows: list[int] = []
        slots: list[int] = []
        for row, sid in enumerate(session_ids):
            found = self._lookup(sid, now)
            if isinstance(found, EngineError):
                out.append(found)
                continue
            if int(self._version[found]) != expected_versions[row]:
                out.append(VersionConflict(sid, int(self._position[found])))
                continue
            self._position[found] = positions[row]
            self._version[found] = self._bump()
            self._last_used[found] = now
            self._expires[found] = now + self._ttl[found]
            out.append(self._record(found))
            rows.append(row)
            slots.append(found)
        if rows:
            if len(rows) < batch:  # some rows were refused: only the others are written
                h, c = h[:, rows], c[:, rows]
            self._h[slots] = h.transpose(1, 0, 2)  # (layers, n, hidden) -> (n, layers, hidden)
            self._c[slots] = c.transpose(1, 0, 2)
            if self._journal is not None:
                for slot in slots:
                    self._journal_put(jn.SAVE, slot)
                await self._commit()  # one write and one fsync for the whole batch
        return out

    async def get_record(self, session_id: str) -> SessionRecord:
        return self._record(self._slot(session_id, self._clock()))

    async def get_state(self, session_id: str) -> tuple[SessionRecord, np.ndarray, np.ndarray]:
        slot = self._slot(session_id, self._clock())
        return self._record(slot), self._h[slot].copy(), self._c[slot].copy()

    async def delete(self, session_id: str) -> None:
        slot = self._slot(session_id, self._clock())
        self._remove(slot, "deleted")
        self._record_evictions("deleted", 1)
        await self._commit()

    async def reset(self, session_id: str) -> SessionRecord:
        now = self._clock()
        slot = self._slot(session_id, now)
        self._h[slot] = 0.0
        self._c[slot] = 0.0
        self._position[slot] = 0
        self._version[slot] = self._bump()
        self._last_used[slot] = now
        self._expires[slot] = now + self._ttl[slot]
        self._journal_put(jn.RESET, slot)
        await self._commit()
        return self._record(slot)

    async def fork(self, session_id: str, ttl_s: float | None = None, *, max_owned: int = 0) -> SessionRecord:
        now = self._clock()
        src = self._slot(session_id, now)
        self._check_owned(owner_of(session_id), max_owned)
        try:
            dst = self._allocate(now, protect=src)
            self._h[dst] = self._h[src]
            self._c[dst] = self._c[src]
            # Forking reads the source, it does not change it: its version and last use stay as they are.
            ttl = float(self._ttl[src]) if ttl_s is None else ttl_s
            record = self._occupy(dst, now, ttl, int(self._position[src]), owner_of(session_id))
            self._journal_put(jn.FORK, dst)
        finally:
            await self._commit()
        return record

    async def count(self) -> int:
        return len(self._slot_of)

    async def count_owned(self, owner: str) -> int:
        return self._owned[owner]

    async def sweep_expired(self) -> int:
        return self._sweep(self._clock())

    # ---- its own persistence (service/state/snapshot.py writes and reads the file) ---------------------------
    @property
    def change_marker(self) -> Hashable:
        """Changes whenever a session is created, written, reset or removed: a snapshot is due only then."""
        return self._next_version, len(self._slot_of), tuple(self.evictions.values())

    def to_snapshot(self, fingerprint: str, now: float | None = None) -> Snapshot:
        """Copy every live session out (fancy indexing copies), for writing off the event loop. In durable mode the
        journal starts a new generation here: the snapshot holds everything journaled before."""
        if self._journal is not None:
            self._journal.rotate()
        ids = list(self._slot_of)
        slots = np.fromiter(self._slot_of.values(), dtype=np.int64, count=len(ids))
        gone = list(self._gone.items())
        return Snapshot(
            fingerprint=fingerprint,
            layers=self.layers,
            hidden=self.hidden,
            written_at=time.time() if now is None else now,
            next_version=int(self._next_version),
            ids=ids,
            position=self._position[slots],
            version=self._version[slots],
            created=self._created[slots],
            last_used=self._last_used[slots],
            expires=self._expires[slots],
            ttl=self._ttl[slots],
            h=self._h[slots],  # (n, layers, hidden)
            c=self._c[slots],
            gone_ids=[sid for sid, _ in gone],
            gone_reasons=[reason for _, reason in gone],
        )

    def snapshot_written(self, snap: Snapshot) -> None:
        """A snapshot is safely on disk: the journal generations it holds are deleted (compaction)."""
        if self._journal is not None:
            self._journal.compact(snap.next_version)

    def load_snapshot(self, snap: Snapshot, now: float) -> RestoreResult:
        """Fill this empty store with the snapshot's live sessions (the most recently used, up to max_sessions);
        the per-key session counts come back with them."""
        if self._slot_of:
            raise RuntimeError("a snapshot is restored into an empty store only")
        live = np.flatnonzero(snap.expires > now)
        expired = np.flatnonzero(snap.expires <= now)
        live = live[np.argsort(-snap.last_used[live], kind="stable")]  # most recently used first
        keep, dropped = live[: self.max_sessions], live[self.max_sessions :]
        k = len(keep)
        slots = self._free[self._n_free - k : self._n_free][::-1].copy()  # the stack's top k, as _allocate pops
        self._n_free -= k
        self._h[slots] = snap.h[keep]
        self._c[slots] = snap.c[keep]
        self._position[slots] = snap.position[keep]
        self._version[slots] = snap.version[keep]
        self._created[slots] = snap.created[keep]
        self._last_used[slots] = snap.last_used[keep]
        self._expires[slots] = snap.expires[keep]
        self._ttl[slots] = snap.ttl[keep]
        for i, slot in zip(keep.tolist(), slots.tolist(), strict=True):
            sid = snap.ids[i]
            self._slot_of[sid] = slot
            self._id_of[slot] = sid
            self._owned[owner_of(sid)] += 1
        for sid, reason in zip(snap.gone_ids, snap.gone_reasons, strict=True):
            self._forget(sid, "capacity" if reason == "capacity" else "ttl")
        for i in expired.tolist():
            self._forget(snap.ids[i], "ttl")
        for i in dropped.tolist():
            self._forget(snap.ids[i], "capacity")
        top = int(snap.version.max()) if len(snap) else 0
        self._next_version = max(self._next_version, snap.next_version, top)
        return RestoreResult(restored=k, expired=len(expired), dropped=len(dropped))
