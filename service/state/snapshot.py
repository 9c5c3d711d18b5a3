"""Snapshots of the in-memory store, so that a single-node restart loses no session (LSTM_SERVE_SNAPSHOT_PATH).

The server writes every session (record, h and C) and the recently expired ids to `snapshot_path` every
`snapshot_interval_s` seconds (when something changed; 0 = only at shutdown) and once more at shutdown, after the
last batch ran; it loads them at start. A session keeps its id, position, version and times, so a client simply
carries on after the restart; the downtime counts as idle time (a session whose TTL ran out meanwhile answers
session_expired).

Format: a NumPy .npz (uncompressed zip of .npy arrays, read with allow_pickle=False: no pickle anywhere): `meta`
(JSON: format, model fingerprint, layers, hidden, written_at, next_version), `ids`, `position`, `version`,
`created`, `last_used`, `expires`, `ttl`, `h` and `c` (n, layers, hidden) float32, `gone_ids`, `gone_reasons`.
Written atomically: a temporary file in the same directory, fsync, os.replace, fsync of the directory; a crash
mid-write leaves the previous snapshot intact.

At start, a snapshot that cannot be used does not stop the server: it logs an error, moves the file aside
(`<name>.corrupt` for an unreadable or inconsistent file, `<name>.other-model` for one written by different
weights or state shape) and starts empty. Sessions are recoverable state (a client that gets session_not_found
creates a new session), whereas a server that refuses to start on a bad file needs a person to fix it, and in a
crash loop serves nobody; the moved-aside file keeps the old sessions for a rollback or an inspection.

The store owns its content: `MemoryStateStore.to_snapshot()` copies its live slots (on the event loop, so the copy is
consistent with the batches) and `load_snapshot()` fills an empty store, its per-key session counts included. This
module only reads, checks and atomically writes the file, and schedules the writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import time
import zipfile
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)

FORMAT = "lstm-serve-sessions/1"
GONE_REASONS = ("ttl", "capacity")  # why a remembered id is gone (a deleted one is simply not found)


class SnapshotError(Exception):
    """A snapshot that cannot be restored; `kind` is 'corrupt' or 'other-model'."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Snapshot:
    fingerprint: str
    layers: int
    hidden: int
    written_at: float
    next_version: int
    ids: list[str]
    position: np.ndarray  # (n,) int64
    version: np.ndarray  # (n,) int64
    created: np.ndarray  # (n,) float64
    last_used: np.ndarray  # (n,) float64
    expires: np.ndarray  # (n,) float64
    ttl: np.ndarray  # (n,) float64
    h: np.ndarray  # (n, layers, hidden) float32
    c: np.ndarray  # (n, layers, hidden) float32
    gone_ids: list[str]
    gone_reasons: list[str]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True, slots=True)
class RestoreResult:
    restored: int
    expired: int  # idle past their TTL by now: remembered as expired
    dropped: int  # over max_sessions: the least recently used, remembered as evicted


def _strings(values: list[str]) -> np.ndarray:
    return np.array(values, dtype=str) if values else np.zeros(0, dtype="<U1")


def write_snapshot(snap: Snapshot, path: Path) -> None:
    """Write atomically: temporary file beside `path`, fsync, rename over it, fsync the directory."""
    meta = {
        "format": FORMAT,
        "fingerprint": snap.fingerprint,
        "layers": snap.layers,
        "hidden": snap.hidden,
        "written_at": snap.written_at,
        "next_version": snap.next_version,
        "sessions": len(snap),
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with tmp.open("wb") as f:
            np.savez(
                f,
                meta=np.array(json.dumps(meta)),
                ids=_strings(snap.ids),
                position=snap.position,
                version=snap.version,
                created=snap.created,
                last_used=snap.last_used,
                expires=snap.expires,
                ttl=snap.ttl,
                h=snap.h,
                c=snap.c,
                gone_ids=_strings(snap.gone_ids),
                gone_reasons=_strings(snap.gone_reasons),
            )
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_snapshot(path: Path, fingerprint: str, shape: tuple[int, int]) -> Snapshot:
    """Load and check a snapshot; SnapshotError if it is unreadable, inconsistent, or of another model."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise SnapshotError(f"unreadable: {exc}", "corrupt") from None
    try:
        meta: dict[str, Any] = json.loads(str(arrays["meta"][()]))
        if meta.get("format") != FORMAT:
            raise SnapshotError(f"format {meta.get('format')!r} is not {FORMAT!r}", "corrupt")
        if meta["fingerprint"] != fingerprint or (meta["layers"], meta["hidden"]) != shape:
            raise SnapshotError(
                f"written for model {meta['fingerprint']} with state {meta['layers']}x{meta['hidden']}; this server "
                f"runs {fingerprint} with state {shape[0]}x{shape[1]}",
                "other-model",
            )
        ids = [str(s) for s in arrays["ids"]]
        n = len(ids)
        fields = {name: arrays[name] for name in ("position", "version", "created", "last_used", "expires", "ttl")}
        if any(a.shape != (n,) for a in fields.values()):
            raise SnapshotError("record arrays do not match the number of sessions", "corrupt")
        h, c = arrays["h"], arrays["c"]
        if h.shape != (n, *shape) or c.shape != h.shape or h.dtype != np.float32 or c.dtype != np.float32:
            raise SnapshotError(f"states have shape {h.shape} {h.dtype}, expected {(n, *shape)} float32", "corrupt")
        if len(set(ids)) != n:
            raise SnapshotError("duplicate session ids", "corrupt")
        gone_ids = [str(s) for s in arrays["gone_ids"]]
        gone_reasons = [str(s) for s in arrays["gone_reasons"]]
        if len(gone_ids) != len(gone_reasons) or not set(gone_reasons) <= set(GONE_REASONS):
            raise SnapshotError("the expired-id list is inconsistent", "corrupt")
        return Snapshot(
            fingerprint=fingerprint,
            layers=shape[0],
            hidden=shape[1],
            written_at=float(meta["written_at"]),
            next_version=int(meta["next_version"]),
            ids=ids,
            position=fields["position"].astype(np.int64),
            version=fields["version"].astype(np.int64),
            created=fields["created"].astype(np.float64),
            last_used=fields["last_used"].astype(np.float64),
            expires=fields["expires"].astype(np.float64),
            ttl=fields["ttl"].astype(np.float64),
            h=h,
            c=c,
            gone_ids=gone_ids,
            gone_reasons=gone_reasons,
        )
    except SnapshotError:
        raise
    except (KeyError, ValueError, TypeError, json.JSONDecodeError) as exc:
        raise SnapshotError(f"inconsistent: {type(exc).__name__}: {exc}", "corrupt") from None


class SnapshotSource(Protocol):
    """A store that snapshots itself: it exports and loads its own content, this module only does the file I/O."""

    @property
    def state_shape(self) -> tuple[int, int]: ...

    @property
    def change_marker(self) -> Hashable:
        """Changes whenever a session is created, written, reset or removed: a snapshot is due only then."""
        ...

    def to_snapshot(self, fingerprint: str) -> Snapshot: ...

    def snapshot_written(self, snap: Snapshot) -> None:
        """The snapshot is safely on disk (a durable store compacts its journal into it)."""
        ...

    def load_snapshot(self, snap: Snapshot, now: float) -> RestoreResult: ...


class Snapshotter:
    """Restores at start, writes every `interval_s` seconds when something changed (0 = never), and at stop."""

    def __init__(self, store: SnapshotSource, path: Path, interval_s: float, fingerprint: str) -> None:
        self.store = store
        self.path = path
        self.interval_s = interval_s
        self.fingerprint = fingerprint
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._written: Hashable | None = None
        self.writes = 0

    async def restore(self) -> RestoreResult | None:
        """Load the snapshot if there is one; an unusable one is logged, moved aside, and the store left empty.
        Temporary files of writes that a crash interrupted are removed first (each is snapshot-sized)."""
        self._remove_stale_temporaries()
        if not self.path.exists():
            log.info("no session snapshot yet; starting empty", extra={"path": str(self.path)})
            return None
        try:
            snap = await asyncio.to_thread(read_snapshot, self.path, self.fingerprint, self.store.state_shape)
        except SnapshotError as exc:
            aside = self.path.with_name(f"{self.path.name}.{exc.kind}")
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            log.error(
                "session snapshot not restored (%s): %s; moved to %s, starting with no sessions",
                exc.kind,
                exc,
                aside,
                extra={"path": str(self.path), "moved_to": str(aside)},
            )
            return None
        result = self.store.load_snapshot(snap, time.time())
        self._written = self.store.change_marker
        log.info(
            "sessions restored from snapshot",
            extra={
                "path": str(self.path),
                "sessions": result.restored,
                "expired": result.expired,
                "dropped_over_max_sessions": result.dropped,
                "written_at": snap.written_at,
            },
        )
        if result.dropped:
            log.warning(
                "the snapshot held more sessions than max_sessions; the %d least recently used were dropped",
                result.dropped,
            )
        return result

    def _remove_stale_temporaries(self) -> None:
        # write_snapshot's temporaries are `.<name>.<pid>.<hex>.tmp`; at start none of them is being written
        # (a snapshot file belongs to one server process), so any left is from a process that died mid-write.
        stale = list(self.path.parent.glob(f".{self.path.name}.*.tmp"))
        for tmp in stale:
            with contextlib.suppress(OSError):
                tmp.unlink()
        if stale:
            log.warning(
                "removed %d temporary snapshot file(s) left by an interrupted write",
                len(stale),
                extra={"path": str(self.path)},
            )

    def start(self) -> None:
        if self.interval_s > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="lstm-serve-snapshots")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                # Shielded: stop() cancelling this loop never interrupts a write; its final write waits for it.
                await asyncio.shield(self.write(only_if_changed=True))
            except Exception:  # a full disk must not stop serving; the next interval tries again
                log.exception("writing the session snapshot failed", extra={"path": str(self.path)})

    async def write(self, *, only_if_changed: bool = False) -> bool:
        """Capture on the event loop (consistent with the batches), write in a thread. True if written."""
        async with self._lock:
            signature = self.store.change_marker
            if only_if_changed and signature == self._written:
                return False
            t0 = time.perf_counter()
            snap = self.store.to_snapshot(self.fingerprint)
            await asyncio.to_thread(write_snapshot, snap, self.path)
            self.store.snapshot_written(snap)
            self._written = signature
            self.writes += 1
            log.info(
                "session snapshot written",
                extra={
                    "path": str(self.path),
                    "sessions": len(snap),
                    "ms": round((time.perf_counter() - t0) * 1000, 1),
                },
            )
            return True

    async def stop(self) -> bool:
        """Stop the periodic writes and write the final snapshot (call after the last batch ran); False when that
        write failed (a full disk, say): the sessions since the last good snapshot are then lost."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self.write()
        except Exception:
            log.exception("writing the final session snapshot failed", extra={"path": str(self.path)})
            return False
        return True
